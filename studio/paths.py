"""Where Studio keeps the user's files, per operating system (platformdirs).

=============  ==========================================================================
settings       ``config_dir()/settings.json``
signing keys   ``config_dir()/provenance`` (the local signing key; secret)
recovery       ``data_dir()/recovery``
models         ``data_dir()/models`` (a setting may point elsewhere; ComfyUI's subfolders)
outputs        the user's Pictures folder ``/Studio`` (a setting may point elsewhere)
logs           ``log_dir()/studio.log``, rotated
caches         ``cache_dir()`` (what can be computed again: the libraries' import scans)
=============  ==========================================================================

The environment variables ``STUDIO_CONFIG_DIR``, ``STUDIO_DATA_DIR`` and ``STUDIO_LOG_DIR``
override the folders (the tests point them at a temporary folder). With
``STUDIO_DATA_DIR`` set, outputs and logs go under it too, so nothing lands in the
user's own folders. No Qt, no torch.
"""

from __future__ import annotations

import os
from pathlib import Path

from platformdirs import user_cache_dir, user_log_dir, user_pictures_dir

from studio.settings import APP_NAME, MODEL_FOLDERS, config_dir, data_dir

#: What goes in each models subfolder (the README written into a new models folder).
MODEL_FOLDER_NOTES: dict[str, str] = {
    "checkpoints": "Stable Diffusion checkpoints: .safetensors / .ckpt files (SD 1.x, 2.x, "
    "SDXL) or diffusers model folders. A1111 calls this folder Stable-diffusion.",
    "loras": "LoRA files (.safetensors), kohya / A1111 or diffusers layout. A1111: Lora.",
    "controlnet": "ControlNet models (.safetensors files or diffusers folders).",
    "vae": "VAE files to use instead of a checkpoint's own (.safetensors). A1111: VAE.",
    "upscale_models": "Upscalers: ESRGAN, Real-ESRGAN, SwinIR, ... (.pth, .safetensors). "
    "A1111: ESRGAN.",
    "controlnet_annotators": "Weights of the ControlNet preprocessors (depth, openpose, HED, "
    "normal), as the controlnet_aux / ComfyUI annotator folders lay them out.",
    "embeddings": "Textual-inversion embeddings (.safetensors, .pt), used as "
    "embedding:NAME in a prompt.",
    "clip_vision": "Image encoders for reference images: SigLIP (sigclip_vision_patch14_384"
    ".safetensors, for FLUX.1 Redux) and CLIP-ViT (CLIP-ViT-H-14-laion2B-s32B-b79K"
    ".safetensors, CLIP-ViT-bigG-14-laion2B-39B-b160k.safetensors, for IP-Adapter).",
    "style_models": "Style models that turn an encoded reference image into prompt tokens: "
    "FLUX.1 Redux (flux1-redux-dev.safetensors).",
    "ipadapter": "IP-Adapters for SD 1.x / SDXL (ip-adapter_sd15.safetensors, "
    "ip-adapter-plus_sd15.safetensors, ip-adapter_sdxl_vit-h.safetensors, ...).",
}


def log_dir() -> Path:
    """The folder of the rotating log file."""
    if os.environ.get("STUDIO_LOG_DIR"):
        return Path(os.environ["STUDIO_LOG_DIR"])
    if os.environ.get("STUDIO_DATA_DIR"):
        return data_dir() / "logs"
    return Path(user_log_dir(APP_NAME, appauthor=False))


def cache_dir() -> Path:
    """What Studio can compute again (deleting it only costs time)."""
    if os.environ.get("STUDIO_DATA_DIR"):
        return data_dir() / "cache"
    return Path(user_cache_dir(APP_NAME, appauthor=False))


def log_file() -> Path:
    return log_dir() / "studio.log"


def keys_dir() -> Path:
    """Where secret keys live (the provenance signing key and its certificates): in the
    config folder, never in a workflow or beside the images."""
    return config_dir() / "provenance"


def recovery_dir() -> Path:
    return data_dir() / "recovery"


def default_output_dir() -> Path:
    """Outputs by default: ``Pictures/Studio`` (``data_dir()/output`` when
    ``STUDIO_DATA_DIR`` is set, or when the system has no Pictures folder)."""
    if os.environ.get("STUDIO_DATA_DIR"):
        return data_dir() / "output"
    try:
        pictures = Path(user_pictures_dir())
    except Exception:  # no home or no such folder on this system
        return data_dir() / "output"
    return pictures / APP_NAME


def default_models_dir() -> Path:
    return data_dir() / "models"


def locations(settings=None) -> list[tuple[str, Path]]:
    """(what, where) for every place Studio writes, for Help and bug reports."""
    from studio.settings import Settings

    s = settings if settings is not None else Settings.load()
    return [
        ("Settings", config_dir() / "settings.json"),
        ("Models", s.models_root_path),
        ("Outputs", s.output_path),
        ("Recovery files", recovery_dir()),
        ("Logs", log_file()),
        ("Signing keys", keys_dir()),
    ]


README_NAME = "README.txt"


def prepare_models_folder(root: Path) -> bool:
    """Create ``root`` with ComfyUI's subfolder names and a README saying what goes where.

    Only a folder that does not exist yet (or is empty) is filled: a user's own models
    folder is never touched. Returns True when it was prepared. Errors are left to the
    caller (a read-only place: the app reports it and goes on).
    """
    if root.exists() and any(root.iterdir()):
        return False
    root.mkdir(parents=True, exist_ok=True)
    for name in MODEL_FOLDERS:
        (root / name).mkdir(exist_ok=True)
    lines = [
        "Studio's models folder",
        "======================",
        "",
        "Put model files in the subfolder of their kind (the same names ComfyUI uses;",
        "Automatic1111's names such as Stable-diffusion, Lora and ESRGAN work too). Studio",
        "lists them in the loader nodes; subfolders inside these are fine.",
        "",
    ]
    for name in MODEL_FOLDERS:
        lines.append(f"{name}/")
        lines.append(f"    {MODEL_FOLDER_NOTES.get(name, 'Models of this kind.')}")
    lines += [
        "",
        "Already have ComfyUI or Automatic1111? Instead of copying gigabytes, add its",
        "models folder in Edit > Preferences > Model folders.",
        "",
        "Studio never downloads anything: models arrive only when you put them here.",
        "",
    ]
    (root / README_NAME).write_text("\n".join(lines), "utf-8")
    return True
