"""Choosing the compute device and dtype. torch is imported only when asked."""

from __future__ import annotations

import os
from typing import Any


def pick_device(setting: str = "auto") -> str:
    """``cuda`` when present, else ``mps``, else ``cpu``; a setting other than auto forces one.

    The environment variable STUDIO_DEVICE overrides the setting.
    """
    import torch

    choice = os.environ.get("STUDIO_DEVICE", setting or "auto").lower()
    if choice != "auto":
        if choice.startswith("cuda") and not torch.cuda.is_available():
            return "cpu"
        if choice == "mps" and not (
            getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
        ):
            return "cpu"
        return choice
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def default_dtype(device: str) -> Any:
    """fp32 on CPU; bf16 on CUDA where supported (else fp16); fp16 on MPS."""
    import torch

    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device == "mps":
        return torch.float16
    return torch.float32


def is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    name = type(exc).__name__
    return name == "OutOfMemoryError" or "out of memory" in str(exc).lower()
