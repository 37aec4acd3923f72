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


#: The precisions a user can choose (Settings.precision, or STUDIO_PRECISION).
PRECISIONS = ("auto", "fp32", "fp16", "bf16")


def default_dtype(device: str, precision: str = "auto") -> Any:
    """fp32 on CPU; bf16 on CUDA where supported (else fp16); fp16 on MPS.

    ``precision`` (a setting; the environment variable STUDIO_PRECISION overrides it) forces
    fp32, fp16 or bf16 on a GPU; the CPU always computes in fp32, where half precision is
    slower and unsupported by many kernels.
    """
    import torch

    choice = os.environ.get("STUDIO_PRECISION", precision or "auto").lower()
    if device != "cpu" and choice in ("fp32", "fp16", "bf16"):
        return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[choice]
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device == "mps":
        return torch.float16
    return torch.float32


#: What to try when the GPU (CUDA, MPS) runs out of memory.
GPU_OUT_OF_MEMORY = (
    "out of memory: try a smaller image or batch, tiled VAE decode, or set the device to CPU "
    "in the settings"
)
#: What to try when the computer's own memory runs out (on the CPU there is no smaller device).
CPU_OUT_OF_MEMORY = (
    "out of memory (the computer's RAM): try a smaller image or batch, tiled VAE decode, "
    "or close other programs to free memory"
)


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` means the GPU or the computer ran out of memory."""
    if is_cpu_out_of_memory(exc):
        return True
    name = type(exc).__name__
    return name == "OutOfMemoryError" or "out of memory" in str(exc).lower()


def is_cpu_out_of_memory(exc: BaseException) -> bool:
    """Python's MemoryError, or torch's CPU allocator failing (a plain RuntimeError:
    "DefaultCPUAllocator: can't allocate memory" on Linux and macOS, "DefaultCPUAllocator:
    not enough memory" on Windows)."""
    if isinstance(exc, MemoryError):
        return True
    text = str(exc)
    return "DefaultCPUAllocator" in text or "can't allocate memory" in text.lower()


def out_of_memory_message(exc: BaseException) -> str:
    """The advice for an error :func:`is_out_of_memory` accepts, fitting where it ran out."""
    return CPU_OUT_OF_MEMORY if is_cpu_out_of_memory(exc) else GPU_OUT_OF_MEMORY
