"""A batch worker: one warm Engine that runs job after job (a local process or a Ray actor).

The worker gets the base workflow (as data), the registry to build, its settings (or
None: this machine's settings file), the model files to check and the input images. It
writes nothing the driver sees: images go back as PNG bytes and the driver writes them.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

DEFAULT_REGISTRY = "studio.library:installed_registry"


def make_registry(ref: str) -> Any:
    """The registry ``module:function`` builds (the installed nodes by default)."""
    module, _, func = ref.partition(":")
    return getattr(importlib.import_module(module), func)()


class WorkerCore:
    """The part of a worker that is the same locally and on Ray."""

    def __init__(self, spec: dict[str, Any], name: str):
        self.name = name
        self.spec = spec
        self.pid = os.getpid()
        self._tmp = Path(tempfile.mkdtemp(prefix="studio-batch-worker-"))
        self.engine: Any = None
        self.workflow: Any = None
        self._renamed: dict[str, str] = {}

    def prepare(self) -> str | None:
        """Build the engine and check the model files; an error message, or None."""
        from studio.errors import StudioError
        from studio.graph.fileformat import workflow_from_dict
        from studio.modelfiles import ModelFiles
        from studio.settings import Settings

        try:
            registry = make_registry(self.spec.get("registry") or DEFAULT_REGISTRY)
            given = self.spec.get("settings")
            settings = Settings(**given) if given is not None else Settings.load()
            settings.output_dir = str(self._tmp / "out")
            self._ship_inputs(settings)
            from studio.engine import Engine

            self.engine = Engine(registry, settings=settings)
            self.workflow = workflow_from_dict(self.spec["workflow"], registry=registry)
            self._rename_inputs(self.workflow, None)
            from studio.engine.validate import plan_workflow

            # A node pack missing on this machine: say so once, before any job.
            problems = plan_workflow(self.workflow, registry).problems
            if problems:
                listed = "; ".join(str(p) for p in problems[:5])
                return f"worker {self.name}: the workflow cannot run here: {listed}"
            files = ModelFiles(settings)
            for kind, model, expected in self.spec.get("models", []):
                try:
                    path = files.resolve(kind, model)
                except StudioError as exc:
                    where = ", ".join(str(f) for f in files.folders(kind))
                    return (
                        f"worker {self.name}: {kind} model {model!r} is not there "
                        f"({exc}); looked in {where}"
                    )
                digest = self.engine.files.of(path)
                if expected and digest != expected:
                    return (
                        f"worker {self.name}: {kind} model {model!r} ({path}) differs from "
                        f"the driver's (content hash {_short(digest)}, expected "
                        f"{_short(expected)})"
                    )
        except StudioError as exc:
            return f"worker {self.name}: {exc}"
        except Exception as exc:  # a broken install on a worker: say which worker
            return f"worker {self.name} cannot start: {type(exc).__name__}: {exc}"
        return None

    def _ship_inputs(self, settings: Any) -> None:
        inputs: dict[str, bytes] = self.spec.get("inputs") or {}
        if not inputs:
            return
        folder = self._tmp / "input"
        for i, (name, data) in enumerate(sorted(inputs.items())):
            rel = Path(f"{i:04d}") / Path(name).name
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            (folder / rel).write_bytes(data)
            self._renamed[name] = rel.as_posix()
        settings.input_dir = str(folder)

    def _rename_inputs(self, wf: Any, sets: list[list[Any]] | None) -> None:
        """Point image params at this worker's copies of the shipped input images."""
        if not self._renamed:
            return

        def is_image(node_id: str, param: str) -> bool:
            spec = wf.spec_of(node_id) if wf.has_node(node_id) else None
            inp = spec.input(param) if spec else None
            return inp is not None and inp.file_kind == "image"

        if sets is not None:
            for item in sets:
                if item[2] in self._renamed and is_image(item[0], item[1]):
                    item[2] = self._renamed[item[2]]
            return
        for n in wf.nodes:
            for k, v in n.params.items():
                if isinstance(v, str) and v in self._renamed and is_image(n.id, k):
                    n.params[k] = self._renamed[v]

    def run_job(self, job: dict[str, Any]) -> dict[str, Any]:
        """Run one job; what came of it (PNG bytes of its images, errors, seconds)."""
        from studio.engine import WorkflowInvalid

        t0 = time.perf_counter()
        out: dict[str, Any] = {"id": job["id"], "worker": self.name, "pid": self.pid}
        wf = self.workflow
        sets = [list(s) for s in job["set"]]
        self._rename_inputs(wf, sets)
        for node_id, param, value in sets:
            wf.put_param(node_id, param, value)
        try:
            result = self.engine.run(wf)
        except WorkflowInvalid as exc:
            out.update(images=[], error="; ".join(str(p) for p in exc.problems))
        except Exception as exc:
            out.update(images=[], error=f"{type(exc).__name__}: {exc}")
        else:
            errors = [
                f"{wf.display_title(nid) if wf.has_node(nid) else nid}: {msg}"
                for nid, msg in result.errors.items()
            ]
            out.update(
                images=self._collect(result.images),
                error="; ".join(errors) or None,
                ran=len(result.ran),
                cached=len(result.cached),
            )
        out["seconds"] = time.perf_counter() - t0
        return out

    def _collect(self, images: list[Any]) -> list[bytes]:
        found = []
        for image in images:
            info = getattr(image, "info", None)
            if not hasattr(image, "save"):
                continue
            saved = info.get("studio_path") if isinstance(info, dict) else None
            if saved and Path(saved).is_file():
                # Save Image's file, with the workflow and parameters inside.
                found.append(Path(saved).read_bytes())
                with contextlib.suppress(OSError):
                    os.unlink(saved)
                continue
            buf = io.BytesIO()
            image.save(buf, format="PNG")
            found.append(buf.getvalue())
        return found

    def close(self) -> None:
        shutil.rmtree(self._tmp, ignore_errors=True)


def _short(digest: str) -> str:
    return digest.rsplit(":", 1)[-1][:12]


def worker_name(kind: str, index: int) -> str:
    return f"{kind}{index}@{socket.gethostname()}:{os.getpid()}"


def local_main(conn: Any, index: int, env: dict[str, str]) -> None:
    """A local worker process: prepare, then run jobs sent over ``conn`` until told to
    stop or the driver is gone (the pipe closes when the driver dies, even by kill -9)."""
    import signal

    os.environ.update(env)  # thread counts and the GPU, before torch is imported
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C is the driver's to handle
    try:
        spec = conn.recv()
    except (EOFError, OSError):
        return
    name = worker_name("local", index)
    core = WorkerCore(spec, name)
    try:
        conn.send(("ready", index, name, core.prepare()))
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                break
            if msg[0] != "job":
                break
            conn.send(("started", index, msg[1]["id"]))
            conn.send(("done", index, core.run_job(msg[1])))
    except (BrokenPipeError, EOFError, OSError):
        pass
    finally:
        core.close()
