"""Import only the parts of diffusers a run uses.

Several diffusers package ``__init__`` files import every class of their family: touching
``diffusers.models.unets.unet_2d_condition`` first runs ``diffusers/models/unets/__init__.py``,
which imports every UNet, whose blocks import ``diffusers.models.transformers``, whose
``__init__`` imports about eighty transformer models, and ``diffusers.hooks`` pulls peft.
On a small CPU that was seconds before the first step of a run (``torch._dynamo``, which
diffusers and transformers import through decorators, remains: about one ``import torch``).

:func:`install` puts a lazy stand-in for those packages into ``sys.modules``: importing one
of their modules imports that module alone; asking the package for anything else runs its
real ``__init__`` first, so code that wants the whole family (a pipeline, a node pack)
still gets it. Nothing here imports torch or diffusers.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
import threading
import types
from pathlib import Path
from typing import Any

#: Packages whose ``__init__`` imports a whole family of models or helpers.
LAZY_PACKAGES = (
    "diffusers.models.unets",
    "diffusers.models.transformers",
    "diffusers.models.autoencoders",
    "diffusers.models.controlnets",
    "diffusers.hooks",
)

_lock = threading.RLock()
_installed = False


class _LazyPackage(types.ModuleType):
    """A package whose ``__init__`` runs only when something asks it for a name."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name not in ("__all__", "__version__"):
            raise AttributeError(name)
        folder = Path(self.__path__[0])
        if (folder / f"{name}.py").is_file() or (folder / name / "__init__.py").is_file():
            return importlib.import_module(f"{self.__name__}.{name}")
        with _lock:
            state = self.__dict__
            if not state.get("_studio_complete"):
                state["_studio_complete"] = True
                self.__spec__.loader.exec_module(self)  # type: ignore[union-attr]
        try:
            return state[name]
        except KeyError:
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}") from None


def _package_root(top: str) -> Path | None:
    spec = importlib.util.find_spec(top)  # finds, does not import
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def install() -> None:
    """Put the lazy stand-ins in place; cheap, idempotent, and a no-op once diffusers'
    packages are imported the ordinary way."""
    global _installed
    with _lock:
        if _installed:
            return
        _installed = True
        for name in LAZY_PACKAGES:
            top = name.split(".")[0]
            root = _package_root(top)
            if root is None or name in sys.modules:
                continue
            init = root.joinpath(*name.split(".")[1:], "__init__.py")
            if not init.is_file():
                continue
            spec = importlib.util.spec_from_file_location(
                name, init, submodule_search_locations=[str(init.parent)]
            )
            if spec is None or spec.loader is None:
                continue
            module = _LazyPackage(name)
            module.__spec__ = spec
            module.__file__ = str(init)
            module.__path__ = [str(init.parent)]
            module.__package__ = name
            module.__loader__ = spec.loader
            sys.modules[name] = module


def diffusers_class(name: str) -> Any:
    """``diffusers.<name>`` (a model or scheduler class), importing only its own module."""
    install()
    import diffusers

    return getattr(diffusers, name)
