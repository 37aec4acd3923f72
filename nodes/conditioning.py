"""Conditioning: prompts into embeddings."""

from __future__ import annotations

from typing import Any

from studio.graph.spec import InputSpec, OutputSpec, node
from studio.graph.types import ValueType as T


def _text_encode_fingerprint(params: dict[str, Any], ctx: Any) -> str:
    # The embedding files a prompt names: a changed file re-runs the node.
    from nodes import embeddings

    return embeddings.fingerprint(
        str(params.get("text", "")), ctx.model_files, ctx.files, ctx.check_interrupt
    )


@node(
    "text_encode",
    title="Text Encode",
    category="conditioning",
    description=(
        "Turns a prompt into conditioning for the Sampler. Understands (word:1.3), (word), "
        "[word] weights, embedding:name (a textual inversion file from the embeddings "
        "folder) and prompts longer than 75 tokens (up to 2,400)."
    ),
    inputs=[
        InputSpec("clip", T.CLIP, tooltip="The text encoder from Load Checkpoint."),
        InputSpec(
            "text",
            T.STRING,
            default="",
            multiline=True,
            tooltip="The prompt. (word:1.3) weights a word, (word) is 1.1, [word] is 1/1.1, \\( is a bracket.",
        ),
        InputSpec(
            "clip_skip",
            T.INT,
            default=1,
            min=1,
            max=12,
            tooltip=(
                "Use the text encoder's n-th layer from the end: 1 = the usual, 2 = the "
                "penultimate (what many anime models expect). Same meaning as A1111's Clip "
                "skip. SDXL's own layer is the penultimate: 1 and 2 both use it."
            ),
        ),
    ],
    outputs=[OutputSpec("conditioning", T.CONDITIONING)],
    fingerprint=_text_encode_fingerprint,
)
def text_encode(ctx, clip: Any, text: str, clip_skip: int = 1) -> list:
    from nodes import prompts
    from nodes.values import ClipHandle, Cond

    prompts.check_prompt_length(text)  # before anything loads: a pasted megabyte fails at once
    if not isinstance(clip, ClipHandle):
        from studio.errors import NodeError

        raise NodeError(f"the clip input is not a text encoder (got {type(clip).__name__})")
    if clip.parts:  # SD3 / Flux: CLIP-L, CLIP-G and T5 as their pipelines use them
        from nodes import dit

        return dit.encode(ctx, clip, text)
    embeds, pooled = _encode(ctx, clip, text, text, clip_skip)
    return [
        Cond(
            embeds=embeds,
            pooled=pooled,
            family=clip.family,
            text=text,
            extra={"clip_skip": clip_skip} if clip_skip != 1 else {},
        )
    ]


def _encode(ctx: Any, clip: Any, texts: Any, words: str, clip_skip: int) -> tuple[Any, Any]:
    """An SD / SDXL CLIP's encoding of ``texts`` (one text, or one per encoder) with its
    LoRAs on and the embeddings ``words`` name: (embeds, pooled or None), float32 on the CPU."""
    from nodes import embeddings, lora, prompts, sdload

    encoders = [sdload.get_module(ctx, clip.source, name) for name in clip.encoders]
    for name, encoder in zip(clip.encoders, encoders, strict=True):
        lora.activate(ctx, encoder, name, clip.patches, clip.family)
    tokenizers = [sdload.get_tokenizer(ctx, folder, pad) for folder, pad in clip.tokenizers]
    vectors = embeddings.vectors_for(ctx, words, encoders, tokenizers)
    embeds, pooled = sdload.with_oom_advice(
        lambda: prompts.encode_prompt(
            encoders, tokenizers, texts, clip_skip, ctx.check_interrupt, vectors
        ),
        "encoding the prompt",
    )
    return embeds.float().cpu(), pooled.float().cpu() if pooled is not None else None


def _sdxl_fingerprint(params: dict[str, Any], ctx: Any) -> str:
    from nodes import embeddings

    text = f"{params.get('text_g', '')} {params.get('text_l', '')}"
    return embeddings.fingerprint(text, ctx.model_files, ctx.files, ctx.check_interrupt)


def _size(name: str, default: int, tooltip: str) -> InputSpec:
    return InputSpec(name, T.INT, default=default, min=0, max=16384, step=8, tooltip=tooltip)


@node(
    "text_encode_sdxl",
    title="Text Encode (SDXL)",
    category="conditioning",
    description=(
        "An SDXL prompt with a text for each of its encoders (CLIP-G and CLIP-L) and SDXL's "
        "size conditioning: the size the model is told the picture was, its crop and the "
        "size it should look like (ComfyUI's CLIPTextEncodeSDXL). Text Encode takes them "
        "from the picture being made (original = target = its size, no crop)."
    ),
    inputs=[
        InputSpec("clip", T.CLIP, tooltip="The text encoders of an SDXL checkpoint."),
        InputSpec("text_g", T.STRING, default="", multiline=True,
                  tooltip="The prompt for CLIP-G (the larger encoder; its pooled vector too)."),
        InputSpec("text_l", T.STRING, default="", multiline=True,
                  tooltip="The prompt for CLIP-L (often the same text)."),
        _size("width", 1024, "The original width the model is told of (SDXL was trained "
              "with each picture's size before cropping)."),
        _size("height", 1024, "The original height the model is told of."),
        _size("crop_w", 0, "The crop's left edge, in pixels (0: not cropped)."),
        _size("crop_h", 0, "The crop's top edge, in pixels."),
        _size("target_width", 1024, "The width the picture should look made for."),
        _size("target_height", 1024, "The height the picture should look made for."),
        InputSpec("clip_skip", T.INT, default=1, min=1, max=12,
                  tooltip="1 and 2: SDXL's own layer, the penultimate; n > 2: the n-th layer "
                  "from the end (ComfyUI's CLIP Set Last Layer -n)."),
    ],
    outputs=[OutputSpec("conditioning", T.CONDITIONING)],
    fingerprint=_sdxl_fingerprint,
)  # fmt: skip
def text_encode_sdxl(
    ctx, clip: Any, text_g: str = "", text_l: str = "", width: int = 1024, height: int = 1024,
    crop_w: int = 0, crop_h: int = 0, target_width: int = 1024, target_height: int = 1024,
    clip_skip: int = 1,
) -> list:  # fmt: skip
    from nodes import prompts
    from nodes.values import ClipHandle, Cond
    from studio.errors import NodeError

    for t in (text_g, text_l):
        prompts.check_prompt_length(t)
    if not isinstance(clip, ClipHandle):
        raise NodeError(f"the clip input is not a text encoder (got {type(clip).__name__})")
    if clip.parts or not clip.is_sdxl:
        raise NodeError(
            "Text Encode (SDXL) is for SDXL checkpoints (two CLIP encoders); this clip is "
            f"{clip.family or 'another family'}'s: use Text Encode"
        )
    # the encoders are CLIP-L then CLIP-G, as in the pipeline
    embeds, pooled = _encode(ctx, clip, [text_l, text_g], f"{text_g} {text_l}", clip_skip)
    return [
        Cond(
            embeds=embeds,
            pooled=pooled,
            family=clip.family,
            text=text_g,
            size=(height, width, crop_h, crop_w, target_height, target_width),
            extra={"clip_skip": clip_skip} if clip_skip != 1 else {},
        )
    ]


# -- Combining prompts (ComfyUI's ConditioningZeroOut / Combine / Concat / Average) -----------


def _conds(value: Any, name: str) -> list:
    """A CONDITIONING input as its list of Cond, refused with a message naming the input."""
    from nodes.values import Cond
    from studio.errors import NodeError

    if not isinstance(value, list) or not all(isinstance(c, Cond) for c in value):
        raise NodeError(f"the {name} input is not conditioning (got {type(value).__name__})")
    if not value:
        raise NodeError(f"the {name} conditioning is empty")
    return value


def _one(value: Any, name: str) -> Any:
    """The single prompt of ``value``: several (from Conditioning Combine) are refused rather
    than silently using the first, as ComfyUI does."""
    from studio.errors import NodeError

    conds = _conds(value, name)
    if len(conds) > 1:
        raise NodeError(
            f"the {name} conditioning holds {len(conds)} combined prompts; connect a single "
            "prompt (before Conditioning Combine)"
        )
    return conds[0]


def _same_width(to: Any, frm: Any) -> None:
    from studio.errors import NodeError

    if to.embeds.shape[-1] != frm.embeds.shape[-1]:
        raise NodeError(
            f"the prompts come from different text encoders ({to.embeds.shape[-1]} and "
            f"{frm.embeds.shape[-1]} wide): encode both with the same checkpoint's CLIP"
        )


@node(
    "conditioning_zero_out",
    title="Conditioning Zero Out",
    category="conditioning",
    description=(
        "Replaces a prompt's embeddings (and SDXL's pooled embedding) with zeros: the "
        "'nothing at all' negative some models (SDXL Turbo, SD3-style workflows) expect."
    ),
    inputs=[InputSpec("conditioning", T.CONDITIONING, tooltip="The prompt to zero out.")],
    outputs=[OutputSpec("conditioning", T.CONDITIONING)],
)
def conditioning_zero_out(ctx, conditioning: Any) -> list:
    import dataclasses

    import torch

    return [
        dataclasses.replace(
            c,
            embeds=torch.zeros_like(c.embeds),
            pooled=None if c.pooled is None else torch.zeros_like(c.pooled),
            text="",
            extra=dict(c.extra),
        )
        for c in _conds(conditioning, "conditioning")
    ]


@node(
    "conditioning_combine",
    title="Conditioning Combine",
    category="conditioning",
    description=(
        "Uses both prompts: the Sampler denoises with each and averages the two predictions "
        "at every step (both weigh the same). Unlike joining the texts, neither prompt's "
        "words crowd out the other's."
    ),
    inputs=[
        InputSpec("conditioning_1", T.CONDITIONING, tooltip="A prompt (or combined prompts)."),
        InputSpec("conditioning_2", T.CONDITIONING, tooltip="Another prompt to use as well."),
    ],
    outputs=[OutputSpec("conditioning", T.CONDITIONING)],
)
def conditioning_combine(ctx, conditioning_1: Any, conditioning_2: Any) -> list:
    return [*_conds(conditioning_1, "conditioning_1"), *_conds(conditioning_2, "conditioning_2")]


@node(
    "conditioning_concat",
    title="Conditioning Concat",
    category="conditioning",
    description=(
        "Appends the tokens of one prompt after another's, as one longer prompt the model "
        "reads at once (like A1111's BREAK). The pooled embedding stays the first prompt's."
    ),
    inputs=[
        InputSpec("conditioning_to", T.CONDITIONING, tooltip="The prompt that comes first."),
        InputSpec(
            "conditioning_from",
            T.CONDITIONING,
            tooltip="The prompt whose tokens are appended (a single prompt).",
        ),
    ],
    outputs=[OutputSpec("conditioning", T.CONDITIONING)],
)
def conditioning_concat(ctx, conditioning_to: Any, conditioning_from: Any) -> list:
    import dataclasses

    import torch

    frm = _one(conditioning_from, "conditioning_from")
    out = []
    for c in _conds(conditioning_to, "conditioning_to"):
        _same_width(c, frm)
        out.append(
            dataclasses.replace(
                c,
                embeds=torch.cat([c.embeds, frm.embeds], dim=1),
                text=" BREAK ".join(t for t in (c.text, frm.text) if t),
                extra=dict(c.extra),
            )
        )
    return out


@node(
    "conditioning_average",
    title="Conditioning Average",
    category="conditioning",
    description=(
        "Blends two prompts into one: to x strength + from x (1 - strength), token by token "
        "(a longer 'from' is cut to 'to''s length, a shorter one counts as zeros beyond its "
        "end), and the pooled embeddings likewise."
    ),
    inputs=[
        InputSpec("conditioning_to", T.CONDITIONING, tooltip="The prompt blended towards."),
        InputSpec(
            "conditioning_from",
            T.CONDITIONING,
            tooltip="The prompt blended in (a single prompt).",
        ),
        InputSpec(
            "conditioning_to_strength",
            T.FLOAT,
            default=1.0,
            min=0.0,
            max=1.0,
            step=0.01,
            tooltip="1 = only 'to', 0 = only 'from', 0.5 = half of each.",
        ),
    ],
    outputs=[OutputSpec("conditioning", T.CONDITIONING)],
)
def conditioning_average(
    ctx, conditioning_to: Any, conditioning_from: Any, conditioning_to_strength: float = 1.0
) -> list:
    import dataclasses

    import torch

    w = float(conditioning_to_strength)
    frm = _one(conditioning_from, "conditioning_from")
    out = []
    for c in _conds(conditioning_to, "conditioning_to"):
        _same_width(c, frm)
        tokens = c.embeds.shape[1]
        f = frm.embeds[:, :tokens]
        if f.shape[1] < tokens:  # ComfyUI's rule: the missing tokens count as zeros
            pad = torch.zeros((f.shape[0], tokens - f.shape[1], f.shape[2]), dtype=f.dtype)
            f = torch.cat([f, pad], dim=1)
        pooled = c.pooled
        if frm.pooled is not None:
            pooled = frm.pooled if c.pooled is None else c.pooled * w + frm.pooled * (1.0 - w)
        out.append(
            dataclasses.replace(
                c, embeds=c.embeds * w + f * (1.0 - w), pooled=pooled, extra=dict(c.extra)
            )
        )
    return out


#: Conditioning Set Mask's set_cond_area, ComfyUI's names.
MASK_AREAS = ("default", "mask bounds")


@node(
    "conditioning_set_mask",
    title="Conditioning Set Mask",
    category="conditioning",
    description=(
        "Limits a prompt to the masked part of the image (regional prompting): combine it "
        "with other prompts; each one's prediction counts where its mask is, blended where "
        "masks overlap. A part no prompt covers gets no guidance."
    ),
    inputs=[
        InputSpec("conditioning", T.CONDITIONING, tooltip="The prompt to place."),
        InputSpec("mask", T.MASK, tooltip="Where the prompt applies (1), at any size."),
        InputSpec(
            "strength",
            T.FLOAT,
            default=1.0,
            min=0.0,
            max=10.0,
            step=0.01,
            tooltip="The prompt's weight inside its mask against the prompts it is combined with.",
        ),
        InputSpec(
            "set_cond_area",
            T.CHOICE,
            default="default",
            choices=MASK_AREAS,
            tooltip=(
                "default: the prompt is predicted on the whole image. mask bounds: only on "
                "the rectangle around the mask (as a Conditioning Set Area), so it is drawn "
                "at that size, weighted by the mask inside it."
            ),
        ),
    ],
    outputs=[OutputSpec("conditioning", T.CONDITIONING)],
)
def conditioning_set_mask(
    ctx, conditioning: Any, mask: Any, strength: float = 1.0, set_cond_area: str = "default"
) -> list:
    import dataclasses

    from studio.errors import NodeError

    if getattr(mask, "ndim", 0) not in (2, 3):
        raise NodeError(f"the mask input is not a mask (got {type(mask).__name__})")
    m = mask.float().cpu()
    bounds = set_cond_area == "mask bounds"
    return [
        dataclasses.replace(
            c, extra={**c.extra, "mask": (m, float(strength)), "mask_bounds": bounds}
        )
        for c in _conds(conditioning, "conditioning")
    ]
