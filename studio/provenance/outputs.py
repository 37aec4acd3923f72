"""An output of a run as a file, the way Save Image writes one: for the images that
leave Studio another way (dragged out of the viewer or the history, previews that
``studio run --out`` writes)."""

from __future__ import annotations

import contextlib
import logging
from types import SimpleNamespace
from typing import Any

from studio.provenance import encode_image, recipe_of

log = logging.getLogger("studio")


def output_bytes(
    pil: Any,
    workflow: Any,
    node_id: str,
    index: int = 0,
    *,
    settings: Any,
    files: Any = None,
    model_files: Any = None,
    run_info: dict[str, Any] | None = None,
    fmt: str = "png",
    title: str = "",
) -> bytes:
    """``pil`` as a ``fmt`` file with the workflow, the A1111 parameters, the signed
    manifest and the watermark, as the settings ask (see :func:`encode_image`).

    ``files``: a FileFingerprinter that has hashed the models already (the engine's);
    a fresh one reads each model once."""
    from nodes.image import generation_parameters
    from studio.engine.fingerprint import FileFingerprinter
    from studio.graph.fileformat import dumps_workflow
    from studio.modelfiles import ModelFiles

    texts: dict[str, str] = {}
    if workflow is not None:
        try:
            texts["studio_workflow"] = dumps_workflow(workflow)
        except Exception as exc:  # never lose an image over its metadata, but say so
            log.warning("the image is saved without its workflow: %s", exc)
        # The same text Save Image writes; its node id is where it looks for the sampler.
        ctx = SimpleNamespace(workflow=workflow, node_id=node_id, run_info=run_info or {})
        with contextlib.suppress(Exception):  # a malformed workflow: no parameters text
            texts["parameters"] = generation_parameters(ctx, pil.size, index)
    model_files = model_files or ModelFiles(settings)
    recipe = recipe_of(workflow, node_id, model_files, files or FileFingerprinter())
    return encode_image(pil, fmt, settings=settings, recipe=recipe, texts=texts, title=title)
