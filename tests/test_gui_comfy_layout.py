"""A crowded ComfyUI workflow opened in the app: the canvas's own node rectangles do not
overlap, and dragging a group carries the nodes ComfyUI had in it (pytest-qt, offscreen)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("PySide6")

from test_comfy_layout import crowded

from studio.library import installed_registry


def test_an_opened_comfyui_workflow_has_no_overlapping_nodes(make_window, tmp_path):
    path = tmp_path / "crowded.json"
    path.write_text(json.dumps(crowded()))
    w = make_window(registry=installed_registry())
    assert w.open_path(path)
    scene = w.scene
    rects = {
        nid: item.sceneBoundingRect().adjusted(6, 4, -6, 0)  # the ports stick out a little
        for nid, item in scene.nodes.items()
    }
    ids = sorted(rects)
    hits = [
        (a, b) for i, a in enumerate(ids) for b in ids[i + 1 :] if rects[a].intersects(rects[b])
    ]
    assert hits == []
    (frame,) = scene.frames.values()
    held = sorted(item.node_id for item in scene.nodes_in_frame(frame) if hasattr(item, "node_id"))
    assert held == ["10", "6", "7"]
