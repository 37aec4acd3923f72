"""IP-Adapter: a reference picture steers an SD 1.x / SDXL model through extra cross-attention
on its image embedding (Ye et al. 2023). The nodes ComfyUI users know from
ComfyUI_IPAdapter_plus: Load IP-Adapter (IPAdapterModelLoader) and Apply IP-Adapter
(IPAdapterAdvanced), with a CLIP-ViT image encoder from Load CLIP Vision. The work is in
``nodes.ipadapter`` (imported inside the functions: it imports torch); the Sampler installs
the adapters' attention for its run (diffusers' IP-Adapter processors and image projection)
and takes them out again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from studio.errors import NodeError
from studio.graph.spec import InputSpec, OutputSpec, node
from studio.graph.types import ValueType as T


@dataclass(frozen=True)
class IPAdapterHandle:
    """An IPADAPTER value: which file, what kind (``base``: the image embedding projected to
    4 tokens; ``plus``: a resampler over the encoder's penultimate layer; ``full_face``: an
    MLP over it), the text width it attends for and the image width it reads."""

    path: str
    identity: tuple
    kind: str
    cross_attention_dim: int
    image_width: int

    @property
    def reads_hidden_states(self) -> bool:
        return self.kind != "base"

    def __studio_nbytes__(self) -> int:
        return 256


@dataclass(frozen=True)
class IPAdapterUse:
    """One Apply IP-Adapter on a MODEL: the adapter, the reference's embedding and the
    negative one ([1, images, ...], float32, CPU) and the weight."""

    adapter: IPAdapterHandle
    embeds: Any
    negative: Any
    weight: float
    #: The part of the sampling it steers (fractions, 0 = the noisiest step).
    start: float = 0.0
    end: float = 1.0


@node(
    "load_ipadapter",
    title="Load IP-Adapter",
    category="loaders",
    description=(
        "Loads an IP-Adapter from the ipadapter folder (ip-adapter_sd15.safetensors, "
        "ip-adapter-plus_sd15, ip-adapter_sdxl_vit-h, ip-adapter-plus-face, ...; "
        "ComfyUI_IPAdapter_plus's IPAdapterModelLoader). Its kind is read from its tensors."
    ),
    inputs=[
        InputSpec(
            "ipadapter_file",
            T.CHOICE,
            file_kind="ipadapter",
            tooltip="An IP-Adapter file from the models folder's ipadapter subfolder.",
        )
    ],
    outputs=[OutputSpec("ipadapter", T.IPADAPTER, tooltip="For Apply IP-Adapter.")],
)
def load_ipadapter(ctx, ipadapter_file: str) -> IPAdapterHandle:
    from nodes import ipadapter

    return ipadapter.load(ctx, ipadapter_file)


@node(
    "apply_ipadapter",
    title="Apply IP-Adapter",
    category="conditioning",
    description=(
        "Makes the model follow a reference picture's look and content: the IP-Adapter reads "
        "the picture through a CLIP-ViT image encoder (Load CLIP Vision: ViT-H for the SD 1.5 "
        "and most SDXL adapters, ViT-bigG for ip-adapter_sdxl). Several pictures in the "
        "image batch are used together; chain the node for several adapters."
    ),
    inputs=[
        InputSpec("model", T.MODEL, tooltip="An SD 1.x or SDXL model."),
        InputSpec("ipadapter", T.IPADAPTER, tooltip="From Load IP-Adapter."),
        InputSpec(
            "clip_vision", T.CLIP_VISION, tooltip="The CLIP-ViT encoder it was trained with."
        ),
        InputSpec("image", T.IMAGE, tooltip="The reference picture(s)."),
        InputSpec(
            "weight",
            T.FLOAT,
            default=1.0,
            min=-1.0,
            max=3.0,
            step=0.05,
            tooltip="How strongly the picture steers (0: not at all; 0.5-0.8 leaves the "
            "prompt more say).",
        ),
        InputSpec("start_at", T.FLOAT, default=0.0, min=0.0, max=1.0, step=0.01,
                  tooltip="Where in the sampling it starts steering (0: the noisiest step)."),
        InputSpec("end_at", T.FLOAT, default=1.0, min=0.0, max=1.0, step=0.01,
                  tooltip="Where it stops (1: the last step; 0.8 leaves the details to the "
                  "prompt)."),
    ],
    outputs=[OutputSpec("model", T.MODEL)],
)  # fmt: skip
def apply_ipadapter(
    ctx, model: Any, ipadapter: Any, clip_vision: Any, image: Any, weight: float = 1.0,
    start_at: float = 0.0, end_at: float = 1.0,
) -> Any:  # fmt: skip
    from nodes import ipadapter as ip

    if not isinstance(ipadapter, IPAdapterHandle):
        raise NodeError("the ipadapter input is not an IP-Adapter: connect Load IP-Adapter")
    if start_at > end_at:
        raise NodeError(f"start_at {start_at} is after end_at {end_at}: it would never steer")
    return ip.apply(
        ctx, model, ipadapter, clip_vision, image, float(weight), float(start_at), float(end_at)
    )
