"""Reading weights files without running code from them: safetensors, or pickles only
through ``torch.load(weights_only=True)``. A pickle that holds more than weights is refused
with the same message wherever it is read.

No torch at module level: the GUI imports node modules before torch loads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from studio.errors import NodeError


def code_refusal(exc: BaseException, what: str, advice: str = "") -> NodeError | None:
    """The error to raise when ``exc`` is ``torch.load(weights_only=True)`` refusing a pickle
    that holds more than weights (``what`` names the file); None for any other error."""
    text = str(exc)
    if "weights_only" not in text and "Unsupported global" not in text:
        return None
    return NodeError(
        f"{what}: refused, this pickled file holds more than weights, and Studio does not run code "
        f"from model files{advice}"
    )


def read_state_dict(path: Path) -> dict[str, Any]:
    """Weights from safetensors, or from a pickle only through torch.load(weights_only=True)."""
    suffix = path.suffix.lower()
    try:
        if suffix in (".safetensors", ".sft"):
            from safetensors.torch import load_file

            from nodes.sdload import read_safetensors_header

            read_safetensors_header(path, path.name)  # a damaged file: a clear message
            return load_file(str(path), device="cpu")
        import torch

        try:
            data = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:
            refusal = code_refusal(exc, path.name, "; convert it to .safetensors")
            if refusal is not None:
                raise refusal from None
            raise
    except NodeError:
        raise
    except Exception as exc:
        raise NodeError(
            f"{path.name}: cannot read the file ({type(exc).__name__}: {exc})"
        ) from None
    for wrapper in ("params_ema", "params", "state_dict", "model"):
        if isinstance(data, dict) and isinstance(data.get(wrapper), dict):
            data = data[wrapper]
            break
    if not isinstance(data, dict):
        raise NodeError(f"{path.name}: not a model state dict")
    return data
