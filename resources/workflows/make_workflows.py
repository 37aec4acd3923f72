"""Write the default workflows (``resources/workflows/*.json``) and the example images they
load (``resources/images/*.png``).

Every workflow runs on the embedded model studio-tiny (64x64 images). Node ids are derived
from the workflow and the node's role (uuid5), so running this again gives the same bytes;
a test checks that the committed files equal what this script writes. Run it after
changing a default (or a companion model's name):

    .venv/bin/python resources/workflows/make_workflows.py
"""

from __future__ import annotations

import functools
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from studio.graph.fileformat import dumps_workflow  # noqa: E402
from studio.graph.workflow import Note, Workflow  # noqa: E402
from studio.library import installed_registry  # noqa: E402

IMAGES = ROOT / "resources" / "images"
NAMESPACE = uuid.UUID("5d3c6a0e-7f1b-4c1e-9a57-0c2a4f6b9d10")

CHECKPOINT = "studio-tiny"
SIZE = 64
STEPS = 20
CFG = 3.0  # studio-tiny is cleanest at cfg 3 with no loss of adherence (training/README.md)
#: txt2img's own cfg: at 2 seeds vary the shape's place and size nearly as the training data
#: does for a caption (0.048 / 0.041 of the side against the data's 0.058 / 0.053; cfg 3: 0.030
#: / 0.029), still as clean and as faithful to the caption (training/README.md, "Seed variety").
#: img2img, inpaint and the others keep cfg 3: their layout comes from the picture.
TXT2IMG_CFG = 2.0
SAMPLER = "euler"
SCHEDULER = "normal"
NEGATIVE = ""  # studio-tiny learned guidance against the empty prompt

#: The example image the img2img, inpaint and ControlNet workflows load, and its scene.
EXAMPLE_IMAGE = "example_red_circle_left.png"
EXAMPLE_CAPTION = "a large red circle on a blue background, left"
#: White (1) over the left half: the area inpaint.json repaints.
EXAMPLE_MASK = "example_mask_left_half.png"

#: Companion models, written by training/train_controlnet.py, train_lora.py and
#: train_upscaler.py. Fixed names (not whatever is on disk), so this script's output does not
#: depend on which models a checkout has; a workflow whose model is missing says so when run.
CONTROLNET = "studio-tiny-canny"
LORA = "studio-tiny-outline.safetensors"
UPSCALER = "studio-tiny-x4.safetensors"

# Layout: columns left to right, nodes stacked in a column. Heights follow the canvas's
# node geometry (studio/app/canvas/shape.py) plus room for the picture some nodes show
# after a run and the status line under every node, so nothing overlaps once it has run.
COLUMN = 300.0
GAP = 60.0
NODE_WIDTH = 230.0
TITLE_H, ROW_H = 28.0, 22.0
IMAGE_ROOM = NODE_WIDTH - 16.0 + 8.0
MESSAGE_ROOM = 56.0
SHOWS_IMAGE = {"load_image", "sampler", "save_image", "preview_image"}
NOTE_SIZE = (560.0, 110.0)


def node_height(wf: Workflow, type_id: str) -> float:
    """The node's height on the canvas once it has run (image and status line included)."""
    spec = wf.registry[type_id]
    links = [i for i in spec.inputs if not i.is_param]
    h = TITLE_H + 4.0 + ROW_H * max(len(links), len(spec.outputs))
    params = list(spec.params)
    if params and (links or spec.outputs):
        h += 4.0
    for p in params:
        h += ROW_H * (4 if getattr(p, "multiline", False) else 1)
    h += 6.0
    if type_id in SHOWS_IMAGE:
        h += IMAGE_ROOM
    return h + MESSAGE_ROOM


@dataclass
class Builder:
    """Adds nodes by role into columns and links them by role."""

    name: str
    wf: Workflow = field(default_factory=lambda: Workflow(installed_registry()))
    ids: dict[str, str] = field(default_factory=dict)
    column_y: dict[int, float] = field(default_factory=dict)

    def add(
        self, role: str, type_id: str, col: int, params: dict[str, Any] | None = None, title=""
    ) -> str:
        node_id = str(uuid.uuid5(NAMESPACE, f"{self.name}/{role}"))
        y = self.column_y.get(col, 0.0)
        self.wf.add_node(type_id, params, title=title, id=node_id, pos=(col * COLUMN, y))
        self.column_y[col] = y + node_height(self.wf, type_id) + GAP
        self.ids[role] = node_id
        return node_id

    def link(self, source: str, output: str, target: str, input: str) -> None:
        link_id = str(uuid.uuid5(NAMESPACE, f"{self.name}/{source}.{output}->{target}.{input}"))
        self.wf.connect(self.ids[source], output, self.ids[target], input, id=link_id)

    def note(self, text: str) -> None:
        w, h = NOTE_SIZE
        note_id = str(uuid.uuid5(NAMESPACE, f"{self.name}/note"))
        self.wf.set_notes([Note(id=note_id, text=text, pos=(0.0, -h - GAP), size=(w, h))])


def sampler_params(seed: int, denoise: float = 1.0, steps: int = STEPS, cfg: float = CFG) -> dict:
    return {
        "seed": seed,
        "steps": steps,
        "cfg": cfg,
        "sampler": SAMPLER,
        "scheduler": SCHEDULER,
        "denoise": denoise,
    }


def prompts(b: Builder, col: int, text: str) -> None:
    b.add("positive", "text_encode", col, {"text": text}, title="Prompt")
    b.add("negative", "text_encode", col, {"text": NEGATIVE}, title="Negative prompt")
    b.link("checkpoint", "clip", "positive", "clip")
    b.link("checkpoint", "clip", "negative", "clip")


def sample(b: Builder, role: str, col: int, latent: str, params: dict, model="checkpoint"):
    b.add(role, "sampler", col, params)
    b.link(model, "model", role, "model")
    b.link("positive", "conditioning", role, "positive")
    b.link("negative", "conditioning", role, "negative")
    b.link(latent, "latent", role, "latent")


def decode_and_save(b: Builder, col: int, latent: str, prefix: str, decode="decode") -> None:
    b.add(decode, "vae_decode", col)
    b.link(latent, "latent", decode, "latent")
    b.link("checkpoint", "vae", decode, "vae")
    b.add("save", "save_image", col + 1, {"filename_prefix": prefix})
    b.link(decode, "image", "save", "images")


# -- the workflows --------------------------------------------------------------------------


@dataclass(frozen=True)
class Family:
    """What a text-to-image workflow changes with the model family: its name, the
    embedded checkpoint, the sampler's steps and cfg, the note above it, and the guidance
    interval's start (0: guided from the first step; else studio.recipes.guide_from's
    nodes, which let seeds vary the layout as the training data does)."""

    name: str
    checkpoint: str
    steps: int
    cfg: float
    note: str
    guidance_start: float = 0.0


def txt2img(family: Family) -> Workflow:
    """Load Checkpoint -> prompts and an empty latent -> Sampler -> VAE Decode -> Save."""
    b = Builder(family.name)
    b.note(family.note)
    b.add("checkpoint", "load_checkpoint", 0, {"ckpt_name": family.checkpoint})
    prompts(b, 1, "a large yellow triangle on a purple background, right")
    b.add("latent", "empty_latent", 1, {"width": SIZE, "height": SIZE, "batch_size": 1})
    params = sampler_params(seed=0, steps=family.steps, cfg=family.cfg)
    col = 2
    if family.guidance_start > 0:
        guide_from(b, col, family.guidance_start)
        col += 2
    sample(b, "sampler", col, "latent", params)
    if family.guidance_start > 0:
        b.link("guided_negative", "conditioning", "sampler", "negative")
    decode_and_save(b, col + 1, "sampler", family.name)
    return b.wf


def guide_from(b: Builder, col: int, start: float) -> None:
    """studio.recipes.guide_from laid out: the negative prompt from ``start`` on and the
    positive before it (Conditioning Set Timestep Range), combined, in columns ``col`` and
    ``col + 1``; the caller links ``guided_negative`` to the Sampler's negative."""
    b.add("late_negative", "conditioning_set_timestep_range", col, {"start": start, "end": 1.0},
          title="Negative prompt, guided steps")  # fmt: skip
    b.add("early_positive", "conditioning_set_timestep_range", col, {"start": 0.0, "end": start},
          title="Prompt as negative: unguided first steps")  # fmt: skip
    b.add("guided_negative", "conditioning_combine", col + 1, title="Guidance interval")
    b.link("negative", "conditioning", "late_negative", "conditioning")
    b.link("positive", "conditioning", "early_positive", "conditioning")
    b.link("late_negative", "conditioning", "guided_negative", "conditioning_1")
    b.link("early_positive", "conditioning", "guided_negative", "conditioning_2")


TXT2IMG = Family(
    "txt2img",
    CHECKPOINT,
    STEPS,
    TXT2IMG_CFG,
    "Text to image: the prompt is encoded, the sampler denoises an empty 64x64 latent "
    "for 20 steps, and the VAE decodes it. studio-tiny knows captions like "
    "'a [small|large] <colour> <circle|square|triangle> on a <colour> background, "
    "<left|right|top|bottom|center>'.",
)


def img2img() -> Workflow:
    b = Builder("img2img")
    b.note(
        "Image to image: the example picture (a red circle) is encoded, noised part of the "
        "way (denoise 0.6) and sampled again with a new prompt: the colours and the layout "
        "stay, the circle becomes a square. Lower denoise keeps more of the picture."
    )
    b.add("checkpoint", "load_checkpoint", 0, {"ckpt_name": CHECKPOINT})
    b.add("image", "load_image", 0, {"image": EXAMPLE_IMAGE})
    prompts(b, 1, "a large red square on a blue background, left")
    b.add("encode", "vae_encode", 1)
    b.link("image", "image", "encode", "image")
    b.link("checkpoint", "vae", "encode", "vae")
    sample(b, "sampler", 2, "encode", sampler_params(seed=0, denoise=0.6))
    decode_and_save(b, 3, "sampler", "img2img")
    return b.wf


def inpaint() -> Workflow:
    b = Builder("inpaint")
    b.note(
        "Inpainting: the sampler only changes the latent under the mask painted on the "
        "picture (here the left half), following the new prompt; Composite then puts the rest "
        "back pixel for pixel. Right-click the picture, Paint mask (or Inpaint in the viewer), "
        "paint where the picture should change, then Ctrl+Enter."
    )
    b.add("checkpoint", "load_checkpoint", 0, {"ckpt_name": CHECKPOINT})
    b.add(
        "image",
        "load_image",
        0,
        {"image": EXAMPLE_IMAGE, "mask": example_mask_data()},
        title="Load Image (picture)",
    )
    prompts(b, 1, "a large yellow circle on a blue background, left")
    b.add("encode", "vae_encode", 2)
    b.link("image", "image", "encode", "image")
    b.link("checkpoint", "vae", "encode", "vae")
    b.add("noise_mask", "set_latent_noise_mask", 2)
    b.link("encode", "latent", "noise_mask", "latent")
    # The mask painted on the picture (Load Image's mask output) is the one used: painting a
    # new one is all it takes to inpaint somewhere else.
    b.link("image", "mask", "noise_mask", "mask")
    # Below 1, the masked area starts from the picture's own latent: studio-tiny is not an
    # inpainting model, and from pure noise it tends to centre a new shape on the seam.
    sample(b, "sampler", 3, "noise_mask", sampler_params(seed=0, denoise=0.9))
    b.add("decode", "vae_decode", 4)
    b.link("sampler", "latent", "decode", "latent")
    b.link("checkpoint", "vae", "decode", "vae")
    b.add("composite", "composite_masked", 4)
    b.link("image", "image", "composite", "original")
    b.link("decode", "image", "composite", "changed")
    b.link("image", "mask", "composite", "mask")
    b.add("save", "save_image", 5, {"filename_prefix": "inpaint"})
    b.link("composite", "image", "save", "images")
    return b.wf


def example_mask_data() -> str:
    """The left-half mask as Load Image stores a painted mask (a base64 grayscale PNG)."""
    import base64

    return base64.b64encode(png_bytes(example_images()[EXAMPLE_MASK])).decode("ascii")


def controlnet() -> Workflow:
    b = Builder("controlnet")
    b.note(
        "ControlNet: the canny edges of the example picture steer where the shape goes and "
        "what outline it has, while the prompt (with no position word) chooses the colours. "
        "Try another picture, or lower the strength."
    )
    b.add("checkpoint", "load_checkpoint", 0, {"ckpt_name": CHECKPOINT})
    b.add("image", "load_image", 0, {"image": EXAMPLE_IMAGE})
    b.add(
        "controlnet",
        "load_controlnet",
        0,
        {"control_net_name": CONTROLNET},
    )
    prompts(b, 1, "a large green circle on a white background")
    b.add("canny", "canny", 1, {"low_threshold": 100, "high_threshold": 200, "resolution": SIZE})
    b.link("image", "image", "canny", "image")
    b.add("latent", "empty_latent", 1, {"width": SIZE, "height": SIZE, "batch_size": 1})
    b.add(
        "apply", "apply_controlnet", 2, {"strength": 1.0, "start_percent": 0.0, "end_percent": 1.0}
    )
    b.link("positive", "conditioning", "apply", "positive")
    b.link("negative", "conditioning", "apply", "negative")
    b.link("controlnet", "control_net", "apply", "control_net")
    b.link("canny", "image", "apply", "image")
    b.add("edges", "preview_image", 2, title="Preview Image (edges)")
    b.link("canny", "image", "edges", "images")
    b.add("sampler", "sampler", 3, sampler_params(seed=0))
    b.link("checkpoint", "model", "sampler", "model")
    b.link("apply", "positive", "sampler", "positive")
    b.link("apply", "negative", "sampler", "negative")
    b.link("latent", "latent", "sampler", "latent")
    decode_and_save(b, 4, "sampler", "controlnet")
    return b.wf


def lora() -> Workflow:
    b = Builder("lora")
    b.note(
        "LoRA: Load LoRA patches the model with the tiny 'outline' LoRA (kohya layout), so "
        "shapes are drawn as outlines; it needs no trigger word. Set strength_model to 0 to "
        "see the plain model's filled shape, or to 0.5 for something between."
    )
    b.add("checkpoint", "load_checkpoint", 0, {"ckpt_name": CHECKPOINT})
    b.add(
        "lora",
        "load_lora",
        1,
        {
            "lora_name": LORA,
            "strength_model": 1.0,
            "strength_clip": 1.0,
        },
    )
    b.link("checkpoint", "model", "lora", "model")
    b.link("checkpoint", "clip", "lora", "clip")
    b.add(
        "positive",
        "text_encode",
        2,
        {"text": "a large red circle on a blue background, left"},
        title="Prompt",
    )
    b.add("negative", "text_encode", 2, {"text": NEGATIVE}, title="Negative prompt")
    b.link("lora", "clip", "positive", "clip")
    b.link("lora", "clip", "negative", "clip")
    b.add("latent", "empty_latent", 2, {"width": SIZE, "height": SIZE, "batch_size": 1})
    sample(b, "sampler", 3, "latent", sampler_params(seed=0), model="lora")
    decode_and_save(b, 4, "sampler", "lora")
    return b.wf


def merge_models() -> Workflow:
    b = Builder("merge_models")
    b.note(
        "Merging: Merge Models mixes two models weight by weight, here studio-tiny with its "
        "'outline' LoRA folded in (model1) and studio-tiny itself (model2), half of each: "
        "shapes come out between filled and outlined. Move ratio towards 1 for more of "
        "model1. Save Checkpoint writes the merge as one .safetensors under the output "
        "folder's checkpoints/ (move it to models/checkpoints to load it)."
    )
    b.add("checkpoint", "load_checkpoint", 0, {"ckpt_name": CHECKPOINT})
    b.add("lora", "load_lora", 1, {"lora_name": LORA, "strength_model": 1.0,
                                   "strength_clip": 1.0})  # fmt: skip
    b.link("checkpoint", "model", "lora", "model")
    b.link("checkpoint", "clip", "lora", "clip")
    b.add("merge", "merge_models", 2, {"ratio": 0.5})
    b.link("lora", "model", "merge", "model1")
    b.link("checkpoint", "model", "merge", "model2")
    b.add("save_checkpoint", "save_checkpoint", 2,
          {"filename_prefix": "checkpoints/studio-tiny-half-outline"})  # fmt: skip
    b.link("merge", "model", "save_checkpoint", "model")
    b.link("checkpoint", "clip", "save_checkpoint", "clip")
    b.link("checkpoint", "vae", "save_checkpoint", "vae")
    prompts(b, 3, "a large red circle on a blue background, left")
    b.add("latent", "empty_latent", 3, {"width": SIZE, "height": SIZE, "batch_size": 1})
    sample(b, "sampler", 4, "latent", sampler_params(seed=0), model="merge")
    decode_and_save(b, 5, "sampler", "merge_models")
    return b.wf


def hires_upscale() -> Workflow:
    b = Builder("hires_upscale")
    b.note(
        "Hires fix: a first 64x64 pass; the tiny x4 upscale model enlarges the picture and "
        "Scale Image halves it to 128x128 (studio-tiny draws best near its own size); then a "
        "second sampler pass at denoise 0.5 redraws the edges sharp at the larger size."
    )
    b.add("checkpoint", "load_checkpoint", 0, {"ckpt_name": CHECKPOINT})
    prompts(b, 1, "a large white square on a green background, center")
    b.add("latent", "empty_latent", 1, {"width": SIZE, "height": SIZE, "batch_size": 1})
    sample(b, "first", 2, "latent", sampler_params(seed=0))
    b.wf.set_title(b.ids["first"], "Sampler (first pass)")
    b.add("first_decode", "vae_decode", 3)
    b.link("first", "latent", "first_decode", "latent")
    b.link("checkpoint", "vae", "first_decode", "vae")
    b.add("upscaler", "load_upscale_model", 3, {"model_name": UPSCALER})
    b.add("upscale", "upscale_image", 4, {"tile_size": 0, "overlap": 0})
    b.link("upscaler", "upscale_model", "upscale", "upscale_model")
    b.link("first_decode", "image", "upscale", "image")
    b.add("resize", "scale_image", 4, {"mode": "factor", "factor": 0.5, "method": "lanczos"})
    b.link("upscale", "image", "resize", "image")
    b.add("encode", "vae_encode", 5)
    b.link("resize", "image", "encode", "image")
    b.link("checkpoint", "vae", "encode", "vae")
    sample(b, "second", 6, "encode", sampler_params(seed=0, denoise=0.5))
    b.wf.set_title(b.ids["second"], "Sampler (second pass)")
    decode_and_save(b, 7, "second", "hires")
    return b.wf


#: The embedded flow-matching model (SD3 layout: MMDiT, two CLIP encoders, no T5), trained by
#: training/ into resources/models/checkpoints/studio-tiny-flow (a diffusers folder).
FLOW_CHECKPOINT = "studio-tiny-flow"
FLOW_STEPS = 8
FLOW_CFG = 3.0
#: No guidance for the first 40 % of studio-tiny-flow's sampling: seeds vary the layout more,
#: adherence stays (training/README.md, "Seed variety"; training.flow_models).
FLOW_GUIDANCE_START = 0.4
#: Flux.1 as artists have it in ComfyUI's folders (not shipped: real weights are GBs).
FLUX_MODEL = "flux1-dev.safetensors"
FLUX_CLIP_L = "clip_l.safetensors"
FLUX_T5 = "t5xxl_fp8_e4m3fn.safetensors"
FLUX_VAE = "ae.safetensors"

TXT2IMG_SD3 = Family(
    "txt2img_sd3",
    FLOW_CHECKPOINT,
    FLOW_STEPS,
    FLOW_CFG,
    "Text to image with a flow-matching transformer in the Stable Diffusion 3 layout "
    "(studio-tiny-flow: an MMDiT with two CLIP text encoders). Load Checkpoint also opens "
    "SD3.5 all-in-one files and diffusers folders; flow matching needs few steps (8 here). "
    "The negative prompt only acts from 40 % of the sampling on: unguided first steps let "
    "seeds vary where the shape goes and its size.",
    FLOW_GUIDANCE_START,
)


#: The embedded Flux-layout sibling (FluxTransformer2DModel, CLIP + a tiny T5), distilled from
#: studio-tiny-flow by training/train_flow.py --family flux --teacher (training/README.md) into
#: resources/models/checkpoints/studio-tiny-flux. Were it not there, txt2img_flux.json would
#: only be the template for Flux files artists bring.
FLUX_CHECKPOINT = "studio-tiny-flux"
TINY_FLUX_PRESENT = (ROOT / "resources" / "models" / "checkpoints" / FLUX_CHECKPOINT).is_dir()

TXT2IMG_FLUX = Family(
    "txt2img_flux",
    FLUX_CHECKPOINT,
    FLOW_STEPS,
    FLOW_CFG,
    "Text to image with a transformer in the Flux.1 layout (studio-tiny-flux: double- and "
    "single-stream blocks, CLIP and T5 text encoders). It has no guidance input (like Flux "
    "schnell), so it runs with true CFG against the negative prompt (cfg 3), acting from 40 % "
    "of the sampling on, as txt2img_sd3's. Load Checkpoint also opens Flux diffusers folders; "
    "the template txt2img_flux loads Flux.1 dev's files.",
    FLOW_GUIDANCE_START,
)


def flux_files(b: Builder, unet_name: str) -> None:
    """The Flux.1 files artists have: the transformer (fp8), CLIP-L + T5, the VAE."""
    b.add(
        "checkpoint",
        "load_diffusion_model",
        0,
        {"unet_name": unet_name, "weight_dtype": "fp8_e4m3fn"},
    )
    b.add(
        "clip",
        "load_text_encoders",
        0,
        {"clip_name1": FLUX_CLIP_L, "clip_name2": FLUX_T5, "type": "flux"},
    )
    b.add("vae", "load_vae", 0, {"vae_name": FLUX_VAE, "latent_scale": "flux"})


def txt2img_flux() -> Workflow:
    b = Builder("txt2img_flux")
    b.note(
        "Flux.1 dev from separate files, as ComfyUI keeps them: the transformer in "
        "diffusion_models (fp8 halves its memory; .gguf files work too), CLIP-L and T5-XXL in "
        "text_encoders, the 16-channel VAE in vae. Flux dev takes its guidance from Flux "
        "Guidance and runs with cfg 1 (no negative prompt)."
    )
    flux_files(b, FLUX_MODEL)
    b.add("prompt", "text_encode", 1, {"text": "a red fox reading a book"}, title="Prompt")
    b.add("negative", "text_encode", 1, {"text": ""}, title="Negative prompt (unused at cfg 1)")
    b.link("clip", "clip", "prompt", "clip")
    b.link("clip", "clip", "negative", "clip")
    b.add("positive", "flux_guidance", 2, {"guidance": 3.5})
    b.link("prompt", "conditioning", "positive", "conditioning")
    b.add("latent", "empty_latent", 2, {"width": 1024, "height": 1024, "batch_size": 1})
    params = {**sampler_params(seed=0, steps=20, cfg=1.0), "scheduler": "simple"}
    sample(b, "sampler", 3, "latent", params)
    b.add("decode", "vae_decode", 4)
    b.link("sampler", "latent", "decode", "latent")
    b.link("vae", "vae", "decode", "vae")
    b.add("save", "save_image", 5, {"filename_prefix": "txt2img_flux"})
    b.link("decode", "image", "save", "images")
    return b.wf


FLUX_FILL_MODEL = "flux1-fill-dev.safetensors"


def inpaint_flux_fill() -> Workflow:
    b = Builder("inpaint_flux_fill")
    b.note(
        "FLUX.1 Fill [dev] repaints the masked area of the picture (inpainting; for "
        "outpainting, pad the picture and mask the new border). VAE Encode for Inpaint gives "
        "the model the picture and the mask painted on it (right-click the picture, Paint "
        "mask); Fill takes guidance 30 and cfg 1. Composite keeps the unmasked pixels."
    )
    flux_files(b, FLUX_FILL_MODEL)
    b.add(
        "image",
        "load_image",
        0,
        {"image": EXAMPLE_IMAGE, "mask": example_mask_data()},
        title="Load Image (picture)",
    )
    b.add("prompt", "text_encode", 1, {"text": "a yellow star"}, title="Prompt")
    b.add("negative", "text_encode", 1, {"text": ""}, title="Negative prompt (unused at cfg 1)")
    b.link("clip", "clip", "prompt", "clip")
    b.link("clip", "clip", "negative", "clip")
    b.add("positive", "flux_guidance", 2, {"guidance": 30.0})
    b.link("prompt", "conditioning", "positive", "conditioning")
    b.add("encode", "vae_encode_inpaint", 2, {"grow_mask_by": 0})
    b.link("image", "image", "encode", "pixels")
    b.link("vae", "vae", "encode", "vae")
    b.link("image", "mask", "encode", "mask")
    params = {**sampler_params(seed=0, steps=28, cfg=1.0), "scheduler": "normal"}
    sample(b, "sampler", 3, "encode", params)
    b.add("decode", "vae_decode", 4)
    b.link("sampler", "latent", "decode", "latent")
    b.link("vae", "vae", "decode", "vae")
    b.add("composite", "composite_masked", 4)
    b.link("image", "image", "composite", "original")
    b.link("decode", "image", "composite", "changed")
    b.link("image", "mask", "composite", "mask")
    b.add("save", "save_image", 5, {"filename_prefix": "inpaint_flux_fill"})
    b.link("composite", "image", "save", "images")
    return b.wf


FLUX_CANNY_MODEL = "flux1-canny-dev.safetensors"


def flux_canny() -> Workflow:
    b = Builder("flux_canny")
    b.note(
        "FLUX.1 Canny [dev] draws what the prompt says along the edges of the picture "
        "(scaled to 1024 pixels, Canny Edges). InstructPixToPix Conditioning gives the model "
        "the edge map and the Sampler an empty latent of its size; Canny takes guidance 30 "
        "and cfg 1. For FLUX.1 Depth [dev] load flux1-depth-dev.safetensors, put a depth map "
        "(Depth (MiDaS), Depth (Zoe)) in place of Canny Edges and set guidance 10."
    )
    flux_files(b, FLUX_CANNY_MODEL)
    b.add("image", "load_image", 0, {"image": EXAMPLE_IMAGE}, title="Load Image (to follow)")
    b.add("scale", "scale_image", 1, {"mode": "size", "width": 1024, "height": 1024})
    b.link("image", "image", "scale", "image")
    b.add("edges", "canny", 1, {"low_threshold": 100, "high_threshold": 200, "resolution": 1024})
    b.link("scale", "image", "edges", "image")
    b.add("prompt", "text_encode", 1, {"text": "a glass sculpture of a ball"}, title="Prompt")
    b.add("negative", "text_encode", 1, {"text": ""}, title="Negative prompt (unused at cfg 1)")
    b.link("clip", "clip", "prompt", "clip")
    b.link("clip", "clip", "negative", "clip")
    b.add("guidance", "flux_guidance", 2, {"guidance": 30.0})
    b.link("prompt", "conditioning", "guidance", "conditioning")
    b.add("control", "instruct_pix2pix_conditioning", 2)
    b.link("guidance", "conditioning", "control", "positive")
    b.link("negative", "conditioning", "control", "negative")
    b.link("vae", "vae", "control", "vae")
    b.link("edges", "image", "control", "pixels")
    params = {**sampler_params(seed=0, steps=28, cfg=1.0), "scheduler": "normal"}
    b.add("sampler", "sampler", 3, params)
    b.link("checkpoint", "model", "sampler", "model")
    b.link("control", "positive", "sampler", "positive")
    b.link("control", "negative", "sampler", "negative")
    b.link("control", "latent", "sampler", "latent")
    b.add("decode", "vae_decode", 4)
    b.link("sampler", "latent", "decode", "latent")
    b.link("vae", "vae", "decode", "vae")
    b.add("save", "save_image", 5, {"filename_prefix": "flux_canny"})
    b.link("decode", "image", "save", "images")
    return b.wf


FLUX_REDUX_MODEL = "flux1-redux-dev.safetensors"
SIGLIP_MODEL = "sigclip_vision_patch14_384.safetensors"


def variation_flux_redux() -> Workflow:
    b = Builder("variation_flux_redux")
    b.note(
        "FLUX.1 Redux [dev] makes variations of a reference picture: CLIP Vision Encode "
        "(SigLIP, in clip_vision) encodes it, Apply Style Model (Redux, in style_models) "
        "adds it to the Flux dev prompt. The prompt can steer it; lower the strength to let "
        "the prompt count more."
    )
    flux_files(b, FLUX_MODEL)
    b.add("vision", "load_clip_vision", 0, {"clip_name": SIGLIP_MODEL})
    b.add("style", "load_style_model", 0, {"style_model_name": FLUX_REDUX_MODEL})
    b.add("image", "load_image", 1, {"image": EXAMPLE_IMAGE}, title="Load Image (reference)")
    b.add("prompt", "text_encode", 1, {"text": "a painting"}, title="Prompt")
    b.add("negative", "text_encode", 1, {"text": ""}, title="Negative prompt (unused at cfg 1)")
    b.link("clip", "clip", "prompt", "clip")
    b.link("clip", "clip", "negative", "clip")
    b.add("encode", "clip_vision_encode", 2, {"crop": "center"})
    b.link("vision", "clip_vision", "encode", "clip_vision")
    b.link("image", "image", "encode", "image")
    b.add("guided", "flux_guidance", 2, {"guidance": 3.5})
    b.link("prompt", "conditioning", "guided", "conditioning")
    b.add("positive", "apply_style_model", 2, {"strength": 1.0, "strength_type": "multiply"})
    b.link("guided", "conditioning", "positive", "conditioning")
    b.link("style", "style_model", "positive", "style_model")
    b.link("encode", "clip_vision_output", "positive", "clip_vision_output")
    b.add("latent", "empty_latent", 2, {"width": 1024, "height": 1024, "batch_size": 1})
    params = {**sampler_params(seed=0, steps=20, cfg=1.0), "scheduler": "simple"}
    sample(b, "sampler", 3, "latent", params)
    b.add("decode", "vae_decode", 4)
    b.link("sampler", "latent", "decode", "latent")
    b.link("vae", "vae", "decode", "vae")
    b.add("save", "save_image", 5, {"filename_prefix": "variation_flux_redux"})
    b.link("decode", "image", "save", "images")
    return b.wf


WORKFLOWS: dict[str, Callable[[], Workflow]] = {
    "txt2img": functools.partial(txt2img, TXT2IMG),
    "img2img": img2img,
    "inpaint": inpaint,
    "controlnet": controlnet,
    "lora": lora,
    "merge_models": merge_models,
    "hires_upscale": hires_upscale,
    "txt2img_sd3": functools.partial(txt2img, TXT2IMG_SD3),
    "txt2img_flux": txt2img_flux,
    "inpaint_flux_fill": inpaint_flux_fill,
    "flux_canny": flux_canny,
    "variation_flux_redux": variation_flux_redux,
}


# -- the example images ---------------------------------------------------------------------


def example_images() -> dict[str, Any]:
    """PIL images by file name: the example picture (rendered like the training data) and
    the left-half mask."""
    from PIL import Image

    from training.data import Scene, render

    scene = Scene(
        shape="circle",
        color="red",
        background="blue",
        size_word="large",
        position="left",
        radius=0.22,
        cx=0.27,
        cy=0.5,
    )
    assert scene.caption == EXAMPLE_CAPTION
    picture = Image.fromarray(render(scene, SIZE), "RGB")
    mask = Image.new("L", (SIZE, SIZE), 0)
    mask.paste(255, (0, 0, SIZE // 2, SIZE))
    return {EXAMPLE_IMAGE: picture, EXAMPLE_MASK: mask}


def png_bytes(image: Any) -> bytes:
    import io

    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False, compress_level=9)
    return buf.getvalue()


#: Workflows wired for model files artists bring (Flux.1's are not on this machine and no
#: tiny Flux model ships): they live in templates/, apart from the default workflows, which
#: all run offline on the embedded models.
NEEDS_OWN_FILES = frozenset(
    {"txt2img_flux", "inpaint_flux_fill", "flux_canny", "variation_flux_redux"}
)


#: Default workflows on an embedded model that is trained on a GPU and may not be there yet
#: (written only when it is).
ON_OPTIONAL_MODELS: dict[str, Callable[[], Workflow]] = {
    "txt2img_flux": functools.partial(txt2img, TXT2IMG_FLUX),
}


def optional_defaults() -> dict[str, Callable[[], Workflow]]:
    """The default workflows of :data:`ON_OPTIONAL_MODELS` whose model this checkout has."""
    return {"txt2img_flux": ON_OPTIONAL_MODELS["txt2img_flux"]} if TINY_FLUX_PRESENT else {}


def outputs() -> dict[Path, bytes]:
    """Every file this script writes, by path, with its bytes."""
    files = {
        (HERE / "templates" if name in NEEDS_OWN_FILES else HERE) / f"{name}.json": dumps_workflow(
            build()
        ).encode("utf-8")
        for name, build in WORKFLOWS.items()
    }
    for name, build in optional_defaults().items():
        files[HERE / f"{name}.json"] = dumps_workflow(build()).encode("utf-8")
    for name, image in example_images().items():
        files[IMAGES / name] = png_bytes(image)
    return files


def main() -> None:
    from studio.fsutil import atomic_write_bytes

    for path, data in outputs().items():
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.is_file() or path.read_bytes() != data:
            atomic_write_bytes(path, data)
            print(f"wrote {path.relative_to(ROOT)}")
    for name in ON_OPTIONAL_MODELS.keys() - optional_defaults().keys():
        stale = HERE / f"{name}.json"
        if stale.is_file():  # its model is gone: a default that cannot run
            stale.unlink()
            print(f"removed {stale.relative_to(ROOT)} (its model is not there)")


if __name__ == "__main__":
    main()
