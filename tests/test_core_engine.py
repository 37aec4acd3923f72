"""The executor with stub nodes that count their calls (no torch)."""

from __future__ import annotations

import threading

import pytest

from studio.engine import Engine, WorkflowInvalid
from studio.engine.events import EventKind
from studio.graph import Workflow


def sum_graph(reg, a=3, b=4):
    """number(a) + number(b) -> add -> output."""
    wf = Workflow(reg)
    na = wf.add_node("number", {"value": a}, title="A")
    nb = wf.add_node("number", {"value": b}, title="B")
    add = wf.add_node("add", title="Sum")
    out = wf.add_node("output", title="Out")
    wf.connect(na.id, "value", add.id, "a")
    wf.connect(nb.id, "value", add.id, "b")
    wf.connect(add.id, "sum", out.id, "value")
    return wf, na, nb, add, out


def test_first_run_computes_and_shows_result(stub_registry, calls):
    wf, *_ = sum_graph(stub_registry)
    result = Engine(stub_registry).run(wf)
    assert result.images == [("image", 7)]
    assert len(result.ran) == 4 and not result.cached and not result.errors


def test_identical_second_run_executes_nothing(stub_registry, calls):
    wf, *_ = sum_graph(stub_registry)
    engine = Engine(stub_registry)
    engine.run(wf)
    calls.clear()
    result = engine.run(wf)
    assert sum(calls.values()) == 0
    assert result.ran == set()
    assert len(result.cached) == 4
    assert result.images == [("image", 7)]


def test_param_change_reruns_exactly_node_and_descendants(stub_registry, calls):
    wf, na, nb, add, out = sum_graph(stub_registry)
    engine = Engine(stub_registry)
    engine.run(wf)
    wf.set_param("A", "value", 10)
    result = engine.run(wf)
    assert result.ran == {na.id, add.id, out.id}
    assert result.cached == {nb.id}
    assert result.images == [("image", 14)]
    assert "param 'value' changed from 3 to 10" in result.reasons[na.id]
    assert "input 'a' changed" in result.reasons[add.id]


def test_setting_a_param_back_reruns_nothing(stub_registry, calls):
    wf, na, *_ = sum_graph(stub_registry)
    engine = Engine(stub_registry)
    engine.run(wf)
    wf.set_param(na.id, "value", 10)
    engine.run(wf)
    wf.set_param(na.id, "value", 3)
    calls.clear()
    result = engine.run(wf)
    assert result.ran == set() and sum(calls.values()) == 0
    assert result.images == [("image", 7)]


def test_identical_branches_compute_once(stub_registry, calls):
    wf = Workflow(stub_registry)
    for _ in range(2):
        n = wf.add_node("number", {"value": 5})
        a = wf.add_node("add", {"offset": 1})
        o = wf.add_node("output")
        wf.connect(n.id, "value", a.id, "a")
        wf.connect(a.id, "sum", o.id, "value")
    result = Engine(stub_registry).run(wf)
    assert calls["number"] == 1 and calls["add"] == 1 and calls["output"] == 1
    assert len(result.ran) == 3 and len(result.cached) == 3
    assert result.images == [("image", 6), ("image", 6)]


def test_only_nodes_feeding_an_output_run(stub_registry, calls):
    wf, *_ = sum_graph(stub_registry)
    dangling = wf.add_node("number", {"value": 99})
    result = Engine(stub_registry).run(wf)
    assert dangling.id not in result.ran
    assert calls["number"] == 2


def test_mute_drops_node_and_what_depends_only_on_it(stub_registry, calls):
    wf, na, nb, add, out = sum_graph(stub_registry)
    other_out = wf.add_node("output", title="Other")
    wf.connect(nb.id, "value", other_out.id, "value")
    wf.set_flags(add.id, mute=True)
    result = Engine(stub_registry).run(wf)
    assert add.id not in result.ran and out.id not in result.ran
    assert na.id not in result.ran  # feeds only the muted node
    assert result.ran == {nb.id, other_out.id}
    assert result.images == [("image", 4)]
    assert not result.errors


def test_muted_output_node_does_not_run(stub_registry, calls):
    wf, *_, out = sum_graph(stub_registry)
    wf.set_flags(out.id, mute=True)
    result = Engine(stub_registry).run(wf)
    assert result.ran == set() and result.images == []


def test_bypass_passes_input_of_same_type_through(stub_registry, calls):
    wf = Workflow(stub_registry)
    n = wf.add_node("number", {"value": 5})
    add = wf.add_node("add", {"offset": 100})
    out = wf.add_node("output")
    wf.connect(n.id, "value", add.id, "a")
    wf.connect(add.id, "sum", out.id, "value")
    engine = Engine(stub_registry)
    assert engine.run(wf).images == [("image", 105)]
    wf.set_flags(add.id, bypass=True)
    result = engine.run(wf)
    assert result.images == [("image", 5)]
    assert add.id not in result.ran and calls["add"] == 1


def test_validation_reports_every_problem_naming_nodes(stub_registry):
    wf = Workflow(stub_registry)
    out = wf.add_node("output", title="Out")
    add = wf.add_node("add", {"offset": 500}, title="Adder")
    wf.connect(add.id, "sum", out.id, "value")
    wf.add_node("mystery_node", title="Ghost")
    blob_out = wf.add_node("blob_out", title="Sink")
    problems = Engine(stub_registry).validate(wf)
    text = "\n".join(str(p) for p in problems)
    assert "Adder" in text and "offset" in text and "above the maximum 100" in text
    assert "Ghost" in text and "unknown node type 'mystery_node'" in text
    assert "Sink" in text and "missing required input 'data'" in text
    assert any(p.node_id == blob_out.id for p in problems)
    with pytest.raises(WorkflowInvalid) as info:
        Engine(stub_registry).run(wf)
    assert "Adder" in str(info.value)


def test_type_mismatch_from_a_file_is_reported(stub_registry):
    from studio.graph.fileformat import workflow_from_dict, workflow_to_dict

    wf = Workflow(stub_registry)
    fl = wf.add_node("to_float", title="Floaty")
    out = wf.add_node("output", title="Out")
    data = workflow_to_dict(wf)
    data["links"].append(
        {"id": "l1", "source": fl.id, "output": "value", "target": out.id, "input": "value"}
    )
    wf2 = workflow_from_dict(data, registry=stub_registry)
    problems = Engine(stub_registry).validate(wf2)
    assert any(
        p.node_id == out.id and "expects INT" in p.message and "FLOAT" in p.message
        for p in problems
    )


def test_cycle_is_reported_with_the_nodes_on_it(stub_registry):
    from studio.graph.fileformat import workflow_from_dict, workflow_to_dict

    wf = Workflow(stub_registry)
    a = wf.add_node("add", title="First")
    b = wf.add_node("add", title="Second")
    out = wf.add_node("output")
    wf.connect(a.id, "sum", b.id, "a")
    wf.connect(b.id, "sum", out.id, "value")
    with pytest.raises(Exception, match="cycle"):
        wf.connect(b.id, "sum", a.id, "a")
    data = workflow_to_dict(wf)
    data["links"].append({"id": "c", "source": b.id, "output": "sum", "target": a.id, "input": "a"})
    wf2 = workflow_from_dict(data, registry=stub_registry)
    problems = Engine(stub_registry).validate(wf2)
    on_cycle = {p.node_id for p in problems if "cycle" in p.message}
    assert on_cycle == {a.id, b.id}
    assert all(
        "First" in p.message and "Second" in p.message for p in problems if "cycle" in p.message
    )


def test_failure_fails_only_descendants(stub_registry, calls):
    wf = Workflow(stub_registry)
    n = wf.add_node("number", {"value": 2})
    bad = wf.add_node("fail", {"message": "the file is broken"}, title="Breaker")
    after = wf.add_node("add")
    out_bad = wf.add_node("output", title="Bad out")
    good = wf.add_node("add", {"offset": 1})
    out_good = wf.add_node("output", title="Good out")
    wf.connect(n.id, "value", bad.id, "a")
    wf.connect(bad.id, "value", after.id, "a")
    wf.connect(after.id, "sum", out_bad.id, "value")
    wf.connect(n.id, "value", good.id, "a")
    wf.connect(good.id, "sum", out_good.id, "value")
    events = []
    engine = Engine(stub_registry)
    result = engine.run(wf, on_event=events.append)
    assert result.errors[bad.id] == "the file is broken"
    assert after.id in result.errors and out_bad.id in result.errors
    assert result.images == [("image", 3)]
    assert calls["add"] == 1
    err = [e for e in events if e.event == EventKind.NODE_ERROR]
    assert len(err) == 1 and err[0].node == bad.id and "NodeError" in err[0].traceback
    # results computed before the failure stay cached
    calls.clear()
    again = engine.run(wf)
    assert n.id in again.cached and good.id in again.cached and calls["number"] == 0


def test_interrupt_stops_at_next_step_and_keeps_cache_consistent(stub_registry, calls):
    wf = Workflow(stub_registry)
    n = wf.add_node("number", {"value": 1})
    slow = wf.add_node("slow", {"steps": 1000})
    out = wf.add_node("output")
    wf.connect(n.id, "value", slow.id, "a")
    wf.connect(slow.id, "value", out.id, "value")
    engine = Engine(stub_registry)
    steps = []

    def on_event(e):
        if e.event == EventKind.PROGRESS:
            steps.append(e.step)
            if e.step == 5:
                engine.interrupt()

    result = engine.run(wf, on_event=on_event)
    assert result.interrupted
    assert max(steps) == 5
    assert slow.id not in result.ran and out.id not in result.ran
    # the next run starts clean: the number is cached, the slow node runs in full
    calls.clear()
    result = engine.run(wf)
    assert not result.interrupted and result.images == [("image", 1)]
    assert n.id in result.cached and calls["slow"] == 1


def test_interrupt_from_another_thread(stub_registry):
    wf = Workflow(stub_registry)
    slow = wf.add_node("slow", {"steps": 10**7})
    out = wf.add_node("output")
    wf.connect(slow.id, "value", out.id, "value")
    engine = Engine(stub_registry)
    started = threading.Event()
    box = {}

    def work():
        box["result"] = engine.run(wf, on_event=lambda e: started.set())

    t = threading.Thread(target=work)
    t.start()
    assert started.wait(10)
    engine.interrupt()
    t.join(10)
    assert not t.is_alive() and box["result"].interrupted


def test_byte_budget_evicts_least_recently_used(stub_registry, calls):
    def blob_graph(size):
        wf = Workflow(stub_registry)
        b = wf.add_node("blob", {"size": size})
        o = wf.add_node("blob_out")
        wf.connect(b.id, "data", o.id, "data")
        return wf

    engine = Engine(stub_registry, cache_bytes=3_000)  # room for two of the three
    first, second, third = blob_graph(1000), blob_graph(1001), blob_graph(1002)
    engine.run(first)
    engine.run(second)
    engine.run(first)  # touch: first is now the most recently used
    calls.clear()
    engine.run(third)  # needs room: evicts second, the least recently used
    assert engine.cache.nbytes <= 3_000 and engine.cache.evictions > 0
    calls.clear()
    assert engine.run(first).ran == set()
    rerun = engine.run(second)
    assert calls["blob"] == 1 and len(rerun.ran) >= 1


def test_non_deterministic_node_always_runs(stub_registry, calls):
    wf = Workflow(stub_registry)
    r = wf.add_node("random")
    o = wf.add_node("output")
    wf.connect(r.id, "value", o.id, "value")
    engine = Engine(stub_registry)
    engine.run(wf)
    result = engine.run(wf)
    assert r.id in result.ran and o.id in result.ran
    assert calls["random"] == 2


def test_events_for_every_node(stub_registry):
    wf, na, nb, add, out = sum_graph(stub_registry)
    engine = Engine(stub_registry)
    events = []
    engine.run(wf, on_event=events.append)
    started = {e.node for e in events if e.event == EventKind.NODE_STARTED}
    finished = [e for e in events if e.event == EventKind.NODE_FINISHED]
    assert started == {na.id, nb.id, add.id, out.id}
    assert all(e.seconds is not None and e.seconds >= 0 for e in finished)
    assert events[0].event == EventKind.RUN_STARTED and events[-1].event == EventKind.RUN_FINISHED
    events.clear()
    engine.run(wf, on_event=events.append)
    assert {e.node for e in events if e.event == EventKind.NODE_CACHED} == started


def test_deep_chain_of_ten_thousand_nodes(stub_registry):
    from studio.graph.workflow import Link

    wf = Workflow(stub_registry)
    prev = wf.add_node("number", {"value": 0})
    for i in range(10_000):
        nxt = wf.add_node("add", {"offset": 1})
        wf.insert_link(Link(f"l{i}", prev.id, "value" if i == 0 else "sum", nxt.id, "a"))
        prev = nxt
    out = wf.add_node("output")
    wf.insert_link(Link("last", prev.id, "sum", out.id, "value"))
    engine = Engine(stub_registry)
    assert engine.validate(wf) == []
    result = engine.run(wf)
    assert result.images == [("image", 10_000)]
    assert len(engine.run(wf).cached) == 10_002


def test_int_feeds_float_and_link_overrides_param(stub_registry):
    from studio.graph.types import can_connect

    assert can_connect("INT", "FLOAT") and not can_connect("FLOAT", "INT")
    wf = Workflow(stub_registry)
    n = wf.add_node("number", {"value": 40})
    add = wf.add_node("add", {"a": 1, "b": 2})
    out = wf.add_node("output")
    wf.connect(n.id, "value", add.id, "b")  # the link wins over the stored b=2
    wf.connect(add.id, "sum", out.id, "value")
    assert Engine(stub_registry).run(wf).images == [("image", 41)]


def test_engine_is_usable_from_another_thread(stub_registry):
    wf, *_ = sum_graph(stub_registry)
    engine = Engine(stub_registry)
    results = []
    threads = [threading.Thread(target=lambda: results.append(engine.run(wf))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.images for r in results] == [[("image", 7)]] * 4
    assert sum(len(r.ran) for r in results) == 4  # computed once in all
