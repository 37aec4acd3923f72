"""A batch's jobs: the product of sweeps, prompt rows and seeds, each a workflow with its
params set and an id that is a hash of that workflow (no Qt, no torch)."""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from studio.errors import StudioError, WorkflowEditError
from studio.graph.types import ValueType

#: A batch larger than this is a typo (a range with a tiny step), not a plan.
MAX_JOBS = 1_000_000
#: Seeds drawn for ``count`` are below this (what the Sampler's seed param takes).
SEED_LIMIT = 2**32


class BatchError(StudioError):
    """A batch that cannot be made: a bad sweep, prompt file, seed range or workflow."""


@dataclass(frozen=True)
class Assignment:
    """One param a job sets: ``ref`` as the user wrote it (``Sampler.cfg``), resolved."""

    ref: str
    node_id: str
    param: str
    value: Any


@dataclass
class Job:
    """A workflow with some params set. ``id`` depends only on the resulting workflow."""

    id: str
    assignments: list[Assignment]
    seed: int | None = None

    @property
    def params(self) -> dict[str, Any]:
        return {a.ref: a.value for a in self.assignments}

    def wire(self) -> dict[str, Any]:
        """What travels to a worker: the params to set on its copy of the base workflow."""
        return {
            "id": self.id,
            "set": [[a.node_id, a.param, a.value] for a in self.assignments],
        }


@dataclass
class Expansion:
    """The workflow every job starts from (``--set`` applied) and the jobs, in run order."""

    base: Any
    jobs: list[Job]


# -- parsing what the user typed ----------------------------------------------------------


def split_assignment(text: str, what: str = "--sweep") -> tuple[str, str]:
    target, sep, raw = text.partition("=")
    node_ref, dot, param = target.rpartition(".")
    if not sep or not dot or not node_ref or not param:
        raise BatchError(f"{what} {text!r}: expected NODE.PARAM=VALUES")
    return target, raw


def _resolve(wf: Any, ref: str, what: str) -> tuple[str, str, Any]:
    """(node id, param, InputSpec) for ``NODE.PARAM``; an unknown one is a BatchError."""
    node_ref, _, param = ref.rpartition(".")
    try:
        node = wf.find_node(node_ref)
    except WorkflowEditError as exc:
        raise BatchError(f"{what} {ref!r}: {exc}") from None
    spec = wf.spec_of(node)
    inp = spec.input(param) if spec else None
    if inp is None:
        names = ", ".join(i.name for i in spec.params) if spec else ""
        raise BatchError(
            f"{what} {ref!r}: {wf.display_title(node)} has no param {param!r}"
            + (f" (its params: {names})" if names else "")
        )
    return node.id, param, inp


def convert(inp: Any, raw: Any, where: str) -> Any:
    """``raw`` (text or a value) as the param's type; a mismatch names ``where``."""
    if not isinstance(raw, str):
        return raw
    try:
        if inp.type is ValueType.INT:
            return int(raw.strip())
        if inp.type is ValueType.FLOAT:
            return float(raw.strip())
        if inp.type is ValueType.BOOLEAN:
            low = raw.strip().lower()
            if low not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
                raise ValueError
            return low in ("true", "1", "yes", "on")
    except ValueError:
        raise BatchError(
            f"{where}: {inp.name!r} expects {inp.type.value.lower()}, got {raw!r}"
        ) from None
    return raw


def numeric_range(text: str, where: str) -> list[str] | None:
    """``a:b:step`` (``b`` included when the steps land on it) as decimal texts, or None
    when ``text`` is not a range. Decimal arithmetic, so 0.1 steps do not drift."""
    parts = text.split(":")
    if len(parts) not in (2, 3):
        return None
    try:
        start, stop = Decimal(parts[0].strip()), Decimal(parts[1].strip())
        step = Decimal(parts[2].strip()) if len(parts) == 3 else Decimal(1)
    except InvalidOperation:
        return None
    if step == 0 or (stop - start) * step < 0:
        raise BatchError(f"{where}: the range {text!r} never reaches its end (step {step})")
    n = int((stop - start) / step) + 1
    if n > MAX_JOBS:
        raise BatchError(f"{where}: the range {text!r} has {n} values, more than {MAX_JOBS}")
    return [str(start + i * step) for i in range(n)]


def sweep_values(inp: Any, raw: str, where: str) -> list[Any]:
    """The values of one sweep: ``a,b,c`` and/or ranges ``a:b:step`` (numeric params)."""
    values: list[Any] = []
    numeric = inp.type in (ValueType.INT, ValueType.FLOAT)
    pieces = [raw] if inp.type is ValueType.STRING else raw.split(",")
    for piece in pieces:
        expanded = numeric_range(piece, where) if numeric else None
        for text in expanded if expanded is not None else [piece]:
            value = convert(inp, text, where)
            if inp.type is ValueType.INT and isinstance(value, float):
                value = int(value)
            values.append(value)
    if not values or (values == [""] and inp.type is not ValueType.STRING):
        raise BatchError(f"{where}: no values")
    return values


def parse_seeds(text: str) -> list[int]:
    """``1-100``, ``5``, ``1,2,7`` or ``1-10,20-30``: the seeds in order, no repeats."""
    seeds: dict[int, None] = {}
    for piece in text.split(","):
        piece = piece.strip()
        lo, dash, hi = piece.partition("-")
        try:
            a = int(lo)
            b = int(hi) if dash else a
        except ValueError:
            raise BatchError(f"--seeds {text!r}: expected seeds like 1-100 or 1,5,9") from None
        if b < a or a < 0 or b >= SEED_LIMIT:
            raise BatchError(f"--seeds {text!r}: {piece!r} is not a range of seeds 0..2^32-1")
        if b - a >= MAX_JOBS:
            raise BatchError(f"--seeds {text!r}: more than {MAX_JOBS} seeds")
        seeds.update(dict.fromkeys(range(a, b + 1)))
    return list(seeds)


def new_seeds(count: int, keep: Sequence[int] = ()) -> list[int]:
    """``count`` seeds: those of ``keep`` first (a resumed batch keeps its seeds), then new."""
    if count < 1 or count > MAX_JOBS:
        raise BatchError(f"--count {count}: expected 1..{MAX_JOBS}")
    seeds = list(dict.fromkeys(int(s) for s in keep))[:count]
    taken = set(seeds)
    while len(seeds) < count:
        s = secrets.randbelow(SEED_LIMIT)
        if s not in taken:
            taken.add(s)
            seeds.append(s)
    return seeds


def read_prompts(path: str | Path) -> list[dict[str, str]] | list[str]:
    """A prompt file: a CSV whose header names ``NODE.PARAM`` columns (rows of dicts), or
    text, one prompt a line (blank lines and lines starting with ``#`` skipped)."""
    p = Path(path)
    from studio.fsutil import regular_file

    try:
        regular_file(p, what="prompt file", max_bytes=64 * 2**20)
        text = p.read_text("utf-8-sig")
    except StudioError as exc:
        raise BatchError(str(exc)) from None
    except UnicodeDecodeError:
        raise BatchError(f"prompt file {p} is not UTF-8 text") from None
    except OSError as exc:
        raise BatchError(f"cannot read prompt file {p}: {exc.strerror or exc}") from None
    if p.suffix.lower() == ".csv":
        reader = csv.reader(io.StringIO(text))
        rows = [r for r in reader if any(c.strip() for c in r)]
        if not rows:
            raise BatchError(f"prompt file {p} is empty")
        header = [h.strip() for h in rows[0]]
        for i, h in enumerate(header):
            if "." not in h:
                raise BatchError(
                    f"prompt file {p}: column {i + 1} is named {h!r}; the header must name "
                    "each column NODE.PARAM (for example Prompt.text)"
                )
        out = []
        for line, row in enumerate(rows[1:], start=2):
            if len(row) != len(header):
                raise BatchError(
                    f"prompt file {p}, row {line}: {len(row)} values for {len(header)} columns"
                )
            out.append(dict(zip(header, row, strict=True)))
        if not out:
            raise BatchError(f"prompt file {p} has a header but no rows")
        return out
    lines = [ln.strip() for ln in text.splitlines()]
    prompts = [ln for ln in lines if ln and not ln.startswith("#")]
    if not prompts:
        raise BatchError(f"prompt file {p} has no prompts")
    return prompts


def prompt_target(wf: Any) -> str:
    """``NODE.text`` of the positive prompt: the text node feeding a sampler's ``positive``,
    else the only node with a ``text`` param."""
    by_target = {(lk.target, lk.input): lk.source for lk in wf.links}
    for n in wf.nodes:
        if (n.id, "positive") in by_target:
            src = wf.get_node(by_target[(n.id, "positive")])
            if "text" in src.params:
                return f"{src.id}.text"
    texts = [n for n in wf.nodes if "text" in n.params]
    if len(texts) == 1:
        return f"{texts[0].id}.text"
    raise BatchError(
        "cannot tell which node takes the prompts; use a CSV prompt file whose header "
        "names the column, for example Prompt.text"
    )


# -- expanding -----------------------------------------------------------------------------


def _canonical(data: dict[str, Any]) -> bytes:
    """The part of a workflow that decides its images (no layout, no titles), as bytes."""
    nodes = sorted(
        (
            {
                "id": n["id"],
                "type": n["type"],
                "version": n["version"],
                "params": n["params"],
                "mute": n["mute"],
                "bypass": n["bypass"],
            }
            for n in data["nodes"]
        ),
        key=lambda n: n["id"],
    )
    links = sorted((lk["source"], lk["output"], lk["target"], lk["input"]) for lk in data["links"])
    return json.dumps({"nodes": nodes, "links": links}, sort_keys=True).encode()


def job_id(workflow_dict: dict[str, Any]) -> str:
    """The id of the job that runs ``workflow_dict``: the same workflow, the same id."""
    return hashlib.sha256(_canonical(workflow_dict)).hexdigest()[:16]


def workflow_hash(workflow_dict: dict[str, Any]) -> str:
    return hashlib.sha256(_canonical(workflow_dict)).hexdigest()


def _topological(wf: Any) -> dict[str, int]:
    order: dict[str, int] = {}
    preds: dict[str, set[str]] = {n.id: set() for n in wf.nodes}
    for lk in wf.links:
        if lk.target in preds and lk.source in preds:
            preds[lk.target].add(lk.source)
    ready = sorted(nid for nid, p in preds.items() if not p)
    while ready:
        nid = ready.pop(0)
        order[nid] = len(order)
        for other, p in preds.items():
            if nid in p:
                p.discard(nid)
                if not p and other not in order and other not in ready:
                    ready.append(other)
    for nid in preds:  # a cycle: the engine reports it; keep every node somewhere
        order.setdefault(nid, len(order))
    return order


def expand(
    wf: Any,
    *,
    sets: Iterable[str] = (),
    sweeps: Mapping[str, Any] | Iterable[str] = (),
    prompts: Sequence[str] | Sequence[Mapping[str, Any]] | None = None,
    seeds: Sequence[int] | None = None,
) -> Expansion:
    """The jobs of a batch, ordered so that jobs sharing upstream params sit together.

    ``sets``: ``NODE.PARAM=VALUE`` applied to every job. ``sweeps``: ``NODE.PARAM=a,b``
    texts (ranges ``a:b:step``) or a mapping ``{"NODE.PARAM": [values] or "a:b:step"}``;
    the batch is their product. ``prompts``: texts for the positive prompt, or rows of
    ``{"NODE.PARAM": value}``. ``seeds``: one job per seed, set on every seed param.
    """
    base = wf.copy()
    for text in sets:
        ref, raw = split_assignment(text, "--set")
        node_id, param, inp = _resolve(base, ref, "--set")
        try:
            base.set_param(node_id, param, convert(inp, raw, f"--set {text!r}"))
        except WorkflowEditError as exc:
            raise BatchError(str(exc)) from None

    axes: list[list[list[Assignment]]] = []
    items = sweeps.items() if isinstance(sweeps, Mapping) else _split_sweeps(sweeps)
    for ref, raw in items:
        where = f"--sweep {ref}"
        node_id, param, inp = _resolve(base, ref, "--sweep")
        if isinstance(raw, str):
            values = sweep_values(inp, raw, where)
        elif isinstance(raw, _Pieces):
            values = [v for piece in raw for v in sweep_values(inp, piece, where)]
        elif isinstance(raw, Iterable):
            values = [convert(inp, v, where) for v in raw]
        else:
            values = [convert(inp, raw, where)]
        if not values:
            raise BatchError(f"{where}: no values")
        axes.append([[Assignment(ref, node_id, param, v)] for v in values])

    if prompts is not None:
        rows: list[list[Assignment]] = []
        target = None
        for i, row in enumerate(prompts):
            if isinstance(row, str):
                target = target or prompt_target(base)
                row = {target: row}
            assigned = []
            for ref, raw in row.items():
                node_id, param, inp = _resolve(base, ref, "prompt column")
                value = convert(inp, raw, f"prompt row {i + 1}, {ref}")
                shown = ref if not ref.startswith(f"{node_id}.") else _label(base, node_id, param)
                assigned.append(Assignment(shown, node_id, param, value))
            rows.append(assigned)
        if not rows:
            raise BatchError("the prompt list is empty")
        axes.append(rows)

    seed_axis: list[int | None] = [None]
    seed_targets: list[tuple[str, str]] = []
    if seeds is not None:
        from studio.graph.seeds import seed_params

        seed_targets = seed_params(base)
        if not seed_targets:
            raise BatchError("the workflow has no seed param to set (no Sampler?)")
        seed_axis = list(seeds)
        if not seed_axis:
            raise BatchError("no seeds")

    total = len(seed_axis)
    for axis in axes:
        total *= len(axis)
    if total > MAX_JOBS:
        raise BatchError(f"the batch has {total} jobs, more than {MAX_JOBS}")

    from studio.graph.fileformat import workflow_to_dict

    base_dict = workflow_to_dict(base)
    index = {n["id"]: n for n in base_dict["nodes"]}
    jobs: dict[str, Job] = {}
    for combo in itertools.product(*axes, seed_axis):
        *parts, seed = combo
        assigned = [a for part in parts for a in part]
        if seed is not None:
            assigned += [
                Assignment(_label(base, nid, p), nid, p, int(seed)) for nid, p in seed_targets
            ]
        saved = {}
        for a in assigned:
            node = index[a.node_id]
            saved.setdefault((a.node_id, a.param), node["params"].get(a.param, _ABSENT))
            _check(base, a)
            node["params"][a.param] = a.value
        jid = job_id(base_dict)
        for (nid, p), old in saved.items():
            if old is _ABSENT:
                index[nid]["params"].pop(p, None)
            else:
                index[nid]["params"][p] = old
        if jid not in jobs:  # the same workflow twice (a repeated value) is one job
            jobs[jid] = Job(jid, assigned, int(seed) if seed is not None else None)
    order = _topological(base)
    return Expansion(base, sorted(jobs.values(), key=lambda j: _locality_key(j, order)))


_ABSENT = object()


def _label(wf: Any, node_id: str, param: str) -> str:
    title = wf.display_title(node_id)
    try:
        unique = wf.find_node(title).id == node_id
    except WorkflowEditError:
        unique = False
    return f"{title if unique else node_id}.{param}"


def _check(wf: Any, a: Assignment) -> None:
    """The workflow's own param check (range, choices, type), naming the sweep."""
    node = wf.get_node(a.node_id)
    old = node.params.get(a.param, _ABSENT)
    try:
        wf.set_param(a.node_id, a.param, a.value)
    except WorkflowEditError as exc:
        raise BatchError(f"{a.ref}={a.value!r}: {exc}") from None
    finally:
        if old is _ABSENT:
            node.params.pop(a.param, None)
        else:
            node.params[a.param] = old


def _split_sweeps(texts: Iterable[str]) -> list[tuple[str, Any]]:
    # The same NODE.PARAM given again adds values: the way to sweep texts, which are not
    # split at commas (a prompt has commas).
    merged: dict[str, list[str]] = {}
    for t in texts:
        ref, raw = split_assignment(t)
        merged.setdefault(ref, []).append(raw)
    return [(ref, raws[0] if len(raws) == 1 else _Pieces(raws)) for ref, raws in merged.items()]


class _Pieces(list):
    """Several ``--sweep`` texts of one param, each expanded as if given alone."""


def _locality_key(job: Job, order: dict[str, int]) -> tuple[str, ...]:
    # Upstream params first: jobs equal up to the sampler's cfg or seed become neighbours,
    # so a worker that runs them in a row reuses the loaded model and encoded prompts.
    ranked = sorted(job.assignments, key=lambda a: (order.get(a.node_id, 0), a.node_id, a.param))
    return tuple(json.dumps(a.value, sort_keys=True) for a in ranked)
