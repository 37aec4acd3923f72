"""studio-tiny-flow's trainer (training/train_flow.py): a run stopped and resumed is the run
that never stopped, data drawn by DataLoader workers is the data drawn in the process, and
its export loads as a StableDiffusion3Pipeline and draws."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from training import train_flow
from training.common import load_tensors

QUICK = [
    "--batch",
    "2",
    "--num-layers",
    "1",
    "--decay-from",
    "1",
    "--warmup",
    "2",
    "--lr",
    "1e-3",
    "--eval-every",
    "0",
    "--log-every",
    "1",
]


def run(tmp: Path, name: str, *extra: str) -> Path:
    ckpt = tmp / name
    train_flow.main(
        ["--checkpoint-dir", str(ckpt), "--out", str(tmp / f"{name}-out"), *QUICK, *extra]
    )
    return ckpt


def test_resumed_run_continues_identically_and_exports_a_pipeline(tmp_path):
    import torch

    straight = run(tmp_path, "straight", "--max-steps", "3", "--no-final-eval")
    part = run(tmp_path, "split", "--max-steps", "1", "--no-final-eval", "--workers", "1")
    state = json.loads((part / "state.json").read_text())
    assert state["step"] == 1
    at_step1 = load_tensors(part / "weights.safetensors")
    run(
        tmp_path,
        "split",
        "--resume",
        "--max-steps",
        "3",
        "--workers",
        "1",
        "--eval-count",
        "2",
        "--eval-steps",
        "2",
        "--tar",
    )
    a = load_tensors(straight / "weights.safetensors")
    b = load_tensors(part / "weights.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ema_a = load_tensors(straight / "ema.safetensors")
    ema_b = load_tensors(part / "ema.safetensors")
    assert all(torch.equal(ema_a[k], ema_b[k]) for k in ema_a)
    # the resumed steps did train
    assert any(not torch.equal(at_step1[k], b[k]) for k in b)
    final = json.loads((part / "state.json").read_text())
    assert final["step"] == 3 and len(final["history"]) == 1

    # the final evaluation exported the EMA model as one tar: a diffusers SD3 folder
    import tarfile

    from diffusers import StableDiffusion3Pipeline

    tar = tmp_path / "split-out" / "studio-tiny-flow.tar"
    assert tar.is_file() and tar.stat().st_size < 16_000_000
    with tarfile.open(tar) as tf:
        tf.extractall(tmp_path / "x", filter="data")
    folder = tmp_path / "x" / "studio-tiny-flow"
    pipe = StableDiffusion3Pipeline.from_pretrained(
        folder, text_encoder_3=None, tokenizer_3=None, local_files_only=True
    )
    assert pipe.transformer.config.num_layers == 1
    img = pipe(
        "a large red circle on a blue background, left",
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images
    assert img.shape == (1, 64, 64, 3)

    # its SD3 single file reads back weight for weight through diffusers' converters, and
    # diffusers' from_single_file draws the folder's picture
    from training.export_flow_single_file import export, verify

    single = export(folder, tmp_path / "tiny-flow.safetensors")
    verify(single, folder)
    from_file = StableDiffusion3Pipeline.from_single_file(
        str(single),
        config=str(folder),
        text_encoder_3=None,
        tokenizer_3=None,
        local_files_only=True,
    )
    img2 = from_file(
        "a large red circle on a blue background, left",
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images
    assert abs(img2 - img).max() * 255 < 2.0


def test_flux_family_trains_exports_and_studio_draws_what_flux_pipeline_draws(tmp_path):
    """``--family flux`` (studio-tiny-flux): a few steps, then the exported FluxPipeline
    folder runs through Studio's txt2img graph (Load Checkpoint on the folder) and through
    diffusers' FluxPipeline to the same picture: what the GPU-trained model will do."""
    import numpy as np
    import torch
    from diffusers import FluxPipeline

    from studio.engine import Engine
    from studio.library import installed_registry
    from studio.settings import Settings
    from training.studio_run import to_uint8, txt2img_workflow

    root = tmp_path / "models"
    ckpt = run(
        tmp_path, "flux", "--family", "flux", "--num-single-layers", "1", "--max-steps", "2",
        "--eval-count", "2", "--eval-steps", "2", "--out", str(root / "checkpoints"),
    )  # fmt: skip
    state = json.loads((ckpt / "state.json").read_text())
    assert state["family"] == "flux" and state["step"] == 2
    folder = root / "checkpoints" / "studio-tiny-flux"
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    assert size < 30_000_000
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "FluxPipeline"
    assert index["text_encoder_2"] == ["transformers", "T5EncoderModel"]
    # resumable like the sd3 family: --resume goes on with the flux run
    run(tmp_path, "flux", "--family", "flux", "--resume", "--max-steps", "3", "--no-final-eval")
    assert json.loads((ckpt / "state.json").read_text())["step"] == 3

    prompt, steps, cfg = "a large red circle on a blue background, left", 3, 3.0
    pipe = FluxPipeline.from_pretrained(folder, local_files_only=True)
    assert pipe.transformer.config.guidance_embeds is False
    t5_len = pipe.tokenizer_2.model_max_length
    assert t5_len == 32
    want = pipe(
        prompt,
        negative_prompt="",
        true_cfg_scale=cfg,
        num_inference_steps=steps,
        height=64,
        width=64,
        max_sequence_length=t5_len,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images[0]
    want = (want * 255).round().astype(np.uint8)

    settings = Settings(
        models_root=str(root), output_dir=str(tmp_path / "o"), input_dir=str(tmp_path / "i")
    )
    wf, ids = txt2img_workflow(prompt, model=folder.name, steps=steps, cfg=cfg, seed=0)
    result = Engine(installed_registry(), settings=settings).run(wf)
    assert result.ok, result.errors
    got = to_uint8(result.outputs[ids["decode"]]["image"])[0]
    assert got.shape == (64, 64, 3)
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1

    # its transformer as a Flux.1-layout file (Load Diffusion Model) reads back weight for
    # weight, and with the folder's CLIP and VAE draws the folder's picture
    from training.export_flow_single_file import export_flux, verify_flux

    single = export_flux(folder, root / "diffusion_models" / "tiny-flux.safetensors")
    assert single.stat().st_size < 4_000_000
    verify_flux(single, folder)
    ldm = wf.add_node("load_diffusion_model", {"unet_name": single.name}).id
    wf.connect(ldm, "model", ids["sampler"], "model")
    result = Engine(installed_registry(), settings=settings).run(wf)
    assert result.ok, result.errors
    from_file = to_uint8(result.outputs[ids["decode"]]["image"])[0]
    assert np.abs(from_file.astype(int) - got.astype(int)).max() <= 1


def test_flux_warm_start_is_the_sd3_model_where_their_inputs_agree():
    """``flow_models.flux_from_sd3``: a Flux transformer started from an SD3 one computes the
    SD3 model's velocity when what differs between the two (SD3's position table, Flux's
    rotary positions, the text stream) is taken away: the same context, no positions."""
    import torch

    from training import flow_models as F

    torch.manual_seed(0)
    sd3 = F.make_transformer(
        {**F.TRANSFORMER_CONFIG, "num_layers": 2, "joint_attention_dim": 64,
         "pooled_projection_dim": 64}
    )  # fmt: skip
    with torch.no_grad():
        for p in sd3.parameters():  # diffusers zero-initialises the gates and outputs
            p.normal_(std=0.05)
        sd3.pos_embed.pos_embed.zero_()
    flux = F.make_flux_transformer(
        {**F.FLUX_TRANSFORMER_CONFIG, "num_layers": 2, "num_single_layers": 1}
    )
    counts = F.flux_from_sd3(flux, sd3)
    assert counts["fresh"] > 0  # the single block and the text stream's own parts
    x, sigma = torch.randn(2, 4, 16, 16), torch.tensor([0.3, 0.8])
    ctx, pooled = torch.randn(2, 7, 64), torch.randn(2, 64)
    with torch.no_grad():
        want = sd3(
            hidden_states=x, timestep=sigma * 1000, encoder_hidden_states=ctx,
            pooled_projections=pooled, return_dict=False,
        )[0]  # fmt: skip
        img_ids, txt_ids = F.flux_ids(16, 16, 7, "cpu", torch.float32)
        got = flux(
            hidden_states=F.flux_pack(x), timestep=sigma, encoder_hidden_states=ctx,
            pooled_projections=pooled, txt_ids=txt_ids, img_ids=img_ids * 0, guidance=None,
            return_dict=False,
        )[0]  # fmt: skip
    got = F.flux_unpack(got, 16, 16)
    assert want.abs().mean() > 0.1
    assert (got - want).abs().max() < 1e-5


def test_flux_distilled_from_the_shipped_flow_model_starts_near_it(tmp_path):
    """``--teacher`` with ``--warm-start``: the flux run starts from studio-tiny-flow's
    blocks and CLIP and learns the teacher's predictions; its first loss (against the
    teacher) is far below a fresh model's, and it resumes like any run."""
    teacher = str(train_flow.F.FOLDER)
    common = ["--family", "flux", "--teacher", teacher, "--num-single-layers", "1",
              "--no-final-eval", "--log-every", "1"]  # fmt: skip
    losses = {}
    for name, extra in (("warm", ["--warm-start", "--num-layers", "6"]), ("fresh", [])):
        ckpt = run(tmp_path, name, *common, *extra, "--max-steps", "1")
        state = json.loads((ckpt / "state.json").read_text())
        assert state["hparams"]["teacher"] == teacher and state["hparams"]["distill"] == 1.0
        assert state["hparams"]["warm_start"] is (name == "warm")
        losses[name] = state["loss"]
    assert losses["warm"] < 0.5 * losses["fresh"]
    ckpt = run(tmp_path, "warm", *common, "--resume", "--max-steps", "2")
    assert json.loads((ckpt / "state.json").read_text())["step"] == 2
