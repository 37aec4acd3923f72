"""ControlNet: Load ControlNet and Apply ControlNet; the sampler asks :func:`residuals`
at each step for the sum of the applied ControlNets' residuals.

Apply ControlNet adds a :class:`ControlEntry` to the positive and negative
conditioning (in ``Cond.extra["controls"]``); several applications stack. With the
same entry on both, a graph equals ``StableDiffusionControlNetPipeline`` number for
number (same control image preparation, conditioning scale and guidance window).
SD3 and Flux ControlNets (``SD3ControlNetModel``, ``FluxControlNetModel``) load here too;
their entries carry the VAE that encodes the control image, and ``nodes.dit`` runs them.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from studio.errors import NodeError
from studio.graph.spec import InputSpec, OutputSpec, node
from studio.graph.types import ValueType as T

CONTROLS = "controls"
SD3_CLASS = "SD3ControlNetModel"
FLUX_CLASS = "FluxControlNetModel"
_DIT_FAMILIES = {SD3_CLASS: "sd3", FLUX_CLASS: "flux"}
_FAMILY_WIDTH = {768: "SD 1.x", 1024: "SD 2.x", 2048: "SDXL"}

#: Set Union ControlNet Type's choices: ComfyUI's (comfy/cldm/control_types.py, in its
#: order), then the modes only Flux union ControlNets have.
UNION_TYPES = (
    "auto",
    "openpose",
    "depth",
    "hed/pidi/scribble/ted",
    "canny/lineart/anime_lineart/mlsd",
    "normal",
    "segment",
    "tile",
    "repaint",
    "blur",
    "gray",
    "low quality",
)
#: The control mode (the ``control_mode`` FluxControlNetPipeline takes) of each type for the
#: Flux union ControlNets in the diffusers layout, from InstantX's and Shakker-Labs' model
#: cards (InstantX/FLUX.1-dev-Controlnet-Union, Shakker-Labs/FLUX.1-dev-ControlNet-Union-Pro):
#: canny 0, tile 1, depth 2, blur 3, pose 4, gray 5, low quality 6. ComfyUI's numbers are
#: xinsir's SDXL union's; types with no Flux mode are an error on the sampler.
FLUX_UNION_MODES = {
    "canny/lineart/anime_lineart/mlsd": 0,
    "tile": 1,
    "depth": 2,
    "blur": 3,
    "openpose": 4,
    "gray": 5,
    "low quality": 6,
}


@dataclass(frozen=True)
class ControlNetHandle:
    """CONTROL_NET: a ControlNet file; the model manager holds the weights."""

    name: str
    path: str
    identity: tuple[Any, ...]
    config: dict[str, Any]
    single_file: bool
    #: Set Union ControlNet Type's choice (None: auto).
    union_type: str | None = None

    @property
    def union(self) -> bool:
        """A union ControlNet (one model, several control modes chosen per image)."""
        return self.config.get("num_mode") is not None

    def control_mode(self, where: str) -> int:
        """The Flux union control mode of the type set on it; a clear error when none is set
        or the type has no mode in the model. ``where``: the node asking, for the message."""
        if self.union_type is None:
            raise NodeError(
                f"{where}: ControlNet {self.name!r} is a union ControlNet "
                f"({self.config['num_mode']} control modes): set its control type with a Set "
                "Union ControlNet Type node between Load ControlNet and Apply ControlNet"
            )
        mode = FLUX_UNION_MODES.get(self.union_type)
        if mode is None or mode >= int(self.config["num_mode"]):
            known = ", ".join(
                t for t, m in FLUX_UNION_MODES.items() if m < int(self.config["num_mode"])
            )
            raise NodeError(
                f"{where}: the union ControlNet {self.name!r} has no control mode for type "
                f"{self.union_type!r}; its modes are: {known}"
            )
        return mode

    @property
    def cross_attention_dim(self) -> int | None:
        dim = self.config.get("cross_attention_dim")
        return int(dim) if isinstance(dim, int) else None

    @property
    def family(self) -> str | None:
        """``sd3`` / ``flux`` for an SD3 / Flux ControlNet (a transformer); None for a UNet
        ControlNet."""
        return _DIT_FAMILIES.get(self.config.get("_class_name"))

    def family_title(self) -> str:
        """Which models it is for, in words."""
        if self.family == "sd3":
            return "Stable Diffusion 3.x"
        if self.family == "flux":
            return "Flux.1"
        width = self.cross_attention_dim
        family = _FAMILY_WIDTH.get(width) if width else None
        return f"a {family} UNet" if family else "a Stable Diffusion UNet"

    def __hash__(self) -> int:
        return hash((self.path, self.identity, self.union_type))

    def __studio_nbytes__(self) -> int:
        return 512


@dataclass(frozen=True)
class ControlEntry:
    """One application of a ControlNet: the control image and its strength window."""

    net: ControlNetHandle
    image: Any  # IMAGE tensor [B, H, W, C] in 0..1
    strength: float
    start: float
    end: float
    vae: Any = None  # SD3 ControlNets take the control image as a latent of this VAE

    def __studio_nbytes__(self) -> int:
        return int(self.image.element_size() * self.image.nelement()) + 256


# -- loading --------------------------------------------------------------------------------


def _single_file_config(path: Path) -> dict[str, Any]:
    """The diffusers config of a single-file ControlNet: a sidecar ``<stem>.json`` if there is
    one, else derived from the UNet config of the family its keys show."""
    sidecar = path.with_suffix(".json")
    if sidecar.is_file():
        try:
            return json.loads(sidecar.read_text("utf-8"))
        except ValueError as exc:
            raise NodeError(f"{sidecar.name}: not valid JSON ({exc})") from None
    from safetensors import safe_open

    if path.suffix.lower() not in (".safetensors", ".sft"):
        raise NodeError(f"{path.name}: single-file ControlNets must be .safetensors")
    from nodes.sdload import read_safetensors_header

    read_safetensors_header(path, path.name)  # a damaged file: a clear message
    try:
        with safe_open(str(path), "pt") as f:
            keys = list(f.keys())
            probe = next((k for k in keys if k.endswith("attn2.to_k.weight")), None)
            width = f.get_slice(probe).get_shape()[-1] if probe else None
    except Exception as exc:
        raise NodeError(f"{path.name}: cannot read the file ({exc})") from None
    if not any(k.startswith(("control_model.", "controlnet_")) or "zero_convs" in k for k in keys):
        raise NodeError(f"{path.name}: not a ControlNet (no ControlNet layers inside)")
    if "pos_embed_input.proj.weight" in keys:
        if SD35_OFFICIAL_KEY in keys:
            return _sd35_official_config(path, keys)
        return _sd3_config(path, keys)
    if any(k.startswith("double_blocks.") for k in keys):
        raise NodeError(
            f"{path.name}: a Flux ControlNet in XLabs' own layout (double_blocks.*); Studio "
            "reads Flux ControlNets in the diffusers layout (FluxControlNetModel: InstantX's, "
            "Shakker-Labs') only, for now"
        )
    if any(k.startswith(("controlnet_x_embedder", "controlnet_single_blocks")) for k in keys):
        return _flux_config(path, keys)
    family = {768: "sd1", 1024: "sd2", 2048: "sdxl"}.get(int(width or 0))
    if family is None:
        raise NodeError(
            f"{path.name}: cannot tell which model family this ControlNet is for; put its "
            f"diffusers config next to it as {path.stem}.json"
        )
    from nodes.sdload import family_configs

    return controlnet_config_from_unet(family_configs(family)["unet"])


def controlnet_config_from_unet(unet: dict[str, Any]) -> dict[str, Any]:
    """A ControlNet config mirroring a UNet config's encoder (as ControlNetModel.from_unet)."""
    keep = (
        "in_channels",
        "flip_sin_to_cos",
        "freq_shift",
        "down_block_types",
        "only_cross_attention",
        "block_out_channels",
        "layers_per_block",
        "downsample_padding",
        "mid_block_scale_factor",
        "act_fn",
        "norm_num_groups",
        "norm_eps",
        "cross_attention_dim",
        "transformer_layers_per_block",
        "encoder_hid_dim",
        "encoder_hid_dim_type",
        "attention_head_dim",
        "num_attention_heads",
        "use_linear_projection",
        "class_embed_type",
        "addition_embed_type",
        "addition_time_embed_dim",
        "num_class_embeds",
        "upcast_attention",
        "resnet_time_scale_shift",
        "projection_class_embeddings_input_dim",
    )
    cfg = {k: unet[k] for k in keep if k in unet}
    cfg["_class_name"] = "ControlNetModel"
    cfg["conditioning_embedding_out_channels"] = [16, 32, 96, 256]
    return cfg


@node(
    "load_controlnet",
    title="Load ControlNet",
    category="loaders",
    description=(
        "Loads a ControlNet (a diffusers folder or a single .safetensors file; SD1, SDXL, "
        "SD3 and Flux in the diffusers layout, and Stability's own SD3.5 ControlNets)."
    ),
    inputs=[
        InputSpec(
            "control_net_name",
            T.CHOICE,
            file_kind="controlnet",
            tooltip="A file or folder from the controlnet folder.",
        )
    ],
    outputs=[OutputSpec("control_net", T.CONTROL_NET)],
)
def load_controlnet(ctx, control_net_name: str) -> ControlNetHandle:
    path = ctx.model_files.resolve("controlnet", control_net_name)
    if path.is_dir():
        cfg_path = path / "config.json"
        if not cfg_path.is_file():
            raise NodeError(f"{control_net_name}: the folder has no config.json")
        try:
            config = json.loads(cfg_path.read_text("utf-8"))
        except ValueError as exc:
            raise NodeError(f"{cfg_path}: not valid JSON ({exc})") from None
        kind = config.get("_class_name")
        if kind == "FluxMultiControlNetModel":
            raise NodeError(
                f"{control_net_name}: a FluxMultiControlNetModel folder; load each ControlNet "
                "on its own and chain Apply ControlNet nodes to stack them"
            )
        if kind not in (None, "ControlNetModel", SD3_CLASS, FLUX_CLASS):
            raise NodeError(f"{control_net_name}: not a ControlNet ({kind})")
        handle = ControlNetHandle(
            control_net_name, str(path), ctx.files.identity(path), config, False
        )
    else:
        config = _single_file_config(path)
        handle = ControlNetHandle(
            control_net_name, str(path), ctx.files.identity(path), config, True
        )
    get_module(ctx, handle)  # load now: a broken file fails here, on the loader node
    return handle


def get_module(ctx: Any, handle: ControlNetHandle) -> Any:
    dtype, device = ctx.dtype, ctx.device
    key = (handle.identity, "controlnet", str(dtype), device)

    def load() -> Any:
        from nodes.fastimport import diffusers_class

        ControlNetModel = diffusers_class(handle.config.get("_class_name") or "ControlNetModel")

        try:
            if handle.family is not None and handle.single_file:
                model = _load_dit_single_file(handle, dtype)
            elif not handle.single_file:
                model = ControlNetModel.from_pretrained(
                    handle.path, torch_dtype=dtype, local_files_only=True
                )
            else:
                model = _load_single_file(handle, dtype)
        except NodeError:
            raise
        except Exception as exc:
            raise NodeError(f"{handle.name}: cannot load the ControlNet ({exc})") from None
        return model.eval()

    ctx.models.get(key, load)
    return ctx.models.use(key, device)


def _load_single_file(handle: ControlNetHandle, dtype: Any) -> Any:
    import tempfile

    from nodes.fastimport import diffusers_class

    ControlNetModel = diffusers_class("ControlNetModel")

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "config.json").write_text(json.dumps(handle.config))
        return ControlNetModel.from_single_file(
            handle.path, config=tmp, torch_dtype=dtype, local_files_only=True
        )


#: A tensor only Stability's own SD3.5 ControlNet layout has (fused q, k, v).
SD35_OFFICIAL_KEY = "transformer_blocks.0.attn.qkv.weight"
#: Every released SD3 / SD3.5 model has 64-wide attention heads; the official ControlNets
#: have no per-head norm to read the width from.
SD3_HEAD_DIM = 64


def _sd35_official_config(path: Path, keys: list[str]) -> dict[str, Any]:
    """SD3ControlNetModel's config for Stability's own SD3.5 ControlNets (canny, depth, blur
    for SD3.5 Large), as diffusers' conversion script builds it: plain transformer blocks
    without a prompt stream (no context embedder), the model's own patch embedding in
    place of one of its own, and the real pooled prompt (not zeros)."""
    from safetensors import safe_open

    if any(".attn.ln_q." in k or ".attn2." in k or k.startswith("context_embedder") for k in keys):
        raise NodeError(
            f"{path.name}: an SD3.5 ControlNet in Stability's layout with layers Studio does "
            "not know (per-head norms, a second attention or a prompt embedder)"
        )
    with safe_open(str(path), "pt") as f:

        def shape(key: str) -> tuple[int, ...]:
            if key not in keys:
                raise NodeError(f"{path.name}: the SD3.5 ControlNet lacks {key!r} (damaged?)")
            return tuple(f.get_slice(key).get_shape())

        hidden, cond_ch, patch, _ = shape("pos_embed_input.proj.weight")
        pooled = shape("time_text_embed.text_embedder.linear_1.weight")
    if hidden % SD3_HEAD_DIM:
        raise NodeError(
            f"{path.name}: an SD3.5 ControlNet {hidden} wide, not a whole number of "
            f"{SD3_HEAD_DIM}-wide attention heads"
        )
    return {
        "_class_name": SD3_CLASS,
        "patch_size": patch,
        "in_channels": cond_ch,
        "num_layers": _count_blocks(keys, "transformer_blocks."),
        "attention_head_dim": SD3_HEAD_DIM,
        "num_attention_heads": hidden // SD3_HEAD_DIM,
        "joint_attention_dim": None,
        "caption_projection_dim": hidden,
        "pooled_projection_dim": pooled[1],
        "out_channels": cond_ch,
        "pos_embed_max_size": None,
        "pos_embed_type": None,
        "use_pos_embed": False,
        "force_zeros_for_pooled_projection": False,
    }


def _count_blocks(keys: list[str], prefix: str) -> int:
    found = {int(k.split(".")[1]) for k in keys if k.startswith(prefix)}
    return max(found) + 1 if found else 0


def sd35_official_to_diffusers(state: dict[str, Any]) -> dict[str, Any]:
    """Stability's SD3.5 ControlNet tensors under SD3ControlNetModel's names (the mapping of
    diffusers' scripts/convert_sd3_controlnet_to_diffusers.py): each block's fused q, k, v
    split in three, its out projection, MLP and modulation renamed; the rest as it is."""
    renames = {
        "attn.proj.": "attn.to_out.0.",
        "mlp.fc1.": "ff.net.0.proj.",
        "mlp.fc2.": "ff.net.2.",
        "adaLN_modulation.1.": "norm1.linear.",
    }
    out: dict[str, Any] = {}
    for key, value in state.items():
        if not key.startswith("transformer_blocks."):
            out[key] = value
            continue
        block, rest = key.split(".", 2)[1:]
        head = f"transformer_blocks.{block}."
        if rest.startswith("attn.qkv."):
            kind = rest.rsplit(".", 1)[1]
            for name, part in zip(("to_q", "to_k", "to_v"), value.chunk(3, dim=0), strict=True):
                out[f"{head}attn.{name}.{kind}"] = part
            continue
        for old, new in renames.items():
            if rest.startswith(old):
                rest = new + rest[len(old) :]
                break
        out[head + rest] = value
    return out


def _sd3_config(path: Path, keys: list[str]) -> dict[str, Any]:
    """SD3ControlNetModel's config read off a diffusers-layout file's tensor shapes."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:

        def shape(key: str) -> tuple[int, ...] | None:
            return tuple(f.get_slice(key).get_shape()) if key in keys else None

        hidden, cond_ch, patch, _ = shape("pos_embed_input.proj.weight")
        head = (shape("transformer_blocks.0.attn.norm_q.weight") or (64,))[0]
        in_ch = (shape("pos_embed.proj.weight") or (0, cond_ch))[1]
        pos = shape("pos_embed.pos_embed")
        context = shape("context_embedder.weight")
        pooled = shape("time_text_embed.text_embedder.linear_1.weight")
    layers = {int(k.split(".")[1]) for k in keys if k.startswith("transformer_blocks.")}
    n = max(layers) + 1 if layers else 0
    return {
        "_class_name": SD3_CLASS,
        "sample_size": 128,
        "patch_size": patch,
        "in_channels": in_ch,
        "num_layers": n,
        "attention_head_dim": head,
        "num_attention_heads": hidden // head,
        "joint_attention_dim": context[1] if context else None,
        "caption_projection_dim": hidden,
        "pooled_projection_dim": pooled[1] if pooled else 2048,
        "out_channels": in_ch,
        "pos_embed_max_size": round(math.sqrt(pos[1])) if pos else 96,
        "extra_conditioning_channels": cond_ch - in_ch,
        "dual_attention_layers": sorted(
            i for i in range(n) if f"transformer_blocks.{i}.attn2.to_q.weight" in keys
        ),
        "qk_norm": "rms_norm" if "transformer_blocks.0.attn.norm_q.weight" in keys else None,
        "use_pos_embed": "pos_embed.proj.weight" in keys,
        "force_zeros_for_pooled_projection": True,
    }


def _flux_config(path: Path, keys: list[str]) -> dict[str, Any]:
    """FluxControlNetModel's config read off a diffusers-layout file's tensor shapes."""
    from safetensors import safe_open

    from nodes.dit import flux_rope_axes

    with safe_open(str(path), "pt") as f:

        def shape(key: str) -> tuple[int, ...] | None:
            return tuple(f.get_slice(key).get_shape()) if key in keys else None

        embed = shape("x_embedder.weight")
        if embed is None:
            raise NodeError(f"{path.name}: a Flux ControlNet without x_embedder.weight (damaged?)")
        hidden, in_ch = embed
        head = (
            shape("transformer_blocks.0.attn.norm_q.weight")
            or shape("single_transformer_blocks.0.attn.norm_q.weight")
            or (128,)
        )[0]
        context = shape("context_embedder.weight")
        pooled = shape("time_text_embed.text_embedder.linear_1.weight")
        mode = shape("controlnet_mode_embedder.weight")
        hint = shape("input_hint_block.conv_out.weight")

    def count(prefix: str) -> int:
        found = {int(k.split(".")[1]) for k in keys if k.startswith(prefix)}
        return max(found) + 1 if found else 0

    config = {
        "_class_name": FLUX_CLASS,
        # with its own image encoder (XLabs' kind): its 16 channels x 2 x 2 patches are a
        # latent token's 64 features
        "patch_size": round(math.sqrt(in_ch // hint[0])) if hint else 1,
        "in_channels": in_ch,
        "num_layers": count("transformer_blocks."),
        "num_single_layers": count("single_transformer_blocks."),
        "attention_head_dim": head,
        "num_attention_heads": hidden // head,
        "joint_attention_dim": context[1] if context else 4096,
        "pooled_projection_dim": pooled[1] if pooled else 768,
        "guidance_embeds": "time_text_embed.guidance_embedder.linear_1.weight" in keys,
        "axes_dims_rope": flux_rope_axes(head),
        "num_mode": mode[0] if mode else None,
        "conditioning_embedding_channels": hint[0] if hint else None,
    }
    return config


def _load_dit_single_file(handle: ControlNetHandle, dtype: Any) -> Any:
    from accelerate import init_empty_weights
    from safetensors.torch import load_file

    from nodes.fastimport import diffusers_class
    from nodes.sdload import _assign

    cls = diffusers_class(handle.config["_class_name"])
    with init_empty_weights():
        model = cls.from_config({k: v for k, v in handle.config.items() if k != "_class_name"})
    state = {k: v.to(dtype) for k, v in load_file(handle.path).items()}
    if SD35_OFFICIAL_KEY in state:
        state = sd35_official_to_diffusers(state)
    _assign(model, state, f"ControlNet {handle.name!r}")
    return model


@node(
    "set_union_controlnet_type",
    title="Set Union ControlNet Type",
    category="conditioning",
    description=(
        "Chooses what kind of control image a union ControlNet (one model for several kinds, "
        "such as InstantX's and Shakker-Labs' Flux Union) is given: edges, depth, pose, ..."
    ),
    inputs=[
        InputSpec("control_net", T.CONTROL_NET),
        InputSpec(
            "type",
            T.CHOICE,
            default="auto",
            choices=UNION_TYPES,
            tooltip=(
                "The kind of control image. A Flux union ControlNet needs one set (auto is an "
                "error there); blur, gray and low quality are Flux union modes only."
            ),
        ),
    ],
    outputs=[OutputSpec("control_net", T.CONTROL_NET)],
)
def set_union_controlnet_type(ctx, control_net: ControlNetHandle, type: str) -> ControlNetHandle:
    chosen = None if type == "auto" else type
    if chosen is not None and not control_net.union:
        raise NodeError(
            f"ControlNet {control_net.name!r} is not a union ControlNet (it has one control "
            "kind): set the type to auto or remove this node"
        )
    handle = replace(control_net, union_type=chosen)
    if chosen is not None:
        handle.control_mode("Set Union ControlNet Type")  # a type the model lacks: here
    return handle


# -- applying -------------------------------------------------------------------------------


@node(
    "apply_controlnet",
    title="Apply ControlNet",
    category="conditioning",
    description=(
        "Guides sampling with a ControlNet and a control image (edges, depth, pose, ...), with a "
        "strength and the part of the steps it acts in. Chain several to stack ControlNets."
    ),
    inputs=[
        InputSpec("positive", T.CONDITIONING),
        InputSpec("negative", T.CONDITIONING),
        InputSpec("control_net", T.CONTROL_NET),
        InputSpec("image", T.IMAGE, tooltip="The control image, e.g. from a preprocessor."),
        InputSpec(
            "strength",
            T.FLOAT,
            default=1.0,
            min=0.0,
            max=10.0,
            step=0.01,
            tooltip="How strongly the ControlNet steers (its conditioning scale).",
        ),
        InputSpec(
            "start_percent",
            T.FLOAT,
            default=0.0,
            min=0.0,
            max=1.0,
            step=0.01,
            tooltip="Fraction of the steps after which it starts acting.",
        ),
        InputSpec(
            "end_percent",
            T.FLOAT,
            default=1.0,
            min=0.0,
            max=1.0,
            step=0.01,
            tooltip="Fraction of the steps after which it stops acting.",
        ),
        InputSpec(
            "vae",
            T.VAE,
            optional=True,
            tooltip=(
                "The model's VAE: SD3 and Flux ControlNets need it (they see the control image "
                "as a latent); UNet ControlNets do not."
            ),
        ),
    ],
    outputs=[OutputSpec("positive", T.CONDITIONING), OutputSpec("negative", T.CONDITIONING)],
)
def apply_controlnet(
    ctx,
    positive,
    negative,
    control_net: ControlNetHandle,
    image,
    strength: float,
    start_percent: float,
    end_percent: float,
    vae: Any = None,
):
    if end_percent < start_percent:
        raise NodeError(f"end_percent ({end_percent}) is before start_percent ({start_percent})")
    if vae is None and needs_vae(control_net):
        raise NodeError(
            f"ControlNet {control_net.name!r} is a {control_net.family_title()} ControlNet: it "
            "sees the control image as a latent, so connect the model's VAE to the vae input"
        )
    if control_net.union:
        control_net.control_mode("Apply ControlNet")  # no type set: a clear error here
    entry = ControlEntry(
        control_net, image, float(strength), float(start_percent), float(end_percent), vae
    )
    return add_control(positive, entry), add_control(negative, entry)


def needs_vae(net: ControlNetHandle) -> bool:
    """Whether the ControlNet takes the control image as a VAE latent: SD3 ControlNets and
    Flux ControlNets without their own image encoder (InstantX's; XLabs' have one)."""
    if net.family == "sd3":
        return True
    return net.family == "flux" and not net.config.get("conditioning_embedding_channels")


def add_control(conditioning: list[Any], entry: ControlEntry) -> list[Any]:
    out = []
    for cond in conditioning:
        extra = dict(cond.extra)
        extra[CONTROLS] = (*extra.get(CONTROLS, ()), entry)
        out.append(replace(cond, extra=extra))
    return out


def controls_of(cond: Any) -> tuple[ControlEntry, ...]:
    return tuple(cond.extra.get(CONTROLS, ()))


class ControlPlan:
    """The ControlNets a sampler run uses, prepared once before the first step."""

    def __init__(
        self,
        ctx: Any,
        unet: Any,
        pos: Any,
        neg: Any,
        *,
        do_cfg: bool,
        batch: int,
        latent_size: tuple[int, int],
        dtype: Any,
        device: Any,
        fit_aspect: bool = False,
    ):
        """``latent_size``: the part of the latent the prompt is predicted on (an area
        prompt's rectangle); ``fit_aspect``: first cut the control image to that part's
        aspect around its centre, as ComfyUI fits a control image to an area."""
        import torch

        pos_entries, neg_entries = controls_of(pos), controls_of(neg)
        if pos_entries and not neg_entries:
            # A negative prompt without ControlNets takes the positive's (ComfyUI's
            # apply_empty_x_to_equal_area), so Apply ControlNet (One Prompt) on the
            # positive acts as ComfyUI's old ControlNetApply does.
            neg_entries = pos_entries
        ordered: list[ControlEntry] = []
        for e in (*neg_entries, *pos_entries):
            if not any(e is o for o in ordered):
                ordered.append(e)
        self.items: list[tuple[ControlEntry, Any, Any, Any]] = []
        unet_width = unet.config.cross_attention_dim
        for e in ordered:
            if e.net.family is not None:
                ours = _FAMILY_WIDTH.get(unet.config.cross_attention_dim, "Stable Diffusion")
                raise NodeError(
                    f"Apply ControlNet: ControlNet {e.net.name!r} is for "
                    f"{e.net.family_title()}, but the model is {ours} (a UNet): choose a "
                    "ControlNet made for this model's family"
                )
            cn_width = e.net.cross_attention_dim
            if cn_width is not None and unet_width is not None and cn_width != unet_width:
                theirs = _FAMILY_WIDTH.get(cn_width, f"a model with {cn_width}-wide text")
                ours = _FAMILY_WIDTH.get(unet_width, f"a model with {unet_width}-wide text")
                raise NodeError(
                    f"ControlNet {e.net.name!r} is for {theirs}, but the model is {ours}: "
                    "choose a ControlNet made for this model's family"
                )
            module = get_module(ctx, e.net)
            # The control image is the latent size times the ControlNet's own downsampling.
            factor = 2 ** (
                len(e.net.config.get("conditioning_embedding_out_channels", (0,) * 4)) - 1
            )
            height, width = latent_size[0] * factor, latent_size[1] * factor
            picture = center_crop(e.image, width / height) if fit_aspect else e.image
            image = prepare_image(picture, width, height, batch, dtype, device)
            if do_cfg:
                image = torch.cat([image] * 2)
                on_neg = any(e is n for n in neg_entries)
                on_pos = any(e is p for p in pos_entries)
                half = torch.tensor([float(on_neg)] * batch + [float(on_pos)] * batch)
                gate = None if on_neg and on_pos else half.to(device=device, dtype=dtype)
            else:
                gate = None
            self.items.append((e, module, image, gate))

    def __bool__(self) -> bool:
        return bool(self.items)

    def residuals(
        self, x: Any, t: Any, embeds: Any, step: int, total: int, added: Any
    ) -> tuple[Any, Any]:
        """Summed (down residuals, mid residual) for this step, or (None, None)."""
        down_sum, mid_sum = None, None
        for e, module, image, gate in self.items:
            # diffusers' guidance window: active while start <= i/n and (i+1)/n <= end.
            keep = 1.0 - float(step / total < e.start or (step + 1) / total > e.end)
            scale = e.strength * keep
            kwargs = {}
            if added is not None:
                kwargs["added_cond_kwargs"] = added
            down, mid = module(
                x,
                t,
                encoder_hidden_states=embeds,
                controlnet_cond=image,
                conditioning_scale=scale,
                guess_mode=False,
                return_dict=False,
                **kwargs,
            )
            if gate is not None:
                down = [d * gate.view(-1, 1, 1, 1) for d in down]
                mid = mid * gate.view(-1, 1, 1, 1)
            if down_sum is None:
                down_sum, mid_sum = list(down), mid
            else:
                down_sum = [a + b for a, b in zip(down_sum, down, strict=True)]
                mid_sum = mid_sum + mid
        return down_sum, mid_sum


def center_crop(image: Any, aspect: float) -> Any:
    """An IMAGE ``[b, h, w, c]`` cut around its centre to ``aspect`` (width / height), as
    ComfyUI's common_upscale with crop "center" cuts before it resizes: the longer side loses
    ``round((side - side * ratio) / 2)`` pixels at each end."""
    h, w = image.shape[1], image.shape[2]
    own = w / h
    if own > aspect:
        x = round((w - w * (aspect / own)) / 2)
        return image[:, :, x : w - x]
    if own < aspect:
        y = round((h - h * (own / aspect)) / 2)
        return image[:, y : h - y]
    return image


def prepare_image(image: Any, width: int, height: int, batch: int, dtype: Any, device: Any) -> Any:
    """The control image as StableDiffusionControlNetPipeline prepares it: resized to the
    output size, in 0..1, repeated to the batch."""
    import numpy as np
    import torch
    from diffusers.image_processor import VaeImageProcessor

    processor = VaeImageProcessor(vae_scale_factor=8, do_convert_rgb=True, do_normalize=False)
    frames = [
        _to_pil((frame.clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)) for frame in image
    ]
    tensor = processor.preprocess(frames, height=height, width=width).to(dtype=torch.float32)
    if tensor.shape[0] == 1:
        tensor = tensor.repeat_interleave(batch, dim=0)
    elif tensor.shape[0] != batch:
        raise NodeError(
            f"the control image batch ({tensor.shape[0]}) differs from the latent batch ({batch})"
        )
    return tensor.to(device=device, dtype=dtype)


def _to_pil(arr: Any) -> Any:
    from PIL import Image

    return Image.fromarray(arr[..., :3])
