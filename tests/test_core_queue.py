"""The run queue (worker thread) and seed control, with stub nodes."""

from __future__ import annotations

import random
import threading

from studio.engine import Engine
from studio.engine.events import EventKind
from studio.engine.queue import JobState, RunQueue
from studio.graph import Workflow
from studio.graph.fileformat import dumps_workflow, loads_workflow
from studio.graph.registry import Registry
from studio.graph.seeds import (
    SeedControl,
    advance_seeds,
    next_seeds,
    seed_control,
    set_seed_control,
)
from studio.graph.spec import InputSpec, NodeSpec, OutputSpec
from studio.graph.types import ValueType as T
from studio.graph.workflow import ChangeKind


def chain(reg, value=1, steps=3):
    wf = Workflow(reg)
    n = wf.add_node("number", {"value": value})
    s = wf.add_node("slow", {"steps": steps})
    o = wf.add_node("output")
    wf.connect(n.id, "value", s.id, "a")
    wf.connect(s.id, "value", o.id, "value")
    return wf, n


def test_jobs_run_in_order_on_a_worker_thread(stub_registry):
    seen_threads = set()
    events = []

    def on_event(job, event):
        seen_threads.add(threading.current_thread().name)
        events.append((job.id, event.event))

    q = RunQueue(Engine(stub_registry), on_event=on_event)
    wf, n = chain(stub_registry, 1)
    first = q.submit(wf)
    wf.set_param(n.id, "value", 2)  # edits after submitting do not change the queued run
    second = q.submit(wf)
    assert q.wait_idle(10)
    assert first.state == JobState.DONE and second.state == JobState.DONE
    assert first.result.images == [("image", 1)] and second.result.images == [("image", 2)]
    assert seen_threads == {"studio-run-queue"}
    assert [j for j, e in events if e == EventKind.RUN_FINISHED] == [first.id, second.id]
    q.shutdown()


def test_cancel_pending_and_interrupt_running(stub_registry):
    started = threading.Event()

    def on_event(job, event):
        if event.event == EventKind.PROGRESS:
            started.set()

    q = RunQueue(Engine(stub_registry), on_event=on_event)
    long_wf, _ = chain(stub_registry, steps=10**7)
    running = q.submit(long_wf)
    waiting = q.submit(chain(stub_registry, 5)[0])
    assert started.wait(10)
    assert q.cancel(waiting.id)
    q.interrupt()
    assert q.wait_idle(10)
    assert running.state == JobState.INTERRUPTED and waiting.state == JobState.CANCELLED
    assert waiting.result is None
    q.shutdown()


def test_interrupt_by_job_id_stops_only_that_job(stub_registry):
    started = threading.Event()

    def on_event(job, event):
        if event.event == EventKind.PROGRESS:
            started.set()

    q = RunQueue(Engine(stub_registry), on_event=on_event)
    running = q.submit(chain(stub_registry, steps=10**7)[0])
    waiting = q.submit(chain(stub_registry, 5)[0])
    assert started.wait(10)
    assert q.interrupt(waiting.id)  # a pending job is dropped, the running one goes on
    assert waiting.state == JobState.CANCELLED and q.current is running
    assert not q.interrupt(9999)
    assert q.interrupt(running.id)
    assert q.wait_idle(10)
    assert running.state == JobState.INTERRUPTED
    assert not q.interrupt()  # nothing runs
    q.shutdown()


def test_stop_asked_as_a_run_begins_still_stops_it(stub_registry):
    def on_job(job):
        # Stop lands after the queue picked the job, before the engine's run began.
        if job.state == JobState.RUNNING:
            q.interrupt(job.id)

    q = RunQueue(Engine(stub_registry), on_job=on_job)
    job = q.submit(chain(stub_registry, steps=10**7)[0])
    assert q.wait_idle(10)
    assert job.state == JobState.INTERRUPTED
    q.shutdown()


def test_invalid_and_failing_jobs_do_not_stop_the_queue(stub_registry):
    q = RunQueue(Engine(stub_registry))
    bad = Workflow(stub_registry)
    bad.add_node("blob_out")  # missing input
    failing = Workflow(stub_registry)
    f = failing.add_node("fail")
    o = failing.add_node("output")
    failing.connect(f.id, "value", o.id, "value")
    jobs = [q.submit(bad), q.submit(failing), q.submit(chain(stub_registry)[0])]
    assert q.wait_idle(10)
    assert [j.state for j in jobs] == [JobState.INVALID, JobState.FAILED, JobState.DONE]
    assert "missing required input" in str(jobs[0].problems[0])
    q.shutdown()


def seeded_registry():
    return Registry(
        [
            NodeSpec(
                "seeded",
                "Seeded",
                "test",
                lambda ctx, seed: seed,
                inputs=(InputSpec("seed", T.INT, default=0, min=0, max=10, seed=True),),
                outputs=(OutputSpec("value", T.INT),),
            )
        ]
    )


def test_seed_controls_after_each_run():
    reg = seeded_registry()
    wf = Workflow(reg)
    fixed = wf.add_node("seeded", {"seed": 5})
    inc = wf.add_node("seeded", {"seed": 10})
    dec = wf.add_node("seeded", {"seed": 0})
    rnd = wf.add_node("seeded", {"seed": 3})
    set_seed_control(wf, inc.id, "seed", SeedControl.INCREMENT)
    set_seed_control(wf, dec.id, "seed", SeedControl.DECREMENT)
    set_seed_control(wf, rnd.id, "seed", SeedControl.RANDOMIZE)
    assert seed_control(wf, fixed.id, "seed") == SeedControl.FIXED
    preview = next_seeds(wf, random.Random(0))
    assert inc.params["seed"] == 10  # asking what would change changes nothing
    changes = advance_seeds(wf, random.Random(0))
    assert changes == preview
    assert {c.node_id for c in changes} == {inc.id, dec.id, rnd.id}
    assert fixed.params["seed"] == 5
    assert inc.params["seed"] == 0  # wraps at the maximum
    assert dec.params["seed"] == 10  # wraps at the minimum
    assert 0 <= rnd.params["seed"] <= 10
    # the modes are saved with the workflow
    again = loads_workflow(dumps_workflow(wf), registry=reg)
    assert seed_control(again, rnd.id, "seed") == SeedControl.RANDOMIZE


def test_setting_a_seed_control_notifies():
    wf = Workflow(seeded_registry())
    n = wf.add_node("seeded", {"seed": 5})
    seen = []
    wf.subscribe(seen.append)
    set_seed_control(wf, n.id, "seed", SeedControl.INCREMENT)
    assert [(c.kind, c.node_id, c.name) for c in seen] == [
        (ChangeKind.EXTRA_CHANGED, n.id, "seed_control")
    ]
    assert seed_control(wf, n.id, "seed") is SeedControl.INCREMENT
