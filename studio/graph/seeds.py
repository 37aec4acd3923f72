"""Seed control after each run: fixed, increment, decrement, randomize.

The mode of each seed param is stored with its node (``Node.extra["seed_control"]``,
by param name), so it travels with the workflow file. A param without a mode is
``fixed``: opening someone's workflow reproduces their image.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from studio.graph.workflow import Workflow


class SeedControl(StrEnum):
    """What happens to a seed param after each run."""

    FIXED = "fixed"
    INCREMENT = "increment"
    DECREMENT = "decrement"
    RANDOMIZE = "randomize"


SEED_CONTROLS = tuple(SeedControl)
EXTRA_KEY = "seed_control"


@dataclass(frozen=True)
class SeedChange:
    node_id: str
    param: str
    old: int
    new: int


def seed_params(wf: Workflow) -> list[tuple[str, str]]:
    """(node id, param name) of every seed param in the workflow."""
    found = []
    for n in wf.nodes:
        spec = wf.registry.get(n.type)
        if spec is None:
            continue
        found.extend((n.id, i.name) for i in spec.params if i.seed)
    return found


def seed_control(wf: Workflow, node_id: str, param: str) -> SeedControl:
    modes = wf.get_node(node_id).extra.get(EXTRA_KEY)
    mode = modes.get(param) if isinstance(modes, dict) else None
    return SeedControl(mode) if mode in SEED_CONTROLS else SeedControl.FIXED


def set_seed_control(wf: Workflow, node_id: str, param: str, mode: str) -> None:
    if mode not in SEED_CONTROLS:
        raise ValueError(f"seed control must be one of {', '.join(SEED_CONTROLS)}")
    modes = wf.get_node(node_id).extra.get(EXTRA_KEY)
    modes = dict(modes) if isinstance(modes, dict) else {}
    modes[param] = SeedControl(mode)
    wf.set_node_extra(node_id, EXTRA_KEY, modes)


def advance_seeds(wf: Workflow, rng: random.Random | None = None) -> list[SeedChange]:
    """Apply every seed param's control once (after a run is queued); returns the changes."""
    changes = next_seeds(wf, rng)
    for ch in changes:
        wf.put_param(ch.node_id, ch.param, ch.new)
    return changes


def next_seeds(wf: Workflow, rng: random.Random | None = None) -> list[SeedChange]:
    """The seed changes :func:`advance_seeds` would make, without making them (so a front
    end can apply them through its own undoable edits)."""
    rng = rng or random.Random()
    changes = []
    for node_id, param in seed_params(wf):
        mode = seed_control(wf, node_id, param)
        if mode is SeedControl.FIXED:
            continue
        node = wf.get_node(node_id)
        spec = wf.registry[node.type]
        inp = spec.input(param)
        if inp is None:
            continue
        lo = int(inp.min) if inp.min is not None else 0
        hi = int(inp.max) if inp.max is not None else 2**32 - 1
        old = int(node.params.get(param, inp.default or 0))
        if mode is SeedControl.INCREMENT:
            new = old + 1 if old < hi else lo
        elif mode is SeedControl.DECREMENT:
            new = old - 1 if old > lo else hi
        else:
            new = rng.randint(lo, hi)
        changes.append(SeedChange(node_id, param, old, new))
    return changes
