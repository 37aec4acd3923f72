"""The output cache: node results keyed by signature, bounded by bytes, LRU."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any


@dataclass
class CacheEntry:
    outputs: dict[str, Any]
    images: list[Any] = field(default_factory=list)
    nbytes: int = 0


class OutputCache:
    """Results by signature. Setting a param back to an earlier value finds the earlier
    result here; two identical branches share one entry. Thread-safe."""

    def __init__(self, max_bytes: int = 4 * 1024**3):
        self.max_bytes = int(max_bytes)
        self._entries: OrderedDict[str, CacheEntry] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.evictions = 0

    def get(self, signature: str) -> CacheEntry | None:
        with self._lock:
            entry = self._entries.get(signature)
            if entry is not None:
                self._entries.move_to_end(signature)
            return entry

    def put(self, signature: str, entry: CacheEntry) -> bool:
        """Store an entry, evicting least recently used ones to fit; False if it cannot fit."""
        if entry.nbytes > self.max_bytes:
            return False
        with self._lock:
            old = self._entries.pop(signature, None)
            if old is not None:
                self._bytes -= old.nbytes
            while self._entries and self._bytes + entry.nbytes > self.max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self._bytes -= evicted.nbytes
                self.evictions += 1
            self._entries[signature] = entry
            self._bytes += entry.nbytes
            return True

    def __contains__(self, signature: str) -> bool:
        with self._lock:
            return signature in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def resize(self, max_bytes: int) -> None:
        with self._lock:
            self.max_bytes = int(max_bytes)
            while self._entries and self._bytes > self.max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self._bytes -= evicted.nbytes
                self.evictions += 1


def estimate_nbytes(value: Any) -> int:
    """Approximate memory held by a node result (tensors, arrays, images, containers).

    Values may define ``__studio_nbytes__()`` (model handles report only what they
    add, since the model manager owns the weights). Iterative: no recursion.
    """
    total = 0
    stack = [value]
    seen: set[int] = set()
    while stack:
        v = stack.pop()
        if id(v) in seen:
            continue
        seen.add(id(v))
        custom = getattr(type(v), "__studio_nbytes__", None)
        if custom is not None:
            total += int(custom(v))
        elif hasattr(v, "element_size") and hasattr(v, "nelement"):  # torch.Tensor
            total += int(v.element_size() * v.nelement())
        elif hasattr(v, "nbytes") and hasattr(v, "dtype"):  # numpy
            total += int(v.nbytes)
        elif hasattr(v, "getbands") and hasattr(v, "size"):  # PIL image
            w, h = v.size
            total += w * h * len(v.getbands())
        elif isinstance(v, dict):
            total += 64
            stack.extend(v.values())
        elif isinstance(v, list | tuple | set | frozenset):
            total += 56 + 8 * len(v)
            stack.extend(v)
        elif isinstance(v, str | bytes):
            total += 49 + len(v)
        else:
            total += 32
    return total
