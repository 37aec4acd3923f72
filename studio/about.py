"""What this installation is: Studio's version, the torch build and the device in use.

No Qt; torch is imported only by :func:`torch_build` (the About box calls it once the
engine libraries are loaded, ``studio --version`` never does). Studio never checks for
updates: nothing here touches the network.
"""

from __future__ import annotations

import platform
import sys


def version() -> str:
    """Studio's version (the installed distribution's, else the source tree's)."""
    try:
        from importlib.metadata import PackageNotFoundError
        from importlib.metadata import version as dist_version

        return dist_version("studio")
    except (ImportError, PackageNotFoundError):
        from studio import __version__

        return __version__


def version_line() -> str:
    """What ``studio --version`` prints."""
    return f"studio {version()}"


def torch_build() -> str:
    """The torch build: "torch 2.4.1 (CUDA 12.1)", "torch 2.4.1 (CPU only)", ..."""
    try:
        import torch
    except ImportError as exc:
        return f"torch not available ({exc})"
    cuda = getattr(torch.version, "cuda", None)
    hip = getattr(torch.version, "hip", None)
    if cuda:
        kind = f"CUDA {cuda}"
    elif hip:
        kind = f"ROCm {hip}"
    elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_built():
        kind = "Metal (MPS)"
    else:
        kind = "CPU only"
    return f"torch {torch.__version__} ({kind})"


def device_in_use(setting: str = "auto") -> str:
    """The device runs use for a device setting, with the GPU's name when there is one."""
    from studio.engine.devices import pick_device

    try:
        device = pick_device(setting)
    except Exception as exc:  # a setting this machine cannot honour
        return f"{setting}: {exc}"
    if device.startswith("cuda"):
        import torch

        return f"{device} ({torch.cuda.get_device_name(0)})"
    return device


def about_lines(setting: str = "auto") -> list[tuple[str, str]]:
    """(label, value) rows for the About box and bug reports."""
    return [
        ("Version", version()),
        ("Torch", torch_build()),
        ("Device", device_in_use(setting)),
        ("Python", f"{platform.python_version()} ({sys.platform})"),
        ("Updates", "never checked: Studio does not use the network"),
    ]
