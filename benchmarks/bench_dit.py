"""SD3 / Flux through Studio's graph against StableDiffusion3Pipeline / FluxPipeline, and the
memory of fp8 and GGUF transformers against fp16. Prints JSON.

    .venv/bin/python benchmarks/bench_dit.py                 # tiny components, CPU
    .venv/bin/python benchmarks/bench_dit.py --device cuda --real-size [--layers N]

``--real-size``: transformers of Flux.1's and SD3.5 Large's shapes (random weights, built on
the GPU, saved to a temporary diffusers folder), small text encoders of the real widths, a
real-size 16-channel VAE; 1024x1024, ``--steps`` steps. ``--layers`` cuts the depth (the
width stays real) when time or memory is short. On a machine without CUDA it says so and
exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]
os.environ.setdefault("HF_HUB_OFFLINE", "1")

PROMPT = "a red circle on a blue background"


def _engine(models_root: Path, device: str, out: Path):
    from studio.engine import Engine
    from studio.library import installed_registry
    from studio.settings import Settings

    settings = Settings(models_root=str(models_root), output_dir=str(out), input_dir=str(out))
    settings.device = device
    return Engine(installed_registry(), settings=settings)


def _graph(ckpt: str, *, seed: int, steps: int, cfg: float, size: int, prompt: str):
    from studio import recipes
    from studio.library import installed_registry

    return recipes.txt2img(
        installed_registry(), ckpt, prompt, negative="", seed=seed, steps=steps, cfg=cfg,
        width=size, height=size,
    )  # fmt: skip


def compare(family: str, folder: Path, pipe, *, device: str, steps: int, size: int, runs: int):
    """Warm graph time over warm pipeline time, each run a new prompt and seed."""
    import torch

    engine = _engine(folder.parent.parent, device, folder.parent.parent / "out")
    cfg = 4.0 if family == "sd3" else 1.0

    def graph(i: int) -> float:
        wf, _ = _graph(folder.name, seed=i, steps=steps, cfg=cfg, size=size, prompt=f"{PROMPT} {i}")
        t = time.perf_counter()
        result = engine.run(wf)
        if device == "cuda":
            torch.cuda.synchronize()
        assert result.ok, result.errors
        return time.perf_counter() - t

    def pipeline(i: int) -> float:
        kw = {"negative_prompt": ""} if family == "sd3" else {}
        t = time.perf_counter()
        pipe(
            f"{PROMPT} {i}", height=size, width=size, num_inference_steps=steps,
            guidance_scale=cfg if family == "sd3" else 3.5,
            generator=torch.Generator("cpu").manual_seed(i), output_type="np", **kw,
        )  # fmt: skip
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t

    graph(0), pipeline(0)  # warm: loading, first calls
    # interleaved, one of each per round, so that a shared machine's changing load falls on
    # both alike; medians
    times = [(graph(i + 1), pipeline(i + 1)) for i in range(runs)]
    g = sorted(t[0] for t in times)[runs // 2]
    p = sorted(t[1] for t in times)[runs // 2]
    return {"graph_s": round(g, 4), "pipeline_s": round(p, 4), "ratio": round(g / p, 3)}


def memory(folder: Path, device: str) -> dict:
    """Resident weight bytes (and CUDA peak during one forward) of one Flux transformer
    loaded as default (fp16), fp8_e4m3fn and GGUF Q8_0."""
    import dit_fixtures as fx
    import torch

    from nodes import dit

    parts = fx.tiny_flux()
    orig = fx.to_original(parts["transformer"], "flux")
    dm = folder / "diffusion_models"
    dm.mkdir(exist_ok=True)
    fx.save(orig, dm / "f.safetensors")
    fx.save_gguf(orig, dm / "f.gguf")
    out = {}
    for label, name, quant in (
        ("fp16", "f.safetensors", "default"),
        ("fp8_e4m3fn", "f.safetensors", "fp8_e4m3fn"),
        ("gguf_q8_0", "f.gguf", "default"),
    ):
        source = dit.inspect_diffusion_model(dm / name, name, (label,), quant)
        net = dit.load_component(source, "transformer", torch.float16, label).to(device)
        weights = sum(t.numel() * t.element_size() for t in net.parameters())
        weights += sum(t.numel() * t.element_size() for t in net.buffers())
        out[label] = {"weight_bytes": weights}
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
            x = torch.randn(1, 64, 64, device=device, dtype=torch.float16)
            with torch.no_grad():
                net(
                    hidden_states=x, timestep=torch.tensor([0.5], device=device),
                    guidance=torch.tensor([3.5], device=device),
                    pooled_projections=torch.randn(1, 32, device=device, dtype=torch.float16),
                    encoder_hidden_states=torch.randn(1, 8, 96, device=device, dtype=torch.float16),
                    txt_ids=torch.zeros(8, 3, device=device), img_ids=torch.zeros(64, 3, device=device),
                )  # fmt: skip
            out[label]["cuda_peak_bytes"] = torch.cuda.max_memory_allocated()
        del net
    base = out["fp16"]["weight_bytes"]
    for v in out.values():
        v["weight_ratio_vs_fp16"] = round(v["weight_bytes"] / base, 3)
    return out


def tiny(args) -> dict:
    import dit_fixtures as fx
    import torch

    torch.set_num_threads(args.threads)
    result = {"device": args.device, "size": args.size, "steps": args.steps}
    with tempfile.TemporaryDirectory() as tmp:
        ck = Path(tmp) / "checkpoints"
        ck.mkdir()
        for family, parts, make in (
            ("sd3", fx.tiny_sd3(), fx.sd3_pipeline),
            ("flux", fx.tiny_flux(), fx.flux_pipeline),
        ):
            pipe = make(parts)
            pipe.save_pretrained(str(ck / f"tiny-{family}"))
            pipe.to(args.device)
            result[family] = compare(
                family, ck / f"tiny-{family}", pipe, device=args.device, steps=args.steps,
                size=args.size, runs=args.runs,
            )  # fmt: skip
        result["memory_flux_transformer"] = memory(Path(tmp), args.device)
    return result


def real_size(args) -> dict:
    import torch

    if not torch.cuda.is_available():
        return {"skipped": "no CUDA device: --real-size needs a GPU"}
    import diffusers
    import dit_fixtures as fx

    dtype = torch.bfloat16
    result = {"device": "cuda", "size": 1024, "steps": args.steps, "dtype": "bfloat16"}
    with tempfile.TemporaryDirectory() as tmp:
        ck = Path(tmp) / "checkpoints"
        ck.mkdir()
        for family in ("flux", "sd3"):
            with torch.device("cuda"):
                if family == "flux":
                    net = diffusers.FluxTransformer2DModel(
                        num_layers=args.layers or 19, num_single_layers=2 * (args.layers or 19),
                        guidance_embeds=True,
                    )  # fmt: skip
                    parts = fx.tiny_flux()
                    parts["text_encoder"] = fx.clip(768, False, 1)
                    parts["text_encoder_2"] = fx.t5(d_model=4096)
                else:
                    net = diffusers.SD3Transformer2DModel(
                        num_layers=args.layers or 38, attention_head_dim=64,
                        num_attention_heads=38, joint_attention_dim=4096,
                        caption_projection_dim=2432, pooled_projection_dim=2048,
                        out_channels=16, pos_embed_max_size=192, qk_norm="rms_norm",
                    )  # fmt: skip
                    parts = fx.tiny_sd3()
                    parts["text_encoder"] = fx.clip(768, True, 1)
                    parts["text_encoder_2"] = fx.clip(1280, True, 2)
                    parts["text_encoder_3"] = fx.t5(d_model=4096)
                parts["transformer"] = net.to(dtype)
                parts["vae"] = diffusers.AutoencoderKL(
                    block_out_channels=(128, 256, 512, 512), latent_channels=16,
                    down_block_types=("DownEncoderBlock2D",) * 4,
                    up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2,
                    use_quant_conv=False, use_post_quant_conv=False,
                    scaling_factor=fx.VAE_FACTORS[family][0],
                    shift_factor=fx.VAE_FACTORS[family][1],
                )  # fmt: skip
            make = fx.flux_pipeline if family == "flux" else fx.sd3_pipeline
            pipe = make(parts).to("cuda", dtype)
            pipe.save_pretrained(str(ck / f"real-{family}"))
            result[family] = compare(
                family, ck / f"real-{family}", pipe, device="cuda", steps=args.steps,
                size=1024, runs=args.runs,
            )  # fmt: skip
            result[family]["transformer_params"] = sum(p.numel() for p in net.parameters())
            del pipe, parts, net
            torch.cuda.empty_cache()
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--real-size", action="store_true")
    ap.add_argument("--layers", type=int, default=0, help="real-size depth override")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--runs", type=int, default=21)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    if args.real_size and args.device != "cuda":
        print(json.dumps({"skipped": "--real-size runs with --device cuda"}))
        return
    print(json.dumps(real_size(args) if args.real_size else tiny(args), indent=2))


if __name__ == "__main__":
    main()
