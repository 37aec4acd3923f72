"""Finding model files under the models roots (ComfyUI's folder names).

A model is named by its path relative to a root (``sd15/dreamshaper.safetensors``)
or, for a diffusers folder, by the folder's relative path. The embedded models in
``resources/models`` are listed as checkpoints too. No Qt, no torch.
"""

from __future__ import annotations

from pathlib import Path

from studio.errors import NodeError
from studio.settings import active_settings

RESOURCES = Path(__file__).resolve().parent.parent / "resources"
EMBEDDED_MODELS = RESOURCES / "models"

WEIGHT_SUFFIXES = (".safetensors", ".sft", ".ckpt", ".pt", ".pth", ".bin")
#: Extra subfolder names other tools use for the same kind (A1111's names).
ALIASES: dict[str, tuple[str, ...]] = {
    "checkpoints": ("Stable-diffusion",),
    "loras": ("Lora", "LyCORIS"),
    "vae": ("VAE",),
    "upscale_models": ("ESRGAN", "RealESRGAN", "SwinIR"),
    "controlnet": ("ControlNet",),
}


def _is_diffusers_dir(p: Path) -> bool:
    return (p / "model_index.json").is_file() or (p / "config.json").is_file()


def kind_folders(kind: str) -> list[Path]:
    """Every folder where models of ``kind`` are looked for, in order."""
    folders: list[Path] = []
    for root in active_settings().model_roots():
        for name in (kind, *ALIASES.get(kind, ())):
            folders.append(root / name)
    if kind in ("checkpoints", "controlnet", "loras", "upscale_models"):
        folders.append(EMBEDDED_MODELS / kind)
    return folders


def list_models(kind: str) -> list[str]:
    """Names of the model files and diffusers folders of ``kind``, sorted, no duplicates."""
    seen: dict[str, None] = {}
    for folder in kind_folders(kind):
        if not folder.is_dir():
            continue
        stack = [folder]
        while stack:
            cur = stack.pop()
            try:
                entries = sorted(cur.iterdir())
            except OSError:
                continue
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir():
                    if _is_diffusers_dir(entry):
                        seen.setdefault(entry.relative_to(folder).as_posix(), None)
                    else:
                        stack.append(entry)
                elif entry.suffix.lower() in WEIGHT_SUFFIXES:
                    seen.setdefault(entry.relative_to(folder).as_posix(), None)
    return sorted(seen, key=str.lower)


def resolve_model(kind: str, name: str) -> Path:
    """The path of model ``name`` of ``kind``; an absolute path is taken as it is.

    Raises NodeError naming the file and the folders searched when it is not found.
    """
    if not name:
        raise NodeError(f"no {kind} file chosen")
    p = Path(name).expanduser()
    if p.is_absolute():
        if p.exists():
            return p
        raise NodeError(f"model file not found: {p}")
    for folder in kind_folders(kind):
        cand = folder / name
        if cand.exists():
            return cand
    searched = ", ".join(str(f) for f in kind_folders(kind))
    raise NodeError(f"{kind} file {name!r} not found; looked in: {searched}")
