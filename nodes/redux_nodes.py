"""FLUX.1 Redux (image variation and restyling from a reference picture), with the nodes
ComfyUI users know: Load CLIP Vision, CLIP Vision Encode, Load Style Model, Apply Style
Model. A SigLIP image encoder turns the reference picture into tokens; the Redux model maps
them to T5-space tokens, which Apply Style Model appends to a Flux prompt's T5 tokens (as
ComfyUI's StyleModelApply and diffusers' FluxPriorReduxPipeline do). The work is in
``nodes.redux`` (imported inside the functions: it imports torch).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from studio.errors import NodeError
from studio.graph.spec import InputSpec, OutputSpec, node
from studio.graph.types import ValueType as T

CROPS = ("center", "none")
STRENGTH_TYPES = ("multiply",)


@dataclass(frozen=True)
class ClipVisionHandle:
    """A CLIP_VISION value: which file, its SigLIP config (from the tensors' shapes) and its
    image preprocessing; the weights live in the model manager."""

    path: str
    identity: tuple
    config: dict[str, Any] = field(compare=False, hash=False)
    image_size: int = 384
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    #: ``siglip`` (FLUX.1 Redux's) or ``clip`` (a CLIP-ViT with its projection: IP-Adapter's)
    kind: str = "siglip"

    def __studio_nbytes__(self) -> int:
        return 256


@dataclass(frozen=True)
class ClipVisionOutput:
    """A CLIP_VISION_OUTPUT value: the image encoder's last hidden state [images, tokens,
    width] (float32, CPU) and the kind of encoder that made it."""

    last_hidden_state: Any
    kind: str = "siglip"
    #: A CLIP-ViT's projected image embedding [images, projection] and its penultimate
    #: layer [images, tokens, width] (what IP-Adapter and IP-Adapter Plus read); None for
    #: SigLIP.
    image_embeds: Any = None
    penultimate_hidden_states: Any = None

    def __studio_nbytes__(self) -> int:
        t = self.last_hidden_state
        return 256 + int(t.element_size() * t.nelement())


@dataclass(frozen=True)
class StyleModelHandle:
    """A STYLE_MODEL value: a FLUX.1 Redux file, the width of the image tokens it reads and
    of the T5-space tokens it makes."""

    path: str
    identity: tuple
    kind: str = "redux"
    in_width: int = 1152
    out_width: int = 4096

    def __studio_nbytes__(self) -> int:
        return 256


@node(
    "load_clip_vision",
    title="Load CLIP Vision",
    category="loaders",
    description=(
        "Loads an image encoder from the clip_vision folder: SigLIP "
        "(sigclip_vision_patch14_384.safetensors), which FLUX.1 Redux reads. Its size and "
        "layers come from the file's tensors; nothing is downloaded."
    ),
    inputs=[
        InputSpec(
            "clip_name",
            T.CHOICE,
            file_kind="clip_vision",
            tooltip="An image encoder file from the models folder's clip_vision subfolder.",
        )
    ],
    outputs=[OutputSpec("clip_vision", T.CLIP_VISION, tooltip="For CLIP Vision Encode.")],
)
def load_clip_vision(ctx, clip_name: str) -> ClipVisionHandle:
    from nodes import redux

    return redux.load_clip_vision(ctx, clip_name)


@node(
    "clip_vision_encode",
    title="CLIP Vision Encode",
    category="conditioning",
    description=(
        "Encodes a reference image with a CLIP Vision model (resized to its input size, "
        "normalised), for Apply Style Model."
    ),
    inputs=[
        InputSpec("clip_vision", T.CLIP_VISION, tooltip="From Load CLIP Vision."),
        InputSpec("image", T.IMAGE, tooltip="The reference image; several encode together."),
        InputSpec(
            "crop",
            T.CHOICE,
            choices=CROPS,
            default="center",
            tooltip=(
                "center: scaled so its short side fits, then the middle square is kept. "
                "none: the whole image squeezed to a square."
            ),
        ),
    ],
    outputs=[OutputSpec("clip_vision_output", T.CLIP_VISION_OUTPUT)],
)
def clip_vision_encode(ctx, clip_vision: Any, image: Any, crop: str = "center") -> Any:
    from nodes import redux

    if not isinstance(clip_vision, ClipVisionHandle):
        raise NodeError(
            "the clip_vision input is not a CLIP Vision model: connect Load CLIP Vision"
        )
    if crop not in CROPS:
        raise NodeError(f"crop {crop!r} is not one of {', '.join(CROPS)}")
    return redux.encode_image(ctx, clip_vision, image, crop)


@node(
    "load_style_model",
    title="Load Style Model",
    category="loaders",
    description=(
        "Loads a style model from the style_models folder: FLUX.1 Redux "
        "(flux1-redux-dev.safetensors), told from its tensors."
    ),
    inputs=[
        InputSpec(
            "style_model_name",
            T.CHOICE,
            file_kind="style_models",
            tooltip="A style model file from the models folder's style_models subfolder.",
        )
    ],
    outputs=[OutputSpec("style_model", T.STYLE_MODEL, tooltip="For Apply Style Model.")],
)
def load_style_model(ctx, style_model_name: str) -> StyleModelHandle:
    from nodes import redux

    return redux.load_style_model(ctx, style_model_name)


@node(
    "apply_style_model",
    title="Apply Style Model",
    category="conditioning",
    description=(
        "Adds a reference image to a Flux prompt (FLUX.1 Redux): the encoded image becomes "
        "tokens appended after the prompt's T5 tokens, so the picture follows the "
        "reference's look and content. Use with a Flux.1 dev / schnell model."
    ),
    inputs=[
        InputSpec("conditioning", T.CONDITIONING, tooltip="A Flux prompt (Text Encode)."),
        InputSpec("style_model", T.STYLE_MODEL, tooltip="From Load Style Model."),
        InputSpec(
            "clip_vision_output",
            T.CLIP_VISION_OUTPUT,
            tooltip="From CLIP Vision Encode (the reference image).",
        ),
        InputSpec(
            "strength",
            T.FLOAT,
            default=1.0,
            min=0.0,
            max=10.0,
            step=0.001,
            tooltip="How much the reference counts: its tokens are multiplied by this.",
        ),
        InputSpec(
            "strength_type",
            T.CHOICE,
            choices=STRENGTH_TYPES,
            default="multiply",
            tooltip="multiply: the reference's tokens are scaled by the strength (ComfyUI's).",
        ),
    ],
    outputs=[
        OutputSpec(
            "conditioning",
            T.CONDITIONING,
            tooltip="The prompt with the reference's tokens after its own.",
        )
    ],
)
def apply_style_model(
    ctx,
    conditioning: Any,
    style_model: Any,
    clip_vision_output: Any,
    strength: float = 1.0,
    strength_type: str = "multiply",
) -> list:
    from nodes import redux

    if strength_type not in STRENGTH_TYPES:
        raise NodeError(f"strength_type {strength_type!r} is not supported yet: use multiply")
    return redux.apply_style(ctx, conditioning, style_model, clip_vision_output, strength)
