"""Memory budgets sized from the machine, when the settings leave them at 0 (automatic).

RAM: three quarters of the physical memory (the rest for the system, other programs and
the run's own tensors). VRAM: what the GPU has free when a run first puts a model on it,
less a reserve for the activations of sampling (a sixth of the card, at least 1 GiB).
No torch import here: the VRAM figure is asked for only once a model goes to a GPU.
"""

from __future__ import annotations

import os
import sys
from typing import Any

GiB = 1024**3
RAM_SHARE = 0.75
MIN_RAM_BUDGET = 2 * GiB


def physical_memory() -> int | None:
    """Bytes of physical memory, or None when the system does not say."""
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        if pages > 0 and size > 0:
            return int(pages * size)
    except (AttributeError, ValueError, OSError):
        pass
    if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
        import ctypes

        class _Status(ctypes.Structure):
            _fields_ = [
                ("length", ctypes.c_ulong),
                ("load", ctypes.c_ulong),
                ("total_phys", ctypes.c_ulonglong),
                ("avail_phys", ctypes.c_ulonglong),
                ("total_page", ctypes.c_ulonglong),
                ("avail_page", ctypes.c_ulonglong),
                ("total_virtual", ctypes.c_ulonglong),
                ("avail_virtual", ctypes.c_ulonglong),
                ("avail_extended", ctypes.c_ulonglong),
            ]

        status = _Status()
        status.length = ctypes.sizeof(_Status)
        if ctypes.windll.kernel32.GlobalMemoryStatusEx(ctypes.byref(status)):  # type: ignore[attr-defined]
            return int(status.total_phys)
    return None


def default_ram_budget(physical: int | None = None) -> int:
    """The RAM budget for loaded models when the settings say 0 (automatic)."""
    total = physical if physical is not None else physical_memory()
    if not total:
        return 8 * GiB  # the system would not say: the old fixed default
    return max(MIN_RAM_BUDGET, int(total * RAM_SHARE))


def default_vram_budget(device: str, free_total: tuple[int, int] | None = None) -> int:
    """The VRAM budget for ``device`` when the settings say 0: free memory less a reserve.

    0 when the device's memory cannot be read (no budget: models just go there)."""
    if free_total is None:
        free_total = _device_memory(device)
    if free_total is None:
        return 0
    free, total = free_total
    reserve = max(GiB, total // 6)
    return max(free - reserve, free // 2)


def _device_memory(device: str) -> tuple[int, int] | None:
    try:
        import torch

        if device.startswith("cuda") and torch.cuda.is_available():
            free, total = torch.cuda.mem_get_info(torch.device(device))
            return int(free), int(total)
        if device == "mps" and torch.backends.mps.is_available():
            total = int(torch.mps.recommended_max_memory())
            return max(0, total - int(torch.mps.driver_allocated_memory())), total
    except Exception:  # a driver that cannot answer: no budget rather than no run
        return None
    return None


def describe_bytes(n: Any) -> str:
    """``13.9 GB`` (decimal, as file managers show sizes)."""
    n = float(n)
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.0f} MB"
