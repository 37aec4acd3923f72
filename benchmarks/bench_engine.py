"""Engine overhead on 1,000-node stub graphs (no torch). Prints JSON.

    python benchmarks/bench_engine.py

Goals (issue 2): scheduling + hashing overhead under 0.2 ms per node; a fully
cached re-run under 100 ms; a 10,000-deep chain validates and runs.
"""

from __future__ import annotations

import json
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from stubs import stub_registry

from studio.engine import Engine
from studio.graph import Workflow
from studio.graph.workflow import Link


def wide(reg, nodes: int = 1000) -> Workflow:
    """Many short branches: number -> add -> add -> output, 4 nodes each."""
    wf = Workflow(reg)
    for i in range(nodes // 4):
        n = wf.add_node("number", {"value": i})
        a = wf.add_node("add", {"offset": 1})
        b = wf.add_node("add", {"offset": 2})
        o = wf.add_node("output")
        wf.insert_link(Link(f"a{i}", n.id, "value", a.id, "a"))
        wf.insert_link(Link(f"b{i}", a.id, "sum", b.id, "a"))
        wf.insert_link(Link(f"c{i}", b.id, "sum", o.id, "value"))
    return wf


def deep(reg, nodes: int = 1000) -> Workflow:
    """One chain: number -> add -> ... -> add -> output."""
    wf = Workflow(reg)
    prev = wf.add_node("number", {"value": 0})
    out_name = "value"
    for i in range(nodes - 2):
        nxt = wf.add_node("add", {"offset": 1})
        wf.insert_link(Link(f"l{i}", prev.id, out_name, nxt.id, "a"))
        prev, out_name = nxt, "sum"
    out = wf.add_node("output")
    wf.insert_link(Link("last", prev.id, out_name, out.id, "value"))
    return wf


def measure(wf: Workflow, reg, repeats: int = 5) -> dict:
    firsts, cached = [], []
    nodes = len(wf.nodes)
    for _ in range(repeats):
        engine = Engine(reg)
        t = time.perf_counter()
        result = engine.run(wf)
        firsts.append(time.perf_counter() - t)
        assert len(result.ran) == nodes
        t = time.perf_counter()
        result = engine.run(wf)
        cached.append(time.perf_counter() - t)
        assert not result.ran
    first = statistics.median(firsts)
    return {
        "nodes": nodes,
        "first_run_s": round(first, 4),
        "overhead_ms_per_node": round(first / nodes * 1000, 4),
        "cached_rerun_ms": round(statistics.median(cached) * 1000, 2),
        "goal_overhead_ms_per_node": 0.2,
        "goal_cached_rerun_ms": 100,
    }


def main() -> None:
    reg = stub_registry()
    report: dict = {"python": platform.python_version(), "machine": platform.machine()}
    report["wide_1000"] = measure(wide(reg), reg)
    report["deep_1000"] = measure(deep(reg), reg)
    t = time.perf_counter()
    chain = deep(reg, 10_000)
    engine = Engine(reg)
    problems = engine.validate(chain)
    result = engine.run(chain)
    report["deep_10000"] = {
        "nodes": len(chain.nodes),
        "ok": not problems and not result.errors and len(result.ran) == 10_000,
        "build_validate_run_s": round(time.perf_counter() - t, 3),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
