"""Textual inversion embeddings: ``embedding:name`` in Text Encode, files from the
``embeddings`` model folder read through diffusers' loader, on studio-tiny (CPU)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from safetensors.torch import load_file, save_file  # noqa: E402

from nodes.prompts import tokenize_with_embeddings  # noqa: E402
from studio.engine import Engine  # noqa: E402
from studio.library import installed_registry  # noqa: E402
from studio.modelfiles import EMBEDDED_MODELS  # noqa: E402
from studio.settings import Settings  # noqa: E402
from training.evaluate import analyze  # noqa: E402
from training.studio_run import to_uint8, txt2img_workflow  # noqa: E402

SHIPPED = EMBEDDED_MODELS / "embeddings" / "studio-tiny-leaf.safetensors"


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    (root / "embeddings").mkdir()
    return root


@pytest.fixture(scope="module")
def engine(root):
    return Engine(installed_registry(), settings=Settings(models_root=str(root)))


def draw(engine, prompt, seed=0, steps=12):
    wf, ids = txt2img_workflow(prompt, seed=seed, steps=steps)
    result = engine.run(wf)
    assert result.ok, result.errors
    return to_uint8(result.outputs[ids["decode"]]["image"])[0], result, ids


def test_the_shipped_embedding_is_small_and_one_vector():
    (vector,) = load_file(str(SHIPPED)).values()
    assert tuple(vector.shape) == (1, 64)  # studio-tiny's text encoder is 64 wide
    assert SHIPPED.stat().st_size < 4096


@pytest.mark.parametrize(
    "shape,background", [("circle", "yellow"), ("square", "blue"), ("triangle", "black")]
)
def test_the_shipped_embedding_draws_its_colour(engine, shape, background):
    """studio-tiny-leaf was trained to mean the colour of leaves: the model's green."""
    prompt = f"a large embedding:studio-tiny-leaf {shape} on a {background} background"
    image, _, _ = draw(engine, prompt, seed=1)
    got = analyze(np.asarray(image))
    assert (got.color, got.background) == ("green", background)


def test_a_changed_embedding_file_re_runs_the_prompt(engine, root):
    path = root / "embeddings" / "leaf.safetensors"
    shutil.copyfile(SHIPPED, path)
    prompt = "a large embedding:leaf circle on a yellow background"
    first, result, ids = draw(engine, prompt)
    assert ids["pos"] in result.ran, "first"
    _, result, ids = draw(engine, prompt)
    assert ids["pos"] not in result.ran  # unchanged file: cached
    save_file({"leaf": torch.zeros(1, 64)}, str(path))
    second, result, ids = draw(engine, prompt)
    assert ids["pos"] in result.ran, "changed"
    assert np.abs(first.astype(int) - second.astype(int)).mean() > 5


def test_a1111_pt_files_and_several_vectors(engine, root):
    """A1111's .pt layout (string_to_param) loads without running code (weights only), and
    an embedding of n vectors takes n token positions."""
    vectors = torch.randn(3, 64)
    torch.save(
        {"string_to_param": {"*": vectors}, "name": "three", "step": 10},
        root / "embeddings" / "three.pt",
    )
    _, result, ids = draw(engine, "a embedding:three circle", steps=2)
    cond = result.outputs[ids["pos"]]["conditioning"][0]
    assert cond.embeds.shape == (1, 77, 64)
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(
        str(EMBEDDED_MODELS / "checkpoints" / "studio-tiny" / "tokenizer")
    )
    chunks, _, injections = tokenize_with_embeddings(
        tok, "a embedding:three circle", {"three": vectors}
    )
    assert [pos for pos, _ in injections[0]] == [2, 3, 4]  # after <start> and "a"
    plain, _, _ = tokenize_with_embeddings(tok, "a circle")
    assert chunks[0][5] == plain[0][2]  # "circle" follows the three vectors


def test_bad_embeddings_are_named(engine, root):
    save_file({"wide": torch.zeros(1, 768)}, str(root / "embeddings" / "wide.safetensors"))
    (root / "embeddings" / "broken.safetensors").write_bytes(b"not a tensor file")
    for prompt, message in (
        ("a embedding:nowhere circle", "embedding 'nowhere' not found"),
        ("a embedding:wide circle", "768-wide vectors, but this text encoder takes 64"),
        ("a embedding:broken circle", "cannot read embedding broken.safetensors"),
    ):
        wf, ids = txt2img_workflow(prompt, steps=1)
        result = engine.run(wf)
        assert not result.ok
        assert message in str(result.errors[ids["pos"]])
