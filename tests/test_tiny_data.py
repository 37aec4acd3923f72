"""studio-tiny's training data: captions, the held-out split, determinism, and that the
pictures show what the captions say (read back by training.evaluate's pixel statistics)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

# training/ is a repo-root package, not part of the installed app
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from training import data
from training.evaluate import adherence, analyze, position_ok, score


def test_captions_follow_the_grammar():
    scenes = data.sample_scenes(np.random.default_rng(0), 500)
    for s in scenes:
        parsed = data.parse_caption(s.caption)
        assert parsed["color"] == s.color
        assert parsed["shape"] == s.shape
        assert parsed["background"] == s.background
        assert parsed["size"] == s.size_word
        assert parsed["position"] == s.position
        assert s.color != s.background
    captions = {s.caption for s in scenes}
    # both optional parts are sometimes present and sometimes absent
    assert any(", " in c for c in captions) and any(", " not in c for c in captions)
    assert any(" small " in c or " large " in c for c in captions)
    assert any(c.startswith(f"a {col} ") for c in captions for col in data.COLOR_NAMES)
    assert data.parse_caption("a large red circle on a blue background, left")["position"] == "left"
    for bad in (
        "a red circle on a red background!",
        "a big red circle on a blue background",
        "red circle on a blue background",
        "a red circle on a blue background, middle",
    ):
        with pytest.raises(ValueError):
            data.parse_caption(bad)


def test_heldout_file_is_the_seeded_list_and_covers_ten_percent():
    saved = json.loads(data.HELDOUT_PATH.read_text())["combos"]
    assert [tuple(c) for c in saved] == data.choose_heldout()
    combos = data.all_combos()
    assert len(combos) == 8 * 7 * 3
    assert len(set(map(tuple, saved))) >= 0.1 * len(combos)
    assert all(tuple(c) in combos for c in saved)


def test_heldout_combos_never_appear_in_training_batches():
    held = data.heldout_combos()
    seen = set()
    for step in range(40):
        _, caps = data.training_batch(seed=3, step=step, n=64)
        for c in caps:
            p = data.parse_caption(c)
            seen.add((p["color"], p["shape"], p["background"]))
    assert not seen & held
    # the sampler really covers the rest: most training combinations show up
    assert len(seen) > 0.9 * len(data.train_combos())


def test_same_seed_same_images_other_seed_other_images():
    a_img, a_cap = data.training_batch(seed=7, step=12, n=16)
    b_img, b_cap = data.training_batch(seed=7, step=12, n=16)
    c_img, c_cap = data.training_batch(seed=8, step=12, n=16)
    d_img, _ = data.training_batch(seed=7, step=13, n=16)
    assert a_cap == b_cap and np.array_equal(a_img, b_img)
    assert a_cap != c_cap and not np.array_equal(a_img, c_img)
    assert not np.array_equal(a_img, d_img)
    assert a_img.shape == (16, 64, 64, 3) and a_img.dtype == np.uint8


def test_rendered_colors_shapes_and_positions_match_the_caption():
    scenes = data.sample_scenes(np.random.default_rng(1), 300)
    images = data.render_batch(scenes)
    full = [data.make_caption(s.shape, s.color, s.background, s.size, s.position) for s in scenes]
    rates = adherence(full, images)
    assert rates["color"] == 1.0
    assert rates["background"] == 1.0
    assert rates["position"] == 1.0
    assert rates["shape"] >= 0.99
    assert rates["size"] >= 0.99
    # and a wrong caption is caught
    s = scenes[0]
    other = next(c for c in data.COLOR_NAMES if c not in (s.color, s.background))
    wrong = data.make_caption(s.shape, other, s.background)
    assert not score(wrong, images[0])["color"]


def test_position_words_put_the_centroid_there():
    rng = np.random.default_rng(2)
    for pos in data.POSITIONS:
        for combo in data.train_combos()[:30]:
            s = data.sample_scene(rng, combo, size_word="large", position=pos)
            a = analyze(data.render(s))
            assert position_ok(pos, a.cx, a.cy), (pos, s, a)


def test_eval_scenes_are_heldout_and_name_size_and_position():
    scenes = data.eval_scenes(60)
    held = data.heldout_combos()
    assert len({s.caption for s in scenes}) == 60
    for s in scenes:
        assert (s.color, s.shape, s.background) in held
        assert s.size_word and s.position
    assert {s.position for s in scenes} == set(data.POSITIONS)


def test_highres_render_and_canny_map():
    s = data.sample_scene(np.random.default_rng(4), ("red", "square", "blue"), "large", "center")
    low, high = data.render(s), data.render_highres(s)
    assert high.shape == (256, 256, 3)
    # the 64-pixel image is the high-res one shrunk (up to anti-aliasing)
    from PIL import Image

    shrunk = np.asarray(Image.fromarray(high).resize((64, 64), Image.Resampling.BOX))
    assert np.abs(shrunk.astype(int) - low.astype(int)).mean() < 2.0
    edges = data.canny_map(low)
    assert edges.shape == (64, 64, 3) and edges.dtype == np.uint8
    ys, xs = np.nonzero(edges[..., 0])
    assert len(xs) > 20
    # edges outline the square around the centre, nothing in the corners
    assert abs(xs.mean() / 64 - s.cx) < 0.05 and abs(ys.mean() / 64 - s.cy) < 0.05
    assert edges[:8, :8].max() == 0


def test_tokenizer_maps_caption_words_to_single_tokens(tmp_path):
    from training.tokenizer import WORDS, load_tokenizer, save_tokenizer

    tok = load_tokenizer(save_tokenizer(tmp_path / "tok"))
    assert tok.model_max_length == 77
    caption = "a small red circle on a blue background, left"
    ids = tok(caption).input_ids
    words = caption.replace(",", " ,").split()
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert len(ids) == len(words) + 2
    assert tok.convert_ids_to_tokens(ids[1:-1]) == [w + "</w>" for w in words]
    for w in WORDS:
        assert len(tok(w).input_ids) == 3, w
    # unknown words still tokenize (into pieces), and padding fills 77 with the end token
    assert len(tok("zebra").input_ids) > 3
    padded = tok([""], padding="max_length", max_length=77).input_ids[0]
    assert len(padded) == 77 and padded[1:] == [tok.eos_token_id] * 76


def test_tiny_components_load_as_a_stable_diffusion_pipeline(tmp_path):
    """The configs are stock diffusers/transformers classes: a saved folder loads offline
    through StableDiffusionPipeline (the text embedding added to the time embedding needs no
    extra pipeline inputs) and gives a 64x64 image."""
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    from training import models
    from training.tokenizer import load_tokenizer, save_tokenizer

    torch.manual_seed(0)
    tok = load_tokenizer(save_tokenizer(tmp_path / "tok"))
    pipe = StableDiffusionPipeline(
        vae=models.make_vae(),
        text_encoder=models.make_text_encoder(tok),
        tokenizer=tok,
        unet=models.make_unet(),
        scheduler=EulerDiscreteScheduler.from_config(models.SCHEDULER_CONFIG),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    assert pipe.unet.config.addition_embed_type == "text"
    pipe.save_pretrained(tmp_path / "studio-tiny", safe_serialization=True)
    loaded = StableDiffusionPipeline.from_pretrained(
        tmp_path / "studio-tiny", local_files_only=True, safety_checker=None
    )
    out = loaded(
        "a small red circle on a blue background, left",
        num_inference_steps=2,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    ).images
    assert out.shape == (1, 64, 64, 3)
    total = sum(f.stat().st_size for f in (tmp_path / "studio-tiny").rglob("*.safetensors"))
    assert total < 20 * 2**20
