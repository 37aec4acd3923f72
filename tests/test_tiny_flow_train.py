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
