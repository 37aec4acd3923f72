"""Latent From Batch and Repeat Latent Batch (ComfyUI's LatentFromBatch, RepeatLatentBatch),
and their image counterparts (ImageFromBatch, RepeatImageBatch).

What an artist does with them: make a batch, like one image of it, pick it out and sample it
again (a finer pass, another sampler): the picked latent must draw that same image, so it
carries the indices it had in its batch and the Sampler gives it the noise it had there
(ComfyUI's ``batch_index``). Checked on the three sampling paths: studio-tiny with the
diffusers schedule and with a ComfyUI schedule, and studio-tiny-flow."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from nodes import ksampling  # noqa: E402
from nodes.comfycore import (  # noqa: E402
    empty_image,
    image_batch,
    image_from_batch,
    latent_batch,
    latent_blend,
    latent_from_batch,
    repeat_image_batch,
    repeat_latent_batch,
)
from studio.engine import Engine  # noqa: E402
from studio.graph.importers.comfyui import import_comfyui  # noqa: E402
from studio.graph.importers.comfyui_export import export_comfyui_api  # noqa: E402
from studio.library import installed_registry  # noqa: E402
from training.studio_run import to_uint8, txt2img_workflow  # noqa: E402

PROMPT = "a small green square on a red background"


def latent(batch: int, **extra) -> dict:
    samples = torch.arange(batch, dtype=torch.float32).view(batch, 1, 1, 1).expand(batch, 4, 8, 8)
    return {"samples": samples.clone(), **extra}


def test_latent_from_batch_takes_comfyuis_rows_and_remembers_their_indices():
    out = latent_from_batch.execute(None, latent(4), batch_index=1, length=2)
    assert out["samples"][:, 0, 0, 0].tolist() == [1.0, 2.0]
    assert out["batch_index"] == [1, 2]
    # clamped to the batch, as ComfyUI clamps
    out = latent_from_batch.execute(None, latent(4), batch_index=9, length=5)
    assert out["samples"][:, 0, 0, 0].tolist() == [3.0] and out["batch_index"] == [3]
    # a second pick keeps the first pick's indices
    again = latent_from_batch.execute(None, latent_from_batch.execute(None, latent(5), 1, 4), 2, 1)
    assert again["batch_index"] == [3] and float(again["samples"][0, 0, 0, 0]) == 3.0
    # a mask per sample is cut with the samples; one mask for all stays
    masks = torch.arange(4, dtype=torch.float32).view(4, 1, 1).expand(4, 8, 8).clone()
    out = latent_from_batch.execute(None, latent(4, noise_mask=masks), 2, 1)
    assert float(out["noise_mask"][0, 0, 0]) == 2.0 and out["noise_mask"].shape[0] == 1
    one = torch.ones(1, 8, 8)
    assert latent_from_batch.execute(None, latent(4, noise_mask=one), 2, 1)["noise_mask"] is one


def test_repeat_latent_batch_repeats_and_offsets_picked_indices_as_comfyui():
    out = repeat_latent_batch.execute(None, latent(2), amount=3)
    assert out["samples"][:, 0, 0, 0].tolist() == [0.0, 1.0] * 3
    assert "batch_index" not in out  # a plain batch: the copies draw the batch's next rows
    picked = latent_from_batch.execute(None, latent(4), 1, 2)  # indices [1, 2]
    out = repeat_latent_batch.execute(None, picked, amount=3)
    assert out["batch_index"] == [1, 2, 3, 4, 5, 6]  # each copy after the last: new noise


def test_comfyuis_noise_for_picked_latents_is_drawn_one_sample_after_another():
    """ComfyUI's prepare_noise with batch indices: ``randn([1, ...])`` once per index up to
    the largest, each latent taking its own. For a latent whose size is not a multiple of 16
    that is not the same as cutting rows out of one batch-sized draw."""
    shape = (1, 4, 7, 9)
    gen = torch.Generator("cpu").manual_seed(5)
    draws = [torch.randn((1, 4, 7, 9), generator=gen) for _ in range(3)]
    got = ksampling.noise(shape, 5, batch_index=[2])
    assert torch.equal(got, draws[2])
    whole = torch.randn((3, 4, 7, 9), generator=torch.Generator("cpu").manual_seed(5))
    assert not torch.equal(got[0], whole[2])
    both = ksampling.noise((2, 4, 7, 9), 5, batch_index=[2, 0])
    assert torch.equal(both, torch.cat([draws[2], draws[0]]))
    # indices that do not fit the latent (a node changed the batch): plain noise
    assert torch.equal(ksampling.noise(shape, 5, batch_index=[0, 1]), draws[0])


def pictures(model: str, scheduler: str, pick: int | None, steps: int, cfg: float) -> list:
    """txt2img of a batch of 3; with ``pick``, Latent From Batch takes that one of the
    Empty Latent's batch before the Sampler."""
    wf, ids = txt2img_workflow(
        PROMPT, model=model, seed=7, steps=steps, cfg=cfg, scheduler=scheduler, batch_size=3
    )
    if pick is not None:
        node = wf.add_node("latent_from_batch", {"batch_index": pick, "length": 1}).id
        wf.connect(ids["latent"], "latent", node, "latent")
        wf.connect(node, "latent", ids["sampler"], "latent")
    result = Engine(installed_registry()).run(wf, targets=[ids["decode"]])
    assert result.ok, result.errors
    return to_uint8(result.outputs[ids["decode"]]["image"])


@pytest.mark.parametrize(
    ("model", "scheduler", "steps", "cfg"),
    [
        ("studio-tiny", "normal", 8, 3.0),
        ("studio-tiny", "comfy_normal", 8, 3.0),
        ("studio-tiny-flow", "normal", 6, 3.0),
    ],
)
def test_a_picked_latent_draws_its_image_of_the_batch(model, scheduler, steps, cfg):
    batch = pictures(model, scheduler, None, steps, cfg)
    assert len(batch) == 3
    assert np.abs(batch[2].astype(int) - batch[0].astype(int)).mean() > 5  # seeds differ
    (picked,) = pictures(model, scheduler, 2, steps, cfg)
    # the same noise; a batch of 3 and a batch of 1 may round differently by a level
    assert np.abs(picked.astype(int) - batch[2].astype(int)).max() <= 2


def test_the_batch_nodes_import_from_comfyui_and_export_back():
    api = {
        "1": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 4}},
        "2": {
            "class_type": "LatentFromBatch",
            "inputs": {"samples": ["1", 0], "batch_index": 2, "length": 1},
        },
        "3": {"class_type": "RepeatLatentBatch", "inputs": {"samples": ["2", 0], "amount": 3}},
    }  # fmt: skip
    result = import_comfyui(api, installed_registry(), source="batch.json")
    wf = result.workflow
    assert wf.get_node("2").type == "latent_from_batch"
    assert wf.get_node("2").params == {"batch_index": 2, "length": 1}
    assert wf.get_node("3").type == "repeat_latent_batch"
    assert wf.get_node("3").params == {"amount": 3}
    back = export_comfyui_api(wf)
    assert back["2"] == {**api["2"], **{k: back["2"][k] for k in back["2"] if k == "_meta"}}
    assert back["3"]["inputs"] == api["3"]["inputs"]


def test_image_from_batch_and_repeat_image_batch_as_comfyui():
    images = torch.arange(4, dtype=torch.float32).view(4, 1, 1, 1).expand(4, 8, 8, 3).clone()
    got = image_from_batch.execute(None, images, batch_index=1, length=2)
    assert got[:, 0, 0, 0].tolist() == [1.0, 2.0]
    got = image_from_batch.execute(None, images, batch_index=99, length=9)  # clamped
    assert got[:, 0, 0, 0].tolist() == [3.0]
    got = repeat_image_batch.execute(None, images[:2], amount=3)
    assert got.shape == (6, 8, 8, 3) and got[:, 0, 0, 0].tolist() == [0.0, 1.0] * 3
    api = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "a.png"}},
        "2": {"class_type": "ImageFromBatch", "inputs": {"image": ["1", 0], "batch_index": 2, "length": 1}},
        "3": {"class_type": "RepeatImageBatch", "inputs": {"image": ["2", 0], "amount": 4}},
    }  # fmt: skip
    wf = import_comfyui(api, installed_registry(), source="images.json").workflow
    assert wf.get_node("2").type == "image_from_batch"
    assert wf.get_node("2").params == {"batch_index": 2, "length": 1}
    assert wf.get_node("3").type == "repeat_image_batch"
    back = export_comfyui_api(wf)
    assert back["2"]["inputs"] == api["2"]["inputs"] and back["3"]["inputs"] == api["3"]["inputs"]


def test_image_batch_scales_the_second_image_as_comfyui_and_empty_image_has_its_colour():
    import torch.nn.functional as F

    red = empty_image.execute(None, 8, 4, 2, 0xFF0000)
    assert red.shape == (2, 4, 8, 3)
    assert red[0, 0, 0].tolist() == [1.0, 0.0, 0.0]
    teal = empty_image.execute(None, 8, 4, 1, 0x008080)
    assert teal[0, 0, 0].tolist() == pytest.approx([0.0, 128 / 255, 128 / 255])
    same = image_batch.execute(None, red, red[:1])
    assert same.shape == (3, 4, 8, 3)
    # another size: scaled to the first's, its middle cut to the first's aspect (2:1)
    tall = torch.rand(1, 16, 16, 3)
    got = image_batch.execute(None, red, tall)
    want = F.interpolate(tall.movedim(-1, 1)[..., 4:12, :], size=(4, 8), mode="bilinear")
    assert got.shape == (3, 4, 8, 3)
    assert torch.allclose(got[2], want.movedim(1, -1)[0])
    api = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 32, "batch_size": 1, "color": 255}},
        "2": {"class_type": "LoadImage", "inputs": {"image": "a.png"}},
        "3": {"class_type": "ImageBatch", "inputs": {"image1": ["1", 0], "image2": ["2", 0]}},
    }  # fmt: skip
    wf = import_comfyui(api, installed_registry(), source="images.json").workflow
    assert wf.get_node("1").type == "empty_image" and wf.get_node("1").params["color"] == 255
    assert wf.get_node("3").type == "image_batch"
    back = export_comfyui_api(wf)
    assert back["1"]["inputs"] == api["1"]["inputs"]
    assert back["3"]["inputs"] == api["3"]["inputs"]


def test_latent_batch_and_latent_blend_as_comfyui():
    import torch.nn.functional as F

    a, b = latent(2), latent(3)
    joined = latent_batch.execute(None, a, b)
    assert joined["samples"][:, 0, 0, 0].tolist() == [0.0, 1.0, 0.0, 1.0, 2.0]
    assert joined["batch_index"] == [0, 1, 0, 1, 2]  # ComfyUI's: each batch's own indices
    picked = latent_from_batch.execute(None, latent(4), 3, 1)
    assert latent_batch.execute(None, picked, a)["batch_index"] == [3, 0, 1]
    wide = {"samples": torch.rand(1, 4, 8, 16)}
    fitted = latent_batch.execute(None, latent(1), wide)["samples"][1:]
    want = F.interpolate(wide["samples"][..., 4:12], size=(8, 8), mode="bilinear")
    assert torch.allclose(fitted, want)
    with pytest.raises(Exception, match="channels"):
        latent_batch.execute(None, a, {"samples": torch.zeros(1, 16, 8, 8)})
    mixed = latent_blend.execute(None, latent(2), {"samples": torch.full((2, 4, 8, 8), 10.0)}, 0.25)
    assert mixed["samples"][:, 0, 0, 0].tolist() == pytest.approx([7.5, 7.75])
    with pytest.raises(Exception, match="latent1 holds 2 latents and latent2 3"):
        latent_blend.execute(None, latent(2), latent(3), 0.5)
    api = {
        "1": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 2}},
        "2": {"class_type": "LatentBatch", "inputs": {"samples1": ["1", 0], "samples2": ["1", 0]}},
        "3": {
            "class_type": "LatentBlend",
            "inputs": {"samples1": ["2", 0], "samples2": ["1", 0], "blend_factor": 0.3},
        },
    }  # fmt: skip
    wf = import_comfyui(api, installed_registry(), source="latents.json").workflow
    assert wf.get_node("2").type == "latent_batch"
    assert wf.get_node("3").type == "latent_blend"
    assert wf.get_node("3").params == {"blend_factor": 0.3}
    back = export_comfyui_api(wf)
    assert back["2"]["inputs"] == api["2"]["inputs"] and back["3"]["inputs"] == api["3"]["inputs"]
