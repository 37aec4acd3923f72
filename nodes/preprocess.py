"""ControlNet preprocessors from controlnet-aux.

Canny, standard lineart and content shuffle need no weights. The others (depth with
MiDaS or Zoe, openpose, HED soft edges, realistic lineart, normals) read their weights
from a ``controlnet_annotators`` folder of a models root, under the file names of the
lllyasviel/Annotators collection; nothing is downloaded, and a missing file is named.
Pickled annotator weights are only ever read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import contextlib
import importlib
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nodes.weightfiles import code_refusal
from studio.errors import NodeError
from studio.graph.spec import InputSpec, NodeSpec, OutputSpec, node
from studio.graph.types import ValueType as T

ANNOTATOR_FOLDER = "controlnet_annotators"
_numpy_rng_lock = threading.Lock()
_torch_load_lock = threading.Lock()

IMAGE_IN = InputSpec("image", T.IMAGE, tooltip="The image to analyse.")
RESOLUTION = InputSpec(
    "resolution",
    T.INT,
    default=512,
    min=64,
    max=4096,
    step=64,
    tooltip="Size of the short side the detector works at; the result is scaled back to the image.",
)
IMAGE_OUT = [OutputSpec("image", T.IMAGE, tooltip="The control image.")]


def to_pil_list(image: Any) -> list[Any]:
    import numpy as np
    from PIL import Image

    arr = (image.clamp(0, 1).cpu().numpy() * 255.0).round().astype(np.uint8)
    return [Image.fromarray(frame[..., :3]) for frame in arr]


def from_pil_list(images: list[Any], size: tuple[int, int]) -> Any:
    import numpy as np
    import torch
    from PIL import Image

    frames = []
    for im in images:
        if not isinstance(im, Image.Image):
            im = Image.fromarray(np.asarray(im))
        im = im.convert("RGB")
        if im.size != size:
            im = im.resize(size, Image.BILINEAR)
        frames.append(np.asarray(im, dtype=np.float32) / 255.0)
    return torch.from_numpy(np.stack(frames))


def run_detector(image: Any, detect: Callable[[Any], Any]) -> Any:
    """Apply ``detect(pil) -> pil`` to every image of the batch, at the image's size."""
    size = (image.shape[2], image.shape[1])
    return from_pil_list([detect(im) for im in to_pil_list(image)], size)


@contextlib.contextmanager
def weights_only_loading() -> Iterator[None]:
    """Make every torch.load inside the block refuse pickled code (weights_only=True)."""
    import torch

    original = torch.load

    def safe_load(*args: Any, **kwargs: Any) -> Any:
        kwargs["weights_only"] = True
        return original(*args, **kwargs)

    with _torch_load_lock:
        torch.load = safe_load
        try:
            yield
        finally:
            torch.load = original


def annotator_folder(ctx: Any, files: tuple[str, ...]) -> Path:
    """The first controlnet_annotators folder holding all ``files``; a clear error otherwise."""
    folders = ctx.model_files.folders(ANNOTATOR_FOLDER)
    for folder in folders:
        if all((folder / f).is_file() for f in files):
            return folder
    missing = [f for f in files if not any((d / f).is_file() for d in folders)]
    looked = ", ".join(str(d) for d in folders)
    raise NodeError(
        f"needs the weights file {', '.join(missing)} in a {ANNOTATOR_FOLDER} folder "
        f"(looked in: {looked}). Studio downloads nothing: copy it there from the "
        "lllyasviel/Annotators collection."
    )


def load_annotator(ctx: Any, name: str, files: tuple[str, ...], build: Callable[[str], Any]) -> Any:
    """Load (once, through the model manager) a detector whose weights are ``files``."""
    folder = annotator_folder(ctx, files)
    key = ("annotator", name, *(ctx.files.identity(folder / f) for f in files))

    def load() -> Any:
        try:
            with weights_only_loading():
                return build(str(folder))
        except Exception as exc:
            refusal = code_refusal(exc, ", ".join(files))
            if refusal is not None:
                raise refusal from None
            raise NodeError(
                f"cannot load {', '.join(files)}: {type(exc).__name__}: {exc}"
            ) from None

    detector = ctx.models.get(key, load, nbytes=_detector_nbytes)
    return detector


def _detector_nbytes(detector: Any) -> int:
    from studio.engine.models import module_nbytes

    return module_nbytes(detector)


# -- no weights ---------------------------------------------------------------------------


@node(
    "canny",
    title="Canny Edges",
    category="preprocess",
    description="Edge map for a canny ControlNet (OpenCV's Canny detector).",
    inputs=[
        IMAGE_IN,
        InputSpec(
            "low_threshold",
            T.INT,
            default=100,
            min=0,
            max=255,
            tooltip="Gradients below this are never edges.",
        ),
        InputSpec(
            "high_threshold",
            T.INT,
            default=200,
            min=0,
            max=255,
            tooltip="Gradients above this are always edges.",
        ),
        RESOLUTION,
    ],
    outputs=IMAGE_OUT,
)
def canny(ctx, image, low_threshold: int, high_threshold: int, resolution: int):
    detector = aux_class("canny", "CannyDetector")()
    return run_detector(
        image,
        lambda im: detector(
            im,
            low_threshold,
            high_threshold,
            detect_resolution=resolution,
            image_resolution=resolution,
            output_type="pil",
        ),
    )


def _unit_threshold(name: str, default: float, tooltip: str) -> InputSpec:
    return InputSpec(name, T.FLOAT, default=default, min=0.01, max=0.99, step=0.01, tooltip=tooltip)


@node(
    "canny_kornia",
    title="Canny Edges (ComfyUI)",
    category="preprocess",
    description=(
        "Edge map for a canny ControlNet by kornia's Canny detector, thresholds from 0 to 1: "
        "ComfyUI's Canny node (its ControlNet examples), at the image's own size."
    ),
    inputs=[
        IMAGE_IN,
        _unit_threshold("low_threshold", 0.4, "Gradients below this are never edges."),
        _unit_threshold("high_threshold", 0.8, "Gradients above this are always edges."),
    ],
    outputs=IMAGE_OUT,
)
def canny_kornia(ctx, image, low_threshold: float = 0.4, high_threshold: float = 0.8):
    from kornia.filters import canny as kornia_canny

    if low_threshold > high_threshold:
        raise NodeError(f"low_threshold {low_threshold} is above high_threshold {high_threshold}")
    x = image[..., :3].movedim(-1, 1)
    edges = kornia_canny(x, low_threshold, high_threshold)[1]
    return edges.repeat(1, 3, 1, 1).movedim(1, -1).contiguous()


@node(
    "lineart_standard",
    title="Lineart (standard)",
    category="preprocess",
    description="Line drawing from an image by difference of Gaussians; needs no weights.",
    inputs=[
        IMAGE_IN,
        InputSpec(
            "sigma",
            T.FLOAT,
            default=6.0,
            min=0.1,
            max=100.0,
            step=0.1,
            tooltip="Blur used to find lines; larger gives bolder, fewer lines.",
        ),
        InputSpec(
            "threshold",
            T.INT,
            default=8,
            min=0,
            max=255,
            tooltip="Intensity under which differences are ignored.",
        ),
        RESOLUTION,
    ],
    outputs=IMAGE_OUT,
)
def lineart_standard(ctx, image, sigma: float, threshold: int, resolution: int):
    detector = aux_class("lineart_standard", "LineartStandardDetector")()
    return run_detector(
        image,
        lambda im: detector(
            im,
            guassian_sigma=sigma,
            intensity_threshold=threshold,
            detect_resolution=resolution,
            output_type="pil",
        ),
    )


@node(
    "content_shuffle",
    title="Content Shuffle",
    category="preprocess",
    description="Shuffles an image's content with a random smooth warp (for the shuffle ControlNet).",
    inputs=[
        IMAGE_IN,
        InputSpec(
            "seed",
            T.INT,
            default=0,
            min=0,
            max=2**32 - 1,
            seed=True,
            tooltip="The same seed gives the same shuffle.",
        ),
        RESOLUTION,
    ],
    outputs=IMAGE_OUT,
)
def content_shuffle(ctx, image, seed: int, resolution: int):
    import numpy as np

    detector = aux_class("shuffle", "ContentShuffleDetector")()
    # controlnet-aux draws from numpy's global generator: seed it, and put it back after.
    with _numpy_rng_lock:
        state = np.random.get_state()
        try:
            np.random.seed(seed)
            return run_detector(
                image,
                lambda im: detector(
                    im, detect_resolution=resolution, image_resolution=resolution, output_type="pil"
                ),
            )
        finally:
            np.random.set_state(state)


# -- with weights from controlnet_annotators ----------------------------------------------


@dataclass(frozen=True)
class Annotator:
    """One row of the annotator table: a node type whose detector reads weights files.

    ``options`` are the node's inputs between ``image`` and ``resolution``, each with the
    detector keyword it is passed as.
    """

    type_id: str
    title: str
    summary: str
    files: tuple[str, ...]
    build: Callable[[str], Any]
    options: tuple[tuple[InputSpec, str], ...] = ()

    @property
    def description(self) -> str:
        return f"{self.summary} Weights: {', '.join(self.files)}."


def aux_class(module: str, name: str) -> Any:
    """``controlnet_aux.<module>.<name>``, importing that detector's module alone (the
    package's ``__init__`` imports every detector, with timm's model zoo and torch's
    compiler: seconds before a Canny edge is drawn)."""
    from nodes.fastimport import install

    install()
    return getattr(importlib.import_module(f"controlnet_aux.{module}"), name)


def from_pretrained(
    module: str, detector: str, filename: str | None = None
) -> Callable[[str], Any]:
    """A builder: ``controlnet_aux.<module>.<detector>.from_pretrained(folder)``, imported
    when it runs (node modules do not import torch at load time)."""

    def build(folder: str) -> Any:
        cls = aux_class(module, detector)
        return cls.from_pretrained(folder, **({"filename": filename} if filename else {}))

    return build


def switch(name: str, tooltip: str) -> InputSpec:
    return InputSpec(name, T.BOOLEAN, default=False, tooltip=tooltip)


ANNOTATORS: tuple[Annotator, ...] = (
    Annotator(
        "depth_midas",
        "Depth (MiDaS)",
        "Depth map with MiDaS (DPT hybrid).",
        ("dpt_hybrid-midas-501f0c75.pt",),
        from_pretrained("midas", "MidasDetector", "dpt_hybrid-midas-501f0c75.pt"),
    ),
    Annotator(
        "depth_zoe",
        "Depth (Zoe)",
        "Metric depth map with ZoeDepth.",
        ("ZoeD_M12_N.pt",),
        from_pretrained("zoe", "ZoeDetector", "ZoeD_M12_N.pt"),
    ),
    Annotator(
        "openpose",
        "OpenPose",
        "Body (and optionally hand and face) pose skeletons.",
        ("body_pose_model.pth", "hand_pose_model.pth", "facenet.pth"),
        from_pretrained("open_pose", "OpenposeDetector"),
        options=(
            (switch("hands", "Also detect hands."), "include_hand"),
            (switch("face", "Also detect faces."), "include_face"),
        ),
    ),
    Annotator(
        "softedge_hed",
        "Soft Edges (HED)",
        "Soft edge map with HED.",
        ("ControlNetHED.pth",),
        from_pretrained("hed", "HEDdetector", "ControlNetHED.pth"),
        options=((switch("safe", "Quantise edges (the 'safe' variant)."), "safe"),),
    ),
    Annotator(
        "lineart_realistic",
        "Lineart (realistic)",
        "Line drawing with the lineart model.",
        ("sk_model.pth", "sk_model2.pth"),
        from_pretrained("lineart", "LineartDetector"),
        options=((switch("coarse", "Use the coarse model."), "coarse"),),
    ),
    Annotator(
        "normal_bae",
        "Normal Map (BAE)",
        "Surface normal map with NormalBae.",
        ("scannet.pt",),
        from_pretrained("normalbae", "NormalBaeDetector", "scannet.pt"),
    ),
)


def annotator_node(a: Annotator) -> NodeSpec:
    """The node type of one table row: load the detector once, run it on every image."""
    keywords = {spec.name: keyword for spec, keyword in a.options}

    def execute(ctx: Any, image: Any, resolution: int, **options: Any) -> Any:
        detector = load_annotator(ctx, a.type_id, a.files, a.build)
        detector.to(ctx.device)
        kwargs = {keywords[name]: value for name, value in options.items()}
        return run_detector(
            image,
            lambda im: detector(
                im,
                output_type="pil",
                detect_resolution=resolution,
                image_resolution=resolution,
                **kwargs,
            ),
        )

    def fingerprint(params: Mapping[str, Any], ctx: Any) -> str | None:
        try:
            folder = annotator_folder(ctx, a.files)
        except NodeError:
            return None
        return "|".join(ctx.files.of(folder / f, ctx.check_interrupt) for f in a.files)

    return NodeSpec(
        type_id=a.type_id,
        title=a.title,
        category="preprocess",
        execute=execute,
        inputs=(IMAGE_IN, *(spec for spec, _ in a.options), RESOLUTION),
        outputs=tuple(IMAGE_OUT),
        description=a.description,
        fingerprint=fingerprint,
    )


# Module-level names: the registry registers the NodeSpecs it finds at the top level.
depth_midas, depth_zoe, openpose, softedge_hed, lineart_realistic, normal_bae = (
    annotator_node(a) for a in ANNOTATORS
)
