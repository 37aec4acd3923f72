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
from collections.abc import Callable, Sequence
from typing import Any

from studio.errors import NodeError

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


#: The longest prompt Text Encode takes, in characters: far beyond what a prompt needs
#: (32 chunks of 75 tokens are about 10,000 characters of English), and checked before the
#: prompt is parsed or tokenised, so a pasted megabyte fails at once.
MAX_PROMPT_CHARS = 20_000
#: The most 75-token chunks a prompt may fill (2,400 tokens); each is one text encoder call
#: and makes every Sampler step attend to 77 more tokens.
MAX_PROMPT_CHUNKS = 32


def check_prompt_length(text: str) -> None:
    """A NodeError naming Text Encode's ``text`` param when ``text`` is longer than
    :data:`MAX_PROMPT_CHARS`."""
    if len(text) > MAX_PROMPT_CHARS:
        raise NodeError(
            f"the text param holds {len(text):,} characters; a prompt can have at most "
            f"{MAX_PROMPT_CHARS:,}"
        )


def parse_weights(text: str) -> list[tuple[str, float]]:
    """Split a prompt into (text, weight) pieces; equal neighbours are merged.

    Linear in the length of the text however the brackets nest: a first pass pairs each
    opening bracket with what closes it, learning its factor (1.1, 1/1.1, or the number
    in ``(word:1.3)``; an unclosed bracket counts as closed at the end); a second gives
    each piece the product of the factors of the brackets open around it.
    """
    tokens = [(m.group(0), m.group(1)) for m in _ATTENTION.finditer(text)]
    factor: dict[int, float] = {}  # opening bracket's token index -> its factor
    closing: set[int] = set()  # token indices of the brackets that close one
    round_open: list[int] = []
    square_open: list[int] = []
    for k, (piece, weight) in enumerate(tokens):
        if piece == "(":
            round_open.append(k)
        elif piece == "[":
            square_open.append(k)
        elif weight is not None and round_open:
            factor[round_open.pop()] = _number(weight)
            closing.add(k)
        elif piece == ")" and round_open:
            factor[round_open.pop()] = 1.1
            closing.add(k)
        elif piece == "]" and square_open:
            factor[square_open.pop()] = 1 / 1.1
            closing.add(k)
    factor.update(dict.fromkeys(round_open, 1.1))
    factor.update(dict.fromkeys(square_open, 1 / 1.1))

    # The products of the open brackets' factors, innermost last, round and square apart.
    round_w, square_w = [1.0], [1.0]
    pieces: list[tuple[str, float]] = []
    for k, (piece, _) in enumerate(tokens):
        if piece == "(":
            round_w.append(round_w[-1] * factor[k])
        elif piece == "[":
            square_w.append(square_w[-1] * factor[k])
        elif k in closing:
            (square_w if piece == "]" else round_w).pop()
        else:  # text, an escaped bracket, or a bracket that closes nothing
            pieces.append(
                (piece[1:] if piece.startswith("\\") else piece, round_w[-1] * square_w[-1])
            )
    return _merge_equal_weights(pieces) or [("", 1.0)]


def _number(weight: str) -> float:
    try:
        return float(weight)
    except ValueError:  # "1.2.3" matches the pattern
        return 1.0


def _merge_equal_weights(pieces: list[tuple[str, float]]) -> list[tuple[str, float]]:
    runs: list[tuple[list[str], float]] = []
    for piece, w in pieces:
        if runs and runs[-1][1] == w:
            runs[-1][0].append(piece)
        else:
            runs.append(([piece], w))
    return [("".join(texts), w) for texts, w in runs]


#: A textual inversion embedding in a prompt, as ComfyUI writes it: ``embedding:name`` (the
#: name runs to the next space, comma or bracket; a file extension may be given).
EMBEDDING = re.compile(r"embedding:([^\s,()\[\]]+)", re.IGNORECASE)

#: Per chunk: (token position, the embedding vector to put there).
Injections = list[list[tuple[int, Any]]]


def embedding_names(text: str) -> list[str]:
    """The embedding names a prompt uses (``embedding:name``), in order, without repeats."""
    return list(dict.fromkeys(m.group(1) for m in EMBEDDING.finditer(text)))


def tokenize_weighted(tokenizer: Any, text: str) -> tuple[list[list[int]], list[list[float]]]:
    """Token id chunks (each ``model_max_length`` long) and their per-token weights."""
    chunks, weights, _ = tokenize_with_embeddings(tokenizer, text)
    return chunks, weights


def tokenize_with_embeddings(
    tokenizer: Any, text: str, vectors: dict[str, Any] | None = None
) -> tuple[list[list[int]], list[list[float]], Injections]:
    """:func:`tokenize_weighted`, with each ``embedding:name`` in ``vectors`` (name ->
    [n, width] tensor) taking n token positions; returns where each vector goes. Without
    ``vectors`` the text is tokenised as it is."""
    size = int(tokenizer.model_max_length)
    per_chunk = size - 2
    ids: list[int] = []
    weights: list[float] = []
    injected: dict[int, Any] = {}  # position in ids -> vector
    filler = tokenizer.bos_token_id  # any real id: its embedding is replaced
    for piece, w in parse_weights(text):
        if not piece:
            continue
        at = 0
        for m in EMBEDDING.finditer(piece) if vectors else ():
            if m.group(1) not in vectors:
                continue
            ids_before = _tokens(tokenizer, piece[at : m.start()])
            ids += ids_before
            weights += [w] * len(ids_before)
            for vector in vectors[m.group(1)]:
                injected[len(ids)] = vector
                ids.append(filler)
                weights.append(w)
            at = m.end()
        toks = _tokens(tokenizer, piece[at:])
        ids += toks
        weights += [w] * len(toks)
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    chunks, chunk_weights, injections = [], [], []
    for start in range(0, max(len(ids), 1), per_chunk):
        part, pw = ids[start : start + per_chunk], weights[start : start + per_chunk]
        fill = per_chunk - len(part)
        chunks.append([bos, *part, eos] + [pad] * fill)
        chunk_weights.append([1.0, *pw, 1.0] + [1.0] * fill)
        injections.append(
            [(k - start + 1, v) for k, v in injected.items() if start <= k < start + per_chunk]
        )
    return chunks, chunk_weights, injections


def _tokens(tokenizer: Any, text: str) -> list[int]:
    if not text:
        return []
    return tokenizer(text, add_special_tokens=False, truncation=False, verbose=False).input_ids


def empty_chunk(tokenizer: Any) -> list[int]:
    size = int(tokenizer.model_max_length)
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    return [tokenizer.bos_token_id, eos] + [pad] * (size - 2)


def encode_chunk(
    encoder: Any,
    ids: list[int],
    clip_skip: int,
    sdxl: bool,
    inject: list[tuple[int, Any]] | None = None,
) -> tuple[Any, Any]:
    """Hidden states [1, 77, width] of one chunk, and the pooled output (or None).

    SD1/SD2 (as StableDiffusionPipeline): the last layer, or with ``clip_skip`` n > 1
    the n-th layer from the end through the final layer norm. SDXL (as
    StableDiffusionXLPipeline): its own layer, the penultimate, for n = 1 and 2, the n-th
    from the end for n > 2, without the final norm: ComfyUI's CLIP Set Last Layer -n and
    A1111's Clip skip n on SDXL (the "clip skip 2" SDXL models ask for is SDXL's own
    layer; diffusers' ``clip_skip`` counts from the penultimate, n - 2). The pooled output
    is the projected text embedding.
    """
    import torch

    device = next(encoder.parameters()).device
    hook = None
    if inject:
        # Textual inversion: the token embeddings at these positions are the embedding's
        # vectors (diffusers adds them to the tokenizer and the embedding table; a hook
        # leaves the shared, cached text encoder as it is).
        def put(module: Any, args: Any, output: Any) -> Any:
            output = output.clone()
            for pos, vector in inject:
                output[:, pos] = vector.to(device=output.device, dtype=output.dtype)
            return output

        hook = encoder.get_input_embeddings().register_forward_hook(put)
    try:
        out = encoder(torch.tensor([ids], device=device), output_hidden_states=True)
    finally:
        if hook is not None:
            hook.remove()
    pooled = out[0] if out[0].ndim == 2 else None
    back = max(clip_skip, 2) if sdxl else clip_skip
    if back > len(out.hidden_states) - 1:
        raise NodeError(
            f"the clip_skip param is {clip_skip}, but the text encoder has only "
            f"{len(out.hidden_states) - 1} layers"
        )
    if sdxl:
        return out.hidden_states[-back], pooled
    if clip_skip <= 1:
        return out[0], pooled
    text_model = getattr(encoder, "text_model", encoder)
    return text_model.final_layer_norm(out.hidden_states[-clip_skip]), pooled


def encode_prompt(
    encoders: list[Any],
    tokenizers: list[Any],
    text: str | Sequence[str],
    clip_skip: int,
    check_interrupt: Callable[[], None] = lambda: None,
    embeddings: list[dict[str, Any]] | None = None,
) -> tuple[Any, Any]:
    """Embeddings [1, 77 * chunks, width] and pooled output (SDXL) of a prompt.

    ``text``: one prompt for every encoder, or one per encoder (SDXL's CLIP-L and CLIP-G
    texts, ComfyUI's CLIPTextEncodeSDXL; the shorter is padded with empty chunks).
    ``embeddings``: per encoder, textual inversion vectors by name (``embedding:name`` in
    the text; names not given are read as words).

    A prompt over :data:`MAX_PROMPT_CHARS` characters or :data:`MAX_PROMPT_CHUNKS` chunks
    is a NodeError; ``check_interrupt`` is called before each chunk is encoded.
    """
    import torch

    texts = [text] * len(encoders) if isinstance(text, str) else list(text)
    for t in texts:
        check_prompt_length(t)
    sdxl = len(encoders) == 2
    vectors = embeddings or [{} for _ in tokenizers]
    tokenized = [
        tokenize_with_embeddings(t, words, v)
        for t, words, v in zip(tokenizers, texts, vectors, strict=True)
    ]
    n_chunks = max(len(c) for c, _, _ in tokenized)
    if n_chunks > MAX_PROMPT_CHUNKS:
        raise NodeError(
            f"the text param's prompt fills {n_chunks} chunks of 75 tokens; a prompt can have "
            f"at most {MAX_PROMPT_CHUNKS} ({MAX_PROMPT_CHUNKS * 75:,} tokens)"
        )
    parts, pooled = [], None
    with torch.no_grad():
        for e_index, (encoder, tok) in enumerate(zip(encoders, tokenizers, strict=True)):
            chunks, weights, injections = tokenized[e_index]
            while len(chunks) < n_chunks:  # the tokenizers split differently: pad with empty
                chunks.append(empty_chunk(tok))
                weights.append([1.0] * len(chunks[-1]))
                injections.append([])
            weighted = any(w != 1.0 for ws in weights for w in ws)
            empty = None
            if weighted:
                check_interrupt()
                empty = encode_chunk(encoder, empty_chunk(tok), clip_skip, sdxl)[0]
            encoded = []
            for c_index, (ids, ws) in enumerate(zip(chunks, weights, strict=True)):
                check_interrupt()
                z, p = encode_chunk(encoder, ids, clip_skip, sdxl, injections[c_index])
                if c_index == 0 and p is not None:
                    pooled = p
                if empty is not None and any(w != 1.0 for w in ws):
                    w = torch.tensor(ws, dtype=z.dtype, device=z.device)[None, :, None]
                    z = torch.where(w != 1.0, empty + (z - empty) * w, z)
                encoded.append(z)
            parts.append(torch.cat(encoded, dim=1))
    embeds = torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0]
    return embeds, pooled
