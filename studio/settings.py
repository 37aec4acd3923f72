"""User settings: models root, extra model folders, output folder, device, budgets.

Stored as JSON in the user's config folder (platformdirs). No Qt, no torch.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from platformdirs import user_config_dir, user_data_dir

from studio.fsutil import atomic_write_bytes

APP_NAME = "Studio"

#: Subfolders of a models root, the same names ComfyUI uses.
MODEL_FOLDERS = (
    "checkpoints",
    "loras",
    "controlnet",
    "vae",
    "upscale_models",
    "controlnet_annotators",
    "embeddings",
    "diffusion_models",
    "text_encoders",
    "clip_vision",
    "style_models",
    "ipadapter",
)

#: The settings-file format written by ``Settings.save`` (its ``settings_version`` key).
#: 1 (files without the key): every field was written, defaults included, and the RAM
#: budget's default was a fixed 8 GiB. 2: the budgets default to 0, sized from the machine.
SETTINGS_VERSION = 2
#: The RAM budget that version-1 files hold when the user never changed it.
OLD_DEFAULT_RAM_BUDGET = 8 * 1024**3


def config_dir() -> Path:
    return Path(os.environ.get("STUDIO_CONFIG_DIR") or user_config_dir(APP_NAME, appauthor=False))


def data_dir() -> Path:
    return Path(os.environ.get("STUDIO_DATA_DIR") or user_data_dir(APP_NAME, appauthor=False))


@dataclass
class Settings:
    """What a user can set. Paths are strings so the file stays plain JSON."""

    models_root: str = ""
    extra_model_roots: list[str] = field(default_factory=list)
    output_dir: str = ""
    input_dir: str = ""
    device: str = "auto"  # auto, cuda, mps, cpu
    # auto (bf16 on CUDA where supported, else fp16; fp32 on the CPU), fp32, fp16, bf16
    precision: str = "auto"
    cache_bytes: int = 4 * 1024**3
    ram_budget_bytes: int = 0  # 0: sized from the machine (studio/engine/memory.py)
    vram_budget_bytes: int = 0  # 0: sized from the GPU's free memory
    # Provenance of saved images (studio/provenance): what a shared image carries
    # ("everything": workflow, parameters and a signed C2PA manifest; "manifest": the
    # manifest without workflow or prompts; "nothing"), the invisible watermark, and the
    # artist's own certificate chain and key (PEM files) instead of the local one.
    image_metadata: str = "everything"
    watermark: bool = True
    signing_cert: str = ""
    signing_key: str = ""

    @property
    def models_root_path(self) -> Path:
        return Path(self.models_root) if self.models_root else data_dir() / "models"

    @property
    def output_path(self) -> Path:
        from studio.paths import default_output_dir  # Pictures/Studio (studio/paths.py)

        return Path(self.output_dir) if self.output_dir else default_output_dir()

    @property
    def input_path(self) -> Path:
        return Path(self.input_dir) if self.input_dir else data_dir() / "input"

    def model_roots(self) -> list[Path]:
        return [self.models_root_path, *(Path(p) for p in self.extra_model_roots)]

    @classmethod
    def load(cls, path: Path | None = None) -> Settings:
        """Read the settings file; a missing or broken file gives the defaults."""
        path = path or config_dir() / "settings.json"
        try:
            data = json.loads(path.read_text("utf-8"))
        except (OSError, ValueError):
            return cls()
        if not isinstance(data, dict):
            return cls()
        known = {f.name: f for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        defaults = cls()
        for key, value in data.items():
            if key in known and isinstance(value, type(getattr(defaults, key))):
                kwargs[key] = value
        version = data.get("settings_version")
        if not isinstance(version, int) or isinstance(version, bool):
            version = 1
        # A version-1 file wrote the 8 GiB default whether or not the user chose it, and
        # the 8 GiB a user typed cannot be told from it: in such a file 8 GiB is taken as
        # the old default and becomes 0 (sized from the machine); any other figure is the
        # user's and is kept. Only in memory: the file is rewritten when the user saves.
        if version < 2 and kwargs.get("ram_budget_bytes") == OLD_DEFAULT_RAM_BUDGET:
            kwargs["ram_budget_bytes"] = 0
        return cls(**kwargs)

    def save(self, path: Path | None = None) -> None:
        path = path or config_dir() / "settings.json"
        data = {"settings_version": SETTINGS_VERSION, **asdict(self)}
        atomic_write_bytes(path, json.dumps(data, indent=2).encode("utf-8"))
