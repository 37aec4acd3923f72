"""Train studio-tiny-leaf: a textual inversion embedding for studio-tiny meaning "the colour
of leaves", which the model draws as its green.

    python -m training.train_embedding             # seed 0, 150 steps: the shipped file
    python -m training.train_embedding --seed 3 --steps 200 --out /tmp/leaf.safetensors

Only one vector is trained; the model (``resources/models/checkpoints/studio-tiny``) is
frozen. It starts as the mean of the eight colour words' token embeddings, so it means no
colour in particular. Each step draws scenes of green shapes on other backgrounds (the
base trainer's scene generator), captions them with the embedding where the colour word
was (``a large <leaf> circle on a blue background``), and takes the base trainer's
diffusion loss. The vector reaches the text encoder exactly as Studio's Text Encode puts it
there (``nodes.prompts.tokenize_with_embeddings`` and a hook on the token embeddings), so
what is trained is what ``embedding:studio-tiny-leaf`` gives. Everything is drawn from the
seed: the same seed gives the same file.

The result is written in diffusers' textual inversion layout (``{token: [1, width]}``,
safetensors) and checked by drawing held-out captions through Studio's own txt2img graph:
the JSON printed at the end gives how often the shape comes out green with the embedding,
and with the plain colour word for comparison.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training import data
from training import models as M
from training.companion import EMBEDDED, FrozenBase

NAME = "studio-tiny-leaf"
COLOR = "green"
EXPORT = EMBEDDED / "embeddings" / f"{NAME}.safetensors"
BASE = EMBEDDED / "checkpoints" / "studio-tiny"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument(
        "--out",
        type=Path,
        default=EXPORT,
        help="where to write it (checked: in a folder named embeddings)",
    )
    p.add_argument("--eval", type=int, default=24, help="held-out images to check (0: none)")
    return p.parse_args(argv)


def scenes(seed: int, step: int, n: int) -> list[data.Scene]:
    """``n`` scenes of a green shape on another background, a pure function of the step."""
    rng = data.batch_rng(seed, step, stream=7)
    backgrounds = [c for c in data.COLOR_NAMES if c != COLOR]
    out = []
    for _ in range(n):
        combo = (COLOR, rng.choice(data.SHAPES).item(), rng.choice(backgrounds).item())
        out.append(data.sample_scene(rng, combo))
    return out


def caption_with_embedding(scene: data.Scene) -> str:
    return scene.caption.replace(f" {COLOR} ", f" embedding:{NAME} ", 1)


def encode(base: FrozenBase, captions: list[str], vector: torch.Tensor) -> torch.Tensor:
    """The captions' hidden states with ``vector`` where each names the embedding (as Text
    Encode computes them), differentiable in ``vector``."""
    from nodes.prompts import tokenize_with_embeddings

    rows, places = [], []
    for caption in captions:
        chunks, _, injections = tokenize_with_embeddings(
            base.tokenizer, caption, {NAME: vector[None]}
        )
        rows.append(chunks[0])
        places.append([pos for pos, _ in injections[0]])

    def put(module: Any, args: Any, output: torch.Tensor) -> torch.Tensor:
        output = output.clone()
        for b, positions in enumerate(places):
            for pos in positions:
                output[b, pos] = vector
        return output

    hook = base.text_encoder.get_input_embeddings().register_forward_hook(put)
    try:
        return base.text_encoder(torch.tensor(rows))[0]
    finally:
        hook.remove()


def initial_vector(base: FrozenBase) -> torch.Tensor:
    table = base.text_encoder.get_input_embeddings().weight
    ids = [base.tokenizer(c, add_special_tokens=False).input_ids[0] for c in data.COLOR_NAMES]
    return table[ids].mean(dim=0).detach().clone()


def train(args: argparse.Namespace) -> torch.Tensor:
    torch.manual_seed(args.seed)
    base = FrozenBase.load(BASE)
    vector = torch.nn.Parameter(initial_vector(base))
    opt = torch.optim.Adam([vector], lr=args.lr)
    g = torch.Generator().manual_seed(args.seed)
    start = time.time()
    for step in range(args.steps):
        batch = scenes(args.seed, step, args.batch)
        images = data.render_batch(batch)
        with torch.no_grad():
            posterior = base.vae.encode(data.to_tensor(images)).latent_dist
            latents = posterior.sample(generator=g) * base.vae.config.scaling_factor
        noise = torch.randn(latents.shape, generator=g)
        t = torch.randint(0, base.scheduler.config.num_train_timesteps, (len(batch),), generator=g)
        noisy = base.scheduler.add_noise(latents, noise, t)
        hidden = encode(base, [caption_with_embedding(s) for s in batch], vector)
        pred = base.unet(noisy, t, encoder_hidden_states=hidden).sample
        loss = M.diffusion_loss(base.scheduler, pred, latents, noise, t, 5.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == args.steps - 1:
            print(
                json.dumps(
                    {"step": step, "loss": round(float(loss), 4), "s": round(time.time() - start)}
                ),
                flush=True,
            )
    return vector.detach().clone()


def export(vector: torch.Tensor, out: Path) -> None:
    from safetensors.torch import save_file

    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({NAME: vector[None].contiguous().float()}, str(out))


def evaluate(count: int, out: Path) -> dict[str, Any]:
    """How often Studio's txt2img draws the shape green: with the embedding (from ``out``),
    and with the colour word itself, over held-out scenes (other shapes and backgrounds)."""
    from studio.engine import Engine
    from studio.library import installed_registry
    from studio.settings import Settings
    from training.evaluate import analyze
    from training.studio_run import to_uint8, txt2img_workflow

    root = out.parent.parent
    engine = Engine(installed_registry(), settings=Settings(models_root=str(root)))
    hits = {"embedding": 0, "word": 0}
    for i, scene in enumerate(scenes(10_000, 0, count)):
        for key, caption in (("embedding", caption_with_embedding(scene)), ("word", scene.caption)):
            wf, ids = txt2img_workflow(caption, seed=i)
            result = engine.run(wf)
            if not result.ok:
                raise RuntimeError(result.errors)
            (image,) = to_uint8(result.outputs[ids["decode"]]["image"])
            hits[key] += analyze(np.asarray(image)).color == COLOR
    return {f"green_rate_{k}": v / count for k, v in hits.items()} | {"images": count}


def main(argv: list[str] | None = None) -> int:
    torch.set_num_threads(1)
    args = parse_args(argv)
    vector = train(args)
    export(vector, args.out)
    print(json.dumps({"exported": str(args.out), "norm": round(float(vector.norm()), 4)}))
    if args.eval:
        print(json.dumps(evaluate(args.eval, args.out)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
