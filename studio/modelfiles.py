"""Finding model files under the models roots of one :class:`~studio.settings.Settings`
(ComfyUI's folder names, and A1111's as aliases).

A model is named by its path relative to a root (``sd15/dreamshaper.safetensors``)
or, for a diffusers folder, by the folder's relative path; an absolute path is taken
as it is. The embedded models in ``resources/models`` are listed as checkpoints too.
No Qt, no torch, no process-wide state: each engine and window has its own
:class:`ModelFiles` for its own settings.
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

from studio.errors import NodeError, StudioError
from studio.fsutil import regular_file
from studio.settings import MODEL_FOLDERS, Settings


def _find_resources() -> Path:
    """The folder of Studio's shipped files (models, configs, tokenizers, workflows).

    In a source checkout it is ``<checkout>/resources`` (so a worktree uses its own
    files); an installed wheel or a bundled app carries the same folder as the package
    ``studio_resources``, found through :mod:`importlib.resources`.
    """
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "pyproject.toml").is_file() and (checkout / "resources").is_dir():
        return checkout / "resources"
    try:
        import importlib.resources

        found = Path(str(importlib.resources.files("studio_resources")))
        if found.is_dir():
            return found
    except (ImportError, TypeError, ValueError):
        pass
    frozen = getattr(sys, "_MEIPASS", None)  # a PyInstaller bundle
    if frozen and (Path(frozen) / "studio_resources").is_dir():
        return Path(frozen) / "studio_resources"
    return checkout / "resources"


RESOURCES = _find_resources()
EMBEDDED_MODELS = RESOURCES / "models"

WEIGHT_SUFFIXES = (".safetensors", ".sft", ".ckpt", ".pt", ".pth", ".bin", ".gguf")
#: Extra subfolder names other tools use for the same kind (A1111's names).
ALIASES: dict[str, tuple[str, ...]] = {
    "checkpoints": ("Stable-diffusion",),
    "loras": ("Lora", "LyCORIS"),
    "vae": ("VAE",),
    "upscale_models": ("ESRGAN", "RealESRGAN", "SwinIR"),
    "controlnet": ("ControlNet",),
    "diffusion_models": ("unet",),
    "text_encoders": ("clip",),
}
#: Kinds for which the models shipped with Studio are listed beside the user's.
EMBEDDED_KINDS = ("checkpoints", "controlnet", "loras", "upscale_models", "embeddings")
#: A model listing stops descending below this many folders (a deep tree is a mistake,
#: not a model collection), and lists at most this many entries per kind.
MAX_LIST_DEPTH = 12
MAX_LIST_ENTRIES = 20_000


def is_model_kind(kind: str | None) -> bool:
    """A file kind that lives in the models folders (not "image" or "mask")."""
    return kind in MODEL_FOLDERS


def _is_diffusers_dir(p: Path) -> bool:
    return (p / "model_index.json").is_file() or (p / "config.json").is_file()


class ModelFiles:
    """The model folders of one settings: where each kind is looked for, what is there,
    and which file a name means."""

    def __init__(self, settings: Settings):
        self.settings = settings

    def folders(self, kind: str) -> list[Path]:
        """Every folder where models of ``kind`` are looked for, in order."""
        folders: list[Path] = []
        for root in self.settings.model_roots():
            for name in (kind, *ALIASES.get(kind, ())):
                folders.append(root / name)
        if kind in EMBEDDED_KINDS:
            folders.append(EMBEDDED_MODELS / kind)
        return folders

    def list(self, kind: str) -> list[str]:
        """Names of the model files and diffusers folders of ``kind``, sorted, no duplicates.

        The walk is depth-first, skips hidden entries, enters each real folder once (a
        link back up the tree is not followed again) and is bounded in depth and size.
        """
        seen: dict[str, None] = {}
        visited: set[tuple[int, int]] = set()
        for folder in self.folders(kind):
            stack = [(folder, 0)]
            while stack and len(seen) < MAX_LIST_ENTRIES:
                cur, depth = stack.pop()
                try:
                    st = cur.stat()
                    if not stat.S_ISDIR(st.st_mode) or (st.st_dev, st.st_ino) in visited:
                        continue
                    visited.add((st.st_dev, st.st_ino))
                    entries = sorted(os.scandir(cur), key=lambda e: e.name, reverse=True)
                except OSError:
                    continue
                for entry in entries:
                    if entry.name.startswith("."):
                        continue
                    path = Path(entry.path)
                    try:
                        is_dir = entry.is_dir()
                        is_file = entry.is_file()
                    except OSError:
                        continue
                    if is_dir:
                        if _is_diffusers_dir(path):
                            seen.setdefault(path.relative_to(folder).as_posix(), None)
                        elif depth < MAX_LIST_DEPTH:
                            stack.append((path, depth + 1))
                    elif is_file and path.suffix.lower() in WEIGHT_SUFFIXES:
                        seen.setdefault(path.relative_to(folder).as_posix(), None)
        return sorted(seen, key=str.lower)

    def resolve(self, kind: str, name: str) -> Path:
        """The path of model ``name`` of ``kind``: a weights file or a diffusers folder.

        Raises :class:`NodeError` naming the file (and the folders searched when it is
        not found); a name that is a device, a pipe or a plain folder is refused before
        anything reads it.
        """
        if not name:
            raise NodeError(f"no {kind} file chosen")
        try:
            p = Path(name).expanduser()
        except RuntimeError:  # "~nobody/x": no such user
            p = Path(name)
        if p.is_absolute():
            if not _exists(p):
                raise NodeError(f"model file not found: {p}")
            return _checked(kind, p)
        for folder in self.folders(kind):
            cand = folder / name
            if _exists(cand):
                return _checked(kind, cand)
        searched = ", ".join(str(f) for f in self.folders(kind))
        raise NodeError(f"{kind} file {name!r} not found; looked in: {searched}")


def _exists(p: Path) -> bool:
    # A name from a file can be anything: too long for the system, a NUL byte, ...
    try:
        return p.exists()
    except (OSError, ValueError):
        return False


def _checked(kind: str, p: Path) -> Path:
    """``p`` if it is a weights file or a diffusers folder; a clear error otherwise."""
    if p.is_dir():
        if _is_diffusers_dir(p):
            return p
        raise NodeError(
            f"{p} is a folder but not a diffusers model folder (no model_index.json or "
            f"config.json): choose a {kind} file"
        )
    try:
        regular_file(p, what=f"{kind} file")
    except StudioError as exc:
        raise NodeError(str(exc)) from None
    return p
