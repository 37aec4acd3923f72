"""The executor: runs a workflow in topological order, re-running only what changed.

Signature of a node = hash(type id, version, params, signatures of its inputs,
fingerprint of the files it reads). Results are cached by signature (not by node
id), so setting a param back is instant and identical branches compute once.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from studio.engine.cache import CacheEntry, OutputCache, estimate_nbytes
from studio.engine.context import NodeContext
from studio.engine.devices import is_out_of_memory, out_of_memory_message
from studio.engine.events import Event, EventKind
from studio.engine.fingerprint import FileFingerprinter
from studio.engine.models import ModelManager
from studio.engine.validate import Plan, Problem, WorkflowInvalid, plan_workflow
from studio.errors import Interrupted, StudioError
from studio.graph.registry import Registry
from studio.graph.spec import NodeSpec
from studio.graph.workflow import Node, Workflow
from studio.modelfiles import ModelFiles, is_model_kind
from studio.settings import Settings

EventSink = Callable[[Event], None]

_MISSING = object()  # an output that does not exist (muted or bypassed with no passthrough)
_FAILED = object()  # an output of a node that failed or was skipped


@dataclass
class RunResult:
    """What one run did.

    Attributes:
        ran: ids of nodes that executed.
        cached: ids of nodes served from the cache.
        outputs: node id -> {output name: value} for every node that ran or was cached.
        images: PIL images produced by output nodes, in execution order.
        errors: node id -> message, for nodes that failed (and those skipped because
            an input failed).
        seconds: wall time of the run.
        interrupted: the user stopped the run.
        reasons: node id -> why it re-ran (which param or input changed).
    """

    ran: set[str] = field(default_factory=set)
    cached: set[str] = field(default_factory=set)
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    images: list[Any] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    interrupted: bool = False
    reasons: dict[str, str] = field(default_factory=dict)
    node_images: dict[str, list[Any]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors and not self.interrupted


@dataclass
class _Record:
    """What the engine remembers of a node's last run, to explain the next re-run."""

    signature: str
    params: dict[str, Any]
    inputs: dict[str, str]
    fingerprint: str | None


class Engine:
    """Runs workflows, keeping caches and loaded models between runs.

    ``registry`` gives the node types (the app's: :func:`studio.library.installed_registry`);
    ``settings`` (default: the user's settings file, read now) give the model folders,
    the output folder, the device and the budgets. Both belong to this engine alone, so
    several engines with different settings can live in one process.

    Safe to drive from another thread: runs are serialised, and :meth:`interrupt`
    may be called from any thread.
    """

    def __init__(
        self,
        registry: Registry,
        *,
        settings: Settings | None = None,
        cache_bytes: int | None = None,
        models: ModelManager | None = None,
    ):
        self.registry = registry
        self.settings = settings if settings is not None else Settings.load()
        self.model_files = ModelFiles(self.settings)
        self.cache = OutputCache(
            cache_bytes if cache_bytes is not None else self.settings.cache_bytes
        )
        self.models = models or ModelManager(
            self.settings.ram_budget_bytes, self.settings.vram_budget_bytes
        )
        self.files = FileFingerprinter()
        self._interrupt = threading.Event()
        self._run_lock = threading.Lock()
        self._records: dict[str, _Record] = {}

    # -- public API ---------------------------------------------------------------------

    def validate(self, workflow: Workflow) -> list[Problem]:
        """Every problem of the workflow, each naming its node (empty when it can run)."""
        return plan_workflow(workflow, self.registry, model_files=self.model_files).problems

    def interrupt(self) -> None:
        """Stop the current run at the next progress step (or before the next node)."""
        self._interrupt.set()

    def run(
        self,
        workflow: Workflow,
        *,
        on_event: EventSink | None = None,
        targets: list[str] | None = None,
    ) -> RunResult:
        """Run what feeds the workflow's output nodes (or ``targets``).

        Raises :class:`~studio.engine.validate.WorkflowInvalid` listing every problem
        when a node that would run has one. Node failures do not raise: they are in
        ``RunResult.errors`` and the events, and independent branches still finish.
        """
        with self._run_lock:
            self._interrupt.clear()
            try:
                return self._run(workflow, on_event or (lambda e: None), targets)
            finally:
                self._interrupt.clear()

    # -- one run ------------------------------------------------------------------------

    def _run(self, wf: Workflow, emit: EventSink, targets: list[str] | None) -> RunResult:
        t0 = time.perf_counter()
        plan = plan_workflow(wf, self.registry, targets, model_files=self.model_files)
        blocking = [p for p in plan.problems if p.node_id in plan.needed or not plan.order]
        if blocking:
            raise WorkflowInvalid(blocking)
        emit(Event(EventKind.RUN_STARTED))
        run = _RunState(wf, plan, emit)

        def notice(message: str) -> None:
            emit(Event(EventKind.NOTICE, message=message))

        with self.models.run_scope(notice):
            for nid in plan.order:
                if self._interrupt.is_set() or not self._run_node(run, nid):
                    run.result.interrupted = True
                    break
        run.result.seconds = time.perf_counter() - t0
        emit(
            Event(
                EventKind.RUN_FINISHED,
                seconds=run.result.seconds,
                message="interrupted" if run.result.interrupted else None,
            )
        )
        return run.result

    def _run_node(self, run: _RunState, nid: str) -> bool:
        """Serve one node from the cache or execute it; False when the user stopped the run."""
        n, spec = run.node(nid), run.plan.specs[nid]
        if n.mute:
            run.set_outputs(nid, _MISSING)
            return True
        if n.bypass:
            run.pass_through(nid)
            return True
        inputs = run.gather_inputs(nid)
        if isinstance(inputs, _Skip):
            run.skip(nid, inputs)
            return True
        ctx = self._context(run, nid)
        try:
            record = self._sign(spec, inputs, ctx)
            entry = self.cache.get(record.signature)
            if entry is not None:
                run.result.cached.add(nid)
                run.emit(run.node_event(EventKind.NODE_CACHED, nid))
            else:
                entry = self._execute(run, nid, record, inputs, ctx)
        except Interrupted:
            run.emit(run.node_event(EventKind.INTERRUPTED, nid))
            return False
        except Exception as exc:
            run.fail(nid, exc)
            return True
        self._records[nid] = record
        run.publish(nid, record.signature, entry)
        return True

    def _context(self, run: _RunState, nid: str) -> NodeContext:
        n = run.node(nid)
        return NodeContext(
            node_id=nid,
            node_type=n.type,
            title=run.title(nid),
            settings=self.settings,
            model_files=self.model_files,
            models=self.models,
            files=self.files,
            workflow=run.wf,
            interrupt_flag=self._interrupt,
            emit=run.emit,
            run_info=run.run_info,
        )

    def _sign(self, spec: NodeSpec, inputs: _Inputs, ctx: NodeContext) -> _Record:
        """The node's cache signature: its type, params, inputs' signatures and the
        fingerprint of the files it reads (a fresh salt for a non-deterministic node)."""
        parts: list[str] = []
        for inp in spec.params:
            value = inputs.kwargs.get(inp.name)
            if is_model_kind(inp.file_kind) and isinstance(value, str):
                path = self.model_files.resolve(inp.file_kind, value)
                parts.append(self.files.of(path, ctx.check_interrupt))
        if spec.fingerprint is not None:
            parts.append(spec.fingerprint(inputs.params, ctx) or "")
        fingerprint = "|".join(parts) if parts else None
        salt = None if spec.deterministic else uuid.uuid4().hex
        signature = _signature(
            spec.type_id, spec.version, inputs.params, inputs.signatures, fingerprint, salt
        )
        return _Record(signature, inputs.params, inputs.signatures, fingerprint)

    def _execute(
        self, run: _RunState, nid: str, record: _Record, inputs: _Inputs, ctx: NodeContext
    ) -> CacheEntry:
        spec = run.plan.specs[nid]
        reason = self._explain(nid, record, spec.deterministic)
        run.result.reasons[nid] = reason
        run.emit(run.node_event(EventKind.NODE_STARTED, nid, message=reason))
        started = time.perf_counter()
        with self.models.node_scope():  # what this node puts on the GPU stays there till it ends
            raw = spec.execute(ctx, **inputs.kwargs) if spec.execute else {}
        outputs = _normalise_outputs(spec, raw)
        seconds = time.perf_counter() - started
        entry = CacheEntry(outputs, list(ctx.images))
        entry.nbytes = estimate_nbytes(outputs) + estimate_nbytes(entry.images)
        self.cache.put(record.signature, entry)
        run.result.ran.add(nid)
        run.emit(run.node_event(EventKind.NODE_FINISHED, nid, seconds=seconds))
        return entry

    def _explain(self, nid: str, record: _Record, deterministic: bool) -> str:
        if not deterministic:
            return "runs every time (not cacheable)"
        old = self._records.get(nid)
        if old is None:
            return "first run"
        reasons = []
        for name in sorted(set(old.params) | set(record.params)):
            a, b = old.params.get(name, _MISSING), record.params.get(name, _MISSING)
            if a != b or type(a) is not type(b):
                reasons.append(f"param {name!r} changed from {_short(a)} to {_short(b)}")
        for name in sorted(set(old.inputs) | set(record.inputs)):
            if old.inputs.get(name) != record.inputs.get(name):
                reasons.append(f"input {name!r} changed")
        if old.fingerprint != record.fingerprint:
            reasons.append("a file it reads changed")
        if not reasons:
            reasons.append("its earlier result was evicted from the cache")
        return "; ".join(reasons)


@dataclass
class _Inputs:
    """What a node gets: ``kwargs`` for execute, of which ``params`` are its own values,
    and the signatures of the linked values."""

    kwargs: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    signatures: dict[str, str] = field(default_factory=dict)


@dataclass
class _Skip:
    """A node that cannot run: an input failed upstream, or comes from a muted node."""

    message: str
    failed_upstream: bool


class _RunState:
    """One run's bookkeeping: each (node, output)'s (signature, value) or marker, the
    result being built, and the values the run's nodes share."""

    def __init__(self, wf: Workflow, plan: Plan, emit: EventSink):
        self.wf = wf
        self.plan = plan
        self.emit = emit
        self.result = RunResult()
        self.run_info: dict[str, Any] = {}
        self._nodes = {n.id: n for n in wf.nodes}
        self._refs: dict[tuple[str, str], tuple[str, Any] | object] = {}

    def node(self, nid: str) -> Node:
        return self._nodes[nid]

    def title(self, nid: str) -> str:
        return self._nodes[nid].title or self.plan.specs[nid].title

    def node_event(self, kind: EventKind, nid: str, **fields: Any) -> Event:
        return Event(kind, node=nid, type=self._nodes[nid].type, title=self.title(nid), **fields)

    def set_outputs(self, nid: str, marker: object) -> None:
        for out in self.plan.specs[nid].outputs:
            self._refs[(nid, out.name)] = marker

    def pass_through(self, nid: str) -> None:
        """A bypassed node: each output is the value of its input of the same type."""
        for out_name, in_name in self.plan.bypass_map.get(nid, {}).items():
            lk = self.plan.inputs[nid].get(in_name) if in_name else None
            self._refs[(nid, out_name)] = (
                self._refs.get((lk.source, lk.output), _MISSING) if lk else _MISSING
            )

    def gather_inputs(self, nid: str) -> _Inputs | _Skip:
        """The node's linked values and params (coerced), or why it cannot run."""
        n, spec = self._nodes[nid], self.plan.specs[nid]
        got = _Inputs()
        for inp in spec.inputs:
            lk = self.plan.inputs[nid].get(inp.name)
            if lk is not None:
                ref = self._refs.get((lk.source, lk.output), _MISSING)
                if ref is _FAILED:
                    return _Skip(
                        f"input {inp.name!r} failed upstream ({self.title(lk.source)})", True
                    )
                if ref is _MISSING:
                    if inp.optional:
                        continue
                    return _Skip(f"input {inp.name!r} comes from a muted or bypassed node", False)
                sig, value = ref  # type: ignore[misc]
                got.kwargs[inp.name] = value
                got.signatures[inp.name] = sig
            elif inp.is_param:
                value = n.params.get(inp.name, inp.default)
                if value is None and inp.optional:
                    continue
                value = inp.coerce(value)
                got.kwargs[inp.name] = value
                got.params[inp.name] = value
        return got

    def skip(self, nid: str, skip: _Skip) -> None:
        self.set_outputs(nid, _FAILED if skip.failed_upstream else _MISSING)
        if skip.failed_upstream:
            self.result.errors[nid] = skip.message
        self.emit(self.node_event(EventKind.NODE_SKIPPED, nid, message=skip.message))

    def fail(self, nid: str, exc: Exception) -> None:
        message = _user_message(exc)
        self.result.errors[nid] = message
        self.set_outputs(nid, _FAILED)
        trace = "".join(traceback.format_exception(exc))
        self.emit(self.node_event(EventKind.NODE_ERROR, nid, message=message, traceback=trace))

    def publish(self, nid: str, signature: str, entry: CacheEntry) -> None:
        """Make a node's outputs (run or cached) available downstream and in the result."""
        spec = self.plan.specs[nid]
        for out in spec.outputs:
            self._refs[(nid, out.name)] = (f"{signature}:{out.name}", entry.outputs.get(out.name))
        self.result.outputs[nid] = entry.outputs
        if spec.output_node and entry.images:
            self.result.images.extend(entry.images)
            self.result.node_images[nid] = list(entry.images)


def _short(v: Any) -> str:
    if v is _MISSING:
        return "unset"
    s = repr(v)
    return s if len(s) <= 40 else s[:37] + "..."


def _signature(
    type_id: str,
    version: int,
    params: dict[str, Any],
    inputs: dict[str, str],
    fingerprint: str | None,
    salt: str | None = None,
) -> str:
    payload = json.dumps(
        [type_id, version, params, inputs, fingerprint, salt],
        sort_keys=True,
        separators=(",", ":"),
        default=repr,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def _normalise_outputs(spec: Any, raw: Any) -> dict[str, Any]:
    names = [o.name for o in spec.outputs]
    if isinstance(raw, dict) and (set(raw) <= set(names) or not names):
        outputs = dict(raw)
    elif isinstance(raw, tuple) and len(names) != 1:
        if len(raw) != len(names):
            raise StudioError(
                f"node returned {len(raw)} values for {len(names)} outputs ({', '.join(names)})"
            )
        outputs = dict(zip(names, raw, strict=True))
    elif len(names) == 1:
        outputs = {names[0]: raw}
    elif raw is None and not names:
        outputs = {}
    else:
        raise StudioError(f"node returned {type(raw).__name__}, expected its outputs {names}")
    missing = [n for n in names if n not in outputs]
    if missing:
        raise StudioError(f"node did not produce output(s): {', '.join(missing)}")
    return outputs


def _user_message(exc: BaseException) -> str:
    if is_out_of_memory(exc):
        return out_of_memory_message(exc)
    if isinstance(exc, StudioError):
        return str(exc)
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
