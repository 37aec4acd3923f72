"""Text Encode: prompt weighting syntax, long prompts, clip skip, and exact equality
with diffusers' prompt encoding for a plain prompt."""

from __future__ import annotations

import time

import pytest

torch = pytest.importorskip("torch")

import diffusion_fixtures as fx  # noqa: E402

from nodes import prompts  # noqa: E402
from nodes.prompts import encode_prompt, parse_weights, tokenize_weighted  # noqa: E402
from studio.errors import NodeError  # noqa: E402
from studio.graph.workflow import Workflow  # noqa: E402
from studio.library import installed_registry  # noqa: E402

# Shared fixtures (a session's tiny models on disk, an engine pointed at them).
engine, models_root, tiny_parts = fx.engine, fx.models_root, fx.tiny_parts


@pytest.mark.parametrize(
    ("text", "pieces"),
    [
        ("a photo: a cat", [("a photo: a cat", 1.0)]),
        ("a (cat:1.3) on [mat]", [("a ", 1.0), ("cat", 1.3), (" on ", 1.0), ("mat", 1 / 1.1)]),
        ("((big)) dog", [("big", 1.1 * 1.1), (" dog", 1.0)]),
        ("(red (hat:2))", [("red ", 1.1), ("hat", 2 * 1.1)]),
        (r"\(not weighted\) \[either\]", [("(not weighted) [either]", 1.0)]),
        ("unclosed (paren", [("unclosed ", 1.0), ("paren", 1.1)]),
        ("", [("", 1.0)]),
    ],
)
def test_weight_syntax(text, pieces):
    got = parse_weights(text)
    assert [p for p, _ in got] == [p for p, _ in pieces]
    assert [w for _, w in got] == pytest.approx([w for _, w in pieces])


def _encode(engine, ckpt: str, text: str, clip_skip: int = 1):
    wf = Workflow(installed_registry())
    ck = wf.add_node("load_checkpoint", {"ckpt_name": ckpt}).id
    enc = wf.add_node("text_encode", {"text": text, "clip_skip": clip_skip}).id
    wf.connect(ck, "clip", enc, "clip")
    result = engine.run(wf, targets=[enc])
    assert result.ok, result.errors
    (cond,) = result.outputs[enc]["conditioning"]
    return cond


PROMPT = "a photo of an astronaut riding a horse on mars"


def test_plain_prompt_equals_stable_diffusion_pipeline_embeddings(engine, tiny_parts):
    pipe = fx.sd1_pipeline(tiny_parts["sd1"])
    want, _ = pipe.encode_prompt(PROMPT, "cpu", 1, False)
    got = _encode(engine, "tiny-sd1", PROMPT).embeds
    assert torch.equal(got, want)


def test_clip_skip_2_is_the_penultimate_layer_as_diffusers_computes_it(engine, tiny_parts):
    # diffusers' encode_prompt(clip_skip=1) reaches for text_encoder.text_model, which
    # transformers 5 flattened away; this is its formula: hidden_states[-(1 + 1)] through
    # the final layer norm.
    parts = tiny_parts["sd1"]
    ids = parts["tokenizer"](
        PROMPT, padding="max_length", max_length=77, truncation=True, return_tensors="pt"
    ).input_ids
    with torch.no_grad():
        out = parts["text_encoder"](ids, output_hidden_states=True)
        want = parts["text_encoder"].final_layer_norm(out.hidden_states[-2])
    got = _encode(engine, "tiny-sd1", PROMPT, clip_skip=2).embeds
    assert torch.equal(got, want)


def test_plain_prompt_equals_sdxl_pipeline_embeddings(engine, models_root):
    from diffusers import StableDiffusionXLPipeline

    # From the same folder: transformers picks its attention kernel when loading.
    pipe = StableDiffusionXLPipeline.from_pretrained(str(models_root / "checkpoints" / "tiny-sdxl"))
    want, _, want_pooled, _ = pipe.encode_prompt(
        PROMPT, device="cpu", do_classifier_free_guidance=False
    )
    cond = _encode(engine, "tiny-sdxl", PROMPT)
    assert torch.equal(cond.embeds, want)
    assert torch.equal(cond.pooled, want_pooled)


def test_sdxl_clip_skip_2_is_its_own_layer_and_3_goes_one_further_back(engine, models_root):
    """SDXL models that ask for "clip skip 2" get SDXL's own (penultimate) layer, as in
    A1111 and ComfyUI (CLIP Set Last Layer -2); 3 is diffusers' clip_skip=1."""
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(str(models_root / "checkpoints" / "tiny-sdxl"))
    own = _encode(engine, "tiny-sdxl", PROMPT, 1)
    assert torch.equal(_encode(engine, "tiny-sdxl", PROMPT, 2).embeds, own.embeds)
    want, _, want_pooled, _ = pipe.encode_prompt(
        PROMPT, device="cpu", do_classifier_free_guidance=False, clip_skip=1
    )
    three = _encode(engine, "tiny-sdxl", PROMPT, 3)
    assert torch.equal(three.embeds, want)
    assert torch.equal(three.pooled, want_pooled)
    assert not torch.allclose(three.embeds, own.embeds)


def test_a_clip_skip_past_the_encoders_layers_names_the_param(engine):
    wf = Workflow(installed_registry())
    ck = wf.add_node("load_checkpoint", {"ckpt_name": "tiny-sd1"}).id
    enc = wf.add_node("text_encode", {"text": PROMPT, "clip_skip": 12}).id
    wf.connect(ck, "clip", enc, "clip")
    result = engine.run(wf, targets=[enc])
    assert not result.ok
    message = str(result.errors)
    assert "clip_skip param is 12" in message and "only 3 layers" in message
    assert "Traceback" not in message


def test_clip_skip_changes_the_embeddings(engine):
    a = _encode(engine, "tiny-sd1", PROMPT, 1).embeds
    b = _encode(engine, "tiny-sd1", PROMPT, 2).embeds
    assert not torch.allclose(a, b)


def test_weights_change_only_the_weighted_tokens(engine):
    plain = _encode(engine, "tiny-sd1", "a red cat").embeds
    neutral = _encode(engine, "tiny-sd1", "a (red:1.0) cat").embeds
    heavy = _encode(engine, "tiny-sd1", "a (red:1.5) cat").embeds
    assert torch.equal(plain, neutral)
    changed = (heavy - plain).abs().amax(dim=-1)[0]
    # Token 0 is the start token; "a" is 1, "red" is 2, "cat" is 3.
    assert changed[2] > 1e-3
    assert changed[[0, 1, 3]].max() == 0


def test_long_prompts_are_encoded_in_chunks_of_75_tokens(engine, tiny_parts):
    words = " ".join(f"word{i}" for i in range(60))  # well over 75 tokens
    tok = tiny_parts["sd1"]["tokenizer"]
    chunks, _ = tokenize_weighted(tok, words)
    assert len(chunks) >= 2 and all(len(c) == 77 for c in chunks)
    cond = _encode(engine, "tiny-sd1", words)
    assert cond.embeds.shape == (1, 77 * len(chunks), 32)
    # The first chunk is what the first 75 tokens alone encode to.
    first = tok.decode(chunks[0][1:76])
    alone = encode_prompt([tiny_parts["sd1"]["text_encoder"]], [tok], first, 1)[0]
    assert torch.allclose(cond.embeds[:, :77], alone, atol=1e-5)


def test_long_negative_and_short_positive_sample_together(engine):
    wf, _ = fx.txt2img("tiny-sd1", steps=1, negative=" ".join(["ugly"] * 100))
    result = engine.run(wf)
    assert result.ok, result.errors


def _unbracketed(text: str) -> str:
    return text.translate(str.maketrans("", "", "()[]"))


@pytest.mark.parametrize(
    "text",
    [
        "(" * 1_000_000,
        "(" * 100_000 + "cat" + ")" * 100_000,
        # Every closing bracket reweights all the pieces inside it: quadratic, done naively.
        "(a" * 25_000 + ")" * 25_000,
        "[a(" * 20_000 + ")]" * 20_000,
    ],
    ids=["1MB-of-open", "100k-nested", "25k-nested-pieces", "20k-crossed"],
)
def test_the_weight_parser_takes_hostile_prompts_in_linear_time(text):
    started = time.perf_counter()
    pieces = parse_weights(text)
    assert time.perf_counter() - started < 10  # fails fast rather than hangs (minutes)
    assert "".join(p for p, _ in pieces) == _unbracketed(text)


def test_prompt_length_limit_is_in_characters_before_parsing():
    prompts.check_prompt_length("x" * prompts.MAX_PROMPT_CHARS)
    with pytest.raises(NodeError, match="text param holds 20,001 characters"):
        prompts.check_prompt_length("x" * (prompts.MAX_PROMPT_CHARS + 1))


def test_a_megabyte_prompt_fails_at_once_naming_the_text_param(engine):
    wf, ids = fx.txt2img("tiny-sd1", prompt="a cat, " * 150_000, steps=1)
    started = time.perf_counter()
    result = engine.run(wf)
    assert time.perf_counter() - started < 10  # not the minutes it took to encode
    assert "text param holds 1,050,000 characters" in result.errors[ids["pos"]]
    assert ids["sampler"] in result.errors and not result.images


def test_up_to_2400_tokens_encode_and_more_is_a_clear_error(engine):
    # "cat" is one token: 2,400 of them fill the 32 chunks of 75 a prompt may have.
    cond = _encode(engine, "tiny-sd1", "cat " * 2400)
    assert cond.embeds.shape == (1, 77 * prompts.MAX_PROMPT_CHUNKS, 32)
    wf = Workflow(installed_registry())
    ck = wf.add_node("load_checkpoint", {"ckpt_name": "tiny-sd1"}).id
    enc = wf.add_node("text_encode", {"text": "cat " * 2401}).id
    wf.connect(ck, "clip", enc, "clip")
    message = engine.run(wf, targets=[enc]).errors.get(enc, "")
    assert "text param's prompt fills 33 chunks" in message
    assert "at most 32 (2,400 tokens)" in message


def test_interrupt_takes_effect_while_a_long_prompt_is_encoded(engine, monkeypatch):
    encoded = []
    encode_chunk = prompts.encode_chunk

    def counting(*args):
        encoded.append(args[1])
        if len(encoded) == 2:
            engine.interrupt()  # the artist presses Stop while the prompt is being encoded
        return encode_chunk(*args)

    monkeypatch.setattr(prompts, "encode_chunk", counting)
    wf = Workflow(installed_registry())
    ck = wf.add_node("load_checkpoint", {"ckpt_name": "tiny-sd1"}).id
    enc = wf.add_node("text_encode", {"text": "cat " * 2400}).id  # 32 chunks
    wf.connect(ck, "clip", enc, "clip")
    result = engine.run(wf, targets=[enc])
    assert result.interrupted
    assert enc not in result.ran and enc not in result.errors
    assert len(encoded) == 2  # the third of 32 chunks never started
