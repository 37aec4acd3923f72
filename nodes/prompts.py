"""Prompt weighting and CLIP text encoding.

Weighting syntax, as artists type it (A1111's): ``(word:1.3)`` sets a weight,
``(word)`` multiplies by 1.1, ``[word]`` divides by 1.1, nesting multiplies, and
``\\(`` ``\\)`` ``\\[`` ``\\]`` are literal brackets. A weighted token's embedding
is pushed away from the empty prompt's embedding at that position by its
weight (ComfyUI's method); a prompt with no weights is left untouched, so it
equals diffusers' embeddings exactly.

Prompts longer than 75 tokens are split into chunks of 75, each encoded as its
own 77-token sequence (start, 75 tokens, end or padding) and concatenated.
"""

from __future__ import annotations

import re
from typing import Any

_ATTENTION = re.compile(
    r"""
    \\\(|\\\)|\\\[|\\]|\\\\|\\|
    \(|\[|
    :\s*([+-]?[.\d]+)\s*\)|
    \)|]|
    [^\\()\[\]:]+|:
    """,
    re.X,
)


def parse_weights(text: str) -> list[tuple[str, float]]:
    """Split a prompt into (text, weight) pieces; equal neighbours are merged."""
    res: list[list[Any]] = []
    round_open: list[int] = []
    square_open: list[int] = []

    def multiply(start: int, factor: float) -> None:
        for p in range(start, len(res)):
            res[p][1] *= factor

    for m in _ATTENTION.finditer(text):
        piece, weight = m.group(0), m.group(1)
        if piece.startswith("\\"):
            res.append([piece[1:], 1.0])
        elif piece == "(":
            round_open.append(len(res))
        elif piece == "[":
            square_open.append(len(res))
        elif weight is not None and round_open:
            try:
                factor = float(weight)
            except ValueError:
                factor = 1.0
            multiply(round_open.pop(), factor)
        elif piece == ")" and round_open:
            multiply(round_open.pop(), 1.1)
        elif piece == "]" and square_open:
            multiply(square_open.pop(), 1 / 1.1)
        elif weight is not None:  # ":1.2)" with no "(" before it: plain text
            res.append([piece, 1.0])
        else:
            res.append([piece, 1.0])
    for pos in round_open:
        multiply(pos, 1.1)
    for pos in square_open:
        multiply(pos, 1 / 1.1)
    merged: list[tuple[str, float]] = []
    for piece, w in res:
        if merged and merged[-1][1] == w:
            merged[-1] = (merged[-1][0] + piece, w)
        else:
            merged.append((piece, w))
    return merged or [("", 1.0)]


def tokenize_weighted(tokenizer: Any, text: str) -> tuple[list[list[int]], list[list[float]]]:
    """Token id chunks (each ``model_max_length`` long) and their per-token weights."""
    size = int(tokenizer.model_max_length)
    per_chunk = size - 2
    ids: list[int] = []
    weights: list[float] = []
    for piece, w in parse_weights(text):
        if not piece:
            continue
        toks = tokenizer(piece, add_special_tokens=False, truncation=False, verbose=False).input_ids
        ids += toks
        weights += [w] * len(toks)
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    chunks, chunk_weights = [], []
    for start in range(0, max(len(ids), 1), per_chunk):
        part, pw = ids[start : start + per_chunk], weights[start : start + per_chunk]
        fill = per_chunk - len(part)
        chunks.append([bos, *part, eos] + [pad] * fill)
        chunk_weights.append([1.0, *pw, 1.0] + [1.0] * fill)
    return chunks, chunk_weights


def empty_chunk(tokenizer: Any) -> list[int]:
    size = int(tokenizer.model_max_length)
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    return [tokenizer.bos_token_id, eos] + [pad] * (size - 2)


def encode_chunk(encoder: Any, ids: list[int], clip_skip: int, sdxl: bool) -> tuple[Any, Any]:
    """Hidden states [1, 77, width] of one chunk, and the pooled output (or None).

    SD1/SD2 (as StableDiffusionPipeline): the last layer, or with ``clip_skip`` n > 1
    the n-th layer from the end through the final layer norm. SDXL (as
    StableDiffusionXLPipeline): the penultimate layer, or n layers further back,
    without the final norm; the pooled output is the projected text embedding.
    """
    import torch

    device = next(encoder.parameters()).device
    out = encoder(torch.tensor([ids], device=device), output_hidden_states=True)
    pooled = out[0] if out[0].ndim == 2 else None
    if sdxl:
        return out.hidden_states[-(clip_skip + 1)], pooled
    if clip_skip <= 1:
        return out[0], pooled
    text_model = getattr(encoder, "text_model", encoder)
    return text_model.final_layer_norm(out.hidden_states[-clip_skip]), pooled


def encode_prompt(
    encoders: list[Any], tokenizers: list[Any], text: str, clip_skip: int
) -> tuple[Any, Any]:
    """Embeddings [1, 77 * chunks, width] and pooled output (SDXL) of a prompt."""
    import torch

    sdxl = len(encoders) == 2
    tokenized = [tokenize_weighted(t, text) for t in tokenizers]
    n_chunks = max(len(c) for c, _ in tokenized)
    parts, pooled = [], None
    with torch.no_grad():
        for e_index, (encoder, tok) in enumerate(zip(encoders, tokenizers, strict=True)):
            chunks, weights = tokenized[e_index]
            while len(chunks) < n_chunks:  # the tokenizers split differently: pad with empty
                chunks.append(empty_chunk(tok))
                weights.append([1.0] * len(chunks[-1]))
            weighted = any(w != 1.0 for ws in weights for w in ws)
            empty = (
                encode_chunk(encoder, empty_chunk(tok), clip_skip, sdxl)[0] if weighted else None
            )
            encoded = []
            for c_index, (ids, ws) in enumerate(zip(chunks, weights, strict=True)):
                z, p = encode_chunk(encoder, ids, clip_skip, sdxl)
                if c_index == 0 and p is not None:
                    pooled = p
                if empty is not None and any(w != 1.0 for w in ws):
                    w = torch.tensor(ws, dtype=z.dtype, device=z.device)[None, :, None]
                    z = torch.where(w != 1.0, empty + (z - empty) * w, z)
                encoded.append(z)
            parts.append(torch.cat(encoded, dim=1))
    embeds = torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0]
    return embeds, pooled
