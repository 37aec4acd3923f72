"""Reading Stable Diffusion weights: diffusers folders and single files in the
original (LDM) key layout, family detection, and the model-manager glue.

Imported lazily by the node modules (it imports torch, diffusers, transformers).
Nothing here ever touches a model hub: single files are converted with the
configs shipped in ``resources/configs`` (or a config stored with the file), and
tokenizers come from the folder or ``resources/tokenizers``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from nodes.values import (
    LAYOUT_DIFFUSERS,
    LAYOUT_SINGLE_FILE,
    ClipHandle,
    LatentRgb,
    ModelHandle,
    VaeHandle,
    WeightsSource,
)
from studio.errors import NodeError, StudioError
from studio.fsutil import regular_file
from studio.modelfiles import RESOURCES

CONFIGS = RESOURCES / "configs"
CLIP_TOKENIZER = RESOURCES / "tokenizers" / "clip"
#: OpenCLIP text towers (SD2, SDXL's second encoder) pad with "!" (id 0), OpenAI's CLIP
#: with its end token; diffusers' tokenizer folders for those models say the same.
OPEN_CLIP_PAD = "!"

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIXES = ("first_stage_model.", "vae.")
SD1_CLIP_PREFIX = "cond_stage_model.transformer."
SD2_CLIP_PREFIX = "cond_stage_model.model."
SDXL_CLIP_L_PREFIX = "conditioner.embedders.0.transformer."
SDXL_CLIP_G_PREFIX = "conditioner.embedders.1.model."
SDXL_REFINER_KEY = "conditioner.embedders.0.model.text_projection"

SAFE_SUFFIXES = (".safetensors", ".sft")
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")

#: Metadata key in a safetensors header (or a ``<stem>.json`` file beside it) holding
#: the diffusers configs of a custom model: {"family", "unet", "vae", "text_encoder", ...}.
SIDECAR_METADATA_KEY = "studio"
#: The entry of that metadata holding a model's own CLIP BPE tokenizer: {"vocab": {token:
#: id}, "merges": ["a b", ...], "bos_token", "eos_token", "pad_token", "unk_token",
#: "model_max_length"}. Needed when the text encoder's vocabulary is not CLIP's.
TOKENIZER_KEY = "tokenizer"
#: The entry of that metadata holding the model's own latent -> RGB preview factors,
#: ``{"matrix": [[r, g, b]] * latent channels, "bias": [r, g, b]}`` (``values.LatentRgb``).
LATENT_RGB_KEY = "latent_rgb"
#: The same factors in a diffusers folder: a private key of ``model_index.json``
#: (diffusers drops keys starting with "_" when it builds a pipeline from that file).
FOLDER_LATENT_RGB_KEY = "_studio_latent_rgb"
CLIP_VOCAB_SIZE = 49408
#: Sources whose components ``nodes.dit`` loads: SD3 / Flux checkpoints and their separate
#: text encoder files (see :func:`load_component`).
DIT_SOURCE_FAMILIES = ("sd3", "flux", "clip", "t5")

#: The largest safetensors header read (the safetensors library's own limit).
MAX_SAFETENSORS_HEADER_BYTES = 100_000_000
#: More dimensions than this is no weight tensor but a damaged header.
MAX_TENSOR_RANK = 16
_U64_MAX = 2**64 - 1
#: Bits per element of the safetensors dtypes, to check each tensor's byte range.
SAFETENSORS_DTYPE_BITS = {
    "BOOL": 8,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E8M0": 8,
    "F8_E4M3FNUZ": 8,
    "F8_E5M2FNUZ": 8,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "I64": 64,
    "U64": 64,
    "F64": 64,
    "C64": 64,
}


# -- reading files -----------------------------------------------------------------------


class WeightsFile:
    """Tensors of one weights file: names and shapes without reading the data, then
    the tensors asked for. safetensors are read lazily; pickles only through
    ``torch.load(weights_only=True)``."""

    def __init__(self, path: Path, label: str):
        self.path = Path(path)
        self.label = label
        self.metadata: dict[str, str] = {}
        self._dict: dict[str, Any] | None = None
        suffix = self.path.suffix.lower()
        if suffix in SAFE_SUFFIXES:
            self.shapes = self._safetensors_header()
        elif suffix in PICKLE_SUFFIXES:
            self._dict = _torch_load_weights(self.path, label)
            self.shapes = {k: tuple(v.shape) for k, v in self._dict.items()}
        else:
            raise NodeError(f"{label}: unsupported file type {suffix!r} (use .safetensors)")

    def _safetensors_header(self) -> dict[str, tuple[int, ...]]:
        shapes, self.metadata = read_safetensors_header(self.path, self.label)
        return shapes

    def get(self, keys: Iterable[str]) -> dict[str, Any]:
        keys = list(keys)
        if self._dict is not None:
            return {k: self._dict[k] for k in keys}
        from safetensors import safe_open

        try:
            with safe_open(str(self.path), framework="pt", device="cpu") as f:
                return {k: f.get_tensor(k) for k in keys}
        except Exception as exc:
            raise NodeError(f"{self.label}: could not read its tensors ({exc})") from None

    def with_prefix(self, *prefixes: str) -> dict[str, Any]:
        return self.get(k for k in self.shapes if k.startswith(prefixes))


class _BadHeader(ValueError):
    """What is wrong with a safetensors header, in a few words."""


def read_safetensors_header(
    path: Path, label: str
) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """The tensor shapes and the metadata of a safetensors file, from its header alone.

    Every field is checked before it is used, as the safetensors library checks them
    (length, JSON object, dtypes, shapes, byte ranges that tile the data exactly), so a
    damaged or hostile file gives a NodeError naming ``label`` and what is wrong, never a
    raw exception, and a file that passes is one the library can read.
    """
    try:
        regular_file(path, what=label)
    except StudioError as exc:
        raise NodeError(str(exc)) from None
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            length = _header_length(f.read(8), size)
            raw = f.read(length)
    except _BadHeader as exc:
        raise _not_safetensors(label, exc) from None
    except OSError as exc:
        raise NodeError(f"{label}: cannot read the file ({exc.strerror or exc})") from None
    try:
        return _parse_safetensors_header(raw, length, size - 8 - length)
    except _BadHeader as exc:
        raise _not_safetensors(label, exc) from None


def _not_safetensors(label: str, exc: Exception) -> NodeError:
    return NodeError(
        f"{label}: not a valid safetensors file ({exc}); it may be damaged or an "
        "incomplete download"
    )


def _header_length(head: bytes, size: int) -> int:
    if len(head) != 8:
        raise _BadHeader(f"file too short: {size} bytes")
    n = int.from_bytes(head, "little")
    if n < 2:
        raise _BadHeader(f"header length {n} is too small")
    if n > MAX_SAFETENSORS_HEADER_BYTES:
        raise _BadHeader(
            f"header length {n:,} bytes is over the limit of {MAX_SAFETENSORS_HEADER_BYTES:,}"
        )
    if 8 + n > size:
        raise _BadHeader(f"header length {n:,} bytes is beyond the end of the file")
    return n


def _refuse_constant(name: str) -> Any:
    raise _BadHeader(f"the header holds {name}, which JSON does not allow")


def _parse_safetensors_header(
    raw: bytes, length: int, data_size: int
) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    if len(raw) != length:
        raise _BadHeader("the file ends inside its header")
    if not raw.startswith(b"{"):
        raise _BadHeader("the header is not a JSON object")
    try:
        header = json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant)
    except _BadHeader:
        raise
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise _BadHeader(f"the header is not valid JSON: {type(exc).__name__}") from None
    if not isinstance(header, dict):
        raise _BadHeader("the header is not a JSON object")
    metadata = header.pop("__metadata__", None)
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise _BadHeader("__metadata__ is not an object of strings")
    shapes: dict[str, tuple[int, ...]] = {}
    ranges = []
    for key, info in header.items():
        shapes[key] = _tensor_shape(key, info, data_size)
        ranges.append((info["data_offsets"][0], info["data_offsets"][1], key))
    end = 0
    for begin, stop, key in sorted(ranges):
        if begin != end:
            what = "overlaps another" if begin < end else "leaves a gap before it"
            raise _BadHeader(f"tensor {_shown(key)}'s data {what}")
        end = stop
    if end != data_size:
        raise _BadHeader(f"{data_size - end:,} bytes after the last tensor")
    return shapes, metadata


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _shown(text: str) -> str:
    # A hostile header's names can be megabytes long.
    return repr(text if len(text) <= 40 else text[:40] + "...")


def _tensor_shape(key: str, info: Any, data_size: int) -> tuple[int, ...]:
    if not isinstance(info, dict):
        raise _BadHeader(f"entry {_shown(key)} is not an object")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    key = _shown(key)
    if not isinstance(dtype, str) or dtype not in SAFETENSORS_DTYPE_BITS:
        shown = _shown(dtype) if isinstance(dtype, str) else f"of type {type(dtype).__name__}"
        raise _BadHeader(f"tensor {key} has an unknown dtype {shown}")
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_TENSOR_RANK
        or not all(_is_int(d) and d >= 0 for d in shape)
    ):
        raise _BadHeader(f"tensor {key} has no valid shape")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(_is_int(o) for o in offsets)
        or not 0 <= offsets[0] <= offsets[1]
    ):
        raise _BadHeader(f"tensor {key}'s data_offsets are not two increasing offsets")
    if offsets[1] > data_size:
        raise _BadHeader("the file is shorter than its header says")
    # The running product stays within 64 bits, as in the safetensors library.
    bits = SAFETENSORS_DTYPE_BITS[dtype]
    for d in (*shape, 1):
        if bits > _U64_MAX:
            raise _BadHeader(f"tensor {key}'s shape is too large")
        bits *= d
    if bits != 8 * (offsets[1] - offsets[0]):
        raise _BadHeader(f"tensor {key}'s shape and dtype do not match its byte size")
    return tuple(shape)


def _torch_load_weights(path: Path, label: str) -> dict[str, Any]:
    from nodes.weightfiles import code_refusal

    try:
        regular_file(path, what=label)
    except StudioError as exc:
        raise NodeError(str(exc)) from None
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        refusal = code_refusal(
            exc, label, ". Convert it to .safetensors, or use a .safetensors download"
        )
        if refusal is not None:
            raise refusal from None
        raise NodeError(
            f"{label}: not a readable checkpoint ({type(exc).__name__}: {exc})"
        ) from None
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict):
        raise NodeError(f"{label}: holds no state dict of weights")
    return {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}


def family_configs(family: str) -> dict[str, dict[str, Any]]:
    folder = CONFIGS / family
    return {p.stem: json.loads(p.read_text("utf-8")) for p in sorted(folder.glob("*.json"))}


# -- family detection ----------------------------------------------------------------------


def detect_family(shapes: dict[str, tuple[int, ...]], label: str) -> str:
    """The family of a single-file checkpoint from its key names and shapes.

    Raises NodeError saying what the file looks like when it is not a checkpoint
    Studio can use.
    """
    if not any(k.startswith(UNET_PREFIX) for k in shapes):
        raise NodeError(f"{label}: not a Stable Diffusion checkpoint - {_what_is_it(shapes)}")
    conv_in = shapes.get(UNET_PREFIX + "input_blocks.0.0.weight")
    if conv_in is not None and len(conv_in) == 4 and conv_in[1] != 4:
        raise NodeError(
            f"{label}: its UNet takes {conv_in[1]} input channels (an inpainting or "
            "instruct checkpoint); only regular 4-channel checkpoints are supported yet"
        )
    if SDXL_REFINER_KEY in shapes:
        raise NodeError(f"{label}: an SDXL refiner checkpoint; refiners are not supported yet")
    if any(k.startswith(SDXL_CLIP_G_PREFIX) for k in shapes):
        return "sdxl"
    width = None
    for k, shape in shapes.items():
        if k.startswith(UNET_PREFIX) and k.endswith("attn2.to_k.weight"):
            width = shape[-1]
            break
    if width == 768 and any(k.startswith(SD1_CLIP_PREFIX) for k in shapes):
        return "sd1"
    if width == 1024 and any(k.startswith(SD2_CLIP_PREFIX) for k in shapes):
        return "sd2"
    raise NodeError(
        f"{label}: unknown checkpoint family (cross-attention width {width}); Studio reads "
        "SD 1.x, SD 2.x and SDXL checkpoints, or a custom model with its configs in a "
        f"'<name>.json' file beside it (see docs/VALUES.md)"
    )


def _what_is_it(shapes: dict[str, tuple[int, ...]]) -> str:
    keys = list(shapes)
    if any(
        k.startswith(("lora_unet_", "lora_te")) or ".lora_" in k or "lora_down" in k for k in keys
    ):
        return "it is a LoRA; put it in the loras folder and use Load LoRA"
    if any(k.startswith(("encoder.", "decoder.", *VAE_PREFIXES)) for k in keys):
        return "it looks like a VAE; put it in the vae folder and use Load VAE"
    if any(k.startswith(("control_model.", "controlnet_")) for k in keys):
        return "it looks like a ControlNet; put it in the controlnet folder"
    if any("down_blocks." in k for k in keys):
        return "it holds diffusers-layout UNet weights only, not a whole checkpoint"
    sample = ", ".join(keys[:3]) or "no tensors"
    return f"no UNet weights (model.diffusion_model.*) found; first keys: {sample}"


def _is_v_prediction(weights: WeightsFile) -> bool:
    # SD 2.x 768-v and 512-base share every shape. The released v models have a
    # much wider spread in this norm's bias (a heuristic other tools use too);
    # an A1111-style yaml beside the file or a "v_pred" key wins over it.
    yaml = weights.path.with_suffix(".yaml")
    if yaml.is_file():
        text = yaml.read_text("utf-8", errors="replace")
        if re.search(r"parameterization:\s*['\"]?v['\"]?", text):
            return True
    if "v_pred" in weights.shapes:
        return True
    key = UNET_PREFIX + "output_blocks.11.1.transformer_blocks.0.norm1.bias"
    if key not in weights.shapes:
        return False
    return float(torch.std(weights.get([key])[key].float(), unbiased=False)) > 0.09


def _sidecar_text(weights: WeightsFile) -> str | None:
    """The model config a single file carries in its metadata, or beside it as ``.json``."""
    raw = weights.metadata.get(SIDECAR_METADATA_KEY)
    side = weights.path.with_suffix(".json")
    if raw is None and side.is_file():
        raw = side.read_text("utf-8")
    return raw


def _sidecar(weights: WeightsFile) -> dict[str, Any] | None:
    raw = _sidecar_text(weights)
    if raw is None:
        return None
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # RecursionError: nested too deeply
        raise NodeError(f"{weights.label}: its model config is not valid JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("unet"), dict):
        raise NodeError(f"{weights.label}: its model config needs at least a 'unet' entry")
    return data


# -- inspecting a checkpoint (no weights loaded) ------------------------------------------


def inspect_checkpoint(path: Path, name: str, identity: tuple[Any, ...]) -> WeightsSource:
    """Where a checkpoint's components are and how they are configured."""
    label = f"checkpoint {name!r}"
    if path.is_dir():
        return _inspect_diffusers_folder(path, name, identity, label)
    weights = WeightsFile(path, label)
    side = _sidecar(weights)
    if side is not None:
        family = str(side.get("family", "custom"))
        configs = family_configs(family) if (CONFIGS / family).is_dir() else {}
        configs.update(
            {k: v for k, v in side.items() if isinstance(v, dict) and k != LATENT_RGB_KEY}
        )
    else:
        family = detect_family(weights.shapes, label)
        if family == "sd2" and _is_v_prediction(weights):
            family = "sd2-v"
        configs = family_configs(family)
    missing = [c for c in ("unet", "vae", "text_encoder", "scheduler") if c not in configs]
    if missing:
        raise NodeError(f"{label}: its model config lacks {', '.join(missing)}")
    vocab = configs["text_encoder"].get("vocab_size")
    if side is not None and TOKENIZER_KEY not in configs and vocab not in (None, CLIP_VOCAB_SIZE):
        raise NodeError(
            f"{label}: its text encoder has a vocabulary of {vocab} tokens, not CLIP's "
            f"{CLIP_VOCAB_SIZE}, and the file carries no tokenizer; its '{SIDECAR_METADATA_KEY}' "
            f"metadata needs a '{TOKENIZER_KEY}' entry with 'vocab' and 'merges' "
            "(see docs/VALUES.md)"
        )
    keys = weights.shapes
    prefixes = {"unet": UNET_PREFIX, "vae": _vae_prefix(keys)}
    if any(k.startswith(SDXL_CLIP_G_PREFIX) for k in keys):
        prefixes["text_encoder"] = SDXL_CLIP_L_PREFIX
        prefixes["text_encoder_2"] = SDXL_CLIP_G_PREFIX
    elif any(k.startswith(SD2_CLIP_PREFIX) for k in keys):
        prefixes["text_encoder"] = SD2_CLIP_PREFIX
    else:
        prefixes["text_encoder"] = SD1_CLIP_PREFIX
    if family == "sdxl" and "text_encoder_2" not in configs:
        raise NodeError(f"{label}: an SDXL model needs a text_encoder_2 config")
    return WeightsSource(
        path=str(path),
        identity=identity,
        layout=LAYOUT_SINGLE_FILE,
        family=family,
        configs=configs,
        prefixes=prefixes,
        name=name,
        latent_rgb=LatentRgb.from_json((side or {}).get(LATENT_RGB_KEY)),
    )


def _vae_prefix(keys: Iterable[str]) -> str:
    keys = list(keys)
    for p in VAE_PREFIXES:
        if any(k.startswith(p) for k in keys):
            return p
    return ""


def _read_json(path: Path, label: str) -> dict[str, Any]:
    try:
        return json.loads(path.read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise NodeError(f"{label}: cannot read {path.name} ({exc})") from None


def _inspect_diffusers_folder(
    path: Path, name: str, identity: tuple[Any, ...], label: str
) -> WeightsSource:
    if not (path / "model_index.json").is_file():
        raise NodeError(
            f"{label}: a folder without model_index.json is not a diffusers pipeline folder"
        )
    index = _read_json(path / "model_index.json", label)
    configs: dict[str, dict[str, Any]] = {}
    for comp in ("unet", "vae", "text_encoder", "text_encoder_2"):
        cfg = path / comp / "config.json"
        if cfg.is_file():
            configs[comp] = _read_json(cfg, label)
    sched = path / "scheduler" / "scheduler_config.json"
    if sched.is_file():
        configs["scheduler"] = _read_json(sched, label)
    missing = [c for c in ("unet", "vae", "text_encoder", "scheduler") if c not in configs]
    if missing:
        raise NodeError(f"{label}: the folder lacks {', '.join(missing)}")
    unet = configs["unet"]
    width = unet.get("cross_attention_dim")
    if "text_encoder_2" in configs and unet.get("addition_embed_type") == "text_time":
        family = "sdxl"
    elif width == 768 and list(unet.get("block_out_channels", [])) == [320, 640, 1280, 1280]:
        family = "sd1"
    elif width == 1024 and list(unet.get("block_out_channels", [])) == [320, 640, 1280, 1280]:
        v = configs["scheduler"].get("prediction_type") == "v_prediction"
        family = "sd2-v" if v else "sd2"
    elif "text_encoder_2" in configs:
        raise NodeError(f"{label}: two text encoders but not an SDXL UNet; unknown family")
    else:
        family = "custom"
    return WeightsSource(
        path=str(path), identity=identity, layout=LAYOUT_DIFFUSERS, family=family,
        configs=configs, name=name,
        latent_rgb=LatentRgb.from_json(
            index.get(FOLDER_LATENT_RGB_KEY) if isinstance(index, dict) else None
        ),
    )  # fmt: skip


def handles_for(source: WeightsSource) -> tuple[ModelHandle, ClipHandle, VaeHandle]:
    configs = source.configs
    sched = dict(configs["scheduler"])
    if source.family == "sd2-v":
        sched["prediction_type"] = "v_prediction"
    model = ModelHandle(
        source=source,
        family=source.family,
        scheduler_config=sched,
        prediction_type=sched.get("prediction_type", "epsilon"),
        latent_rgb=source.latent_rgb,
    )
    encoders = (
        ("text_encoder", "text_encoder_2") if "text_encoder_2" in configs else ("text_encoder",)
    )
    tokenizers = []
    for i, enc in enumerate(encoders):
        tok_dir = Path(source.path) / ("tokenizer" if i == 0 else "tokenizer_2")
        if source.layout == LAYOUT_DIFFUSERS and tok_dir.is_dir():
            tokenizers.append((str(tok_dir), None))
        elif i == 0 and TOKENIZER_KEY in configs:  # carried in the file's metadata
            tokenizers.append((source.path, None))
        else:
            open_clip = source.prefixes.get(enc, "").endswith(".model.")
            tokenizers.append((str(CLIP_TOKENIZER), OPEN_CLIP_PAD if open_clip else None))
    clip = ClipHandle(
        source=source, family=source.family, encoders=encoders, tokenizers=tuple(tokenizers)
    )
    vae_cfg = configs["vae"]
    vae = VaeHandle(
        source=source,
        scaling_factor=float(vae_cfg.get("scaling_factor") or 0.18215),
        shift_factor=float(vae_cfg.get("shift_factor") or 0.0),
    )
    return model, clip, vae


def inspect_vae(path: Path, name: str, identity: tuple[Any, ...], scale: str) -> VaeHandle:
    """A VAE handle for a separate VAE file or diffusers VAE folder."""
    label = f"VAE {name!r}"
    if path.is_dir():
        cfg_path = path / "config.json"
        if not cfg_path.is_file() and (path / "vae" / "config.json").is_file():
            cfg_path = path / "vae" / "config.json"
        if not cfg_path.is_file():
            raise NodeError(f"{label}: folder has no config.json")
        config = _read_json(cfg_path, label)
        source = WeightsSource(
            path=str(cfg_path.parent), identity=identity, layout=LAYOUT_DIFFUSERS,
            family="vae", configs={"vae": config}, prefixes={"vae_folder": ""}, name=name,
        )  # fmt: skip
    else:
        weights = WeightsFile(path, label)
        keys = weights.shapes
        if not any(k.startswith(("encoder.", "decoder.", *VAE_PREFIXES)) for k in keys):
            raise NodeError(f"{label}: not a VAE - {_what_is_it(keys)}")
        side = _sidecar_vae(weights)
        config = side or family_configs("sd1")["vae"]
        prefix = _vae_prefix(keys)
        dec_in = [s for k, s in keys.items() if k.endswith("decoder.conv_in.weight")]
        if side is None and dec_in and dec_in[0][1] == 16:  # Flux / SD3 (nodes.dit)
            from nodes import dit

            p = next(k for k in keys if k.endswith("decoder.conv_in.weight"))
            source = dit.vae16_source(
                path, name, identity, keys, p[: -len("decoder.conv_in.weight")]
            )
            return _vae16_handle(source, scale)
        if dec_in and dec_in[0][1] != config.get("latent_channels", 4):
            raise NodeError(
                f"{label}: a VAE with {dec_in[0][1]} latent channels; Studio reads 4-channel "
                "Stable Diffusion VAEs and 16-channel Flux / SD3 VAEs"
            )
        source = WeightsSource(
            path=str(path), identity=identity, layout=LAYOUT_SINGLE_FILE, family="vae",
            configs={"vae": config}, prefixes={"vae": prefix}, name=name,
        )  # fmt: skip
    if int(config.get("latent_channels", 4)) == 16:
        return _vae16_handle(source, scale)
    if scale in ("flux", "sd3"):
        raise NodeError(
            f"{label}: a 4-channel VAE; the {scale} latent scale is for 16-channel VAEs"
        )
    if scale == "auto":
        scale = "sdxl" if re.search(r"xl", name, re.IGNORECASE) else "sd"
    sf = 0.13025 if scale == "sdxl" else float(config.get("scaling_factor") or 0.18215)
    if scale == "sd" and abs(sf - 0.13025) < 1e-6:
        sf = 0.18215
    return VaeHandle(
        source=source, scaling_factor=sf, shift_factor=float(config.get("shift_factor") or 0.0)
    )


def _vae16_handle(source: WeightsSource, scale: str) -> VaeHandle:
    """A 16-channel (Flux / SD3) VAE: the folder's own factors, or the family's chosen."""
    from nodes.dit import VAE_FACTORS

    config = source.configs["vae"]
    if scale in VAE_FACTORS:
        sf, shift = VAE_FACTORS[scale]
    elif scale == "auto" and source.layout == LAYOUT_DIFFUSERS and config.get("scaling_factor"):
        sf, shift = float(config["scaling_factor"]), float(config.get("shift_factor") or 0.0)
    elif scale == "auto":
        sf, shift = VAE_FACTORS["flux"]
    else:
        raise NodeError(f"VAE {source.name!r}: a 16-channel VAE; choose auto, flux or sd3")
    return VaeHandle(source=source, scaling_factor=sf, shift_factor=shift)


def _sidecar_vae(weights: WeightsFile) -> dict[str, Any] | None:
    raw = _sidecar_text(weights)
    if raw is None:
        return None
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    if isinstance(data, dict) and isinstance(data.get("vae"), dict):
        return data["vae"]
    return data if isinstance(data, dict) and "block_out_channels" in data else None


# -- loading components -------------------------------------------------------------------


def load_component(source: WeightsSource, component: str, dtype: Any) -> Any:
    """Build one component (``unet``, ``vae``, ``text_encoder``, ``text_encoder_2``) on CPU."""
    label = f"{component} of {source.name or source.path!r}"
    try:
        if source.merge is not None:
            from nodes import merge

            return merge.load_merged(source, component, dtype)
        if source.family in DIT_SOURCE_FAMILIES:
            from nodes import dit

            module = dit.load_component(source, component, dtype, label)
        elif source.layout == LAYOUT_DIFFUSERS:
            module = _load_diffusers_component(source, component, dtype)
        else:
            module = _load_single_file_component(source, component, dtype, label)
    except NodeError:
        raise
    except Exception as exc:
        raise NodeError(f"could not load the {label}: {type(exc).__name__}: {exc}") from exc
    module.eval()
    module.requires_grad_(False)
    return module


def preload() -> None:
    """Import what loading a checkpoint and sampling need (several seconds on a small CPU),
    so a front end can do it in the background before the first run asks for it."""
    from nodes.fastimport import install

    install()
    import diffusers
    import transformers

    # The libraries import these lazily, on first attribute access.
    _ = diffusers.UNet2DConditionModel, diffusers.AutoencoderKL, diffusers.EulerDiscreteScheduler
    _ = transformers.CLIPTextModel, transformers.CLIPTokenizer


def _component_class(component: str, config: dict[str, Any]) -> Any:
    from nodes.fastimport import install

    install()  # the classes' own modules, not their families'
    if component == "unet":
        from diffusers import UNet2DConditionModel

        return UNet2DConditionModel
    if component == "vae":
        from diffusers import AutoencoderKL

        return AutoencoderKL
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    arch = (config.get("architectures") or [""])[0]
    if arch == "CLIPTextModelWithProjection" or component == "text_encoder_2":
        return CLIPTextModelWithProjection
    return CLIPTextModel


def _load_diffusers_component(source: WeightsSource, component: str, dtype: Any) -> Any:
    cls = _component_class(component, source.configs.get(component, {}))
    if "vae_folder" in source.prefixes:
        return cls.from_pretrained(source.path, torch_dtype=dtype, local_files_only=True)
    if component.startswith("text_encoder"):
        return text_encoder_from_pretrained(cls, source.path, dtype, subfolder=component)
    return cls.from_pretrained(
        source.path, subfolder=component, torch_dtype=dtype, local_files_only=True
    )


def text_encoder_from_pretrained(cls: Any, folder: Any, dtype: Any, **kwargs: Any) -> Any:
    """A transformers text encoder from its folder, without its random init.

    transformers builds the model on the meta device, where torch's random init of an
    embedding (about to be overwritten by the file's weights anyway) imports torch._dynamo:
    seconds of a cold run. Its own ``no_init_weights`` skips that init."""
    from transformers.initialization import no_init_weights

    with no_init_weights():
        return cls.from_pretrained(folder, torch_dtype=dtype, local_files_only=True, **kwargs)


def _load_single_file_component(
    source: WeightsSource, component: str, dtype: Any, label: str
) -> Any:
    from accelerate import init_empty_weights
    from diffusers.loaders.single_file_utils import (
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
        convert_open_clip_checkpoint,
    )

    from nodes.ldm_keys import unet_extras_from_ldm

    weights = WeightsFile(Path(source.path), label)
    config = source.configs[component]
    cls = _component_class(component, config)
    prefix = source.prefixes.get(component, "")
    with init_empty_weights():
        if component in ("unet", "vae"):
            module = cls.from_config(config)
        else:
            from transformers import CLIPTextConfig

            module = cls(CLIPTextConfig(**config))
    raw = weights.with_prefix(prefix) if prefix else weights.get(list(weights.shapes))
    if not raw:
        raise NodeError(f"the file holds no weights for the {label} (keys {prefix}*)")
    if component == "unet":
        state = convert_ldm_unet_checkpoint(raw, config)
        state.update(unet_extras_from_ldm(raw, config))
    elif component == "vae":
        if any("down_blocks." in k for k in raw):  # already diffusers layout
            state = {k[len(prefix) :]: v for k, v in raw.items()}
        else:
            state = convert_ldm_vae_checkpoint(raw, config)
    elif prefix.endswith(".model."):  # OpenCLIP layout (SD2, SDXL's second encoder)
        state = convert_open_clip_checkpoint(module, raw, prefix=prefix)
    else:
        state = {k[len(prefix) :]: v for k, v in raw.items()}
    if component.startswith("text_encoder"):
        state = _fit_clip_keys(module, state)
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    _assign(module, state, label)
    return module


def _fit_clip_keys(module: Any, state: dict[str, Any]) -> dict[str, Any]:
    wrapped = hasattr(module, "text_model")
    out = {}
    for k, v in state.items():
        if k.endswith("position_ids"):
            continue
        if not wrapped:
            if k == "text_projection.weight":
                continue
            k = k.removeprefix("text_model.")
        elif not k.startswith(("text_model.", "text_projection")):
            k = "text_model." + k
        out[k] = v
    return out


def _assign(module: Any, state: dict[str, Any], label: str) -> None:
    expected = dict(module.state_dict())
    missing = [k for k in expected if k not in state]
    # Keys beyond what the config builds (SD2's unused last text layer) are dropped.
    state = {k: v for k, v in state.items() if k in expected}
    for k, v in state.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise NodeError(
                f"the {label} does not match its config: {k} has shape {tuple(v.shape)}, "
                f"expected {tuple(expected[k].shape)}"
            )
    if missing:
        shown = ", ".join(missing[:3])
        raise NodeError(f"the file lacks {len(missing)} weights of the {label} (e.g. {shown})")
    module.load_state_dict(state, strict=False, assign=True)
    # Buffers the state dict does not hold (non-persistent ones) must not stay on meta.
    for name, buf in list(module.named_buffers()):
        if buf.is_meta:
            raise NodeError(f"the {label} has an uninitialised buffer {name}")


# -- the model manager glue -----------------------------------------------------------------


def component_dtype(ctx: Any, source: WeightsSource, component: str) -> Any:
    dtype = ctx.dtype
    # SDXL's VAE overflows in fp16; diffusers upcasts it too (force_upcast).
    vae_cfg = source.configs.get("vae", {})
    if component == "vae" and dtype == torch.float16 and vae_cfg.get("force_upcast", False):
        return torch.float32
    return dtype


def get_module(ctx: Any, source: WeightsSource, component: str) -> Any:
    """The loaded component on the compute device, shared through ``ctx.models``."""
    dtype = component_dtype(ctx, source, component)
    device = ctx.device
    key = source.key(component, dtype, device)
    label = f"{Path(source.path).name} {component}"
    ctx.models.get(key, lambda: load_component(source, component, dtype), label=label)
    return ctx.models.use(key, device)


class _Box:
    """Holds a tokenizer for the model manager, which walks a value's attributes to find
    torch modules: a tokenizer's 49k-entry vocabulary is not worth walking."""

    __slots__ = ("value",)

    def __init__(self, value: Any):
        self.value = value


def get_tokenizer(ctx: Any, folder: str, pad: str | None) -> Any:
    """The CLIP tokenizer in ``folder``, or carried by the single-file checkpoint
    ``folder`` names (its ``tokenizer`` metadata entry), shared through ``ctx.models``."""
    if Path(folder).is_file():
        path = Path(folder)
        box = ctx.models.get(
            ("tokenizer", ctx.files.identity(path), pad),
            lambda: _Box(tokenizer_from_file(path, pad)),
            nbytes=lambda t: 4 * 1024**2,
        )
        return box.value

    def load() -> _Box:
        from transformers import CLIPTokenizer

        kwargs = {"pad_token": pad} if pad else {}
        try:
            tok = CLIPTokenizer.from_pretrained(folder, local_files_only=True, **kwargs)
        except Exception as exc:
            raise NodeError(f"cannot read the tokenizer in {folder}: {exc}") from exc
        if not tok.model_max_length or tok.model_max_length > 1000:
            tok.model_max_length = 77
        return _Box(tok)

    box = ctx.models.get(("tokenizer", folder, pad), load, nbytes=lambda t: 4 * 1024**2)
    return box.value


def tokenizer_from_file(path: Path, pad: str | None = None) -> Any:
    """The tokenizer a single-file checkpoint carries in its metadata (or ``.json`` beside it)."""
    label = f"checkpoint {path.name!r}"
    side = _sidecar(WeightsFile(path, label)) or {}
    entry = side.get(TOKENIZER_KEY)
    if not isinstance(entry, dict):
        raise NodeError(f"{label}: the file carries no tokenizer ('{TOKENIZER_KEY}' metadata)")
    return tokenizer_from_entry(entry, pad, label)


def tokenizer_entry(tok: Any) -> dict[str, Any]:
    """A CLIPTokenizer as a ``tokenizer`` metadata entry (what :func:`tokenizer_from_entry`
    reads): its vocab and merges and special tokens."""
    model = json.loads(tok.backend_tokenizer.to_str())["model"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    return {
        "vocab": dict(sorted(model["vocab"].items(), key=lambda kv: kv[1])),
        "merges": merges,
        "bos_token": str(tok.bos_token),
        "eos_token": str(tok.eos_token),
        "pad_token": str(tok.pad_token),
        "unk_token": str(tok.unk_token),
        "model_max_length": int(tok.model_max_length),
    }


def tokenizer_from_entry(entry: dict[str, Any], pad: str | None, label: str) -> Any:
    """A CLIPTokenizer from a ``tokenizer`` metadata entry (vocab and merges)."""
    from transformers import CLIPTokenizer

    vocab, merges = entry.get("vocab"), entry.get("merges")
    if not isinstance(vocab, dict) or not isinstance(merges, list) or not vocab:
        raise NodeError(f"{label}: its tokenizer entry needs a 'vocab' object and a 'merges' list")
    try:
        pairs = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in merges]
        if any(len(p) != 2 for p in pairs):
            raise ValueError("each merge is two symbols")
        specials = {
            k: entry[k]
            for k in ("bos_token", "eos_token", "pad_token", "unk_token")
            if isinstance(entry.get(k), str)
        }
        if pad:
            specials["pad_token"] = pad
        tok = CLIPTokenizer(
            vocab=vocab,
            merges=pairs,
            model_max_length=int(entry.get("model_max_length") or 77),
            **specials,
        )
    except (TypeError, ValueError) as exc:
        raise NodeError(f"{label}: its tokenizer cannot be built ({exc})") from None
    return tok


def with_oom_advice(fn: Callable[[], Any], what: str) -> Any:
    """Run ``fn``; running out of GPU or CPU memory becomes a NodeError saying what to try."""
    try:
        return fn()
    except torch.OutOfMemoryError:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        raise NodeError(
            f"out of GPU memory while {what}: try a smaller size or batch, tiled VAE decode, "
            "or set the device to CPU in the settings"
        ) from None
    except (RuntimeError, MemoryError) as exc:
        from studio.engine.devices import is_cpu_out_of_memory

        if not is_cpu_out_of_memory(exc):
            raise
        raise NodeError(
            f"out of memory while {what}: try a smaller size or batch, tiled VAE decode, "
            "or close other programs to free memory"
        ) from None
