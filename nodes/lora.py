"""LoRA: Load LoRA, and activating a model handle's LoRAs on a shared module (peft).

A LoRA never copies weights. Load LoRA returns MODEL and CLIP handles with one more
``(LoraPatch, strength)`` entry; the modules in the model manager get each LoRA once
as a peft adapter, and right before a module computes, :func:`activate` turns on
exactly the adapters of the handle at hand with their strengths (and turns every
other one off). Two branches with different LoRAs on one checkpoint therefore each
get exactly their own, in any order, and changing a strength never reloads anything.

Files in the kohya/A1111 layout and in the diffusers/peft layout are read with
diffusers' own LoRA loaders (the same code ``pipeline.load_lora_weights`` runs), so
a graph with a LoRA equals the pipeline with it.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from typing import Any

from studio.errors import NodeError
from studio.graph.spec import InputSpec, OutputSpec, node
from studio.graph.types import ValueType as T

#: Module attribute remembering which adapters were injected into a loaded module.
_INJECTED = "_studio_lora_adapters"


@dataclass(frozen=True)
class LoraPatch:
    """One LoRA file, known by its identity (path, size, mtime)."""

    name: str
    path: str
    identity: tuple[Any, ...]

    @property
    def adapter(self) -> str:
        """A peft adapter name that is stable for this file version."""
        return "lora_" + hashlib.sha1(repr(self.identity).encode()).hexdigest()[:16]


@dataclass
class _LoraState:
    """A LoRA file read into diffusers' layout (kept by the model manager)."""

    state_dict: dict[str, Any]
    network_alphas: dict[str, float] | None
    metadata: Any
    cross_attention_dim: int | None


def _lora_loader(family: str) -> Any:
    """diffusers' LoRA loader of ``family``'s pipeline (its ``lora_state_dict`` reads the
    kohya, diffusers and other layouts), without importing the pipeline itself."""
    from nodes.fastimport import install

    install()
    from diffusers.loaders import lora_pipeline

    return getattr(
        lora_pipeline,
        {
            "flux": "FluxLoraLoaderMixin",
            "sd3": "SD3LoraLoaderMixin",
            "sdxl": "StableDiffusionXLLoraLoaderMixin",
        }.get(family, "StableDiffusionLoraLoaderMixin"),
    )


def read_lora(ctx: Any, patch: LoraPatch, family: str) -> _LoraState:
    """The LoRA in diffusers' layout, read once per file version and family."""
    key = ("lora", patch.identity, family if family in ("sdxl", "sd3", "flux") else "sd")
    return ctx.models.get(
        key, lambda: _read_state(patch, family), nbytes=lambda s: _tensor_bytes(s.state_dict)
    )


def _read_state(patch: LoraPatch, family: str) -> _LoraState:
    """The LoRA file read into diffusers' layout for ``family`` (uncached)."""
    pipe_cls = _lora_loader(family)
    raw = _read_file(patch)
    if family == "sd3" and any(k.startswith(_KOHYA_PREFIXES) for k in raw):
        raw = kohya_sd3_to_diffusers(raw, patch.name)
    if family == "flux" and _is_flux_control_lora(raw):
        raise NodeError(
            f"{patch.name}: a FLUX.1 Canny / Depth LoRA (it widens the transformer's input "
            "to take a control image), which Studio does not run: load the full "
            "flux1-canny-dev / flux1-depth-dev model with Load Diffusion Model and give "
            "the prompts InstructPixToPix Conditioning"
        )
    if family in _DIT_PARTS and raw and all(k.startswith(_DIT_MODULES) for k in raw):
        # the diffusers layout without its "transformer." prefix (some trainers write
        # that): the pipeline's loader would skip every layer
        raw = {f"transformer.{k}": v for k, v in raw.items()}
    try:
        got = pipe_cls.lora_state_dict(raw, return_lora_metadata=True)
        if len(got) == 2:  # SD3's: no network alphas
            (state, metadata), alphas = got, None
        else:
            state, alphas, metadata = got
    except Exception as exc:
        if family in _DIT_TITLES:
            why = str(exc).strip()
            why = why if len(why) < 300 else why[:300] + "..."
            raise NodeError(
                f"{patch.name}: not a {_DIT_TITLES[family]} LoRA Studio can read ({why}); "
                "is it made for another model family?"
            ) from None
        raise NodeError(f"{patch.name}: not a LoRA Studio can read ({exc})") from None
    if not state or not all("lora" in k for k in state):
        raise NodeError(f"{patch.name}: not a LoRA file (no LoRA layers inside)")
    if family in _DIT_PARTS and not any(k.startswith(_DIT_PARTS[family]) for k in state):
        raise NodeError(
            f"{patch.name}: none of its layers ({next(iter(state))}, ...) belongs to a "
            f"{_DIT_TITLES[family]} model; is it made for another model family or in a "
            "layout Studio does not read?"
        )
    return _LoraState(dict(state), alphas, metadata, _cross_attention_dim(state))


#: The packed input width of FLUX.1 Canny / Depth (latent + control image's latent); a
#: Flux LoRA whose input layer reads this many channels is BFL's Canny / Depth LoRA.
_FLUX_CONTROL_INPUT = 128
_FLUX_INPUT_LAYERS = ("x_embedder", "img_in")


def _is_flux_control_lora(raw: dict[str, Any]) -> bool:
    """Whether a Flux LoRA's input layer reads the latent and a control image."""
    for key, tensor in raw.items():
        down = ".lora_A." in key or ".lora_down." in key
        if not down or not any(n in key for n in _FLUX_INPUT_LAYERS):
            continue
        if hasattr(tensor, "shape") and int(tensor.shape[-1]) == _FLUX_CONTROL_INPUT:
            return True
    return False


#: Where a DiT LoRA's layers go, once in diffusers' layout: without any, it would do nothing.
_DIT_PARTS = {
    "sd3": ("transformer.", "text_encoder.", "text_encoder_2."),
    "flux": ("transformer.", "text_encoder."),
}
_DIT_TITLES = {"sd3": "Stable Diffusion 3.x", "flux": "Flux.1"}
#: The top-level modules of SD3Transformer2DModel / FluxTransformer2DModel.
_DIT_MODULES = (
    "transformer_blocks.", "single_transformer_blocks.", "proj_out.", "norm_out.",
    "x_embedder.", "context_embedder.", "time_text_embed.", "pos_embed.",
)  # fmt: skip
_KOHYA_PREFIXES = ("lora_unet_", "lora_te1_", "lora_te2_", "lora_te3_")

#: kohya sd-scripts' SD3 module names -> SD3Transformer2DModel's (a list: a fused qkv).
_SD3_BLOCK = {
    "x_block_attn_qkv": ["attn.to_q", "attn.to_k", "attn.to_v"],
    "x_block_attn_proj": ["attn.to_out.0"],
    "x_block_attn2_qkv": ["attn2.to_q", "attn2.to_k", "attn2.to_v"],
    "x_block_attn2_proj": ["attn2.to_out.0"],
    "x_block_mlp_fc1": ["ff.net.0.proj"],
    "x_block_mlp_fc2": ["ff.net.2"],
    "x_block_adaLN_modulation_1": ["norm1.linear"],
    "context_block_attn_qkv": ["attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"],
    "context_block_attn_proj": ["attn.to_add_out"],
    "context_block_mlp_fc1": ["ff_context.net.0.proj"],
    "context_block_mlp_fc2": ["ff_context.net.2"],
    "context_block_adaLN_modulation_1": ["norm1_context.linear"],
}
_SD3_TOP = {
    "final_layer_linear": "proj_out",
    "final_layer_adaLN_modulation_1": "norm_out.linear",
    "context_embedder": "context_embedder",
    "t_embedder_mlp_0": "time_text_embed.timestep_embedder.linear_1",
    "t_embedder_mlp_2": "time_text_embed.timestep_embedder.linear_2",
    "y_embedder_mlp_0": "time_text_embed.text_embedder.linear_1",
    "y_embedder_mlp_2": "time_text_embed.text_embedder.linear_2",
}


def kohya_sd3_to_diffusers(raw: dict[str, Any], name: str) -> dict[str, Any]:
    """An SD3 LoRA in kohya sd-scripts' layout (``lora_unet_joint_blocks_0_x_block_attn_qkv
    .lora_down.weight``, ``lora_te1_*`` / ``lora_te2_*`` for the CLIPs) in diffusers' peft
    layout, each layer's alpha/rank folded into its down weight. A fused qkv gives its down
    weight to q, k and v and splits its up weight in three; the adaLN modulations that
    diffusers stores as (scale, shift) (the last block's context and the final layer) get
    their up weight's halves swapped, as diffusers' SD3 checkpoint converter does."""
    import re

    import torch

    out: dict[str, Any] = {}
    modules = sorted({k.split(".")[0] for k in raw})
    unknown = []
    for module in modules:
        down = raw.get(f"{module}.lora_down.weight")
        up = raw.get(f"{module}.lora_up.weight")
        if down is None or up is None:
            unknown.append(module)
            continue
        if down.ndim != 2:
            unknown.append(module)
            continue
        rank = down.shape[0]
        alpha = raw.get(f"{module}.alpha")
        scale = float(alpha) / rank if alpha is not None else 1.0
        down = down.float() * scale
        up = up.float()
        targets: list[str] | None = None
        swap = False
        if module.startswith("lora_unet_"):
            rest = module[len("lora_unet_") :]
            m = re.fullmatch(r"joint_blocks_(\d+)_(\w+)", rest)
            if m and m.group(2) in _SD3_BLOCK:
                targets = [
                    f"transformer.transformer_blocks.{m.group(1)}.{t}"
                    for t in _SD3_BLOCK[m.group(2)]
                ]
                # a pre-only block's context modulation: (shift, scale) of width 2 x hidden
                swap = m.group(2) == "context_block_adaLN_modulation_1" and up.shape[0] == (
                    2 * down.shape[1]
                )
            elif rest in _SD3_TOP:
                targets = [f"transformer.{_SD3_TOP[rest]}"]
                swap = rest == "final_layer_adaLN_modulation_1"
        elif module.startswith(("lora_te1_", "lora_te2_")):
            owner = "text_encoder." if module.startswith("lora_te1_") else "text_encoder_2."
            rest = module[len("lora_te1_") :]
            m = re.fullmatch(
                r"text_model_encoder_layers_(\d+)_(self_attn_(?:q|k|v|out)_proj|mlp_fc1|mlp_fc2)",
                rest,
            )
            if m:
                part = m.group(2).replace("self_attn_", "self_attn.").replace("mlp_", "mlp.")
                targets = [f"{owner}text_model.encoder.layers.{m.group(1)}.{part}"]
            elif rest == "text_projection":
                targets = [f"{owner}text_projection"]
        elif module.startswith("lora_te3_"):
            raise NodeError(
                f"{name}: an SD3 LoRA with T5 layers (lora_te3_*); diffusers' SD3 pipeline, "
                "which Studio follows, loads LoRAs into the two CLIPs and the transformer only"
            )
        if targets is None:
            unknown.append(module)
            continue
        if swap:
            shift, scale_rows = up.chunk(2, dim=0)
            up = torch.cat([scale_rows, shift], dim=0)
        ups = up.chunk(len(targets), dim=0) if len(targets) > 1 else (up,)
        for target, part in zip(targets, ups, strict=True):
            out[f"{target}.lora_A.weight"] = down.contiguous()
            out[f"{target}.lora_B.weight"] = part.contiguous()
    if unknown:
        shown = ", ".join(unknown[:3]) + (", ..." if len(unknown) > 3 else "")
        if not out:
            raise NodeError(
                f"{name}: none of its layers ({shown}) belongs to a Stable Diffusion 3.x "
                "model; is it made for another model family?"
            )
        raise NodeError(
            f"{name}: a kohya-layout SD3 LoRA with layers Studio cannot place ({shown}); it "
            "reads plain LoRA layers (lora_down / lora_up) of the joint blocks, the final "
            "layer, the embedders and the two CLIPs"
        )
    return out


def _read_file(patch: LoraPatch) -> dict[str, Any]:
    from pathlib import Path

    from nodes.weightfiles import read_state_dict  # safetensors, or weights-only pickles

    return read_state_dict(Path(patch.path))


def _tensor_bytes(state: dict[str, Any]) -> int:
    return sum(t.element_size() * t.nelement() for t in state.values() if hasattr(t, "nelement"))


def _cross_attention_dim(state: dict[str, Any]) -> int | None:
    """The text width a UNet LoRA was trained for, from a cross-attention key projection."""
    for key, tensor in state.items():
        if (
            ".attn2.to_k." in key
            and ("lora_A" in key or "lora.down" in key)
            and key.startswith("unet")
        ):
            return int(tensor.shape[-1])
    return None


_FAMILY_WIDTH = {768: "SD 1.x", 1024: "SD 2.x", 2048: "SDXL"}


def check_family(patch: LoraPatch, state: _LoraState, model: Any) -> None:
    """A clear error when a LoRA was made for another model family than the checkpoint."""
    want = model.unet_config.get("cross_attention_dim")
    got = state.cross_attention_dim
    if isinstance(want, list | tuple):
        want = want[0]
    if got is not None and want is not None and got != want:
        theirs = _FAMILY_WIDTH.get(got, f"a model with {got}-wide text")
        ours = _FAMILY_WIDTH.get(want, f"a model with {want}-wide text")
        raise NodeError(
            f"LoRA {patch.name!r} is for {theirs}, but the checkpoint is {ours}: "
            "choose a LoRA made for this checkpoint's family"
        )


@node(
    "load_lora",
    title="Load LoRA",
    category="loaders",
    description=(
        "Adds a LoRA to a model and its text encoder, each with its own strength. Chain several "
        "to combine them. Reads kohya/A1111 and diffusers/peft LoRA files."
    ),
    inputs=[
        InputSpec("model", T.MODEL),
        InputSpec("clip", T.CLIP),
        InputSpec(
            "lora_name",
            T.CHOICE,
            file_kind="loras",
            tooltip="A file from the loras folder.",
        ),
        InputSpec(
            "strength_model",
            T.FLOAT,
            default=1.0,
            min=-10.0,
            max=10.0,
            step=0.05,
            tooltip="How strongly the LoRA changes the denoising model (0: not at all).",
        ),
        InputSpec(
            "strength_clip",
            T.FLOAT,
            default=1.0,
            min=-10.0,
            max=10.0,
            step=0.05,
            tooltip="How strongly the LoRA changes the text encoder (0: not at all).",
        ),
    ],
    outputs=[OutputSpec("model", T.MODEL), OutputSpec("clip", T.CLIP)],
)
def load_lora(
    ctx, model: Any, clip: Any, lora_name: str, strength_model: float, strength_clip: float
) -> tuple[Any, Any]:
    path = ctx.model_files.resolve("loras", lora_name)
    patch = LoraPatch(name=lora_name, path=str(path), identity=ctx.files.identity(path))
    state = read_lora(ctx, patch, model.family)
    check_family(patch, state, model)
    if clip.family != model.family:
        raise NodeError(
            f"the model is {model.family} but the clip is {clip.family}: give Load LoRA the MODEL "
            "and CLIP of one checkpoint"
        )
    new_model = model.with_patch(patch, strength_model) if strength_model else model
    new_clip = clip.with_patch(patch, strength_clip) if strength_clip else clip
    return new_model, new_clip


def activate(
    ctx: Any, module: Any, component: str, patches: tuple[tuple[Any, float], ...], family: str
) -> None:
    """Make ``module`` (unet, text_encoder or text_encoder_2) compute with exactly these
    LoRAs at these strengths. Call it right before every use of a shared module."""
    loras = [(p, s) for p, s in patches if isinstance(p, LoraPatch) and s != 0]
    injected: set[str] = getattr(module, _INJECTED, set())
    if not loras and not injected:
        return
    active: dict[str, float] = {}
    for patch, strength in loras:
        if patch.adapter not in injected:
            _inject(ctx, module, component, patch, family)
            injected = getattr(module, _INJECTED, set())
        if patch.adapter in injected and patch.adapter in _adapters_of(module):
            active[patch.adapter] = active.get(patch.adapter, 0.0) + float(strength)
    _set_active(module, component, active)


def _adapters_of(module: Any) -> set[str]:
    return set(getattr(module, "peft_config", {}) or {})


def _inject(ctx: Any, module: Any, component: str, patch: LoraPatch, family: str) -> None:
    _inject_state(module, component, patch, family, read_lora(ctx, patch, family))


def _inject_state(
    module: Any, component: str, patch: LoraPatch, family: str, state: _LoraState
) -> None:
    pipe_cls = _lora_loader(family)
    sd = dict(state.state_dict)
    try:
        with warnings.catch_warnings():
            # Several LoRAs on one module are several adapters: that is the design here.
            warnings.filterwarnings("ignore", message=".*multiple adapters.*")
            if component == "transformer":
                import inspect

                kwargs = {"adapter_name": patch.adapter, "metadata": state.metadata}
                if (
                    "network_alphas"
                    in inspect.signature(pipe_cls.load_lora_into_transformer).parameters
                ):
                    kwargs["network_alphas"] = state.network_alphas
                pipe_cls.load_lora_into_transformer(sd, transformer=module, **kwargs)
            elif component == "unet":
                pipe_cls.load_lora_into_unet(
                    sd,
                    state.network_alphas,
                    module,
                    adapter_name=patch.adapter,
                    metadata=state.metadata,
                )
            else:
                pipe_cls.load_lora_into_text_encoder(
                    sd,
                    state.network_alphas,
                    module,
                    prefix=component,
                    adapter_name=patch.adapter,
                    metadata=state.metadata,
                )
    except NodeError:
        raise
    except Exception as exc:
        raise NodeError(
            f"LoRA {patch.name!r} does not fit this checkpoint's {component} ({exc}); "
            "is it made for another model family?"
        ) from None
    injected = set(getattr(module, _INJECTED, set()))
    injected.add(patch.adapter)  # also when the LoRA has no layers for this component
    setattr(module, _INJECTED, injected)


def _set_active(module: Any, component: str, active: dict[str, float]) -> None:
    if component in ("unet", "transformer"):
        if not active:
            module.disable_lora()
            return
        module.enable_lora()
        module.set_adapters(list(active), list(active.values()))
        return
    from diffusers.loaders.lora_base import (
        disable_lora_for_text_encoder,
        enable_lora_for_text_encoder,
        set_adapters_for_text_encoder,
    )

    if not active:
        if _adapters_of(module):
            disable_lora_for_text_encoder(module)
        return
    enable_lora_for_text_encoder(module)
    set_adapters_for_text_encoder(list(active), module, list(active.values()))


def bake(module: Any, component: str, loras: tuple[tuple[Any, float], ...], family: str) -> None:
    """Fold these LoRAs, at these strengths, into ``module``'s own weights (peft's merge:
    weight + strength x the LoRA's delta) and take the LoRA layers out again: a plain module
    computing what :func:`activate` makes the shared one compute. For a module of its own
    (a merge's, a checkpoint being saved), never a shared one."""
    from diffusers.loaders.lora_base import fuse_text_encoder_lora, recurse_remove_peft_layers

    active: dict[str, float] = {}
    for patch, strength in loras:
        if not isinstance(patch, LoraPatch) or not strength:
            continue
        if patch.adapter not in getattr(module, _INJECTED, set()):
            _inject_state(module, component, patch, family, _read_state(patch, family))
        if patch.adapter in _adapters_of(module):
            active[patch.adapter] = active.get(patch.adapter, 0.0) + float(strength)
    if active:
        _set_active(module, component, active)
        if component in ("unet", "transformer"):
            module.fuse_lora(lora_scale=1.0, adapter_names=list(active))
            module.unload_lora()
        else:
            fuse_text_encoder_lora(module, lora_scale=1.0, adapter_names=list(active))
            recurse_remove_peft_layers(module)
            if hasattr(module, "peft_config"):
                del module.peft_config
    if hasattr(module, _INJECTED):
        delattr(module, _INJECTED)
