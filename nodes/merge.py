"""Model merging, as ComfyUI's merge nodes compute it: Merge Models (a weighted sum, by
blocks too), Merge Models (Subtract) and (Add), and the same three for text encoders.

A merge is a new set of weights, so its MODEL / CLIP carries a :class:`WeightsSource`
whose ``merge`` names the operation and the two sources: the model manager loads the
merged component once (both inputs read fresh on the CPU, combined in float32, stored in
the first's type) and caches it under an identity made of both inputs' identities and the
operation, like any checkpoint. Merges nest (the "add difference" recipe is a Subtract
fed into an Add). Keys the second model lacks, or holds in another shape (an inpainting
UNet's 9-channel input against a 4-channel one), keep the first model's weights, as
ComfyUI keeps them; CLIP's ``position_ids`` and ``logit_scale`` stay the first's too.

The merged MODEL samples with the first model's settings (its schedule, prediction type,
model patches), as ComfyUI's merges do. A MODEL or CLIP that carries LoRAs is merged with
them folded into its weights (peft's merge, :func:`nodes.lora.bake`), as ComfyUI merges a
patched model: ratio x (model1 + its LoRA) + (1 - ratio) x model2. Save Checkpoint folds
them in the same way.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from studio.errors import NodeError
from studio.graph.spec import InputSpec, OutputSpec, node
from studio.graph.types import ValueType as T

#: Merge operations: (first model's coefficient, second model's) for a key's ratio r.
OPS = ("simple", "blocks", "subtract", "add")

#: ComfyUI's ModelMergeBlocks prefixes (LDM keys) as diffusers UNet key prefixes; a key
#: matching none takes the first ratio (input), as in ComfyUI.
_BLOCKS = (
    ("middle", ("mid_block.",)),
    ("out", ("up_blocks.", "conv_norm_out.", "conv_out.")),
)
#: Text encoder entries that are not weights to merge (ComfyUI skips them too).
_CLIP_KEPT = (".position_ids", ".logit_scale", "position_ids", "logit_scale")

FAMILY_TITLES = {
    "sd1": "SD 1.x",
    "sd2": "SD 2.x",
    "sdxl": "SDXL",
    "sd3": "Stable Diffusion 3.x",
    "flux": "Flux.1",
    "custom": "a custom UNet",
}


def _title(family: str) -> str:
    return FAMILY_TITLES.get(family, family)


def model_component(family: str) -> str:
    from nodes.sdload import DIT_SOURCE_FAMILIES

    return "transformer" if family in DIT_SOURCE_FAMILIES else "unet"


def merged_source(
    a: Any, b: Any, op: str, params: tuple[float, ...], components: tuple[str, ...]
) -> Any:
    """The WeightsSource of ``a`` merged with ``b`` (``components`` are merged; any
    other component is ``a``'s)."""
    return replace(
        a,
        identity=("merge", op, params, components, a.identity, b.identity),
        name=f"{a.name or a.path} + {b.name or b.path}",
        merge=(op, a, b, params, components),
    )


def coefficients(op: str, params: tuple[float, ...], key: str) -> tuple[float, float]:
    """The first and second model's coefficient for weight ``key``."""
    if op == "subtract":
        return 1.0, -params[0]
    if op == "add":
        return 1.0, 1.0
    ratio = params[0]
    if op == "blocks":
        for i, (_, prefixes) in enumerate(_BLOCKS, start=1):
            if key.startswith(prefixes):
                ratio = params[i]
    return ratio, 1.0 - ratio


def baked(value: Any, family: str) -> Any:
    """A MODEL or CLIP whose LoRAs are folded into a source of its own (operation ``lora``):
    the same pictures, now as plain weights a merge or a saved checkpoint can take."""
    if not value.patches:
        return value
    components = (
        (model_component(family),) if hasattr(value, "unet_config") else tuple(value.encoders)
    )
    loras = tuple(value.patches)
    params = (family, loras)
    source = replace(
        value.source,
        identity=(
            "lora",
            family,
            tuple((getattr(p, "identity", repr(p)), s) for p, s in loras),
            components,
            value.source.identity,
        ),
        name=f"{value.source.name or value.source.path} + LoRA",
        merge=("lora", value.source, None, params, components),
    )
    return replace(value, source=source, patches=())


def load_merged(source: Any, component: str, dtype: Any) -> Any:
    """``source``'s ``component``: its first model's, with the merge applied when the merge
    covers the component. Both inputs are read fresh (not the shared, cached modules)."""
    import torch

    from nodes import lora, sdload

    op, a, b, params, components = source.merge
    if component not in components:
        return sdload.load_component(a, component, dtype)
    if op == "lora":
        family, loras = params
        first = sdload.load_component(a, component, dtype)
        lora.bake(first, component, loras, family)
        return first
    # The second model first, kept as compactly as it is exact (an fp16 file's weights in
    # fp16), so that loading the first, whose reading needs most memory, does not find a
    # whole second module beside it.
    theirs = _compact(sdload.load_component(b, component, dtype).state_dict())
    first = sdload.load_component(a, component, dtype)
    merged = 0
    with torch.no_grad():
        for key, mine in first.state_dict().items():
            other = theirs.get(key)
            if (
                other is None
                or other.shape != mine.shape
                or not mine.is_floating_point()
                or key.endswith(_CLIP_KEPT)
            ):
                continue
            ca, cb = coefficients(op, params, key)
            mine.copy_((ca * mine.float() + cb * other.float()).to(mine.dtype))
            merged += 1
    del theirs
    if not merged:
        raise NodeError(
            f"{b.name or b.path} has no {component} weight of the shape {a.name or a.path}'s "
            "has: merge models of one architecture"
        )
    return first


def _compact(state: dict[str, Any]) -> dict[str, Any]:
    """``state`` with each float32 tensor that fp16 holds exactly stored in fp16 (what an
    fp16 checkpoint's weights become when loaded for the CPU): half the memory, no change."""
    import torch

    out = {}
    for key, t in state.items():
        if t.dtype == torch.float32:
            half = t.half()
            if torch.equal(half.float(), t):
                t = half
        out[key] = t
    return out


#: Stability AI's model spec architecture of each family (what ComfyUI's CheckpointSave
#: writes, and what model sites read to tell what a file is).
_MODELSPEC_ARCHITECTURES = {
    "sd1": "stable-diffusion-v1",
    "sd2": "stable-diffusion-v2-512",
    "sd2-v": "stable-diffusion-v2-768-v",
    "sdxl": "stable-diffusion-xl-v1-base",
}


def _modelspec(family: str, title: str) -> dict[str, str]:
    arch = _MODELSPEC_ARCHITECTURES.get(family)
    if arch is None:
        return {}
    return {
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": arch,
        "modelspec.implementation": "sgm" if family == "sdxl" else "ldm",
        "modelspec.title": title,
    }


def _workflow_json(ctx: Any) -> str:
    from nodes.image import _workflow_json as workflow_json

    return workflow_json(ctx) if getattr(ctx, "workflow", None) is not None else ""


def _plain(value: Any, label: str) -> None:
    from nodes.lora import LoraPatch

    if any(not isinstance(p, LoraPatch) for p, _ in value.patches):
        raise NodeError(f"the {label} input carries a patch Studio cannot fold into weights")
    quant = value.source.configs.get("load", {}).get("quant", "default")
    if quant not in ("default", None):
        raise NodeError(
            f"the {label} input is stored as {quant}; merge full-precision files "
            "(fp16 / bf16 / fp32 safetensors)"
        )


def _merge_models(
    model1: Any, model2: Any, op: str, params: tuple[float, ...], names=("model1", "model2")
) -> Any:
    from nodes.values import ModelHandle

    for value, name in zip((model1, model2), names, strict=True):
        if not isinstance(value, ModelHandle):
            raise NodeError(f"the {name} input is not a model (got {type(value).__name__})")
        _plain(value, name)
    if model1.family != model2.family:
        raise NodeError(
            f"{names[0]} is {_title(model1.family)} and {names[1]} is "
            f"{_title(model2.family)}: merge models of one family"
        )
    component = model_component(model1.family)
    model1, model2 = baked(model1, model1.family), baked(model2, model2.family)
    source = merged_source(model1.source, model2.source, op, params, (component,))
    return replace(model1, source=source)


def _merge_clips(clip1: Any, clip2: Any, op: str, params: tuple[float, ...]) -> Any:
    from nodes.values import ClipHandle

    for value, name in ((clip1, "clip1"), (clip2, "clip2")):
        if not isinstance(value, ClipHandle):
            raise NodeError(f"the {name} input is not a text encoder (got {type(value).__name__})")
        if value.parts:
            raise NodeError(
                f"the {name} input is {_title(value.family)}'s text encoders; text encoder "
                "merges take SD 1.x, SD 2.x and SDXL checkpoints' CLIP"
            )
        _plain(value, name)
    if clip1.family != clip2.family or clip1.encoders != clip2.encoders:
        raise NodeError(
            f"clip1 is {_title(clip1.family)}'s and clip2 {_title(clip2.family)}'s: merge "
            "text encoders of one family"
        )
    clip1, clip2 = baked(clip1, clip1.family), baked(clip2, clip2.family)
    source = merged_source(clip1.source, clip2.source, op, params, clip1.encoders)
    return replace(clip1, source=source)


def _ratio(name: str, tip: str) -> InputSpec:
    return InputSpec(name, T.FLOAT, default=1.0, min=0.0, max=1.0, step=0.01, tooltip=tip)


_RATIO_TIP = "How much of model1: 1 = model1 alone, 0 = model2 alone, 0.5 = half of each."
_MULTIPLIER = InputSpec(
    "multiplier",
    T.FLOAT,
    default=1.0,
    min=-10.0,
    max=10.0,
    step=0.01,
    tooltip="How much of model2 to take away from model1.",
)
_MODELS = [
    InputSpec("model1", T.MODEL, tooltip="The first model; the merge samples with its settings."),
    InputSpec("model2", T.MODEL, tooltip="The second model, of the same family."),
]
_CLIPS = [
    InputSpec("clip1", T.CLIP, tooltip="The first text encoder (its tokenizer is used)."),
    InputSpec("clip2", T.CLIP, tooltip="The second text encoder, of the same family."),
]
_MODEL_OUT = [OutputSpec("model", T.MODEL, tooltip="The merged model.")]
_CLIP_OUT = [OutputSpec("clip", T.CLIP, tooltip="The merged text encoders.")]


@node(
    "merge_models",
    title="Merge Models",
    category="model merging",
    description=(
        "A weighted sum of two models' weights: ratio x model1 + (1 - ratio) x model2 "
        "(ComfyUI's ModelMergeSimple). A model with LoRAs is merged with them folded in."
    ),
    inputs=[*_MODELS, _ratio("ratio", _RATIO_TIP)],
    outputs=_MODEL_OUT,
)
def merge_models(ctx, model1: Any, model2: Any, ratio: float = 1.0) -> Any:
    return _merge_models(model1, model2, "simple", (float(ratio),))


@node(
    "merge_models_blocks",
    title="Merge Models (Blocks)",
    category="model merging",
    description=(
        "A weighted sum with a ratio for the UNet's input blocks, middle block and output "
        "blocks (ComfyUI's ModelMergeBlocks; the embeddings take the input ratio, the final "
        "layers the output ratio; a diffusion transformer takes the input ratio throughout)."
    ),
    inputs=[
        *_MODELS,
        _ratio("input", "How much of model1 in the input (down) blocks."),
        _ratio("middle", "How much of model1 in the middle block."),
        _ratio("out", "How much of model1 in the output (up) blocks."),
    ],
    outputs=_MODEL_OUT,
)
def merge_models_blocks(
    ctx, model1: Any, model2: Any, input: float = 1.0, middle: float = 1.0, out: float = 1.0
) -> Any:
    return _merge_models(model1, model2, "blocks", (float(input), float(middle), float(out)))


@node(
    "merge_models_subtract",
    title="Merge Models (Subtract)",
    category="model merging",
    description=(
        "model1 - multiplier x model2, weight by weight (ComfyUI's ModelMergeSubtract): with "
        "Merge Models (Add) after it, the 'add difference' recipe (A + (B - C))."
    ),
    inputs=[*_MODELS, _MULTIPLIER],
    outputs=_MODEL_OUT,
)
def merge_models_subtract(ctx, model1: Any, model2: Any, multiplier: float = 1.0) -> Any:
    return _merge_models(model1, model2, "subtract", (float(multiplier),))


@node(
    "merge_models_add",
    title="Merge Models (Add)",
    category="model merging",
    description="model1 + model2, weight by weight (ComfyUI's ModelMergeAdd).",
    inputs=list(_MODELS),
    outputs=_MODEL_OUT,
)
def merge_models_add(ctx, model1: Any, model2: Any) -> Any:
    return _merge_models(model1, model2, "add", ())


@node(
    "merge_clips",
    title="Merge Text Encoders",
    category="model merging",
    description=(
        "A weighted sum of two CLIPs' weights: ratio x clip1 + (1 - ratio) x clip2 "
        "(ComfyUI's CLIPMergeSimple; SD 1.x, SD 2.x and SDXL)."
    ),
    inputs=[*_CLIPS, _ratio("ratio", "How much of clip1: 1 = clip1 alone, 0 = clip2 alone.")],
    outputs=_CLIP_OUT,
)
def merge_clips(ctx, clip1: Any, clip2: Any, ratio: float = 1.0) -> Any:
    return _merge_clips(clip1, clip2, "simple", (float(ratio),))


@node(
    "merge_clips_subtract",
    title="Merge Text Encoders (Subtract)",
    category="model merging",
    description="clip1 - multiplier x clip2, weight by weight (ComfyUI's CLIPMergeSubtract).",
    inputs=[*_CLIPS, replace(_MULTIPLIER, tooltip="How much of clip2 to take away from clip1.")],
    outputs=_CLIP_OUT,
)
def merge_clips_subtract(ctx, clip1: Any, clip2: Any, multiplier: float = 1.0) -> Any:
    return _merge_clips(clip1, clip2, "subtract", (float(multiplier),))


@node(
    "merge_clips_add",
    title="Merge Text Encoders (Add)",
    category="model merging",
    description="clip1 + clip2, weight by weight (ComfyUI's CLIPMergeAdd).",
    inputs=list(_CLIPS),
    outputs=_CLIP_OUT,
)
def merge_clips_add(ctx, clip1: Any, clip2: Any) -> Any:
    return _merge_clips(clip1, clip2, "add", ())


# -- Save Checkpoint (ComfyUI's CheckpointSave) ---------------------------------------------


@node(
    "save_checkpoint",
    title="Save Checkpoint",
    category="model merging",
    description=(
        "Writes the model, its text encoders and VAE as one .safetensors checkpoint in the "
        "LDM layout other tools read (fp16), into the output folder (ComfyUI's "
        "CheckpointSave): move it to models/checkpoints to load it. SD 1.x and SDXL models "
        "(and Studio's own); LoRAs on the model and clip are folded into the weights."
    ),
    inputs=[
        InputSpec("model", T.MODEL, tooltip="The model to save (e.g. from Merge Models)."),
        InputSpec("clip", T.CLIP, tooltip="Its text encoders."),
        InputSpec("vae", T.VAE, tooltip="Its VAE."),
        InputSpec(
            "filename_prefix",
            T.STRING,
            default="checkpoints/Studio",
            tooltip="The file's name (a number is added), under the output folder; folders with /.",
        ),
    ],
    output_node=True,
)
def save_checkpoint(
    ctx, model: Any, clip: Any, vae: Any, filename_prefix: str = "checkpoints/Studio"
) -> dict:
    import json
    from pathlib import Path

    import torch
    from safetensors.torch import save

    from nodes import sdload
    from nodes.image import _output_target
    from nodes.ldm_keys import checkpoint_to_ldm
    from nodes.values import ClipHandle, ModelHandle, VaeHandle
    from studio.fsutil import write_numbered

    for value, name, kind in ((model, "model", ModelHandle), (clip, "clip", ClipHandle),
                              (vae, "vae", VaeHandle)):  # fmt: skip
        if not isinstance(value, kind):
            raise NodeError(f"the {name} input is not a {name} (got {type(value).__name__})")
    if model.family in sdload.DIT_SOURCE_FAMILIES or model.family.startswith("sd2"):
        raise NodeError(
            f"Save Checkpoint writes SD 1.x and SDXL checkpoints; this model is "
            f"{_title(model.family)}"
        )
    if clip.family != model.family or clip.parts:
        raise NodeError(
            f"the clip is {_title(clip.family)}'s and the model {_title(model.family)}: give "
            "Save Checkpoint the text encoders of the model's family"
        )
    if vae.patches:
        raise NodeError("the vae input carries patches Save Checkpoint cannot write")
    for value, name in ((model, "model"), (clip, "clip")):
        _plain(value, name)
    model, clip = baked(model, model.family), baked(clip, clip.family)
    folder, stem = _output_target(Path(ctx.settings.output_path), filename_prefix)

    def state(source: Any, component: str) -> dict[str, Any]:
        # a fresh copy (the shared module may hold LoRA layers of other runs), in the file's
        # fp16 already: half the memory of fp32 for an SDXL-sized model; merges are still
        # computed in float32, tensor by tensor
        ctx.check_interrupt()
        return sdload.load_component(source, component, torch.float16).state_dict()

    te = [state(clip.source, name) for name in clip.encoders]
    vae_config = {**vae.config, "scaling_factor": vae.scaling_factor}
    ldm = checkpoint_to_ldm(
        state(model.source, "unet"),
        model.unet_config,
        state(vae.source, vae.component),
        vae_config,
        te[0],
        te[1] if len(te) > 1 else None,
    )
    ldm = {k: v.half() if v.is_floating_point() else v for k, v in ldm.items()}
    meta: dict[str, Any] = {
        "family": model.family,
        "unet": model.unet_config,
        "vae": vae_config,
        "scheduler": model.scheduler_config or model.source.configs.get("scheduler", {}),
    }
    for name in clip.encoders:
        meta[name] = clip.source.configs.get(name, {})
    if meta["text_encoder"].get("vocab_size") not in (None, sdload.CLIP_VOCAB_SIZE):
        folder_or_file, pad = clip.tokenizers[0]
        meta[sdload.TOKENIZER_KEY] = sdload.tokenizer_entry(
            sdload.get_tokenizer(ctx, folder_or_file, pad)
        )
    text = json.dumps(meta, sort_keys=True, separators=(",", ":"), default=list)
    metadata = {sdload.SIDECAR_METADATA_KEY: text, **_modelspec(model.family, stem)}
    workflow = _workflow_json(ctx)
    if workflow:  # the file is its own recipe, as a saved image is
        metadata["studio_workflow"] = workflow
    data = save(ldm, metadata=metadata)
    target = write_numbered(folder, stem, ".safetensors", data)
    ctx.run_info.setdefault("saved", []).append(str(target))
    return {}
