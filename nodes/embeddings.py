"""Textual inversion embeddings for Text Encode: ``embedding:name`` in a prompt.

The files live in the ``embeddings`` model folder (ComfyUI's name; Studio ships
``studio-tiny-teal`` there). They are read through diffusers' textual inversion loading
(``load_textual_inversion_state_dicts`` and the loader's format handling: a diffusers
``{token: tensor}`` file, A1111's ``string_to_param`` dict, a bare tensor; SDXL files
carry ``clip_l`` and ``clip_g``), safetensors or pickle-free ``.pt`` / ``.bin``.
No torch at module level.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nodes.prompts import embedding_names
from studio.errors import NodeError

KIND = "embeddings"
SUFFIXES = (".safetensors", ".pt", ".bin")
#: The placeholder token the loader checks names against (it must not be a real word).
_TOKEN = "<studio-embedding>"


def find(model_files: Any, name: str) -> Path:
    """The file ``embedding:name`` means: the name as written, or with an extension added."""
    candidates = [name] if name.lower().endswith(SUFFIXES) else [name + s for s in SUFFIXES]
    for cand in candidates:
        try:
            return model_files.resolve(KIND, cand)
        except NodeError:
            continue
    folders = ", ".join(str(f) for f in model_files.folders(KIND))
    raise NodeError(f"embedding {name!r} not found (no {name}.safetensors/.pt/.bin in {folders})")


def fingerprint(text: str, model_files: Any, files: Any, check: Any = None) -> str:
    """The content fingerprints of the embedding files a prompt names (a changed file
    re-runs Text Encode); '' when it names none."""
    parts = []
    for name in embedding_names(text):
        try:
            parts.append(f"{name}={files.of(find(model_files, name), check)}")
        except NodeError:
            parts.append(f"{name}=missing")  # the run says which; adding the file re-runs
    return ";".join(parts)


def vectors_for(
    ctx: Any, text: str, encoders: list[Any], tokenizers: list[Any]
) -> list[dict[str, Any]] | None:
    """Per text encoder, the vectors ([n, width]) of each embedding the prompt names."""
    names = embedding_names(text)
    if not names:
        return None
    out: list[dict[str, Any]] = [{} for _ in encoders]
    for name in names:
        path = find(ctx.model_files, name)
        state = load(path)
        for i, (encoder, tok) in enumerate(zip(encoders, tokenizers, strict=True)):
            width = encoder.get_input_embeddings().embedding_dim
            out[i][name] = _vectors(state, path, tok, width, i, len(encoders))
    return out


def load(path: Path) -> Any:
    """The file's state dict, read by diffusers (safetensors, or torch.load with
    weights_only: a file cannot run code)."""
    from diffusers.loaders.textual_inversion import load_textual_inversion_state_dicts

    try:
        (state,) = load_textual_inversion_state_dicts([str(path)])
    except Exception as exc:  # a broken or foreign file: say which, not a traceback
        raise NodeError(f"cannot read embedding {path.name}: {exc}") from None
    return state


def _vectors(state: Any, path: Path, tokenizer: Any, width: int, index: int, count: int) -> Any:
    import torch
    from diffusers.loaders.textual_inversion import TextualInversionLoaderMixin as TI

    if isinstance(state, dict) and ("clip_l" in state or "clip_g" in state):
        # SDXL: one tensor per text encoder (clip_l: the first, 768 wide; clip_g: 1280)
        key = "clip_l" if count == 1 or index == 0 else "clip_g"
        if key not in state:
            raise NodeError(f"embedding {path.name} has no {key} vectors for this text encoder")
        state = state[key]
    try:
        (_,), (embedding,) = TI._retrieve_tokens_and_embeddings([_TOKEN], [state], tokenizer)
        _, vectors = TI._extend_tokens_and_embeddings([_TOKEN], [embedding], tokenizer)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise NodeError(f"embedding {path.name} is not a textual inversion file: {exc}") from None
    stacked = torch.stack([torch.as_tensor(v).float().reshape(-1) for v in vectors])
    if stacked.shape[-1] != width:
        raise NodeError(
            f"embedding {path.name} has {stacked.shape[-1]}-wide vectors, but this text "
            f"encoder takes {width}: it was made for another model family"
        )
    if len(stacked) > 75:
        raise NodeError(f"embedding {path.name} has {len(stacked)} vectors; at most 75 fit")
    return stacked
