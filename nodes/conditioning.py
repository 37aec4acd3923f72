"""Conditioning: prompts into embeddings."""

from __future__ import annotations

from typing import Any

from studio.graph.spec import InputSpec, OutputSpec, node
from studio.graph.types import ValueType as T


@node(
    "text_encode",
    title="Text Encode",
    category="conditioning",
    description=(
        "Turns a prompt into conditioning for the Sampler. Understands (word:1.3), (word), "
        "[word] weights and prompts longer than 75 tokens (up to 2,400)."
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
                "penultimate (what many anime models expect). Same meaning as A1111's Clip skip."
            ),
        ),
    ],
    outputs=[OutputSpec("conditioning", T.CONDITIONING)],
)
def text_encode(ctx, clip: Any, text: str, clip_skip: int = 1) -> list:
    from nodes import lora, prompts, sdload
    from nodes.values import ClipHandle, Cond

    prompts.check_prompt_length(text)  # before anything loads: a pasted megabyte fails at once
    if not isinstance(clip, ClipHandle):
        from studio.errors import NodeError

        raise NodeError(f"the clip input is not a text encoder (got {type(clip).__name__})")
    encoders = [sdload.get_module(ctx, clip.source, name) for name in clip.encoders]
    for name, encoder in zip(clip.encoders, encoders, strict=True):
        lora.activate(ctx, encoder, name, clip.patches, clip.family)
    tokenizers = [sdload.get_tokenizer(ctx, folder, pad) for folder, pad in clip.tokenizers]
    embeds, pooled = sdload.with_oom_advice(
        lambda: prompts.encode_prompt(encoders, tokenizers, text, clip_skip, ctx.check_interrupt),
        "encoding the prompt",
    )
    return [
        Cond(
            embeds=embeds.float().cpu(),
            pooled=pooled.float().cpu() if pooled is not None else None,
            family=clip.family,
            text=text,
            extra={"clip_skip": clip_skip} if clip_skip != 1 else {},
        )
    ]
