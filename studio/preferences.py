"""What the Preferences dialog shows, how each value is checked, and how a change applies.

Qt-free and data-driven: each setting the dialog edits is one :class:`Pref` row. A
feature that adds a field to :class:`~studio.settings.Settings` adds a row with
:func:`add_preference` (a few lines, in its own module), for example::

    from studio.preferences import Pref, add_preference

    add_preference(Pref("sign_images", "Sign saved images", section="Provenance",
                        help="Add a signature to every PNG Studio saves."))

A field of :class:`Settings` that has no row still appears, in the section "Other", with
an editor chosen from its type (so nothing is ever uneditable). Checks are plain
functions ``check(value) -> message or None``; :func:`problems` runs them all.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from studio.settings import Settings

#: Editors the dialog knows. "auto" chooses from the field's type.
KINDS = ("folder", "file", "folders", "choice", "bytes", "bool", "int", "float", "text", "auto")

Check = Callable[[Any], "str | None"]


@dataclass
class Pref:
    """One setting in the dialog: the :class:`Settings` field ``key`` and how to edit it."""

    key: str
    label: str
    section: str = "Other"
    kind: str = "auto"
    help: str = ""
    choices: tuple[str, ...] = ()
    check: Check | None = None
    #: For "folder": an empty value means this default (shown as the placeholder).
    placeholder: Callable[[], str] | None = None
    #: For "int" / "bytes": the range the editor allows.
    minimum: float = 0
    maximum: float | None = None


def total_ram() -> int:
    """This machine's physical memory in bytes (0 when it cannot be told)."""
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except Exception:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return 0


def total_vram() -> int:
    """The first GPU's memory in bytes, when torch is already loaded and sees one (0
    otherwise: the dialog never loads torch itself, that takes seconds)."""
    torch = sys.modules.get("torch")
    try:
        if torch is not None and torch.cuda.is_available():
            return int(torch.cuda.get_device_properties(0).total_memory)
    except Exception:
        pass
    return 0


def _gib(n: float) -> str:
    return f"{n / 1024**3:.1f} GB"


def check_existing_folder(value: str) -> str | None:
    if not value:
        return None
    p = Path(value).expanduser()
    if not p.exists():
        return f"the folder {p} does not exist"
    if not p.is_dir():
        return f"{p} is a file, not a folder"
    return None


def check_existing_file(value: str) -> str | None:
    if not value:
        return None
    p = Path(value).expanduser()
    if not p.is_file():
        return f"the file {p} does not exist" if not p.exists() else f"{p} is not a file"
    return None


def check_folders(values: list[str]) -> str | None:
    for v in values:
        problem = check_existing_folder(v)
        if problem:
            return problem
    if len({str(Path(v).expanduser()) for v in values}) != len(values):
        return "a folder is listed twice"
    return None


def check_output_folder(value: str) -> str | None:
    """An output folder may be created, but its parent must exist and it must be a folder."""
    if not value:
        return None
    p = Path(value).expanduser()
    if p.exists():
        if not p.is_dir():
            return f"{p} is a file, not a folder"
        if not os.access(p, os.W_OK):
            return f"the folder {p} cannot be written"
        return None
    if not p.parent.is_dir():
        return f"neither {p} nor its parent folder exists"
    return None


def check_device(value: str) -> str | None:
    if value not in ("auto", "cpu", "cuda", "mps") and not value.startswith("cuda:"):
        return f"unknown device {value!r}: choose auto, cpu, cuda or mps"
    torch = sys.modules.get("torch")  # only when already loaded: never wait for it here
    if torch is None:
        return None
    if value.startswith("cuda") and not torch.cuda.is_available():
        return "this machine has no CUDA GPU that torch can use"
    if value == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        return "this machine has no Apple GPU (MPS) that torch can use"
    return None


def check_ram_budget(value: int) -> str | None:
    ram = total_ram()
    if value < 0:
        return "a budget cannot be negative"
    if ram and value > ram:
        return f"larger than this machine's memory ({_gib(ram)})"
    return None


def check_vram_budget(value: int) -> str | None:
    vram = total_vram()
    if value < 0:
        return "a budget cannot be negative"
    if vram and value > vram:
        return f"larger than the GPU's memory ({_gib(vram)})"
    return None


def _default_models() -> str:
    from studio.paths import default_models_dir

    return str(default_models_dir())


def _default_output() -> str:
    from studio.paths import default_output_dir

    return str(default_output_dir())


PREFERENCES: list[Pref] = [
    Pref(
        "models_root",
        "Models folder",
        "Model folders",
        "folder",
        "Studio's own models folder, with ComfyUI's subfolders (checkpoints, loras, ...).",
        check=check_existing_folder,
        placeholder=_default_models,
    ),
    Pref(
        "extra_model_roots",
        "Other model folders",
        "Model folders",
        "folders",
        "The models folders of ComfyUI or Automatic1111 (their models/ folder): Studio "
        "lists what is in them without copying anything.",
        check=check_folders,
    ),
    Pref(
        "output_dir",
        "Output folder",
        "Output",
        "folder",
        "Where Save Image writes (created when missing).",
        check=check_output_folder,
        placeholder=_default_output,
    ),
    Pref(
        "input_dir",
        "Input folder",
        "Output",
        "folder",
        "Where pasted and dropped images are kept for Load Image.",
        check=check_output_folder,
    ),
    Pref(
        "device",
        "Device",
        "Device and memory",
        "choice",
        "auto: a CUDA GPU, else Apple's GPU, else the CPU. Applies from the next run.",
        choices=("auto", "cuda", "mps", "cpu"),
        check=check_device,
    ),
    Pref(  # shown once main's precision setting is merged
        "precision",
        "Precision",
        "Device and memory",
        "choice",
        "auto: bf16 on CUDA where supported, else fp16; fp32 on the CPU.",
        choices=("auto", "fp32", "fp16", "bf16"),
    ),
    Pref(
        "cache_bytes",
        "Result cache",
        "Device and memory",
        "bytes",
        "Memory kept for node results, so re-runs are instant.",
        check=check_ram_budget,
    ),
    Pref(
        "ram_budget_bytes",
        "Models in memory",
        "Device and memory",
        "bytes",
        "Loaded models beyond this are dropped, least recently used first.",
        check=check_ram_budget,
    ),
    Pref(
        "vram_budget_bytes",
        "Models on the GPU",
        "Device and memory",
        "bytes",
        "0: most of what the GPU has.",
        check=check_vram_budget,
    ),
    # Provenance (studio/provenance): rows for fields that branch adds to Settings; a row
    # whose field does not exist is not shown.
    Pref(
        "image_metadata",
        "Saved images carry",
        "Provenance",
        "choice",
        "everything: the workflow, the parameters and a signed manifest; manifest: the "
        "signed manifest without workflow or prompts; nothing.",
        choices=("everything", "manifest", "nothing"),
    ),
    Pref(
        "watermark",
        "Invisible watermark",
        "Provenance",
        "bool",
        "Mark saved images as made with Studio, invisibly.",
    ),
    Pref(
        "signing_cert",
        "Your certificate",
        "Provenance",
        "file",
        "A PEM certificate chain to sign with instead of Studio's local one (with its key).",
        check=check_existing_file,
    ),
    Pref(
        "signing_key",
        "Your signing key",
        "Provenance",
        "file",
        "The PEM private key of that certificate.",
        check=check_existing_file,
    ),
]


def add_preference(pref: Pref) -> None:
    """Add (or replace, by key) a row of the dialog."""
    for i, p in enumerate(PREFERENCES):
        if p.key == pref.key:
            PREFERENCES[i] = pref
            return
    PREFERENCES.append(pref)


def _kind_for(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, list):
        return "folders"
    return "text"


def rows(settings: Settings | None = None) -> list[Pref]:
    """Every row the dialog shows, in order: the declared ones whose field exists, then
    the other :class:`Settings` fields (section "Other"), each with a concrete kind."""
    s = settings if settings is not None else Settings()
    names = {f.name for f in fields(s)}
    out: list[Pref] = []
    for p in PREFERENCES:
        if p.key in names:
            kind = p.kind if p.kind != "auto" else _kind_for(getattr(s, p.key))
            out.append(Pref(**{**p.__dict__, "kind": kind}))
    declared = {p.key for p in out}
    for f in fields(s):
        if f.name not in declared:
            value = getattr(s, f.name)
            label = f.name.replace("_", " ").capitalize()
            out.append(Pref(f.name, label, "Other", _kind_for(value)))
    return out


def sections(settings: Settings | None = None) -> list[str]:
    seen: dict[str, None] = {}
    for p in rows(settings):
        seen.setdefault(p.section, None)
    return list(seen)


def problems(values: dict[str, Any], settings: Settings | None = None) -> dict[str, str]:
    """Field name -> what is wrong with its value, for every row with a check."""
    out: dict[str, str] = {}
    for p in rows(settings):
        if p.key in values and p.check is not None:
            message = p.check(values[p.key])
            if message:
                out[p.key] = message
    return out


def apply(settings: Settings, values: dict[str, Any], engine: Any = None) -> list[str]:
    """Set ``values`` on ``settings`` in place (every window, engine and model listing
    holding this object sees them at once) and on a running ``engine``'s budgets.
    Returns the names of the fields that changed."""
    changed = []
    for key, value in values.items():
        if hasattr(settings, key) and getattr(settings, key) != value:
            setattr(settings, key, value)
            changed.append(key)
    if engine is not None:
        cache = getattr(engine, "cache", None)
        if cache is not None and "cache_bytes" in changed:
            cache.max_bytes = int(settings.cache_bytes)
        models = getattr(engine, "models", None)
        if models is not None:
            models.ram_budget = int(settings.ram_budget_bytes)
            models.vram_budget = int(settings.vram_budget_bytes)
    return changed


#: Where ComfyUI and Automatic1111 (and Forge) are usually installed, relative to the home
#: folder, with their models folder; absolute ones are Windows' usual drive-root installs.
OTHER_TOOLS: list[tuple[str, str]] = [
    ("ComfyUI", "ComfyUI/models"),
    ("ComfyUI", "comfyui/models"),
    ("ComfyUI", "Documents/ComfyUI/models"),  # ComfyUI Desktop (Windows, macOS)
    ("ComfyUI", "ComfyUI_windows_portable/ComfyUI/models"),
    ("ComfyUI", "Desktop/ComfyUI_windows_portable/ComfyUI/models"),
    ("ComfyUI", "Downloads/ComfyUI_windows_portable/ComfyUI/models"),
    ("ComfyUI", "C:/ComfyUI_windows_portable/ComfyUI/models"),
    ("Automatic1111", "stable-diffusion-webui/models"),
    ("Automatic1111", "Documents/stable-diffusion-webui/models"),
    ("Automatic1111", "C:/stable-diffusion-webui/models"),
    ("Forge", "stable-diffusion-webui-forge/models"),
    ("Forge", "C:/stable-diffusion-webui-forge/models"),
]


def find_other_tools(home: Path | None = None) -> list[tuple[str, Path]]:
    """(tool, models folder) for each ComfyUI / A1111 / Forge install found in the usual
    places: a folder with a ``checkpoints`` or ``Stable-diffusion`` subfolder. Windows
    drive-root places are looked at only on Windows."""
    home = home if home is not None else Path.home()
    found: list[tuple[str, Path]] = []
    seen: set[str] = set()
    for tool, rel in OTHER_TOOLS:
        if rel.startswith("C:/"):
            if sys.platform != "win32":
                continue
            p = Path(rel)
        else:
            p = home / rel
        try:
            ok = (p / "checkpoints").is_dir() or (p / "Stable-diffusion").is_dir()
            key = str(p.resolve()).lower() if ok else ""
        except OSError:
            continue
        if ok and key not in seen:
            seen.add(key)
            found.append((tool, p))
    return found
