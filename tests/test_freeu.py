"""FreeU (ComfyUI's FreeU and FreeU_V2) on the tiny SD 1.x and SDXL UNets: each output block
the patch touches gets ComfyUI's formula (written out here) on its backbone and skip
features, chosen by the backbone's channel count as ComfyUI chooses; b = s = 1 leaves the
picture as it was; both nodes import and export."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import diffusion_fixtures as fx  # noqa: E402

from nodes import denoise  # noqa: E402
from studio.graph.importers.comfyui import import_comfyui  # noqa: E402
from studio.graph.importers.comfyui_export import export_comfyui_api  # noqa: E402
from studio.library import installed_registry  # noqa: E402

engine, models_root, tiny_parts = fx.engine, fx.models_root, fx.tiny_parts


def comfy_fourier_filter(x, threshold, scale):
    x_freq = torch.fft.fftn(x.float(), dim=(-2, -1))
    x_freq = torch.fft.fftshift(x_freq, dim=(-2, -1))
    B, C, H, W = x_freq.shape
    mask = torch.ones((B, C, H, W), device=x.device)
    crow, ccol = H // 2, W // 2
    mask[..., crow - threshold : crow + threshold, ccol - threshold : ccol + threshold] = scale
    x_freq = x_freq * mask
    x_freq = torch.fft.ifftshift(x_freq, dim=(-2, -1))
    return torch.fft.ifftn(x_freq, dim=(-2, -1)).real.to(x.dtype)


def comfy_patch(h, hsp, scale_dict, v2):
    """ComfyUI's FreeU / FreeU_V2 ``output_block_patch``."""
    h, hsp = h.clone(), hsp.clone()
    scale = scale_dict.get(int(h.shape[1]), None)
    if scale is not None:
        if v2:
            hidden_mean = h.mean(1).unsqueeze(1)
            B = hidden_mean.shape[0]
            hidden_max, _ = torch.max(hidden_mean.view(B, -1), dim=-1, keepdim=True)
            hidden_min, _ = torch.min(hidden_mean.view(B, -1), dim=-1, keepdim=True)
            hidden_mean = (hidden_mean - hidden_min.unsqueeze(2).unsqueeze(3)) / (
                hidden_max - hidden_min
            ).unsqueeze(2).unsqueeze(3)
            h[:, : h.shape[1] // 2] = h[:, : h.shape[1] // 2] * ((scale[0] - 1) * hidden_mean + 1)
        else:
            h[:, : h.shape[1] // 2] = h[:, : h.shape[1] // 2] * scale[0]
        hsp = comfy_fourier_filter(hsp, threshold=1, scale=scale[1])
    return h, hsp


def graph(ckpt: str, freeu: dict | None):
    wf, ids = fx.txt2img(ckpt, prompt="a red fox", negative="blurry", seed=2, steps=3, cfg=6.0)
    if freeu is not None:
        link = wf.link_into(ids["sampler"], "model")
        node = wf.add_node("freeu", freeu).id
        wf.connect(link.source, link.output, node, "model")
        wf.connect(node, "model", ids["sampler"], "model")
    return wf, ids


@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize("ckpt", ["tiny-sd1", "tiny-sdxl"])
def test_each_patched_block_gets_comfyuis_formula(engine, ckpt, version):
    params = {"b1": 1.3, "b2": 1.4, "s1": 0.9, "s2": 0.2, "version": version}
    calls = []
    step = denoise.freeu_step

    def recording(h, hsp, table, v2):
        before = (h.clone(), hsp.clone())
        out = step(h, hsp, table, v2)
        calls.append((*before, table, v2, out[0].clone(), out[1].clone()))
        return out

    denoise.freeu_step = recording
    try:
        wf, ids = graph(ckpt, params)
        result = engine.run(wf)
    finally:
        denoise.freeu_step = step
    assert result.ok, result.errors
    assert calls  # the up blocks ran through the patch
    touched = 0
    for h, hsp, table, v2, h_out, hsp_out in calls:
        assert v2 is (version == "v2")
        unet_channels = min(table) // 2  # ComfyUI's model_channels
        assert table == {unet_channels * 4: (1.3, 0.9), unet_channels * 2: (1.4, 0.2)}
        want_h, want_hsp = comfy_patch(h, hsp, table, v2)
        assert torch.allclose(h_out, want_h, atol=1e-5)
        assert torch.allclose(hsp_out, want_hsp, atol=1e-5)
        touched += int(h.shape[1]) in table
    assert touched > 0
    plain_wf, plain_ids = graph(ckpt, None)
    plain = engine.run(plain_wf).outputs[plain_ids["decode"]]["image"].numpy()
    got = result.outputs[ids["decode"]]["image"].numpy()
    assert np.abs(got - plain).max() > 1e-3


def test_b_and_s_of_one_leave_the_picture_and_the_unet_unpatched_after(engine):
    wf, ids = graph("tiny-sd1", {"b1": 1.0, "b2": 1.0, "s1": 1.0, "s2": 1.0, "version": "v1"})
    once = engine.run(wf).outputs[ids["decode"]]["image"].numpy()
    wf2, ids2 = graph("tiny-sd1", None)
    plain = engine.run(wf2).outputs[ids2["decode"]]["image"].numpy()
    assert np.abs(once - plain).max() <= 1e-5
    from diffusers.models.unets import unet_2d_blocks
    from diffusers.utils.torch_utils import apply_freeu

    assert unet_2d_blocks.apply_freeu is apply_freeu  # restored after the run


def test_sd15_sized_channels_are_chosen_as_comfyui_does():
    """SD 1.5 (model channels 320): b1 / s1 where the backbone has 1280 channels, b2 / s2 at
    640 (diffusers' own FreeU picks by block instead, the second 1280-channel one for b2)."""
    h, hsp = torch.randn(1, 1280, 8, 8), torch.randn(1, 1280, 8, 8)
    table = {1280: (1.5, 0.5), 640: (1.2, 0.2)}
    out, _ = denoise.freeu_step(h.clone(), hsp, table, False)
    assert torch.allclose(out[:, :640], h[:, :640] * 1.5)
    assert torch.equal(out[:, 640:], h[:, 640:])
    untouched = torch.randn(1, 320, 8, 8)
    assert torch.equal(denoise.freeu_step(untouched.clone(), hsp, table, False)[0], untouched)


@pytest.mark.parametrize("class_type", ["FreeU", "FreeU_V2"])
def test_comfyuis_nodes_import_and_export(class_type):
    api = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd15"}},
        "2": {"class_type": class_type,
              "inputs": {"b1": 1.1, "b2": 1.2, "s1": 0.9, "s2": 0.2, "model": ["1", 0]}},
    }  # fmt: skip
    wf = import_comfyui(api, installed_registry(), source="freeu.json").workflow
    node = wf.get_node("2")
    want_version = "v1" if class_type == "FreeU" else "v2"
    assert node.type == "freeu" and node.params["version"] == want_version
    exported = export_comfyui_api(wf)["2"]
    assert exported["class_type"] == class_type
    assert exported["inputs"] == api["2"]["inputs"]
