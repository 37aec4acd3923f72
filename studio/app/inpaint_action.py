"""The "Inpaint" action: from a picture (an output in the viewer or history, or a Load
Image node) to an inpaint workflow with the mask painter open on it, so that painting
then Ctrl+Enter is the whole gesture (as in Krita's AI plugin).

When the open workflow already inpaints, its picture is replaced (one undo step);
otherwise the inpaint template is built around the picture, keeping the document's
checkpoint, prompts and seed (one undo step: Ctrl+Z puts the old workflow back).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from studio.errors import StudioError
from studio.inpainting import inpaint_source, inpaint_workflow
from studio.modelfiles import RESOURCES

if TYPE_CHECKING:
    from studio.app.window import MainWindow

TEMPLATE = RESOURCES / "workflows" / "inpaint.json"


def inpaint_image(window: MainWindow, image: str, *, node_id: str | None = None) -> str | None:
    """Make the open workflow inpaint ``image`` and open the mask painter on it.

    Returns the picture's Load Image node id (None when nothing could be set up). The
    painter's OK stores the mask; the workflow is then ready to run.
    """
    c = window.controller
    wf = c.wf
    source = inpaint_source(wf, prefer=node_id)
    name = Path(image).name
    if source is not None:
        node = wf.get_node(source)
        if str(node.params.get("image") or "") != image:
            c.set_params(source, {"image": image, "mask": ""}, f"Inpaint {name}")
    else:
        from studio.graph.fileformat import load_workflow

        try:
            template = load_workflow(TEMPLATE, window.registry)
            new, source = inpaint_workflow(template, wf, image)
        except (StudioError, OSError, ValueError) as exc:
            window.show_error("Cannot inpaint", f"the inpaint template cannot be used: {exc}")
            return None
        c.replace_workflow(new, f"Inpaint {name}")
        window.show_whole_workflow()
    window.scene.select_nodes([source])
    if window.paint_mask(source):
        window.statusBar().showMessage(
            "Mask painted: Ctrl+Enter inpaints it (Ctrl+Z undoes the set-up)", 8000
        )
    return source


def inpaint_node(window: MainWindow, node_id: str) -> str | None:
    """ "Inpaint" on a Load Image node: its picture, in this workflow's inpaint part or in
    one built around it."""
    node = window.controller.wf.get_node(node_id)
    image = str(node.params.get("image") or "")
    if not image:
        window.show_error("Cannot inpaint", "Choose an image for this node first.")
        return None
    return inpaint_image(window, image, node_id=node_id)
