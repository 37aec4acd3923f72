"""``studio verify`` and the previews ``studio run`` writes (kept out of studio/cli.py,
which many hands edit)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from studio.provenance.reading import EXIT_NONE, EXIT_NOT_IMAGE, EXIT_VALID, verify


def cmd_verify(images: list[str], *, as_json: bool = False, trust: str | None = None) -> int:
    """Print each image's provenance; exit 0 when all are validly signed, 2 when one is not
    an image, else 1."""
    anchors = None
    if trust:
        try:
            anchors = Path(trust).expanduser().read_bytes()
        except OSError as exc:
            print(f"studio: cannot read --trust {trust}: {exc.strerror or exc}", file=sys.stderr)
            return EXIT_NOT_IMAGE
        if b"-----BEGIN CERTIFICATE-----" not in anchors:
            print(f"studio: --trust {trust} holds no PEM certificate", file=sys.stderr)
            return EXIT_NOT_IMAGE
    reports = [verify(p, trust=anchors) for p in images]
    if as_json:
        print(json.dumps([r.to_json() for r in reports], indent=2))
    else:
        for r in reports:
            print("\n".join(r.lines()))
    codes = {r.exit_code for r in reports}
    if EXIT_NOT_IMAGE in codes:
        return EXIT_NOT_IMAGE
    return EXIT_NONE if EXIT_NONE in codes else EXIT_VALID


def preview_bytes(image: Any, result: Any, workflow: Any, settings: Any, files: Any) -> bytes:
    """A previewed image of ``result`` as a PNG, as Save Image would write it."""
    from studio.provenance.outputs import output_bytes
    from studio.settings import Settings

    node_id, index = "", 0
    for nid, shown in getattr(result, "node_images", {}).items():
        for i, im in enumerate(shown):
            if im is image:
                node_id, index = nid, i
    if not node_id:
        workflow = None  # not known which node made it: nothing to say about it but its pixels
    return output_bytes(
        image,
        workflow,
        node_id,
        index,
        settings=settings or Settings.load(),
        files=files,
        title="preview.png",
    )
