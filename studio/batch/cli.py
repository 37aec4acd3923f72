"""``studio batch``: the command line of :class:`studio.batch.Batch`."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2


def add_batch_parser(sub: Any) -> None:
    bp = sub.add_parser(
        "batch",
        help="run a workflow many times: sweeps, prompt lists, seeds; local workers or Ray",
        description=(
            "Run every combination of the sweeps, prompt rows and seeds. Images are written "
            "to DIR as <job id>.png and every job is recorded in DIR/batch.jsonl; running "
            "the same command again skips the jobs already done and retries failed ones."
        ),
    )
    bp.add_argument("workflow")
    bp.add_argument("--out", required=True, metavar="DIR", help="folder for images and record")
    bp.add_argument(
        "--set", dest="sets", action="append", default=[], metavar="NODE.PARAM=VALUE",
        help="set a param for every job (as studio run)",
    )  # fmt: skip
    bp.add_argument(
        "--sweep", dest="sweeps", action="append", default=[], metavar="NODE.PARAM=VALUES",
        help="values a,b,c or a range start:stop:step (stop included); the batch is the "
        "product of all sweeps",
    )  # fmt: skip
    bp.add_argument(
        "--prompts", metavar="FILE",
        help="one prompt a line, or a .csv whose header names NODE.PARAM columns",
    )  # fmt: skip
    seeds = bp.add_mutually_exclusive_group()
    seeds.add_argument("--seeds", metavar="A-B", help="one job per seed: 1-100, or 1,5,9")
    seeds.add_argument("--count", type=int, metavar="N", help="N new random seeds (recorded)")
    bp.add_argument(
        "--workers", type=int, metavar="N",
        help="local worker processes (default: one per GPU, else 1), or Ray actors",
    )  # fmt: skip
    bp.add_argument(
        "--ray", nargs="?", const="auto", metavar="ADDRESS",
        help="run on Ray: 'local' starts one here; no ADDRESS joins this machine's cluster",
    )  # fmt: skip
    bp.add_argument("--events", action="store_true", help="print every event as a JSON line")


def _err(message: str) -> None:
    print(f"studio: {message}", file=sys.stderr)


def cmd_batch(args: argparse.Namespace) -> int:
    from studio.batch import Batch, BatchError
    from studio.cli import _load
    from studio.errors import StudioError

    if args.workers is not None and args.workers < 1:
        _err("--workers must be 1 or more")
        return EXIT_INVALID
    wf = _load(args.workflow)
    if wf is None:
        return EXIT_INVALID

    def on_event(event: dict[str, Any]) -> None:
        if args.events:
            print(json.dumps(event), flush=True)

    try:
        batch = Batch(
            wf,
            sweeps=args.sweeps,
            prompts=args.prompts,
            seeds=args.seeds,
            count=args.count,
            sets=args.sets,
        )
        records = batch.run(
            args.out,
            workers=args.workers,
            ray=args.ray,
            on_event=on_event,
            progress=not args.events and sys.stderr.isatty(),
        )
    except (BatchError, StudioError) as exc:
        _err(str(exc))
        return EXIT_INVALID
    except KeyboardInterrupt:
        _err("interrupted")
        return EXIT_FAILED
    failed = [r for r in records if r.status == "failed"]
    stopped = [r for r in records if r.status == "stopped"]
    if not args.events:
        _summary(records, args.out)
    for r in failed:
        params = ", ".join(f"{k}={v!r}" for k, v in r.params.items())
        _err(f"job {r.job} ({params}) failed: {r.error}")
    if stopped:
        _err(
            f"stopped with {len(stopped)} of {len(records)} jobs not run; run the same "
            "command again to finish"
        )
    return EXIT_FAILED if failed or stopped else EXIT_OK


def _summary(records: list[Any], out: str) -> None:
    count: dict[str, int] = {}
    for r in records:
        count[r.status] = count.get(r.status, 0) + 1
    retried = [r for r in records if r.attempts > 1]
    parts = [f"{count.get(s, 0)} {s}" for s in ("ok", "failed", "skipped", "stopped")]
    line = f"{len(records)} jobs: " + ", ".join(parts)
    if retried:
        shown = ", ".join(r.job for r in retried[:10]) + (" ..." if len(retried) > 10 else "")
        line += f"; {len(retried)} retried after a worker died ({shown})"
    print(line, file=sys.stderr)
    print(f"images and record (batch.jsonl) in {out}", file=sys.stderr)
