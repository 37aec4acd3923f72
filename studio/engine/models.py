"""The model manager: each model file is loaded once per (file identity, dtype,
device) and shared across nodes and workflows, within a RAM and a VRAM budget.

Models are not intermediates: they live here, not in the output cache. Node
values that carry a model (MODEL, CLIP, VAE handles) keep only a key and ask the
manager for the weights when they compute.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from studio.engine.memory import default_ram_budget, default_vram_budget, describe_bytes


def _modules_in(obj: Any) -> Iterator[Any]:
    """The torch modules inside ``obj``: itself, or found through containers and attributes.

    Only modules, containers and plain objects are walked into; scalars and strings are
    skipped without a look, so a tokenizer's 49k-entry vocabulary costs next to nothing.
    Iterative, and each module is yielded once (its own submodules are not walked).
    """
    stack, seen = [obj], set()
    while stack:
        v = stack.pop()
        if id(v) in seen:
            continue
        seen.add(id(v))
        if hasattr(v, "parameters") and hasattr(v, "buffers"):
            yield v
            continue
        if isinstance(v, dict):
            children = v.values()
        elif isinstance(v, list | tuple):
            children = v
        elif hasattr(v, "__dict__") and not isinstance(v, type):
            children = vars(v).values()
        else:
            continue
        stack.extend(c for c in children if not isinstance(c, _LEAVES))


_LEAVES = (str, bytes, int, float, bool, type(None))


def module_nbytes(obj: Any) -> int:
    """Bytes of parameters and buffers of torch modules found in ``obj`` (or its parts)."""
    total = 0
    for module in _modules_in(obj):
        for t in list(module.parameters()) + list(module.buffers()):
            total += t.element_size() * t.nelement()
    return total


def _describe_key(key: Hashable) -> str:
    if isinstance(key, tuple):
        return " ".join(str(part) for part in key if isinstance(part, str) and part)[:80]
    return str(key)[:80]


def _device_of(obj: Any) -> str:
    for module in _modules_in(obj):
        for p in module.parameters():
            return str(p.device.type)
    return "cpu"


def _move(obj: Any, device: str) -> None:
    for module in _modules_in(obj):
        if hasattr(module, "to"):
            module.to(device)


@dataclass
class _Entry:
    value: Any
    nbytes: int
    device: str
    pins: int = 0
    meta: dict[str, Any] = field(default_factory=dict)
    label: str = ""


class ModelManager:
    """Loads models once and keeps them within budgets.

    ``get(key, loader)`` returns the cached model for ``key`` or calls ``loader()``
    once. ``key`` should hold the file identity, dtype and device (see
    :meth:`FileFingerprinter.identity`). ``use(key, device)`` marks a model as
    most recently used and moves it to the compute device, offloading the least
    recently used models on that device to the CPU when the VRAM budget is
    exceeded; models beyond the RAM budget are dropped, least recently used first.

    A budget of 0 is sized from the machine (:mod:`studio.engine.memory`): RAM from the
    physical memory, VRAM from what the GPU has free when a model first goes there.
    Inside :meth:`run_scope` no model the run has used is dropped; when they do not fit
    together they stay over the budget for that run, and ``notice`` says so once.
    """

    def __init__(self, ram_budget: int = 0, vram_budget: int = 0):
        self.ram_budget = int(ram_budget) or default_ram_budget()
        self.vram_budget = int(vram_budget)
        self._vram_auto = not self.vram_budget
        self._entries: OrderedDict[Hashable, _Entry] = OrderedDict()
        self._lock = threading.RLock()
        self._key_locks: dict[Hashable, threading.Lock] = {}
        self.loads = 0  # how many times a loader actually ran
        self.loaded_keys: list[Hashable] = []
        self._run_keys: set[Hashable] | None = None
        self._notice: Callable[[str], None] | None = None
        self._told: set[tuple[str, Hashable]] = set()
        self._over = False
        self._node_keys: set[Hashable] | None = None

    @contextmanager
    def run_scope(self, notice: Callable[[str], None] | None = None) -> Iterator[None]:
        """One run: what it uses stays loaded until it ends; ``notice(message)`` hears
        about a model that does not fit its budget (once per model and budget)."""
        with self._lock:
            self._run_keys, self._notice, self._over = set(), notice, False
        try:
            yield
        finally:
            with self._lock:
                if self._over:
                    self._tell_over_budget()
                self._run_keys, self._notice, self._over = None, None, False
                self._enforce_ram(keep=None)  # back within the budget between runs

    def _tell_over_budget(self) -> None:
        used = [e for k, e in self._entries.items() if k in (self._run_keys or ())]
        if not used:
            return
        used.sort(key=lambda e: -e.nbytes)
        total = sum(e.nbytes for e in used)
        largest = used[0]
        others = f" and {len(used) - 1} more" if len(used) > 1 else ""
        self._tell(
            frozenset(self._run_keys or ()),
            "ram",
            f"The models this run uses ({describe_bytes(total)}: {largest.label} "
            f"{describe_bytes(largest.nbytes)}{others}) do not fit the RAM budget "
            f"({describe_bytes(self.ram_budget)}): they stay loaded for the run and load "
            "again in the next one. Raise the RAM budget in Settings to keep them loaded.",
        )

    @contextmanager
    def node_scope(self) -> Iterator[None]:
        """One node's execution: the models it puts on a device stay there until it ends.

        A node that uses two models (a UNet and a ControlNet) must not see the first moved
        off the GPU to make room for the second while it still computes with both; found
        on an H200 with a VRAM budget smaller than the UNet."""
        with self._lock:
            outer, self._node_keys = self._node_keys, set()
        try:
            yield
        finally:
            with self._lock:
                self._node_keys = outer

    def get(
        self,
        key: Hashable,
        loader: Callable[[], Any],
        *,
        nbytes: Callable[[Any], int] = module_nbytes,
        label: str | None = None,
    ) -> Any:
        """The model for ``key``, loading it with ``loader()`` the first time. ``label``
        names it in messages (say ``model.safetensors unet``)."""
        with self._lock:
            if self._run_keys is not None:
                self._run_keys.add(key)
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                return entry.value
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:  # two threads asking for one file load it once
            with self._lock:
                entry = self._entries.get(key)
                if entry is not None:
                    return entry.value
            value = loader()
            size = nbytes(value)
            with self._lock:
                self._entries[key] = _Entry(
                    value, size, _device_of(value), label=label or _describe_key(key)
                )
                self.loads += 1
                self.loaded_keys.append(key)
                self._enforce_ram(keep=key)
            return value

    def use(self, key: Hashable, device: str | None = None) -> Any:
        """Mark ``key`` most recently used and put it on ``device`` (offloading others)."""
        with self._lock:
            entry = self._entries[key]
            if self._run_keys is not None:
                self._run_keys.add(key)
            self._entries.move_to_end(key)
            if self._node_keys is not None:
                self._node_keys.add(key)
            if device is not None and entry.device != device:
                if device != "cpu" and self._vram_auto:
                    self.vram_budget = default_vram_budget(device)
                    self._vram_auto = False
                if device != "cpu" and self.vram_budget:
                    self._make_room(device, entry.nbytes, keep=key)
                _move(entry.value, device)
                entry.device = device
            return entry.value

    def contains(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._entries

    def bytes_on(self, device: str) -> int:
        with self._lock:
            return sum(e.nbytes for e in self._entries.values() if e.device == device)

    def _make_room(self, device: str, need: int, keep: Hashable) -> None:
        used = sum(e.nbytes for k, e in self._entries.items() if e.device == device and k != keep)
        for k, e in list(self._entries.items()):
            if used + need <= self.vram_budget:
                break
            if k == keep or e.device != device or e.pins or k in (self._node_keys or ()):
                continue
            _move(e.value, "cpu")
            e.device = "cpu"
            used -= e.nbytes
        if used + need > self.vram_budget:
            self._tell(
                keep,
                "vram",
                f"{self._entries[keep].label} ({describe_bytes(need)}) does not fit the "
                f"VRAM budget ({describe_bytes(self.vram_budget)}) beside the models this "
                f"run uses ({describe_bytes(used)}); it goes to {device} anyway, which may "
                "run out of memory. Use a smaller dtype or raise the VRAM budget in Settings.",
            )

    def _enforce_ram(self, keep: Hashable | None) -> None:
        total = sum(e.nbytes for e in self._entries.values())
        protected = self._run_keys or set()
        for k in list(self._entries):
            if total <= self.ram_budget:
                break
            if k == keep or k in protected or self._entries[k].pins:
                continue
            total -= self._entries.pop(k).nbytes
        if total > self.ram_budget and self._run_keys is not None:
            self._over = True  # said once, as the run ends (see run_scope)

    def _tell(self, key: Hashable, budget: str, message: str) -> None:
        if (budget, key) in self._told or self._notice is None:
            return
        self._told.add((budget, key))
        self._notice(message)

    def evict(self, key: Hashable) -> None:
        with self._lock:
            self._entries.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
