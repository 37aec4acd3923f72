"""A run queue: workflows submitted from the GUI (or a script) run one after another on
a worker thread, with events tagged by job. Qt-free: the GUI turns the callbacks into
Qt signals.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from studio.engine.events import Event, EventKind
from studio.engine.validate import Problem, WorkflowInvalid

if TYPE_CHECKING:
    from studio.engine.executor import Engine, RunResult
    from studio.graph.workflow import Workflow


class JobState(StrEnum):
    """Where a :class:`Job` is: waiting, running, or one of the ways a job ends."""

    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    INTERRUPTED = "interrupted"
    CANCELLED = "cancelled"
    INVALID = "invalid"

    @property
    def ended(self) -> bool:
        """Whether the job has ended (it will not change again)."""
        return self not in (JobState.PENDING, JobState.RUNNING)


@dataclass
class Job:
    """One queued run of a workflow snapshot."""

    id: int
    workflow: Workflow
    label: str = ""
    state: JobState = JobState.PENDING
    result: RunResult | None = None
    problems: list[Problem] = field(default_factory=list)
    message: str = ""
    submitted: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    stop_requested: bool = False


#: Events after which a stop asked for before the run began is asked for again.
_STOPPABLE = (EventKind.RUN_STARTED, EventKind.NODE_STARTED, EventKind.PROGRESS)

EventCallback = Callable[[Job, Event], None]
JobCallback = Callable[[Job], None]


class RunQueue:
    """Runs submitted workflows in order on one worker thread.

    ``prepare()``, when given, runs first on that thread (imports that take seconds).

    ``on_event(job, event)`` is called for every engine event and ``on_job(job)``
    whenever a job changes state; both are called on the worker thread (or the
    caller's, for cancellation).
    """

    def __init__(
        self,
        engine: Engine,
        *,
        on_event: EventCallback | None = None,
        on_job: JobCallback | None = None,
        prepare: Callable[[], None] | None = None,
    ):
        self.engine = engine
        self._prepare = prepare
        self.on_event = on_event or (lambda job, event: None)
        self.on_job = on_job or (lambda job: None)
        self._pending: deque[Job] = deque()
        self._history: list[Job] = []
        self._current: Job | None = None
        self._cond = threading.Condition()
        self._ids = itertools.count(1)
        self._closed = False
        self._thread = threading.Thread(target=self._work, name="studio-run-queue", daemon=True)
        self._thread.start()

    def submit(
        self, workflow: Workflow, *, label: str = "", meta: dict[str, Any] | None = None
    ) -> Job:
        """Queue a copy of ``workflow`` (later edits do not change what runs)."""
        job = Job(next(self._ids), workflow.copy(), label=label, meta=dict(meta or {}))
        with self._cond:
            if self._closed:
                raise RuntimeError("the run queue is shut down")
            self._pending.append(job)
            self._cond.notify_all()
        self.on_job(job)
        return job

    def cancel(self, job_id: int) -> bool:
        """Drop a pending job; the running one is stopped with :meth:`interrupt`."""
        with self._cond:
            for job in self._pending:
                if job.id == job_id:
                    self._pending.remove(job)
                    job.state = JobState.CANCELLED
                    job.finished = time.time()
                    self._history.append(job)
                    break
            else:
                return False
        self.on_job(job)
        return True

    def clear(self) -> None:
        """Cancel every pending job."""
        with self._cond:
            ids = [j.id for j in self._pending]
        for job_id in ids:
            self.cancel(job_id)

    def interrupt(self, job_id: int | None = None) -> bool:
        """Stop the running job at its next step; with ``job_id``, only that job (a
        pending one is cancelled). False when there was nothing to stop.

        A stop asked for just as the job starts still stops it (the engine clears its
        stop flag when a run begins, so the queue asks again once the run has started).
        """
        with self._cond:
            job = self._current
            other = job_id is not None and (job is None or job.id != job_id)
            if not other:
                if job is None:
                    return False
                job.stop_requested = True
        if other:
            return self.cancel(job_id)  # type: ignore[arg-type]
        self.engine.interrupt()
        return True

    @property
    def pending(self) -> list[Job]:
        with self._cond:
            return list(self._pending)

    @property
    def current(self) -> Job | None:
        return self._current

    @property
    def history(self) -> list[Job]:
        with self._cond:
            return list(self._history)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until nothing is pending or running (for scripts and tests)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._pending or self._current is not None:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining)
        return True

    def shutdown(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._closed = True
            self._pending.clear()
            self._cond.notify_all()
        self.engine.interrupt()
        self._thread.join(timeout)

    def _forward(self, job: Job) -> Callable[[Event], None]:
        def forward(event: Event) -> None:
            if job.stop_requested and event.event in _STOPPABLE:
                self.engine.interrupt()
            self.on_event(job, event)

        return forward

    def _work(self) -> None:
        if self._prepare is not None:
            # On this thread, before any job: importing the libraries a run needs here
            # means no run ever imports them at the same time from another thread.
            with contextlib.suppress(Exception):  # a broken install errors in the run
                self._prepare()
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                job = self._pending.popleft()
                self._current = job
            job.state = JobState.RUNNING
            job.started = time.time()
            self.on_job(job)
            try:
                job.result = self.engine.run(job.workflow, on_event=self._forward(job))
                if job.result.interrupted:
                    job.state = JobState.INTERRUPTED
                elif job.result.errors:
                    job.state = JobState.FAILED
                else:
                    job.state = JobState.DONE
            except WorkflowInvalid as exc:
                job.state = JobState.INVALID
                job.problems = exc.problems
                job.message = str(exc)
            except Exception as exc:  # an engine bug must not kill the queue
                job.state = JobState.FAILED
                job.message = "".join(traceback.format_exception_only(exc)).strip()
            job.finished = time.time()
            with self._cond:
                self._current = None
                self._history.append(job)
                self._cond.notify_all()
            self.on_job(job)
