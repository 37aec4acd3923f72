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
from studio.engine.devices import is_out_of_memory
from studio.engine.events import Event, EventKind
from studio.engine.fingerprint import FileFingerprinter
from studio.engine.models import ModelManager
from studio.engine.validate import Problem, WorkflowInvalid, plan_workflow
from studio.errors import Interrupted, StudioError
from studio.graph.registry import Registry, default_registry
from studio.graph.workflow import Workflow
from studio.settings import Settings, active_settings

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

    Safe to drive from another thread: runs are serialised, and :meth:`interrupt`
    may be called from any thread.
    """

    def __init__(
        self,
        registry: Registry | None = None,
        *,
        settings: Settings | None = None,
        cache_bytes: int | None = None,
        models: ModelManager | None = None,
    ):
        self._registry = registry
        self.settings = settings or active_settings()
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

    @property
    def registry(self) -> Registry:
        if self._registry is None:
            self._registry = default_registry()
        return self._registry

    # -- public API ---------------------------------------------------------------------

    def validate(self, workflow: Workflow) -> list[Problem]:
        """Every problem of the workflow, each naming its node (empty when it can run)."""
        return plan_workflow(workflow, self.registry).problems

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

    # -- internals ----------------------------------------------------------------------

    def _run(self, wf: Workflow, emit: EventSink, targets: list[str] | None) -> RunResult:
        t0 = time.perf_counter()
        plan = plan_workflow(wf, self.registry, targets)
        blocking = [p for p in plan.problems if p.node_id in plan.needed or not plan.order]
        if blocking:
            raise WorkflowInvalid(blocking)
        emit(Event(EventKind.RUN_STARTED))
        result = RunResult()
        nodes = {n.id: n for n in wf.nodes}
        # (node, output) -> (signature, value) or a marker.
        refs: dict[tuple[str, str], tuple[str, Any] | object] = {}
        run_info: dict[str, Any] = {}

        for nid in plan.order:
            n = nodes[nid]
            spec = plan.specs[nid]
            title = n.title or spec.title
            if self._interrupt.is_set():
                result.interrupted = True
                break
            if n.mute:
                for out in spec.outputs:
                    refs[(nid, out.name)] = _MISSING
                continue
            if n.bypass:
                for out_name, in_name in plan.bypass_map.get(nid, {}).items():
                    lk = plan.inputs[nid].get(in_name) if in_name else None
                    refs[(nid, out_name)] = (
                        refs.get((lk.source, lk.output), _MISSING) if lk else _MISSING
                    )
                continue

            kwargs: dict[str, Any] = {}
            params: dict[str, Any] = {}
            input_sigs: dict[str, str] = {}
            skip: str | None = None
            failed_upstream = False
            for inp in spec.inputs:
                lk = plan.inputs[nid].get(inp.name)
                if lk is not None:
                    ref = refs.get((lk.source, lk.output), _MISSING)
                    if ref is _FAILED:
                        failed_upstream = True
                        src = nodes[lk.source]
                        skip = f"input {inp.name!r} failed upstream ({src.title or plan.specs[src.id].title})"
                        break
                    if ref is _MISSING:
                        if inp.optional:
                            continue
                        skip = f"input {inp.name!r} comes from a muted or bypassed node"
                        break
                    sig, value = ref  # type: ignore[misc]
                    kwargs[inp.name] = value
                    input_sigs[inp.name] = sig
                elif inp.is_param:
                    value = n.params.get(inp.name, inp.default)
                    if value is None and inp.optional:
                        continue
                    value = inp.coerce(value)
                    kwargs[inp.name] = value
                    params[inp.name] = value
            if skip is not None:
                for out in spec.outputs:
                    refs[(nid, out.name)] = _FAILED if failed_upstream else _MISSING
                if failed_upstream:
                    result.errors[nid] = skip
                emit(
                    Event(EventKind.NODE_SKIPPED, node=nid, type=n.type, title=title, message=skip)
                )
                continue

            fingerprint: str | None = None
            try:
                if spec.fingerprint is not None:
                    fingerprint = spec.fingerprint(params, self.files)
            except Exception as exc:
                self._fail(result, emit, nid, n.type, title, exc, spec, refs)
                continue
            signature = _signature(n.type, spec.version, params, input_sigs, fingerprint)
            if not spec.deterministic:
                signature = _signature(n.type, spec.version, params, input_sigs, uuid.uuid4().hex)
            record = _Record(signature, params, input_sigs, fingerprint)

            entry = self.cache.get(signature)
            if entry is not None:
                self._records[nid] = record
                result.cached.add(nid)
                emit(Event(EventKind.NODE_CACHED, node=nid, type=n.type, title=title))
            else:
                reason = self._explain(nid, record, spec.deterministic)
                result.reasons[nid] = reason
                emit(
                    Event(
                        EventKind.NODE_STARTED, node=nid, type=n.type, title=title, message=reason
                    )
                )
                ctx = NodeContext(
                    node_id=nid,
                    node_type=n.type,
                    title=title,
                    settings=self.settings,
                    models=self.models,
                    files=self.files,
                    workflow=wf,
                    interrupt_flag=self._interrupt,
                    emit=emit,
                    device_setting=self.settings.device,
                    run_info=run_info,
                )
                started = time.perf_counter()
                try:
                    raw = spec.execute(ctx, **kwargs) if spec.execute else {}
                    outputs = _normalise_outputs(spec, raw)
                except Interrupted:
                    result.interrupted = True
                    emit(Event(EventKind.INTERRUPTED, node=nid, type=n.type, title=title))
                    break
                except Exception as exc:
                    self._fail(result, emit, nid, n.type, title, exc, spec, refs)
                    continue
                seconds = time.perf_counter() - started
                entry = CacheEntry(outputs, list(ctx.images))
                entry.nbytes = estimate_nbytes(outputs) + estimate_nbytes(entry.images)
                self.cache.put(signature, entry)
                self._records[nid] = record
                result.ran.add(nid)
                emit(
                    Event(
                        EventKind.NODE_FINISHED, node=nid, type=n.type, title=title, seconds=seconds
                    )
                )

            for out in spec.outputs:
                refs[(nid, out.name)] = (f"{signature}:{out.name}", entry.outputs.get(out.name))
            result.outputs[nid] = entry.outputs
            if spec.output_node and entry.images:
                result.images.extend(entry.images)
                result.node_images[nid] = list(entry.images)

        result.seconds = time.perf_counter() - t0
        emit(
            Event(
                EventKind.RUN_FINISHED,
                seconds=result.seconds,
                message="interrupted" if result.interrupted else None,
            )
        )
        return result

    def _fail(
        self,
        result: RunResult,
        emit: EventSink,
        nid: str,
        ntype: str,
        title: str,
        exc: Exception,
        spec: Any,
        refs: dict[tuple[str, str], Any],
    ) -> None:
        message = _user_message(exc)
        result.errors[nid] = message
        for out in spec.outputs:
            refs[(nid, out.name)] = _FAILED
        emit(
            Event(
                EventKind.NODE_ERROR,
                node=nid,
                type=ntype,
                title=title,
                message=message,
                traceback="".join(traceback.format_exception(exc)),
            )
        )

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
) -> str:
    payload = json.dumps(
        [type_id, version, params, inputs, fingerprint],
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
        return (
            "out of memory: try a smaller image or batch, tiled VAE decode, or set the "
            "device to CPU in the settings"
        )
    if isinstance(exc, StudioError):
        return str(exc)
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
