"""Nodes for diffusion transformers (Stable Diffusion 3.5, Flux.1), named as ComfyUI users
know them: Load Diffusion Model, Load Text Encoders, Flux Guidance, Model Sampling SD3 /
Flux. Their values are the usual MODEL / CLIP / CONDITIONING handles with family ``sd3`` or
``flux``; Text Encode, the Sampler, VAE Decode and Load Checkpoint take them as they are.
The work is in ``nodes.dit`` (imported inside the functions: it imports torch).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from studio.errors import NodeError
from studio.graph.spec import InputSpec, OutputSpec, node
from studio.graph.types import ValueType as T

#: Load Diffusion Model's weight dtypes (GGUF files bring their own quantisation).
WEIGHT_DTYPES = ("default", "fp8_e4m3fn")
TEXT_ENCODER_TYPES = ("flux", "sd3")


@node(
    "load_diffusion_model",
    title="Load Diffusion Model",
    category="loaders",
    description=(
        "Loads a Flux.1 or Stable Diffusion 3.x transformer file from the diffusion_models "
        "folder (also unet): .safetensors in the original or ComfyUI layout, or .gguf. Use "
        "Load Text Encoders and Load VAE beside it."
    ),
    inputs=[
        InputSpec(
            "unet_name",
            T.CHOICE,
            file_kind="diffusion_models",
            tooltip="A transformer file from the models folder's diffusion_models subfolder.",
        ),
        InputSpec(
            "weight_dtype",
            T.CHOICE,
            choices=WEIGHT_DTYPES,
            default="default",
            tooltip=(
                "default: as the file stores them (a file stored in fp8 stays in 8 bits), "
                "else the device's float type. fp8_e4m3fn: weights kept in 8 bits (half "
                "the memory of fp16), each layer computed in the device's type. GGUF files "
                "keep their own quantisation whatever is chosen here."
            ),
        ),
    ],
    outputs=[OutputSpec("model", T.MODEL, tooltip="The transformer, for the Sampler.")],
)
def load_diffusion_model(ctx, unet_name: str, weight_dtype: str = "default") -> Any:
    from nodes import dit, sdload

    path = Path(ctx.model_files.resolve("diffusion_models", unet_name))
    source = dit.inspect_diffusion_model(path, unet_name, ctx.files.identity(path), weight_dtype)
    sdload.get_module(ctx, source, "transformer")  # a damaged file fails here, naming it
    return dit.model_handle(source)


def _text_encoders(ctx, names: list[str], family: str) -> Any:
    from nodes import dit, sdload

    if family not in TEXT_ENCODER_TYPES:
        raise NodeError(f"unknown type {family!r}; choose flux or sd3")
    sources = []
    for name in names:
        path = Path(ctx.model_files.resolve("text_encoders", name))
        sources.append(dit.inspect_text_encoder(path, name, ctx.files.identity(path)))
    clip = dit.text_encoders_handle(sources, family, "Load Text Encoders")
    for _, source, component in clip.parts:
        sdload.get_module(ctx, source, component)
    return clip


def _encoder_input(name: str, tip: str) -> InputSpec:
    return InputSpec(name, T.CHOICE, file_kind="text_encoders", tooltip=tip)


TYPE_INPUT = InputSpec(
    "type",
    T.CHOICE,
    choices=TEXT_ENCODER_TYPES,
    default="flux",
    tooltip="flux: CLIP-L and T5-XXL. sd3: CLIP-L and CLIP-G (T5-XXL optional).",
)


@node(
    "load_text_encoders",
    title="Load Text Encoders",
    category="loaders",
    description=(
        "Loads two text encoder files from the text_encoders folder (also clip) as one CLIP: "
        "Flux takes CLIP-L and T5-XXL, SD3 CLIP-L and CLIP-G. Which file is which is read "
        "from the files. T5-XXL may be a GGUF file (e.g. t5-v1_1-xxl-encoder-Q8_0.gguf)."
    ),
    inputs=[
        _encoder_input("clip_name1", "e.g. clip_l.safetensors"),
        _encoder_input(
            "clip_name2", "e.g. t5xxl_fp16.safetensors or a T5 .gguf (Flux), clip_g (SD3)"
        ),
        TYPE_INPUT,
    ],
    outputs=[OutputSpec("clip", T.CLIP, tooltip="The text encoders, for Text Encode.")],
)
def load_text_encoders(ctx, clip_name1: str, clip_name2: str, type: str = "flux") -> Any:
    return _text_encoders(ctx, [clip_name1, clip_name2], type)


@node(
    "load_text_encoders_3",
    title="Load Text Encoders (3)",
    category="loaders",
    description=(
        "Loads SD3's three text encoder files (CLIP-L, CLIP-G, T5-XXL, in any order) from the "
        "text_encoders folder as one CLIP."
    ),
    inputs=[
        _encoder_input("clip_name1", "e.g. clip_l.safetensors"),
        _encoder_input("clip_name2", "e.g. clip_g.safetensors"),
        _encoder_input(
            "clip_name3", "e.g. t5xxl_fp8_e4m3fn.safetensors or t5-v1_1-xxl-encoder-Q8_0.gguf"
        ),
    ],
    outputs=[OutputSpec("clip", T.CLIP, tooltip="The text encoders, for Text Encode.")],
)
def load_text_encoders_3(ctx, clip_name1: str, clip_name2: str, clip_name3: str) -> Any:
    return _text_encoders(ctx, [clip_name1, clip_name2, clip_name3], "sd3")


@node(
    "flux_guidance",
    title="Flux Guidance",
    category="conditioning",
    description=(
        "Sets the distilled guidance of Flux dev on a prompt (3.5 is usual; schnell ignores "
        "it). Flux runs with the Sampler's cfg at 1."
    ),
    inputs=[
        InputSpec("conditioning", T.CONDITIONING),
        InputSpec(
            "guidance",
            T.FLOAT,
            default=3.5,
            min=0.0,
            max=100.0,
            step=0.1,
            tooltip="How strongly Flux dev follows the prompt.",
        ),
    ],
    outputs=[OutputSpec("conditioning", T.CONDITIONING)],
)
def flux_guidance(ctx, conditioning: Any, guidance: float = 3.5) -> list:
    import dataclasses

    from nodes.values import Cond

    if not isinstance(conditioning, list) or not all(isinstance(c, Cond) for c in conditioning):
        raise NodeError("the conditioning input is not conditioning")
    return [
        dataclasses.replace(c, extra={**c.extra, "guidance": float(guidance)}) for c in conditioning
    ]


def _dit_model(model: Any, family: str, node_title: str) -> Any:
    from nodes.values import ModelHandle

    if not isinstance(model, ModelHandle):
        raise NodeError(f"the model input is not a model (got {type(model).__name__})")
    if model.family != family:
        raise NodeError(f"{node_title} is for {family} models; this model is {model.family}")
    return model


@node(
    "model_sampling_sd3",
    title="Model Sampling SD3",
    category="sampling",
    description="Sets the time shift of a Stable Diffusion 3.x model (3.0 is its own).",
    inputs=[
        InputSpec("model", T.MODEL),
        InputSpec(
            "shift",
            T.FLOAT,
            default=3.0,
            min=0.0,
            max=100.0,
            step=0.01,
            tooltip="Higher spends more steps at high noise (composition), lower on detail.",
        ),
    ],
    outputs=[OutputSpec("model", T.MODEL)],
)
def model_sampling_sd3(ctx, model: Any, shift: float = 3.0) -> Any:
    import dataclasses

    m = _dit_model(model, "sd3", "Model Sampling SD3")
    if shift <= 0:
        raise NodeError(f"shift {shift} must be above 0")
    cfg = {**m.scheduler_config, "shift": float(shift), "use_dynamic_shifting": False}
    return dataclasses.replace(m, scheduler_config=cfg)


@node(
    "model_sampling_flux",
    title="Model Sampling Flux",
    category="sampling",
    description=(
        "Sets Flux's resolution-dependent shift: base_shift at 256 image tokens, max_shift at "
        "4096 (a 1024x1024 image), in between by the image's size."
    ),
    inputs=[
        InputSpec("model", T.MODEL),
        InputSpec("max_shift", T.FLOAT, default=1.15, min=0.0, max=100.0, step=0.01),
        InputSpec("base_shift", T.FLOAT, default=0.5, min=0.0, max=100.0, step=0.01),
    ],
    outputs=[OutputSpec("model", T.MODEL)],
)
def model_sampling_flux(ctx, model: Any, max_shift: float = 1.15, base_shift: float = 0.5) -> Any:
    import dataclasses

    m = _dit_model(model, "flux", "Model Sampling Flux")
    cfg = {
        **m.scheduler_config,
        "use_dynamic_shifting": True,
        "max_shift": float(max_shift),
        "base_shift": float(base_shift),
    }
    cfg.setdefault("base_image_seq_len", 256)
    cfg.setdefault("max_image_seq_len", 4096)
    return dataclasses.replace(m, scheduler_config=cfg)


def _layer_list(text: str, name: str) -> tuple[int, ...]:
    """Block numbers written as ComfyUI takes them: the integers in the text ("7, 8, 9")."""
    import re

    numbers = re.findall(r"\d+", text or "")
    if re.search(r"[^\d\s,;]", text or "") or any(len(v) > 4 for v in numbers):
        shown = text if len(text) <= 40 else text[:40] + "..."
        raise NodeError(f"{name} {shown!r}: write block numbers separated by commas, like 7, 8, 9")
    return tuple(sorted({int(v) for v in numbers}))


@node(
    "skip_layer_guidance",
    title="Skip Layer Guidance",
    category="sampling",
    description=(
        "Sharper structure and anatomy on SD3.5 and Flux (ComfyUI's SkipLayerGuidanceDiT / "
        "SD3; SD3.5 Medium's recommended 7, 8, 9 at 3): for part of the sampling the Sampler "
        "also predicts the prompt with some transformer blocks skipped and steers away from "
        "that prediction."
    ),
    inputs=[
        InputSpec("model", T.MODEL),
        InputSpec(
            "double_layers",
            T.STRING,
            default="7, 8, 9",
            tooltip="Joint (SD3) / double-stream (Flux) blocks to skip, counted from 0.",
        ),
        InputSpec(
            "single_layers",
            T.STRING,
            default="",
            tooltip="Flux's single-stream blocks to skip (SD3 has none: ignored there).",
        ),
        InputSpec(
            "scale",
            T.FLOAT,
            default=3.0,
            min=0.0,
            max=10.0,
            step=0.1,
            tooltip="How far to steer away from the skipped prediction (0: off).",
        ),
        InputSpec(
            "start_percent",
            T.FLOAT,
            default=0.01,
            min=0.0,
            max=1.0,
            step=0.001,
            tooltip="Where in the model's time it starts (0: the noisiest end).",
        ),
        InputSpec(
            "end_percent",
            T.FLOAT,
            default=0.15,
            min=0.0,
            max=1.0,
            step=0.001,
            tooltip="Where in the model's time it ends.",
        ),
        InputSpec(
            "rescaling_scale",
            T.FLOAT,
            default=0.0,
            min=0.0,
            max=10.0,
            step=0.01,
            tooltip="Pulls the result's spread towards the prompt's own prediction (0: off).",
        ),
    ],
    outputs=[OutputSpec("model", T.MODEL)],
)
def skip_layer_guidance(
    ctx, model: Any, double_layers: str = "7, 8, 9", single_layers: str = "",
    scale: float = 3.0, start_percent: float = 0.01, end_percent: float = 0.15,
    rescaling_scale: float = 0.0,
) -> Any:  # fmt: skip
    import dataclasses

    from nodes.values import ModelHandle, SkipLayerGuidance

    if not isinstance(model, ModelHandle):
        raise NodeError(f"the model input is not a model (got {type(model).__name__})")
    if model.family not in ("sd3", "flux"):
        raise NodeError(
            f"Skip Layer Guidance works on diffusion transformers (SD3, Flux); this model is "
            f"{model.family}"
        )
    double = _layer_list(double_layers, "double_layers")
    single = _layer_list(single_layers, "single_layers") if model.family == "flux" else ()
    if not (double or single) or scale <= 0:
        return model  # ComfyUI's node leaves the model as it is
    slg = SkipLayerGuidance(
        double, single, float(scale), float(start_percent), float(end_percent),
        float(rescaling_scale),
    )  # fmt: skip
    return dataclasses.replace(model, skip_layer_guidance=slg)


@node(
    "reference_latent",
    title="Reference Latent",
    category="conditioning",
    description=(
        "Gives a prompt a reference image to edit or follow, for FLUX.1 Kontext: Load Image, "
        "Flux Kontext Image Scale and VAE Encode make the latent; the prompt says the change. "
        "Chain several for several references."
    ),
    inputs=[
        InputSpec(
            "conditioning",
            T.CONDITIONING,
            tooltip='The prompt: the edit to make ("make the car red"), for Flux Kontext.',
        ),
        InputSpec(
            "latent",
            T.LATENT,
            optional=True,
            tooltip=(
                "The VAE-encoded reference image. The Sampler's latent sets the output size "
                "(usually an Empty Latent of the reference's size). Unconnected: the prompt "
                "passes unchanged."
            ),
        ),
    ],
    outputs=[
        OutputSpec(
            "conditioning",
            T.CONDITIONING,
            tooltip="The prompt with the reference added after any it already had.",
        )
    ],
)
def reference_latent(ctx, conditioning: Any, latent: Any = None) -> list:
    import dataclasses

    from nodes.values import Cond

    if not isinstance(conditioning, list) or not all(isinstance(c, Cond) for c in conditioning):
        raise NodeError("the conditioning input is not conditioning")
    if latent is None:
        return list(conditioning)
    samples = latent.get("samples") if isinstance(latent, dict) else None
    if samples is None or samples.ndim != 4:
        raise NodeError("the latent input is not a latent: connect a VAE Encode")
    return [
        dataclasses.replace(
            c,
            extra={
                **c.extra,
                "reference_latents": [*c.extra.get("reference_latents", []), samples],
            },
        )
        for c in conditioning
    ]


@node(
    "instruct_pix2pix_conditioning",
    title="InstructPixToPix Conditioning",
    category="conditioning",
    description=(
        "Gives FLUX.1 Canny [dev] and FLUX.1 Depth [dev] their control image (canny edges "
        "or a depth map of the picture to follow): the image is VAE-encoded and attached to "
        "both prompts, and the latent output is an empty latent of the image's size for the "
        "Sampler. Use Flux Guidance (30 for Canny, 10 for Depth in BFL's examples). "
        "ComfyUI's InstructPixToPixConditioning."
    ),
    inputs=[
        InputSpec("positive", T.CONDITIONING),
        InputSpec("negative", T.CONDITIONING),
        InputSpec("vae", T.VAE, tooltip="The model's VAE (Flux's ae.safetensors)."),
        InputSpec(
            "pixels",
            T.IMAGE,
            tooltip=(
                "The control image: canny edges (Canny) or a depth map (Depth), at the size "
                "of the picture to make (cut around its centre to multiples of 16 pixels)."
            ),
        ),
    ],
    outputs=[
        OutputSpec("positive", T.CONDITIONING, tooltip="The prompt with the control image."),
        OutputSpec("negative", T.CONDITIONING, tooltip="The negative with the control image."),
        OutputSpec(
            "latent",
            T.LATENT,
            tooltip="An empty latent of the control image's size, for the Sampler.",
        ),
    ],
)
def instruct_pix2pix_conditioning(
    ctx, positive: Any, negative: Any, vae: Any, pixels: Any
) -> tuple[list, list, dict]:
    import dataclasses

    import torch

    from nodes.latent import _check_vae, vae_encode
    from nodes.values import CONTROL_IMAGE_KEY, Cond

    for name, cond in (("positive", positive), ("negative", negative)):
        if not isinstance(cond, list) or not all(isinstance(c, Cond) for c in cond):
            raise NodeError(f"the {name} input is not conditioning")
    _check_vae(vae)
    # Flux works on 2x2 patches of latent cells: cut the image to whole patches around its
    # centre (ComfyUI cuts to whole cells and pads the patches).
    step = 2 * vae.downscale
    h, w = pixels.shape[1] // step * step, pixels.shape[2] // step * step
    if h == 0 or w == 0:
        raise NodeError(f"the control image is smaller than {step} pixels")
    top, left = (pixels.shape[1] - h) // 2, (pixels.shape[2] - w) // 2
    pixels = pixels[:, top : top + h, left : left + w]
    encoded = vae_encode.execute(ctx, image=pixels, vae=vae)
    image = {"mean": encoded["samples"], "std": encoded["posterior_std"]}

    def attach(cond: list) -> list:
        return [dataclasses.replace(c, extra={**c.extra, CONTROL_IMAGE_KEY: image}) for c in cond]

    mean = image["mean"]
    f = vae.downscale
    latent = {
        "samples": torch.zeros_like(mean),
        "pixel_size": (mean.shape[-2] * f, mean.shape[-1] * f),
    }
    return attach(positive), attach(negative), latent


#: The (width, height) FLUX.1 Kontext was trained on (diffusers' PREFERRED_KONTEXT_RESOLUTIONS).
KONTEXT_RESOLUTIONS = (
    (672, 1568), (688, 1504), (720, 1456), (752, 1392), (800, 1328), (832, 1248),
    (880, 1184), (944, 1104), (1024, 1024), (1104, 944), (1184, 880), (1248, 832),
    (1328, 800), (1392, 752), (1456, 720), (1504, 688), (1568, 672),
)  # fmt: skip


def kontext_size(width: int, height: int) -> tuple[int, int]:
    """The Kontext resolution nearest the image's aspect ratio (the pipeline's choice)."""
    aspect = width / height
    return min(KONTEXT_RESOLUTIONS, key=lambda r: (abs(aspect - r[0] / r[1]), r))


@node(
    "flux_kontext_image_scale",
    title="Flux Kontext Image Scale",
    category="image",
    description=(
        "Resizes an image to the FLUX.1 Kontext resolution nearest its aspect ratio (about "
        "1 megapixel, as FluxKontextPipeline does), before VAE Encode for a Reference Latent."
    ),
    inputs=[InputSpec("image", T.IMAGE, tooltip="The reference image, any size.")],
    outputs=[
        OutputSpec(
            "image",
            T.IMAGE,
            tooltip="Cut around the centre to the resolution's aspect, then resized (lanczos).",
        )
    ],
)
def flux_kontext_image_scale(ctx, image: Any) -> Any:
    from nodes.upscale import resize_image

    h, w = int(image.shape[1]), int(image.shape[2])
    if h == 0 or w == 0:
        raise NodeError("the image is empty")
    tw, th = kontext_size(w, h)
    if w / h > tw / th:
        cut = round((w - w * (tw / th) / (w / h)) / 2)
        image = image[:, :, cut : w - cut]
    elif w / h < tw / th:
        cut = round((h - h * (w / h) / (tw / th)) / 2)
        image = image[:, cut : h - cut]
    return resize_image(image, (tw, th), "lanczos")
