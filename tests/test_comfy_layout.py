"""Imported ComfyUI (UI format) layouts at Studio's node sizes: nothing overlaps, the
left-to-right reading and ComfyUI's gaps are kept, groups still hold their nodes."""

from __future__ import annotations

import pytest
from comfyui_files import txt2img_ui, ui_node

from studio.graph.importers.comfyui import import_comfyui
from studio.graph.importers.tidy import MESSAGE_H, MIN_GAP, node_size, spec_height
from studio.library import installed_registry

#: ComfyUI's own sizes for its default graph's nodes.
COMFY_SIZES = {
    4: (315, 98),
    6: (422.85, 164.31),
    7: (425.28, 180.61),
    5: (315, 106),
    3: (315, 262),
    8: (210, 46),
    9: (210, 58),
}


@pytest.fixture(scope="module")
def reg():
    return installed_registry()


def crowded() -> dict:
    """ComfyUI's default graph at ComfyUI's sizes (its prompts, taller in Studio, run into
    each other), a third prompt dropped over the negative one, an area node over Empty
    Latent, and a group around the prompts."""
    data = txt2img_ui(text="a red fox in the snow", negative="blurry")
    for n in data["nodes"]:
        n["size"] = list(COMFY_SIZES[n["id"]])
    data["nodes"] += [
        ui_node(10, "CLIPTextEncode", ["a pine tree"], pos=(430, 420), size=(400, 160)),
        ui_node(11, "ConditioningSetArea", [256, 512, 0, 0, 1.0], pos=(480, 640), size=(315, 154)),
    ]
    data["groups"] = [{"title": "Prompts", "bounding": [395, 110, 470, 500], "color": "#3f789e"}]
    return data


def rects(wf) -> dict[str, tuple[float, float, float, float]]:
    return {n.id: (*wf.layout.nodes[n.id].pos, *node_size(wf, n.id)) for n in wf.nodes}


def overlap(a, b) -> bool:
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def overlapping(boxes: dict) -> list[tuple[str, str]]:
    ids = sorted(boxes)
    return [(a, b) for i, a in enumerate(ids) for b in ids[i + 1 :] if overlap(boxes[a], boxes[b])]


def inside(r, frame) -> bool:
    return (
        frame[0] <= r[0]
        and frame[1] <= r[1]
        and r[0] + r[2] <= frame[0] + frame[2]
        and r[1] + r[3] <= frame[1] + frame[3]
    )


def test_a_crowded_workflow_opens_with_nothing_overlapping(reg):
    data = crowded()
    before = {str(n["id"]): tuple(n["pos"]) for n in data["nodes"]}
    wf = import_comfyui(data, reg, source="crowded.json").workflow
    boxes = rects(wf)
    # ComfyUI's positions at Studio's sizes overlap; the tidied ones do not
    at_comfy_spots = {nid: (*before[nid], *boxes[nid][2:]) for nid in boxes}
    assert overlapping(at_comfy_spots)
    assert overlapping(boxes) == []
    # nothing moves sideways, and nodes one above another stay in that order
    assert all(boxes[nid][0] == before[nid][0] for nid in boxes)
    assert boxes["6"][1] < boxes["7"][1] < boxes["10"][1]
    assert boxes["5"][1] < boxes["11"][1]
    # the group holds its three prompts (their centres and their whole rectangles)
    (frame,) = wf.layout.frames
    for nid in ("6", "7", "10"):
        assert inside(boxes[nid], frame.rect), nid
    for nid in ("4", "5", "11", "3", "8", "9"):  # the others are out of it
        cx, cy = boxes[nid][0] + boxes[nid][2] / 2, boxes[nid][1] + boxes[nid][3] / 2
        fx, fy, fw, fh = frame.rect
        assert not (fx <= cx <= fx + fw and fy <= cy <= fy + fh), nid
    assert not any(overlap(boxes[nid], frame.rect) for nid in ("4", "5", "11"))
    # a node with nothing above it stays where ComfyUI had it
    for nid in ("3", "4", "6", "8", "9"):
        assert wf.layout.nodes[nid].pos == before[nid]


def test_gaps_are_comfyuis_gaps_at_studios_sizes(reg):
    """A tall ComfyUI node (Load Image shows the picture at 600 px) leaves no hole in Studio:
    the node below keeps ComfyUI's 40 px gap under it."""
    data = txt2img_ui()
    data["nodes"] += [
        ui_node(20, "LoadImage", ["x.png", "image"], pos=(2000, 0), size=(300, 600)),
        ui_node(21, "InvertMask", [], pos=(2000, 640), size=(300, 60)),
    ]
    wf = import_comfyui(data, reg, source="tall.json").workflow
    top = wf.layout.nodes["20"].pos[1] + node_size(wf, "20")[1]
    assert wf.layout.nodes["21"].pos[1] == top + 40
    assert top + 40 < 640  # pulled up: Studio's Load Image is shorter than 600
    close = [ui_node(22, "InvertMask", [], pos=(2400, 0), size=(300, 60))]
    close += [ui_node(23, "InvertMask", [], pos=(2400, 70), size=(300, 60))]
    data["nodes"] += close
    wf = import_comfyui(data, reg, source="tall.json").workflow
    below = wf.layout.nodes["22"].pos[1] + node_size(wf, "22")[1]
    assert wf.layout.nodes["23"].pos[1] == below + MIN_GAP  # 10 px in ComfyUI: at least 24


def test_a_pile_of_nodes_on_one_spot_is_spread_out(reg):
    data = txt2img_ui()
    for n in data["nodes"]:
        n["pos"] = [100, 100]
    wf = import_comfyui(data, reg, source="pile.json").workflow
    assert overlapping(rects(wf)) == []
    assert len({wf.layout.nodes[n.id].pos[0] for n in wf.nodes}) == 1  # one column


def test_a_reroute_point_follows_the_node_its_link_goes_into(reg):
    data = txt2img_ui()
    data["nodes"].append(
        ui_node(
            12,
            "Reroute",
            inputs=[("", "*", 8)],
            outputs=[("", "VAE", [11])],
            pos=(1000, 500),
            size=(75, 26),
        )
    )
    data["links"][7] = [8, 4, 2, 12, 0, "VAE"]
    data["links"].append([11, 12, 0, 8, 1, "VAE"])
    decode = data["nodes"][5]
    decode["pos"] = [1209, 200]
    data["nodes"].append(ui_node(13, "InvertMask", [], pos=(1209, 0), size=(300, 60)))
    wf = import_comfyui(data, reg, source="reroute.json").workflow
    dy = wf.layout.nodes["8"].pos[1] - 200
    assert dy != 0  # Invert Mask above it is taller in Studio: VAE Decode moved down
    (points,) = [wf.layout.reroutes[wf.link_into("8", "vae").id]]
    assert points == [(1000 + 75 / 2, 500 + 26 / 2 + dy)]


def test_nested_groups_hold_their_nodes(reg):
    data = txt2img_ui()
    data["nodes"][1]["size"] = [300, 60]  # the prompts: short in ComfyUI, tall in Studio
    data["nodes"][2]["size"] = [300, 60]
    data["groups"] = [
        {"title": "All", "bounding": [0, 100, 800, 700]},
        {"title": "Positive", "bounding": [405, 150, 320, 120]},
    ]
    wf = import_comfyui(data, reg, source="nested.json").workflow
    boxes = rects(wf)
    outer, inner = (f.rect for f in wf.layout.frames)
    assert inside(boxes["6"], inner) and inside(inner, outer)
    for nid in ("4", "6", "7", "5"):
        assert inside(boxes[nid], outer), nid
    assert overlapping(boxes) == []


def test_the_estimate_is_the_canvas_size():
    """tidy_layout's node heights are the canvas's (studio/app/canvas/shape.py)."""
    pytest.importorskip("PySide6")
    from studio.app.canvas.node_item import MESSAGE_H as CANVAS_MESSAGE_H
    from studio.app.canvas.shape import shape_for_spec

    assert CANVAS_MESSAGE_H == MESSAGE_H
    for spec in installed_registry():
        for collapsed in (False, True):
            assert spec_height(spec, collapsed) == shape_for_spec(spec, None, collapsed).height
