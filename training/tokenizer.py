"""A CLIP BPE tokenizer whose vocabulary makes every caption word one token.

The vocabulary is CLIP's layout: the 256 byte-level base symbols, the same with the
end-of-word marker ``</w>``, one entry per merge, then ``<|startoftext|>`` and
``<|endoftext|>``. The merges build each word left to right, so ``red`` becomes
``r e d</w>`` -> ``re d</w>`` -> ``red</w>``: a single token. Words outside the list still
tokenize (into pieces), as any CLIP tokenizer would.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

from training.data import COLOR_NAMES, POSITIONS, SHAPES, SIZES

#: Caption words first; a few extra words that prompts for later models (LoRA trigger words,
#: negative prompts) are likely to use, so they get their own token too.
WORDS: tuple[str, ...] = (
    "a",
    *SIZES,
    *COLOR_NAMES,
    *SHAPES,
    "on",
    "background",
    *POSITIONS,
    "an",
    "the",
    "of",
    "and",
    "with",
    "in",
    "at",
    "shape",
    "outline",
    "outlined",
    "filled",
    "image",
    "picture",
    "photo",
    "drawing",
    "blurry",
    "bad",
    "quality",
)

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from bytes to printable unicode characters."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs], strict=True))


def _bpe(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """CLIP's BPE: repeatedly merge the adjacent pair with the lowest rank."""
    while len(symbols) > 1:
        pairs = [(ranks.get((a, b), -1), i) for i, (a, b) in enumerate(itertools.pairwise(symbols))]
        known = [p for p in pairs if p[0] >= 0]
        if not known:
            break
        _, i = min(known)
        symbols = [*symbols[:i], symbols[i] + symbols[i + 1], *symbols[i + 2 :]]
    return symbols


def build_vocab(words: tuple[str, ...] = WORDS) -> tuple[dict[str, int], list[str]]:
    """(vocab, merges) in CLIP's layout; every word in ``words`` becomes one token.

    Each word is first split by the merges so far, then its pieces are joined left to right
    by new merges. New merges rank after all older ones, so they never change how an
    earlier word splits, and BPE reaches each word's chain only after the older merges.
    """
    byte_map = bytes_to_unicode()
    base = list(byte_map.values())
    tokens = base + [b + "</w>" for b in base]
    known = set(tokens)
    ranks: dict[tuple[str, str], int] = {}
    for word in dict.fromkeys(words):
        encoded = "".join(byte_map[b] for b in word.encode("utf-8"))
        pieces = _bpe([*encoded[:-1], encoded[-1] + "</w>"], ranks)
        cur = pieces[0]
        for nxt in pieces[1:]:
            ranks[(cur, nxt)] = len(ranks)
            cur = cur + nxt
            if cur not in known:
                tokens.append(cur)
                known.add(cur)
    tokens += [BOS, EOS]
    merges = [f"{a} {b}" for (a, b), _ in sorted(ranks.items(), key=lambda kv: kv[1])]
    return {t: i for i, t in enumerate(tokens)}, merges


def save_tokenizer(out_dir: Path | str) -> Path:
    """Write vocab.json, merges.txt and the tokenizer configs into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vocab, merges = build_vocab()
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False) + "\n", encoding="utf-8")
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": 77,
        "bos_token": BOS,
        "eos_token": EOS,
        "unk_token": EOS,
        # SD1's tokenizer pads with the end token; the text encoder saw that in training
        "pad_token": EOS,
        "do_lower_case": True,
        "clean_up_tokenization_spaces": False,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    special = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    return out


def load_tokenizer(path: Path | str):  # -> transformers.CLIPTokenizer
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(path), model_max_length=77)


def vocab_size() -> int:
    return len(build_vocab()[0])
