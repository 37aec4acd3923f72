"""The batch driver: expand the jobs, skip those already done, hand the rest to warm
workers (local processes or Ray actors), write what comes back, and record it."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from studio.batch.jobs import BatchError, Expansion, Job, expand, new_seeds, parse_seeds
from studio.batch.jobs import read_prompts as _read_prompts
from studio.batch.record import BatchRecord, JobRecord, write_outputs
from studio.batch.worker import DEFAULT_REGISTRY

#: Jobs sent ahead to each worker, so it never waits for the driver between jobs.
DEPTH = 2
#: A job whose worker died this many times is given up (it may be what kills them).
MAX_ATTEMPTS = 3

EventSink = Callable[[dict[str, Any]], None]


class Scheduler:
    """Jobs in locality order, cut into one contiguous run per worker; a worker that runs
    out takes the second half of the longest run left (so neighbours stay together)."""

    def __init__(self, jobs: Sequence[Job], workers: int):
        n = len(jobs)
        self.runs: list[deque[Job]] = []
        for w in range(workers):
            lo, hi = n * w // workers, n * (w + 1) // workers
            self.runs.append(deque(jobs[lo:hi]))
        self.retry: deque[Job] = deque()

    def next_for(self, w: int) -> Job | None:
        if self.retry:
            return self.retry.popleft()
        while w >= len(self.runs):
            self.runs.append(deque())
        if not self.runs[w]:
            longest = max(range(len(self.runs)), key=lambda k: len(self.runs[k]))
            run = self.runs[longest]
            if not run:
                return None
            keep = len(run) // 2
            stolen = [run.pop() for _ in range(len(run) - keep)]
            self.runs[w] = deque(reversed(stolen))
        return self.runs[w].popleft()

    def requeue(self, job: Job) -> None:
        self.retry.append(job)

    def left(self) -> int:
        return len(self.retry) + sum(len(r) for r in self.runs)


class Batch:
    """A series of runs of one workflow: the product of ``sweeps``, ``prompts`` and ``seeds``.

    ``workflow``: a :class:`~studio.graph.Workflow` or a path. ``sweeps``: ``{"Sampler.cfg":
    [4, 5, 6]}``, ``{"Sampler.cfg": "4:9:1"}`` or ``["Sampler.cfg=4,5,6"]``. ``prompts``:
    texts for the positive prompt, rows of ``{"NODE.PARAM": value}``, or a prompt file
    (``.txt`` one prompt a line, ``.csv`` with ``NODE.PARAM`` columns). ``seeds``: seeds
    (a list, a range, or ``"1-100"``), set on every seed param; ``count``: that many new
    seeds, recorded (a resumed batch keeps them). ``sets``: ``NODE.PARAM=VALUE`` for all.
    ``registry``: ``"module:function"`` that builds the node types in each worker.
    ``settings``: the local workers' settings (default: the user's settings file).
    """

    def __init__(
        self,
        workflow: Any,
        *,
        sweeps: Mapping[str, Any] | Sequence[str] = (),
        prompts: Sequence[Any] | str | Path | None = None,
        seeds: Sequence[int] | str | None = None,
        count: int | None = None,
        sets: Sequence[str] = (),
        registry: str = DEFAULT_REGISTRY,
        settings: Any = None,
    ):
        if isinstance(workflow, (str, Path)):
            from studio.batch.worker import make_registry
            from studio.graph.fileformat import load_workflow

            workflow = load_workflow(workflow, make_registry(registry))
        if seeds is not None and count is not None:
            raise BatchError("give seeds or a count of new seeds, not both")
        self.workflow = workflow
        self.sweeps = sweeps
        self.prompts = _read_prompts(prompts) if isinstance(prompts, (str, Path)) else prompts
        if isinstance(seeds, str):
            seeds = parse_seeds(seeds)
        self.seeds = [int(s) for s in seeds] if seeds is not None else None  # a range too
        self.count = count
        self.sets = list(sets)
        self.registry = registry
        self.settings = settings
        self._drawn: list[int] = []

    def expand(self, out: str | Path | None = None) -> Expansion:
        """The jobs (``out``: the folder whose record keeps the seeds drawn for ``count``)."""
        seeds = self.seeds
        if self.count is not None:
            # The seeds recorded in ``out`` by an earlier run, else those drawn before.
            header = BatchRecord(Path(out)).header() if out else None
            seeds = new_seeds(self.count, (header or {}).get("seeds") or self._drawn)
            self._drawn = seeds
        return expand(
            self.workflow, sets=self.sets, sweeps=self.sweeps, prompts=self.prompts, seeds=seeds
        )

    def run(
        self,
        out: str | Path,
        *,
        workers: int | None = None,
        ray: str | None = None,
        on_event: EventSink | None = None,
        progress: bool = False,
        stop: Any = None,
    ) -> list[JobRecord]:
        """Run the jobs not done yet into ``out``; one record per job, in job order.

        ``workers``: local worker processes (default: one per GPU, else 1), or the number
        of Ray actors. ``ray``: ``"local"`` (start Ray here), ``"auto"`` or a cluster
        address. Raises :class:`BatchError` before any image is made when the workflow
        cannot run or a worker lacks a model file. Ctrl+C stops: finished images stay and
        the record says where it stopped (the rest have status ``stopped``); so does
        ``stop`` (a :class:`threading.Event`) once set, from another thread.
        """
        driver = _Driver(self, Path(out), workers, ray, on_event, progress)
        driver.stop = stop
        return driver.run()


class _Driver:
    def __init__(
        self,
        batch: Batch,
        out: Path,
        workers: int | None,
        ray: str | None,
        on_event: EventSink | None,
        progress: bool,
    ):
        from studio.fsutil import writable_folder
        from studio.settings import Settings

        self.batch = batch
        self.out = out
        try:
            writable_folder(out, what="the batch folder")
        except Exception as exc:
            raise BatchError(str(exc)) from None
        self.workers = workers
        self.ray = ray
        self.emit = on_event or (lambda e: None)
        self.show_progress = progress
        self.settings = batch.settings if batch.settings is not None else Settings.load()
        self.record = BatchRecord(out)
        self.stop: Any = None

    # -- before any work -----------------------------------------------------------------

    def _spec(self, exp: Expansion) -> dict[str, Any]:
        from dataclasses import asdict

        from studio.engine.validate import plan_workflow
        from studio.graph.fileformat import workflow_to_dict

        base = exp.base
        problems = plan_workflow(base, base.registry).problems
        if problems:
            raise BatchError("the workflow cannot run:\n" + "\n".join(f"  {p}" for p in problems))
        return {
            "workflow": workflow_to_dict(base),
            "registry": self.batch.registry,
            "settings": asdict(self.settings),
            "models": self._models(exp),
            "inputs": self._inputs(exp),
        }

    def _file_params(self, exp: Expansion, wanted: Callable[[str | None], bool]):
        base = exp.base
        found: set[tuple[str, str, str]] = set()
        kinds: dict[tuple[str, str], str] = {}
        for n in base.nodes:
            spec = base.spec_of(n)
            for inp in spec.params if spec else ():
                if wanted(inp.file_kind):
                    kinds[(n.id, inp.name)] = inp.file_kind
                    value = n.params.get(inp.name, inp.default)
                    if isinstance(value, str) and value:
                        found.add((inp.file_kind, value, n.id))
        for job in exp.jobs:
            for a in job.assignments:
                kind = kinds.get((a.node_id, a.param))
                if kind and isinstance(a.value, str) and a.value:
                    found.add((kind, a.value, a.node_id))
        return found

    def _models(self, exp: Expansion) -> list[list[Any]]:
        from studio.engine.fingerprint import FileFingerprinter
        from studio.errors import StudioError
        from studio.modelfiles import ModelFiles, is_model_kind

        files, prints = ModelFiles(self.settings), FileFingerprinter()
        models = []
        for kind, name in sorted({(k, v) for k, v, _ in self._file_params(exp, is_model_kind)}):
            try:
                digest = prints.of(files.resolve(kind, name))
            except StudioError:
                digest = None  # not on this machine: the workers only check it is there
            models.append([kind, name, digest])
        return models

    def _inputs(self, exp: Expansion) -> dict[str, bytes]:
        from studio.errors import StudioError

        inputs = {}
        for _, name, nid in self._file_params(exp, lambda k: k == "image"):
            try:
                from nodes.image import checked_image_file

                path = checked_image_file(name, self.settings.input_path, self.settings.output_path)
                inputs[name] = Path(path).read_bytes()
            except (StudioError, OSError) as exc:
                title = exp.base.display_title(nid)
                raise BatchError(f"{title} ({nid}): image {name!r}: {exc}") from None
        return inputs

    # -- the batch -------------------------------------------------------------------------

    def run(self) -> list[JobRecord]:
        exp = self.batch.expand(self.out)
        jobs = exp.jobs
        done_before = self.record.finished()
        todo = [j for j in jobs if j.id not in done_before]
        records: dict[str, JobRecord] = {}
        for j in jobs:
            if j.id in done_before:
                prev = done_before[j.id]
                records[j.id] = JobRecord(
                    j.id,
                    "skipped",
                    j.params,
                    j.seed,
                    [o["file"] for o in prev["outputs"]],
                    worker=prev.get("worker", ""),
                )
        from studio.batch.jobs import workflow_hash
        from studio.graph.fileformat import workflow_to_dict

        self.record.append(
            {
                "record": "batch",
                "started": datetime.now(UTC).isoformat(timespec="seconds"),
                "workflow": workflow_hash(workflow_to_dict(exp.base)),
                "jobs": len(jobs),
                "skipped": len(jobs) - len(todo),
                "seeds": self.batch.seeds
                if self.batch.count is None
                else sorted({j.seed for j in jobs}, key=[j.seed for j in jobs].index),
            }
        )
        t0 = time.perf_counter()
        self.emit({"event": "batch_started", "jobs": len(jobs), "skipped": len(jobs) - len(todo)})
        stopped = None
        bar = None
        if todo:
            spec = self._spec(exp)
            pool = self._pool(spec, len(todo))
            try:
                names = pool.start()
                self.emit({"event": "workers_ready", "workers": names})
                bar = self._bar(len(jobs), len(jobs) - len(todo))
                stopped = self._loop(pool, todo, records, bar)
            except KeyboardInterrupt:
                stopped = "interrupted"
            finally:
                pool.stop(kill=stopped is not None)
                if bar is not None:
                    bar.close()
        for j in jobs:
            records.setdefault(
                j.id, JobRecord(j.id, "stopped", j.params, j.seed, error="the batch was stopped")
            )
        seconds = time.perf_counter() - t0
        ran = [r for r in records.values() if r.status == "ok"]
        images = sum(len(r.files) for r in ran)
        summary = {
            "jobs": len(jobs),
            "ok": len(ran),
            "failed": sum(r.status == "failed" for r in records.values()),
            "skipped": sum(r.status == "skipped" for r in records.values()),
            "retried": sum(r.attempts > 1 for r in records.values()),
            "stopped": sum(r.status == "stopped" for r in records.values()),
            "images": images,
            "seconds": round(seconds, 3),
            "images_per_second": round(images / seconds, 4) if seconds > 0 and images else 0.0,
        }
        end = {"record": "end", **summary}
        if stopped:
            end["stopped_by"] = stopped
        self.record.append(end)
        self.record.close()
        self.emit({"event": "batch_finished", **summary, "interrupted": bool(stopped)})
        return [records[j.id] for j in jobs]

    def _pool(self, spec: dict[str, Any], todo: int) -> Any:
        from studio.batch.pools import LocalPool, RayPool, gpu_count

        if self.ray:
            return RayPool(spec, self.workers, self.ray)
        n = self.workers or max(1, gpu_count())
        return LocalPool(spec, max(1, min(n, todo)))

    def _bar(self, total: int, initial: int) -> Any:
        if not self.show_progress:
            return None
        from tqdm import tqdm

        return tqdm(total=total, initial=initial, unit="img", dynamic_ncols=True, smoothing=0.1)

    def _loop(self, pool: Any, todo: list[Job], records: dict[str, JobRecord], bar: Any):
        by_id = {j.id: j for j in todo}
        sched = Scheduler(todo, len(pool.alive()))
        inflight: dict[int, list[str]] = {}
        attempts: dict[str, int] = dict.fromkeys(by_id, 1)
        failed = 0
        remaining = set(by_id)
        while remaining:
            if self.stop is not None and self.stop.is_set():
                return "stopped"
            alive = pool.alive()
            for w in alive:
                held = inflight.setdefault(w, [])
                while len(held) < DEPTH and (job := sched.next_for(w)) is not None:
                    pool.submit(w, job.wire())
                    held.append(job.id)
            if not alive and not any(inflight.values()) and not pool.starting():
                for jid in list(remaining):
                    j = by_id[jid]
                    records[jid] = JobRecord(
                        jid,
                        "failed",
                        j.params,
                        j.seed,
                        error="no worker is left",
                        attempts=attempts[jid],
                    )
                    self.record.append({"record": "job", **records[jid].to_json()})
                return "no worker left"
            for msg in pool.poll(0.5):
                kind, w = msg[0], msg[1]
                if kind == "started":
                    self.emit({"event": "job_started", "job": msg[2], "worker": pool.name(w)})
                elif kind == "done":
                    res = msg[2]
                    jid = res["id"]
                    if jid in inflight.get(w, []):
                        inflight[w].remove(jid)
                    if jid not in remaining:
                        continue
                    remaining.discard(jid)
                    rec = self._finish(by_id[jid], res, attempts[jid])
                    records[jid] = rec
                    failed += rec.status == "failed"
                    if bar is not None:
                        bar.update(1)
                        if failed:
                            bar.set_postfix(failed=failed, refresh=False)
                elif kind == "died":
                    held = inflight.pop(w, [])
                    lost = [jid for jid in dict.fromkeys([*held, *msg[2]]) if jid in remaining]
                    for jid in lost:
                        attempts[jid] += 1
                        j = by_id[jid]
                        if attempts[jid] > MAX_ATTEMPTS:
                            remaining.discard(jid)
                            records[jid] = JobRecord(
                                jid,
                                "failed",
                                j.params,
                                j.seed,
                                worker=msg[3],
                                error=f"its worker died {MAX_ATTEMPTS} times",
                                attempts=MAX_ATTEMPTS,
                            )
                            self.record.append({"record": "job", **records[jid].to_json()})
                            failed += 1
                            continue
                        sched.requeue(j)
                        self.emit(
                            {
                                "event": "job_retried",
                                "job": jid,
                                "worker": pool.name(w),
                                "reason": msg[3],
                            }
                        )
        return None

    def _finish(self, job: Job, res: dict[str, Any], attempts: int) -> JobRecord:
        error = res.get("error")
        outputs = []
        if not error and not res.get("images"):
            error = "the workflow made no image (no Save Image or Preview Image ran)"
        if not error:
            try:
                outputs = write_outputs(self.out, job.id, res["images"])
            except OSError as exc:
                error = f"cannot write to {self.out}: {exc.strerror or exc}"
        rec = JobRecord(
            job.id,
            "failed" if error else "ok",
            job.params,
            job.seed,
            [o["file"] for o in outputs],
            round(float(res.get("seconds", 0.0)), 4),
            res.get("worker", ""),
            error,
            attempts,
            res.get("ran"),
            res.get("cached"),
        )
        self.record.append({"record": "job", **rec.to_json(), "outputs": outputs})
        self.emit(
            {
                "event": "job_failed" if error else "job_finished",
                **rec.to_json(),
                "pid": res.get("pid"),
            }
        )
        return rec
