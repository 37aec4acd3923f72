"""Checking a workflow before it runs, and planning what runs.

Every problem is reported at once, each naming its node. Nothing here recurses
per node: a chain of 10,000 nodes validates like a chain of 10.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import networkx as nx

from studio.errors import NodeError, StudioError
from studio.graph.naming import node_names
from studio.graph.registry import Registry
from studio.graph.spec import NodeSpec
from studio.graph.types import ValueType, can_connect
from studio.graph.workflow import Link, Node, Workflow
from studio.modelfiles import ModelFiles, is_model_kind


@dataclass(frozen=True)
class Problem:
    """A problem found before running, on one node."""

    node_id: str
    node_type: str
    title: str
    message: str
    param: str | None = None
    #: The node's name in messages: its title, with a short id only where titles repeat.
    name: str = ""

    def __str__(self) -> str:
        return f"{self.name or self.title}: {self.message}"


class WorkflowInvalid(StudioError):
    """The workflow cannot run; ``problems`` lists every reason, each naming its node."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        lines = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"the workflow has {len(problems)} problem(s):\n{lines}")


@dataclass
class Plan:
    graph: nx.DiGraph
    specs: dict[str, NodeSpec]
    order: list[str]  # needed nodes, topological
    needed: set[str]
    outputs: list[str]
    inputs: dict[str, dict[str, Link]]  # node -> input name -> link
    bypass_map: dict[str, dict[str, str | None]]  # node -> output -> passthrough input
    problems: list[Problem]


def bypass_passthrough(spec: NodeSpec, linked: set[str]) -> dict[str, str | None]:
    """For each output of a bypassed node, the linked input of the same type that passes
    through (one of the same name first)."""
    result: dict[str, str | None] = {}
    for out in spec.outputs:
        same = [i for i in spec.inputs if i.type == out.type and i.name in linked]
        named = [i for i in same if i.name == out.name]
        pick = (named or same or [None])[0]
        result[out.name] = pick.name if pick is not None else None
    return result


def plan_workflow(
    wf: Workflow,
    registry: Registry,
    targets: list[str] | None = None,
    *,
    model_files: ModelFiles | None = None,
) -> Plan:
    """Validate ``wf`` and work out what runs, in which order.

    ``model_files`` (the engine's or the window's, for their settings) checks that each
    model-file param names a file that is there; without it those are not checked.
    """
    checker = _Checker(wf, registry, model_files)
    for n in checker.nodes.values():
        checker.check_node(n)
    g, index = checker.graph, checker.index
    if not nx.is_directed_acyclic_graph(g):
        checker.report_cycles()
        return Plan(g, checker.specs, [], set(), [], checker.inputs, {}, checker.problems)
    outputs = _outputs(checker, targets)
    needed, bypass_map = _needed(checker, outputs)
    order = list(nx.lexicographical_topological_sort(g.subgraph(needed), key=index.__getitem__))
    return Plan(
        g, checker.specs, order, needed, outputs, checker.inputs, bypass_map, checker.problems
    )


class _Checker:
    """The workflow as a graph, and every problem found in it, each naming its node."""

    def __init__(self, wf: Workflow, registry: Registry, model_files: ModelFiles | None):
        self.nodes: dict[str, Node] = {n.id: n for n in wf.nodes}
        self.index = {nid: i for i, nid in enumerate(self.nodes)}
        self.graph: nx.DiGraph = nx.DiGraph()
        self.graph.add_nodes_from(self.nodes)
        self.inputs: dict[str, dict[str, Link]] = {nid: {} for nid in self.nodes}
        for lk in wf.links:
            self.graph.add_edge(lk.source, lk.target)
            self.inputs[lk.target][lk.input] = lk
        self.specs: dict[str, NodeSpec] = {}
        for n in self.nodes.values():
            spec = registry.get(n.type)
            if spec is not None:
                self.specs[n.id] = spec
        self.model_files = model_files
        self.problems: list[Problem] = []
        self.names = node_names(wf)

    def title(self, n: Node) -> str:
        spec = self.specs.get(n.id)
        return n.title or (spec.title if spec else n.type)

    def name(self, n: Node) -> str:
        return self.names.get(n.id) or self.title(n)

    def add(self, n: Node, message: str, param: str | None = None) -> None:
        self.problems.append(Problem(n.id, n.type, self.title(n), message, param, self.name(n)))

    def check_node(self, n: Node) -> None:
        if n.mute:
            return
        spec = self.specs.get(n.id)
        if spec is None:
            comfy = n.extra.get("comfyui")
            if isinstance(comfy, dict) and isinstance(comfy.get("class_type"), str):
                problem = comfy.get("problem") or (
                    f"{comfy['class_type']!r} comes from a ComfyUI extension Studio does not have"
                )
                self.add(n, str(problem))
            else:
                self.add(n, f"unknown node type {n.type!r} (is a node pack missing?)")
            return
        if spec.frontend_only:
            return
        if n.version > spec.version:
            self.add(
                n,
                f"was saved by a newer version of {spec.title} (version {n.version}; "
                f"this Studio has version {spec.version})",
            )
        self.check_links(n, spec)
        self.check_unlinked_inputs(n, spec)

    def check_links(self, n: Node, spec: NodeSpec) -> None:
        """Each link into ``n`` ends at an input it has, from an output of a fitting type."""
        for name, lk in self.inputs[n.id].items():
            in_spec = spec.input(name)
            if in_spec is None:
                self.add(n, f"has a link into {name!r}, which {spec.title} does not have", name)
                continue
            src = self.nodes[lk.source]
            src_spec = self.specs.get(src.id)
            if src_spec is None:
                continue  # reported on the source node
            out_spec = src_spec.output(lk.output)
            where = f"{self.name(src)}.{lk.output}"
            if out_spec is None:
                self.add(n, f"input {name!r} is linked to {where}, which does not exist", name)
            elif not can_connect(out_spec.type, in_spec.type):
                self.add(
                    n,
                    f"input {name!r} expects {in_spec.type} but is linked to "
                    f"{where} ({out_spec.type})",
                    name,
                )

    def check_unlinked_inputs(self, n: Node, spec: NodeSpec) -> None:
        """Required inputs are linked; params hold acceptable values."""
        for inp in spec.inputs:
            if inp.name in self.inputs[n.id]:
                continue
            if not inp.is_param:
                if not inp.optional and not n.bypass:
                    self.add(n, f"missing required input {inp.name!r} ({inp.type})", inp.name)
                continue
            value = n.params.get(inp.name, inp.default)
            if value is None:
                if not inp.optional:
                    self.add(n, f"param {inp.name!r} has no value", inp.name)
                continue
            problem = check_param(inp, value, self.model_files)
            if problem:
                self.add(n, f"param {inp.name!r}: {problem}", inp.name)

    def report_cycles(self) -> None:
        """Every node on a cycle, naming the whole cycle."""
        g = self.graph
        for comp in nx.strongly_connected_components(g):
            if len(comp) > 1 or any(g.has_edge(c, c) for c in comp):
                members = sorted(comp, key=self.index.__getitem__)
                names = " -> ".join(self.name(self.nodes[m]) for m in members)
                for m in members:
                    self.add(self.nodes[m], f"is on a cycle: {names}")


def _outputs(checker: _Checker, targets: list[str] | None) -> list[str]:
    """What the run aims at: ``targets``, or every output node that is not muted."""
    nodes, specs = checker.nodes, checker.specs
    if targets is not None:
        return [t for t in targets if t in nodes and not nodes[t].mute]
    return [
        nid for nid, n in nodes.items() if not n.mute and nid in specs and specs[nid].output_node
    ]


def _needed(
    checker: _Checker, outputs: list[str]
) -> tuple[set[str], dict[str, dict[str, str | None]]]:
    """The nodes that feed ``outputs`` (not through muted nodes; through a bypassed node only
    along its pass-through inputs), and each bypassed node's pass-through map."""
    nodes, specs, inputs = checker.nodes, checker.specs, checker.inputs
    bypass_map: dict[str, dict[str, str | None]] = {}
    needed: set[str] = set()
    queue = deque(outputs)
    while queue:
        nid = queue.popleft()
        if nid in needed:
            continue
        needed.add(nid)
        n = nodes[nid]
        if n.mute or nid not in specs:
            continue
        feeds: list[str]
        if n.bypass:
            passthrough = bypass_passthrough(specs[nid], set(inputs[nid]))
            bypass_map[nid] = passthrough
            feeds = [i for i in passthrough.values() if i is not None]
        else:
            feeds = list(inputs[nid])
        for name in feeds:
            lk = inputs[nid].get(name)
            if lk is not None and lk.source not in needed:
                queue.append(lk.source)
    return needed, bypass_map


def check_param(inp: Any, value: Any, model_files: ModelFiles | None = None) -> str | None:
    """InputSpec.check, plus: a model-file choice names a weights file or a diffusers
    folder under the settings' model folders, or by an absolute path."""
    if inp.type is ValueType.CHOICE and is_model_kind(inp.file_kind) and isinstance(value, str):
        if not value:
            return "no file chosen"
        if model_files is None:
            return None
        try:
            model_files.resolve(inp.file_kind, value)
        except NodeError as exc:
            if _is_absolute_path(value):
                return str(exc)
            return f"file {value!r} not found among the {inp.file_kind} files"
        return None
    return inp.check(value)


def _is_absolute_path(value: str) -> bool:
    try:
        return Path(value).expanduser().is_absolute()
    except RuntimeError:  # "~nobody/x": no such user
        return False
