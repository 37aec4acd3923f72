"""Two ways to run the same workers: local processes and Ray actors.

A pool starts its workers (each checks its models before any job), takes jobs for a
given worker, and reports what happened as messages: ``("started", w, job_id)``,
``("done", w, result)`` and ``("died", w, [job ids it held])``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from multiprocessing.connection import Connection, wait
from typing import Any

from studio.batch.jobs import BatchError
from studio.batch.worker import WorkerCore, worker_name

#: A worker slot whose process dies is started again this many times at most.
RESPAWNS = 2
#: Seconds a worker has to start and check its model files.
START_TIMEOUT = 600.0


def gpu_count() -> int:
    """GPUs on this machine, without importing torch (nvidia-smi), honouring
    CUDA_VISIBLE_DEVICES."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    exe = shutil.which("nvidia-smi")
    if not exe:
        return 0
    try:
        out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


def _visible_gpus() -> list[str]:
    """The CUDA device names a worker may be given (the ones this process may see)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip() and d.strip() != "-1"]
    return [str(i) for i in range(gpu_count())]


class LocalPool:
    """Worker processes on this machine (spawned, so each has its own torch)."""

    def __init__(self, spec: dict[str, Any], workers: int):
        self.spec = spec
        self.n = workers
        self.procs: dict[int, Any] = {}
        self.conns: dict[int, Any] = {}
        self.names: dict[int, str] = {}
        self.held: dict[int, list[str]] = {}
        self.respawns: dict[int, int] = dict.fromkeys(range(workers), 0)
        self.ready: set[int] = set()
        self.broken: set[int] = set()
        gpus = _visible_gpus()
        threads = max(1, (os.cpu_count() or 1) // workers)
        self.env = {
            i: {
                "OMP_NUM_THREADS": str(threads),
                "MKL_NUM_THREADS": str(threads),
                **({"CUDA_VISIBLE_DEVICES": gpus[i % len(gpus)]} if gpus else {}),
            }
            for i in range(workers)
        }

    def _spawn(self, i: int) -> None:
        # A plain child process (not multiprocessing's spawn), so that a script or notebook
        # calling Batch.run needs no ``if __name__ == "__main__"`` guard. The socket closes
        # when either side dies, which is how each learns of the other's end.
        parent, child = socket.socketpair()
        env = dict(os.environ, **self.env[i])
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        proc = subprocess.Popen(
            [sys.executable, "-m", "studio.batch.process", str(child.fileno()), str(i)],
            pass_fds=[child.fileno()],
            env=env,
            stdin=subprocess.DEVNULL,
        )
        child.close()
        conn = Connection(parent.detach())
        conn.send(self.spec)
        self.procs[i], self.conns[i], self.held[i] = proc, conn, []
        self.ready.discard(i)

    def start(self) -> list[str]:
        for i in range(self.n):
            self._spawn(i)
        deadline = time.monotonic() + START_TIMEOUT
        errors = []
        while len(self.ready) + len(errors) < self.n:
            if time.monotonic() > deadline:
                raise BatchError("local workers did not start in time")
            for msg in self.poll(1.0):
                if msg[0] == "init_error":
                    errors.append(msg[2])
                elif msg[0] == "died":
                    errors.append(f"local worker {msg[1] + 1} exited while starting")
        if errors:
            self.stop()
            raise BatchError("\n".join(errors))
        return [self.names[i] for i in sorted(self.ready)]

    def alive(self) -> list[int]:
        return sorted(self.ready)

    def starting(self) -> bool:
        """A worker is being started again (after one died) and may yet take jobs."""
        return bool(set(self.procs) - self.ready - self.broken)

    def submit(self, w: int, job: dict[str, Any]) -> None:
        self.held[w].append(job["id"])
        # A process that is gone is reported by poll() with the job it held.
        with contextlib.suppress(OSError):
            self.conns[w].send(("job", job))

    def poll(self, timeout: float) -> list[tuple[Any, ...]]:
        waitables = {c: i for i, c in self.conns.items()}
        if not waitables:
            time.sleep(min(timeout, 0.1))
            return []
        out: list[tuple[Any, ...]] = []
        for ready in wait(list(waitables), timeout):
            i = waitables[ready]
            if i not in self.conns:
                continue
            conn = self.conns[i]
            dead = False
            try:
                while conn.poll():
                    out.append(self._message(conn.recv()))
            except (EOFError, OSError):
                dead = True
            if dead:
                out.extend(self._died(i))
        return out

    def _message(self, msg: tuple[Any, ...]) -> tuple[Any, ...]:
        kind, i = msg[0], msg[1]
        if kind == "ready":
            _, _, name, error = msg
            self.names[i] = name
            if error:
                self.broken.add(i)
                return ("init_error", i, error)
            self.ready.add(i)
            return ("ready", i, name)
        if kind == "done":
            result = msg[2]
            if result["id"] in self.held[i]:
                self.held[i].remove(result["id"])
            return ("done", i, result)
        return msg

    def _died(self, i: int) -> list[tuple[Any, ...]]:
        proc = self.procs.pop(i)
        conn = self.conns.pop(i)
        conn.close()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        held, self.held[i] = self.held.get(i, []), []
        self.ready.discard(i)
        name = self.names.get(i, f"local{i}")
        if self.respawns[i] < RESPAWNS and i in self._wanted():
            self.respawns[i] += 1
            self._spawn(i)
        return [("died", i, held, f"{name} exited (code {proc.returncode})")]

    def _wanted(self) -> set[int]:
        return set(range(self.n)) if not getattr(self, "_stopping", False) else set()

    def name(self, w: int) -> str:
        return self.names.get(w, f"local{w}")

    def stop(self, kill: bool = False) -> None:
        self._stopping = True
        for conn in list(self.conns.values()):
            if not kill:
                with contextlib.suppress(OSError):
                    conn.send(("stop",))
        for i, p in list(self.procs.items()):
            if kill:
                p.kill()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            self.conns[i].close()
        self.procs.clear()
        self.conns.clear()


class _RayWorker:
    """The Ray actor: a WorkerCore that Ray restarts when its process dies."""

    def __init__(self, spec: dict[str, Any], index: int, threads: int):
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))
        self.core = WorkerCore(spec, worker_name("ray", index))
        self.error = self.core.prepare()

    def ready(self) -> tuple[str, str | None]:
        return self.core.name, self.error

    def run_job(self, job: dict[str, Any]) -> dict[str, Any]:
        return self.core.run_job(job)


class RayPool:
    """Ray actors, one per GPU where the cluster has GPUs, else one per CPU core asked for.

    ``address``: ``"local"`` starts a Ray on this machine (``workers`` CPUs), ``"auto"``
    joins the cluster this machine belongs to, else a ``ray://`` or ``host:port`` address.
    A job whose actor died is reported so that the driver retries it; Ray restarts the
    actor (``max_restarts``), which checks its models again before taking jobs.
    """

    MAX_RESTARTS = 2

    def __init__(self, spec: dict[str, Any], workers: int | None, address: str):
        try:
            import ray
        except ImportError:
            raise BatchError("--ray needs Ray: pip install ray") from None
        self.ray = ray
        self.spec = dict(spec, settings=None)  # each machine uses its own model folders
        self.workers = workers
        self.address = address
        self.started_ray = False
        self.actors: dict[int, Any] = {}
        self.names: dict[int, str] = {}
        self.refs: dict[Any, tuple[int, str]] = {}
        self.failures: dict[int, int] = {}

    def start(self) -> list[str]:
        ray = self.ray
        if not ray.is_initialized():
            if self.address == "local":
                # Ray starts its workers at nice 15 by default: on a busy machine they
                # would get what other processes leave over, though they are the work.
                os.environ.setdefault("RAY_worker_niceness", "0")
                ray.init(
                    num_cpus=self.workers or os.cpu_count(),
                    include_dashboard=False,
                    log_to_driver=False,
                )
            else:
                try:
                    ray.init(address=self.address, log_to_driver=False)
                except (ConnectionError, RuntimeError, ValueError) as exc:
                    where = (
                        "this machine's Ray cluster"
                        if self.address == "auto"
                        else (f"the Ray cluster at {self.address}")
                    )
                    raise BatchError(
                        f"cannot join {where}: {_first_line(exc)} "
                        "(start one with 'ray start --head', or use --ray local)"
                    ) from None
            self.started_ray = True
        res = ray.cluster_resources()
        gpus = int(res.get("GPU", 0))
        if gpus:
            n = self.workers or gpus
            # More actors than GPUs asked for: they share them (Ray's fractional GPUs).
            opts, threads = {"num_gpus": min(1.0, gpus / n), "num_cpus": 1}, 4
        else:
            n = self.workers or max(1, int(res.get("CPU", 1)))
            opts, threads = {"num_cpus": 1}, 1
        cls = ray.remote(
            max_restarts=self.MAX_RESTARTS,
            max_task_retries=0,  # the driver retries, so it can say what was retried
        )(_RayWorker)
        self.actors = {i: cls.options(**opts).remote(self.spec, i, threads) for i in range(n)}
        self.failures = dict.fromkeys(self.actors, 0)
        try:
            ready = ray.get([a.ready.remote() for a in self.actors.values()], timeout=START_TIMEOUT)
        except Exception as exc:
            self.stop()
            raise BatchError(f"Ray workers did not start: {exc}") from None
        errors = [err for _, err in ready if err]
        if errors:
            self.stop()
            raise BatchError("\n".join(errors))
        self.names = {i: name for i, (name, _) in enumerate(ready)}
        return [self.names[i] for i in sorted(self.names)]

    def alive(self) -> list[int]:
        return sorted(self.actors)

    def starting(self) -> bool:
        return False  # Ray restarts actors itself; a call to one waits for it

    def name(self, w: int) -> str:
        return self.names.get(w, f"ray{w}")

    def submit(self, w: int, job: dict[str, Any]) -> None:
        ref = self.actors[w].run_job.remote(job)
        self.refs[ref] = (w, job["id"])

    def poll(self, timeout: float) -> list[tuple[Any, ...]]:
        ray = self.ray
        if not self.refs:
            time.sleep(min(timeout, 0.1))
            return []
        done, rest = ray.wait(list(self.refs), num_returns=1, timeout=timeout)
        if done and rest:  # and whatever else is ready now, without waiting
            more, _ = ray.wait(rest, num_returns=len(rest), timeout=0)
            done += more
        out: list[tuple[Any, ...]] = []
        for ref in done:
            w, jid = self.refs.pop(ref)
            try:
                out.append(("done", w, ray.get(ref)))
            except ray.exceptions.RayActorError as exc:
                out.append(("died", w, [jid], f"{self.name(w)} died: {_first_line(exc)}"))
                self._check_actor(w)
            except ray.exceptions.RayError as exc:
                out.append(("done", w, {"id": jid, "images": [], "error": _first_line(exc)}))
        return out

    def _check_actor(self, w: int) -> None:
        # Ray restarts a dead actor (a new process, so a new name) up to MAX_RESTARTS
        # times; after that, or when it cannot start again, the actor is dropped and its
        # remaining jobs come back as failed calls, which the driver retries elsewhere.
        if w not in self.actors:
            return
        try:
            name, error = self.ray.get(self.actors[w].ready.remote(), timeout=START_TIMEOUT)
        except Exception:
            name, error = None, "gone"
        if name is not None and name != self.names.get(w):
            self.failures[w] += 1
            self.names[w] = name
        if error or self.failures[w] > self.MAX_RESTARTS:
            self.actors.pop(w, None)

    def stop(self, kill: bool = False) -> None:
        for a in self.actors.values():
            with contextlib.suppress(Exception):
                self.ray.kill(a)
        self.actors.clear()
        if self.started_ray:
            self.ray.shutdown()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
