"""What every training script shares, so that each script's ``main`` is only its own part.

- the command line: :func:`script_parser`, the resumable-run options (:func:`add_run_args`)
  and the report commands' skeleton (:func:`run_report`: parse, set torch's threads, print
  JSON);
- a resumable run: :func:`open_state` (``--resume`` / ``--overwrite`` / refuse), a
  :class:`StopSignal` that SIGTERM and SIGINT set, checkpoint files
  (:func:`save_tensors`, :func:`load_tensors`, :func:`write_json`) and Adam's moments in
  them (:func:`optimizer_moments`, :func:`restore_moments`);
- the step loop's parts: per-step generators (:func:`step_generator`), the learning-rate
  warm-up (:func:`warmup`, :func:`set_lr`), one optimizer step (:func:`optimizer_step`) and
  the loss and speed log (:class:`LossMeter`).
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent


def log(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, flush=True)


# ----------------------------------------------------------------------------- command line


def script_parser(prog: str, doc: str) -> argparse.ArgumentParser:
    """A parser whose help is the script's docstring, as written."""
    return argparse.ArgumentParser(
        prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )


def add_run_args(p: argparse.ArgumentParser, checkpoint_dir: Path, checkpoint_every: float) -> None:
    """The options of a resumable run: where its checkpoint lives, how often it is written."""
    p.add_argument("--resume", action="store_true", help="go on from the checkpoint")
    p.add_argument("--overwrite", action="store_true", help="start over, deleting the checkpoint")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--checkpoint-dir", default=str(checkpoint_dir))
    p.add_argument("--checkpoint-every", type=float, default=checkpoint_every, help="seconds")


def export_parser(doc: str, folder: Path, out: Path, verify: str) -> argparse.ArgumentParser:
    """The options of a single-file export (training/export_*single_file.py): the diffusers
    folder to read, the file to write, fp32 instead of fp16, and skipping the check that
    reads it back (``verify``: how the script checks, for the help)."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--folder", default=str(folder), help="the diffusers folder to export")
    p.add_argument("--out", default=str(out), help="the .safetensors file to write")
    p.add_argument("--fp32", action="store_true", help="keep fp32 weights (twice the size)")
    p.add_argument("--no-verify", action="store_true", help=f"skip {verify}")
    return p


def export_report(
    args: argparse.Namespace,
    export: Callable[..., Path],
    verify: Callable[[Path, Path], dict[str, float]],
    t0: float | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Run a single-file export from its options (:func:`export_parser`), check it unless
    ``--no-verify``; the file, its size, ``extra``, the largest differences, the seconds
    (since ``t0``, default now)."""
    t0 = time.perf_counter() if t0 is None else t0
    out = export(Path(args.folder), Path(args.out), fp16=not args.fp32)
    result: dict[str, Any] = {"file": str(out), "bytes": out.stat().st_size, **extra}
    if not args.no_verify:
        result["max_abs_diff"] = verify(out, Path(args.folder))
    result["seconds"] = round(time.perf_counter() - t0, 2)
    return result


def run_report(
    p: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    report: Callable[[argparse.Namespace], dict[str, Any]],
    indent: int = 1,
) -> int:
    """A command that measures or writes something: parse ``argv`` (with a ``--threads``
    option, default 1), set torch's threads, print ``report(args)`` as JSON."""
    import torch

    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(json.dumps(report(args), indent=indent))
    return 0


# ----------------------------------------------------------------------------- resumable run


def open_state(
    ckpt: Path, args: argparse.Namespace, fresh: Callable[[], dict[str, Any]]
) -> dict[str, Any]:
    """The run's state: ``ckpt/state.json`` with ``--resume``; else ``fresh()``, after
    deleting an old checkpoint only with ``--overwrite`` (exits with a message otherwise)."""
    state_file = ckpt / "state.json"
    if args.resume:
        if not state_file.exists():
            sys.exit(f"--resume: no checkpoint in {ckpt}")
        state = json.loads(state_file.read_text())
    else:
        if state_file.exists() and not args.overwrite:
            sys.exit(f"{state_file} exists: pass --resume (or --overwrite to start over)")
        if ckpt.exists():
            shutil.rmtree(ckpt)
        state = fresh()
    ckpt.mkdir(parents=True, exist_ok=True)
    return state


class StopSignal:
    """Set by SIGTERM or SIGINT (from when it is made): the run saves and stops after the
    step it is in."""

    def __init__(self) -> None:
        self.requested = False
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        log(f"signal {signum}: saving and stopping after this step")
        self.requested = True


def save_tensors(path: Path, tensors: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    tmp = path.with_suffix(".tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp))
    tmp.replace(path)


def load_tensors(path: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(path))


def write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    tmp.replace(path)


def optimizer_moments(opt, named: list[tuple[str, Any]], keep_first: bool, dtype=None) -> dict:
    """Adam's second moments (``v.<name>``), and with ``keep_first`` its first (``m.<name>``),
    in ``dtype`` (default bf16: the first moments re-warm in a few steps)."""
    import torch

    dtype = dtype or torch.bfloat16
    out = {}
    for name, p in named:
        st = opt.state.get(p)
        if not st:
            continue
        out[f"v.{name}"] = st["exp_avg_sq"].to(dtype)
        if keep_first:
            out[f"m.{name}"] = st["exp_avg"].to(dtype)
    return out


def restore_moments(opt, named: list[tuple[str, Any]], tensors: dict, step: int) -> None:
    """Put moments written by :func:`optimizer_moments` back (missing first moments: zero)."""
    import torch

    for name, p in named:
        if f"v.{name}" not in tensors:
            continue
        m = tensors.get(f"m.{name}")
        opt.state[p] = {
            "step": torch.tensor(float(step)),
            "exp_avg": m.float() if m is not None else torch.zeros_like(p),
            "exp_avg_sq": tensors[f"v.{name}"].float(),
        }


# ----------------------------------------------------------------------------- step loop


def step_generator(seed: int, step: int, stream: int):
    """The torch generator for ``step`` of a run: noise, timesteps, dropout, posterior draws."""
    import torch

    return torch.Generator().manual_seed(
        int(np.random.SeedSequence([seed, stream, step]).generate_state(1, np.uint64)[0] >> 1)
    )


def warmup(step: int, steps: int) -> float:
    """The learning-rate factor ``step`` steps into a linear warm-up of ``steps`` steps."""
    return min(1.0, (step + 1) / steps)


def set_lr(opt, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr


def optimizer_step(opt, loss, params, max_norm: float | None = 1.0) -> None:
    """Backward, clip the gradients' norm to ``max_norm`` (None: no clipping), step."""
    import torch

    opt.zero_grad(set_to_none=True)
    loss.backward()
    if max_norm is not None:
        torch.nn.utils.clip_grad_norm_(params, max_norm)
    opt.step()


class LossMeter:
    """The mean loss and the steps per second since the last report, logged as
    ``<prefix>step N <name> <mean> lr <lr> <speed> steps/s``."""

    def __init__(self, step: int, name: str = "loss", digits: int = 4, prefix: str = ""):
        self.name, self.digits, self.prefix = name, digits, prefix
        self.t0, self.n0, self.losses = time.time(), step, []

    def add(self, loss: float) -> None:
        self.losses.append(loss)

    def report(self, step: int, lr: float) -> float:
        """Log and start over; returns the steps per second."""
        sps = (step - self.n0) / (time.time() - self.t0)
        mean = f"{np.mean(self.losses):.{self.digits}f}"
        log(f"{self.prefix}step {step} {self.name} {mean} lr {lr:.2e} {sps:.2f} steps/s")
        self.t0, self.n0, self.losses = time.time(), step, []
        return sps

    def restart_clock(self) -> None:
        """Leave out the time since the last step (an evaluation) from the speed."""
        self.t0 = time.time()
