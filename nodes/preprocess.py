"""ControlNet preprocessors from controlnet-aux.

Canny, standard lineart and content shuffle need no weights. The others (depth with
MiDaS or Zoe, openpose, HED soft edges, realistic lineart, normals) read their weights
from a ``controlnet_annotators`` folder of a models root, under the file names of the
lllyasviel/Annotators collection; nothing is downloaded, and a missing file is named.
Pickled annotator weights are only ever read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from studio.errors import NodeError
from studio.graph.spec import InputSpec, OutputSpec, node
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
            if "weights_only" in str(exc) or "Unsupported global" in str(exc):
                raise NodeError(
                    f"{', '.join(files)}: the file holds more than weights, and Studio does not "
                    "run code from model files"
                ) from None
            raise NodeError(
                f"cannot load {', '.join(files)}: {type(exc).__name__}: {exc}"
            ) from None

    detector = ctx.models.get(key, load, nbytes=_detector_nbytes)
    return detector


def _detector_nbytes(detector: Any) -> int:
    from studio.engine.models import module_nbytes

    return module_nbytes(detector)


def _annotator_fingerprint(files: tuple[str, ...]) -> Callable[[dict[str, Any], Any], str | None]:
    def fingerprint(params: dict[str, Any], ctx: Any) -> str | None:
        try:
            folder = annotator_folder(ctx, files)
        except NodeError:
            return None
        return "|".join(ctx.files.of(folder / f, ctx.check_interrupt) for f in files)

    return fingerprint


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
    from controlnet_aux.canny import CannyDetector

    detector = CannyDetector()
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
    from controlnet_aux.lineart_standard import LineartStandardDetector

    detector = LineartStandardDetector()
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
    from controlnet_aux.shuffle import ContentShuffleDetector

    detector = ContentShuffleDetector()
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

MIDAS_FILES = ("dpt_hybrid-midas-501f0c75.pt",)
ZOE_FILES = ("ZoeD_M12_N.pt",)
OPENPOSE_FILES = ("body_pose_model.pth", "hand_pose_model.pth", "facenet.pth")
HED_FILES = ("ControlNetHED.pth",)
LINEART_FILES = ("sk_model.pth", "sk_model2.pth")
NORMAL_FILES = ("scannet.pt",)


def _detect_with(ctx: Any, image: Any, detector: Any, **kwargs: Any) -> Any:
    detector.to(ctx.device)
    return run_detector(image, lambda im: detector(im, output_type="pil", **kwargs))


@node(
    "depth_midas",
    title="Depth (MiDaS)",
    category="preprocess",
    description="Depth map with MiDaS (DPT hybrid). Weights: dpt_hybrid-midas-501f0c75.pt.",
    inputs=[IMAGE_IN, RESOLUTION],
    outputs=IMAGE_OUT,
    fingerprint=_annotator_fingerprint(MIDAS_FILES),
)
def depth_midas(ctx, image, resolution: int):
    def build(folder: str) -> Any:
        from controlnet_aux.midas import MidasDetector

        return MidasDetector.from_pretrained(folder, filename=MIDAS_FILES[0])

    det = load_annotator(ctx, "midas", MIDAS_FILES, build)
    return _detect_with(ctx, image, det, detect_resolution=resolution, image_resolution=resolution)


@node(
    "depth_zoe",
    title="Depth (Zoe)",
    category="preprocess",
    description="Metric depth map with ZoeDepth. Weights: ZoeD_M12_N.pt.",
    inputs=[IMAGE_IN, RESOLUTION],
    outputs=IMAGE_OUT,
    fingerprint=_annotator_fingerprint(ZOE_FILES),
)
def depth_zoe(ctx, image, resolution: int):
    def build(folder: str) -> Any:
        from controlnet_aux.zoe import ZoeDetector

        return ZoeDetector.from_pretrained(folder, filename=ZOE_FILES[0])

    det = load_annotator(ctx, "zoe", ZOE_FILES, build)
    return _detect_with(ctx, image, det, detect_resolution=resolution, image_resolution=resolution)


@node(
    "openpose",
    title="OpenPose",
    category="preprocess",
    description=(
        "Body (and optionally hand and face) pose skeletons. Weights: body_pose_model.pth, "
        "hand_pose_model.pth, facenet.pth."
    ),
    inputs=[
        IMAGE_IN,
        InputSpec("hands", T.BOOLEAN, default=False, tooltip="Also detect hands."),
        InputSpec("face", T.BOOLEAN, default=False, tooltip="Also detect faces."),
        RESOLUTION,
    ],
    outputs=IMAGE_OUT,
    fingerprint=_annotator_fingerprint(OPENPOSE_FILES),
)
def openpose(ctx, image, hands: bool, face: bool, resolution: int):
    def build(folder: str) -> Any:
        from controlnet_aux.open_pose import OpenposeDetector

        return OpenposeDetector.from_pretrained(folder)

    det = load_annotator(ctx, "openpose", OPENPOSE_FILES, build)
    return _detect_with(
        ctx,
        image,
        det,
        detect_resolution=resolution,
        image_resolution=resolution,
        include_hand=hands,
        include_face=face,
    )


@node(
    "softedge_hed",
    title="Soft Edges (HED)",
    category="preprocess",
    description="Soft edge map with HED. Weights: ControlNetHED.pth.",
    inputs=[
        IMAGE_IN,
        InputSpec("safe", T.BOOLEAN, default=False, tooltip="Quantise edges (the 'safe' variant)."),
        RESOLUTION,
    ],
    outputs=IMAGE_OUT,
    fingerprint=_annotator_fingerprint(HED_FILES),
)
def softedge_hed(ctx, image, safe: bool, resolution: int):
    def build(folder: str) -> Any:
        from controlnet_aux.hed import HEDdetector

        return HEDdetector.from_pretrained(folder, filename=HED_FILES[0])

    det = load_annotator(ctx, "hed", HED_FILES, build)
    return _detect_with(
        ctx, image, det, detect_resolution=resolution, image_resolution=resolution, safe=safe
    )


@node(
    "lineart_realistic",
    title="Lineart (realistic)",
    category="preprocess",
    description="Line drawing with the lineart model. Weights: sk_model.pth, sk_model2.pth.",
    inputs=[
        IMAGE_IN,
        InputSpec("coarse", T.BOOLEAN, default=False, tooltip="Use the coarse model."),
        RESOLUTION,
    ],
    outputs=IMAGE_OUT,
    fingerprint=_annotator_fingerprint(LINEART_FILES),
)
def lineart_realistic(ctx, image, coarse: bool, resolution: int):
    def build(folder: str) -> Any:
        from controlnet_aux.lineart import LineartDetector

        return LineartDetector.from_pretrained(folder)

    det = load_annotator(ctx, "lineart", LINEART_FILES, build)
    return _detect_with(
        ctx, image, det, detect_resolution=resolution, image_resolution=resolution, coarse=coarse
    )


@node(
    "normal_bae",
    title="Normal Map (BAE)",
    category="preprocess",
    description="Surface normal map with NormalBae. Weights: scannet.pt.",
    inputs=[IMAGE_IN, RESOLUTION],
    outputs=IMAGE_OUT,
    fingerprint=_annotator_fingerprint(NORMAL_FILES),
)
def normal_bae(ctx, image, resolution: int):
    def build(folder: str) -> Any:
        from controlnet_aux.normalbae import NormalBaeDetector

        return NormalBaeDetector.from_pretrained(folder, filename=NORMAL_FILES[0])

    det = load_annotator(ctx, "normal_bae", NORMAL_FILES, build)
    return _detect_with(ctx, image, det, detect_resolution=resolution, image_resolution=resolution)
