"""What the three spec files share: the entry script, data, metadata and hidden imports.

A spec file runs this with ``exec``-like import (``sys.path`` gets packaging/), then
builds its platform's EXE / COLLECT / BUNDLE from :func:`analysis_kwargs`.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from PyInstaller.utils.hooks import (
    collect_data_files,
    collect_dynamic_libs,
    collect_submodules,
    copy_metadata,
)

PACKAGING = Path(__file__).resolve().parent
ROOT = PACKAGING.parent
TRACED = ROOT / "build" / "traced-modules.txt"

#: Distributions whose metadata is read at run time (versions checked by diffusers,
#: transformers and peft; Studio's own for ``--version``).
METADATA = [
    "studio",
    "torch",
    "numpy",
    "pillow",
    "safetensors",
    "diffusers",
    "transformers",
    "tokenizers",
    "huggingface_hub",
    "peft",
    "accelerate",
    "spandrel",
    "controlnet_aux",
    "tqdm",
    "regex",
    "requests",
    "packaging",
    "filelock",
    "pyyaml",
    "torchsde",
    "scipy",
    "platformdirs",
]

#: Never needed by the app; each pulls in a lot (or a GUI toolkit of its own).
EXCLUDES = [
    "tkinter",
    "matplotlib",
    "IPython",
    "jupyter",
    "notebook",
    "pytest",
    "hypothesis",
    "tensorboard",
    "tensorflow",
    "jax",
    "flax",
    "onnxruntime",
    "PyQt5",
    "PyQt6",
    "PySide2",
    "torch.utils.tensorboard",
    "triton",
]


def hidden_imports() -> list[str]:
    """Studio's own packages and every module the trace saw imported."""
    names = set(collect_submodules("studio")) | set(collect_submodules("nodes"))
    names.add("studio_resources")
    if TRACED.is_file():
        for line in TRACED.read_text().splitlines():
            top = line.split(".")[0]
            if line and top not in EXCLUDES and not line.startswith("_pytest"):
                names.add(line)
    return sorted(names)


def datas() -> list[tuple[str, str]]:
    out = collect_data_files("studio_resources", excludes=["**/__pycache__"])
    out += collect_data_files("studio") + collect_data_files("nodes")
    for dist in METADATA:
        with contextlib.suppress(Exception):  # not installed here (accelerate is optional)
            out += copy_metadata(dist)
    return out


def binaries() -> list[tuple[str, str]]:
    """torchvision's operator libraries: loaded with ``torch.ops.load_library``, not
    imported, and named ``_C_stable.so`` in recent releases, so neither the analysis nor
    the contributed hook (which asks for ``torchvision._C``) finds them. Without them
    transformers cannot import its models (``operator torchvision::nms does not exist``).
    Their own libraries (libjpeg, ...) sit in the wheel's ``torchvision.libs``."""
    import importlib.util

    out = collect_dynamic_libs("torchvision")
    spec = importlib.util.find_spec("torchvision")
    if spec is not None and spec.origin:
        package = Path(spec.origin).parent
        have = {Path(src).name for src, _dest in out}
        out += [(str(p), "torchvision") for p in package.glob("*.so") if p.name not in have]
        libs = package.parent / "torchvision.libs"
        if libs.is_dir():
            out += [(str(p), "torchvision.libs") for p in libs.iterdir() if p.is_file()]
    return out


def analysis_kwargs() -> dict:
    return {
        "scripts": [str(PACKAGING / "studio_launcher.py")],
        "pathex": [],
        "binaries": binaries(),
        "datas": datas(),
        "hiddenimports": hidden_imports(),
        "excludes": EXCLUDES,
        "noarchive": False,
    }


ICONS = PACKAGING / "icons"
