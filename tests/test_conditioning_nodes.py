"""Conditioning Zero Out / Combine / Concat / Average: the tensors (ComfyUI's formulas) and
what the Sampler makes of them (tiny SD1, CPU)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import diffusion_fixtures as fx  # noqa: E402

from nodes.conditioning import (  # noqa: E402
    conditioning_average,
    conditioning_combine,
    conditioning_concat,
    conditioning_zero_out,
)
from nodes.values import Cond  # noqa: E402
from studio.engine import Engine  # noqa: E402
from studio.errors import NodeError  # noqa: E402
from studio.library import installed_registry  # noqa: E402
from studio.settings import Settings  # noqa: E402


def cond(seed: int, tokens: int = 77, width: int = 8, pooled: bool = True) -> Cond:
    g = torch.Generator().manual_seed(seed)
    return Cond(
        embeds=torch.randn(1, tokens, width, generator=g),
        pooled=torch.randn(1, 4, generator=g) if pooled else None,
        family="sd1",
        text=f"prompt {seed}",
    )


# -- the tensors ---------------------------------------------------------------------------


def test_zero_out_zeros_embeddings_and_pooled():
    a = cond(1)
    (z,) = conditioning_zero_out.execute(None, [a])
    assert z.embeds.shape == a.embeds.shape and not z.embeds.any()
    assert z.pooled.shape == a.pooled.shape and not z.pooled.any()
    assert a.embeds.any()  # the input is untouched
    (z,) = conditioning_zero_out.execute(None, [cond(2, pooled=False)])
    assert z.pooled is None


def test_combine_keeps_both_prompts():
    a, b, c = cond(1), cond(2), cond(3)
    assert conditioning_combine.execute(None, [a], [b]) == [a, b]
    assert conditioning_combine.execute(None, [a, b], [c]) == [a, b, c]


def test_concat_appends_the_tokens_and_keeps_the_first_pooled():
    a, b = cond(1), cond(2, tokens=154)
    (out,) = conditioning_concat.execute(None, [a], [b])
    assert out.embeds.shape == (1, 77 + 154, 8)
    assert torch.equal(out.embeds[:, :77], a.embeds) and torch.equal(out.embeds[:, 77:], b.embeds)
    assert torch.equal(out.pooled, a.pooled)
    with pytest.raises(NodeError, match="different text encoders"):
        conditioning_concat.execute(None, [a], [cond(3, width=16)])
    with pytest.raises(NodeError, match=r"conditioning_from.*2 combined prompts"):
        conditioning_concat.execute(None, [a], [b, a])


def test_average_blends_to_and_from():
    a, b = cond(1), cond(2)
    (same,) = conditioning_average.execute(None, [a], [b], 1.0)
    assert torch.equal(same.embeds, a.embeds) and torch.equal(same.pooled, a.pooled)
    (other,) = conditioning_average.execute(None, [a], [b], 0.0)
    assert torch.equal(other.embeds, b.embeds) and torch.equal(other.pooled, b.pooled)
    (mid,) = conditioning_average.execute(None, [a], [b], 0.25)
    assert torch.allclose(mid.embeds, a.embeds * 0.25 + b.embeds * 0.75)
    assert torch.allclose(mid.pooled, a.pooled * 0.25 + b.pooled * 0.75)


def test_average_of_different_lengths_follows_to():
    short, long = cond(1), cond(2, tokens=154)
    # A longer 'from' is cut to 'to''s tokens.
    (out,) = conditioning_average.execute(None, [short], [long], 0.5)
    assert out.embeds.shape == (1, 77, 8)
    assert torch.allclose(out.embeds, short.embeds * 0.5 + long.embeds[:, :77] * 0.5)
    # A shorter 'from' counts as zeros beyond its end.
    (out,) = conditioning_average.execute(None, [long], [short], 0.5)
    assert out.embeds.shape == (1, 154, 8)
    assert torch.allclose(out.embeds[:, :77], long.embeds[:, :77] * 0.5 + short.embeds * 0.5)
    assert torch.allclose(out.embeds[:, 77:], long.embeds[:, 77:] * 0.5)


def test_average_pooled_when_only_one_side_has_it():
    with_pooled, without = cond(1), cond(2, pooled=False)
    (out,) = conditioning_average.execute(None, [without], [with_pooled], 0.7)
    assert torch.equal(out.pooled, with_pooled.pooled)
    (out,) = conditioning_average.execute(None, [with_pooled], [without], 0.7)
    assert torch.equal(out.pooled, with_pooled.pooled)


# -- what the Sampler makes of them ----------------------------------------------------------


@pytest.fixture(scope="module")
def models_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    fx.save_folder(fx.sd1_pipeline(fx.tiny_sd1()), root / "checkpoints" / "tiny-sd1")
    fx.save_folder(fx.sdxl_pipeline(fx.tiny_sdxl()), root / "checkpoints" / "tiny-sdxl")
    return root


@pytest.fixture
def engine(models_root, tmp_path):
    settings = Settings(models_root=str(models_root), output_dir=str(tmp_path / "out"))
    yield Engine(installed_registry(), settings=settings)


def generate(
    engine, positive, negative=None, *, cfg=5.0, extra_prompts=("a green tree",), ckpt="tiny-sd1"
):
    """A tiny txt2img run whose positive (and negative) comes from ``positive(wf, pos, other)``:
    ``pos`` and ``other`` are Text Encode nodes ("a red fox" and ``extra_prompts[0]``)."""
    wf, ids = fx.txt2img(ckpt, prompt="a red fox", steps=3, cfg=cfg, seed=7)
    other = wf.add_node("text_encode", {"text": extra_prompts[0]}).id
    wf.connect(ids["ckpt"], "clip", other, "clip")
    wf.connect(*positive(wf, ids["pos"], other), ids["sampler"], "positive")
    if negative is not None:
        wf.connect(*negative(wf, ids["neg"], other), ids["sampler"], "negative")
    result = engine.run(wf)
    assert result.ok, result.errors
    return result.outputs[ids["sampler"]]["latent"]["samples"]


def plain(wf, pos, other):
    return pos, "conditioning"


def node_of(type_id, first_input, second_input=None, params=None, swap=False):
    def build(wf, pos, other):
        a, b = (other, pos) if swap else (pos, other)
        n = wf.add_node(type_id, params or {}).id
        wf.connect(a, "conditioning", n, first_input)
        if second_input is not None:
            wf.connect(b if second_input != "same" else a, "conditioning", n, _second(type_id))
        return n, "conditioning"

    return build


def _second(type_id):
    return {"conditioning_combine": "conditioning_2"}.get(type_id, "conditioning_from")


def test_combine_of_a_prompt_with_itself_is_that_prompt(engine):
    alone = generate(engine, plain)
    twice = generate(engine, node_of("conditioning_combine", "conditioning_1", "same"))
    assert torch.allclose(twice, alone, atol=1e-5)


def test_combine_averages_both_prompts_in_either_order(engine):
    alone = generate(engine, plain)
    ab = generate(engine, node_of("conditioning_combine", "conditioning_1", "other"))
    ba = generate(engine, node_of("conditioning_combine", "conditioning_1", "other", swap=True))
    assert torch.allclose(ab, ba, atol=1e-5)
    assert (ab - alone).abs().max() > 1e-3


def test_combined_negative_prompts(engine):
    single = generate(engine, plain)
    both = generate(engine, plain, node_of("conditioning_combine", "conditioning_1", "same"))
    assert torch.allclose(both, single, atol=1e-5)
    # Without guidance (cfg 1) the negative prompts are not used at all.
    a = generate(engine, plain, node_of("conditioning_combine", "conditioning_1", "other"), cfg=1)
    b = generate(engine, plain, cfg=1)
    assert torch.allclose(a, b, atol=1e-6)


def test_combined_prompt_is_guided_like_the_average_prediction(engine):
    """One euler step from the same noise: combining A and B moves the latent by the mean of
    the moves A alone and B alone make (the step is linear in the prediction)."""

    def run(positive):
        wf, ids = fx.txt2img("tiny-sd1", prompt="a red fox", steps=1, cfg=1.0, seed=3)
        n = wf.add_node("text_encode", {"text": "a green tree"}).id
        wf.connect(ids["ckpt"], "clip", n, "clip")
        if positive == "both":
            c = wf.add_node("conditioning_combine").id
            wf.connect(ids["pos"], "conditioning", c, "conditioning_1")
            wf.connect(n, "conditioning", c, "conditioning_2")
            wf.connect(c, "conditioning", ids["sampler"], "positive")
        elif positive == "b":
            wf.connect(n, "conditioning", ids["sampler"], "positive")
        result = engine.run(wf)
        assert result.ok, result.errors
        return result.outputs[ids["sampler"]]["latent"]["samples"]

    a, b, both = run("a"), run("b"), run("both")
    assert torch.allclose(both, (a + b) / 2, atol=1e-4)
    assert (a - b).abs().max() > 1e-3


def test_zeroed_prompt_no_longer_matters(engine):
    a = generate(engine, plain)
    b = generate(engine, lambda wf, pos, other: (other, "conditioning"))
    assert (a - b).abs().max() > 1e-3
    za = generate(engine, node_of("conditioning_zero_out", "conditioning"))
    zb = generate(
        engine,
        lambda wf, pos, other: node_of("conditioning_zero_out", "conditioning")(wf, other, pos),
    )
    assert torch.equal(za, zb)
    assert (za - a).abs().max() > 1e-3


def test_concat_of_a_prompt_with_itself_reads_the_same(engine):
    """Attention over the tokens twice over equals attention over them once, so the image is
    the same; concatenating another prompt changes it."""
    alone = generate(engine, plain)
    doubled = generate(engine, node_of("conditioning_concat", "conditioning_to", "same"))
    assert torch.allclose(doubled, alone, atol=1e-4)
    other = generate(engine, node_of("conditioning_concat", "conditioning_to", "other"))
    assert (other - alone).abs().max() > 1e-3


def test_average_at_full_strength_is_the_to_prompt(engine):
    alone = generate(engine, plain)
    full = generate(
        engine,
        node_of(
            "conditioning_average", "conditioning_to", "other", {"conditioning_to_strength": 1.0}
        ),
    )
    assert torch.equal(full, alone)
    half = generate(
        engine,
        node_of(
            "conditioning_average", "conditioning_to", "other", {"conditioning_to_strength": 0.5}
        ),
    )
    assert (half - alone).abs().max() > 1e-3


def test_sdxl_prompts_combine_with_their_pooled_embeddings(engine):
    """SDXL conditions on each prompt's pooled embedding too: combining a prompt with itself
    is that prompt, combining two is neither, and zeroing the pooled embedding counts."""
    alone = generate(engine, plain, ckpt="tiny-sdxl")
    twice = generate(
        engine, node_of("conditioning_combine", "conditioning_1", "same"), ckpt="tiny-sdxl"
    )
    assert torch.allclose(twice, alone, atol=1e-5)
    ab = generate(
        engine, node_of("conditioning_combine", "conditioning_1", "other"), ckpt="tiny-sdxl"
    )
    ba = generate(
        engine,
        node_of("conditioning_combine", "conditioning_1", "other", swap=True),
        ckpt="tiny-sdxl",
    )
    assert torch.allclose(ab, ba, atol=1e-5) and (ab - alone).abs().max() > 1e-3
    zeroed = generate(engine, node_of("conditioning_zero_out", "conditioning"), ckpt="tiny-sdxl")
    assert (zeroed - alone).abs().max() > 1e-3


# -- Conditioning Set Mask (regional prompting) ------------------------------------------------


def one_step(engine, tmp_path, build):
    """One euler step at cfg 1 from seed 3 (the step is linear in the prediction, so the
    result shows the prediction cell by cell); ``build(wf, fox, tree, mask)`` gives the
    positive. ``mask`` is a Load Image whose mask is the left half of the 64x64 image."""
    import numpy as np
    from PIL import Image

    rgba = np.zeros((64, 64, 4), dtype=np.uint8)
    rgba[:, 32:, 3] = 255  # right half opaque: the mask (transparent = 1) is the left half
    Image.fromarray(rgba, "RGBA").save(tmp_path / "left.png")
    wf, ids = fx.txt2img("tiny-sd1", prompt="a red fox", steps=1, cfg=1.0, seed=3)
    tree = wf.add_node("text_encode", {"text": "a green tree"}).id
    wf.connect(ids["ckpt"], "clip", tree, "clip")
    mask = wf.add_node("load_image", {"image": str(tmp_path / "left.png")}).id
    wf.connect(*build(wf, ids["pos"], tree, mask), ids["sampler"], "positive")
    result = engine.run(wf)
    assert result.ok, result.errors
    return result.outputs[ids["sampler"]]["latent"]["samples"]


def set_mask(wf, prompt, mask, strength=1.0, invert=False):
    if invert:
        inv = wf.add_node("invert_mask").id
        wf.connect(mask, "mask", inv, "mask")
        mask, out = inv, "mask"
    else:
        out = "mask"
    n = wf.add_node("conditioning_set_mask", {"strength": strength}).id
    wf.connect(prompt, "conditioning", n, "conditioning")
    wf.connect(mask, out, n, "mask")
    return n


def combine(wf, a, b):
    n = wf.add_node("conditioning_combine").id
    wf.connect(a, "conditioning", n, "conditioning_1")
    wf.connect(b, "conditioning", n, "conditioning_2")
    return n


def test_each_masked_prompt_guides_its_own_region(engine, tmp_path):
    fox = one_step(engine, tmp_path, lambda wf, fox, tree, mask: (fox, "conditioning"))
    tree = one_step(engine, tmp_path, lambda wf, fox, tree, mask: (tree, "conditioning"))

    def regions(wf, fox, tree, mask):
        left = set_mask(wf, fox, mask)
        right = set_mask(wf, tree, mask, invert=True)
        return combine(wf, left, right), "conditioning"

    both = one_step(engine, tmp_path, regions)
    assert torch.allclose(both[..., :4], fox[..., :4], atol=1e-5)  # latent columns 0..3
    assert torch.allclose(both[..., 4:], tree[..., 4:], atol=1e-5)
    assert (fox - tree).abs().max() > 1e-3


def test_masked_and_unmasked_prompts_blend_by_weight(engine, tmp_path):
    fox = one_step(engine, tmp_path, lambda wf, fox, tree, mask: (fox, "conditioning"))
    tree = one_step(engine, tmp_path, lambda wf, fox, tree, mask: (tree, "conditioning"))

    def fox_everywhere_tree_left(wf, fox, tree, mask):
        return combine(wf, fox, set_mask(wf, tree, mask, strength=3.0)), "conditioning"

    out = one_step(engine, tmp_path, fox_everywhere_tree_left)
    # Left: (fox * 1 + tree * 3) / 4, which a linear step keeps; right: the fox alone.
    assert torch.allclose(out[..., :4], (fox[..., :4] + 3 * tree[..., :4]) / 4, atol=1e-4)
    assert torch.allclose(out[..., 4:], fox[..., 4:], atol=1e-5)
