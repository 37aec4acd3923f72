"""Imported layouts made readable at Studio's node sizes.

A ComfyUI workflow keeps its positions, but Studio's nodes are not ComfyUI's size: a node
taller in Studio runs into the one below it, a shorter one leaves a hole, and ComfyUI
users overlap nodes themselves. :func:`tidy_layout` moves things up or down only (never
sideways, so the left-to-right reading stays), keeping the vertical gap ComfyUI had between
a node and the one above it, and groups (frames) move and grow with their nodes.

No Qt here: :func:`node_size` repeats the canvas's node geometry
(``studio/app/canvas/shape.py``); a test checks the two agree.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from studio.graph.spec import NodeSpec
from studio.graph.types import ValueType
from studio.graph.workflow import Workflow

# The canvas's geometry (studio/app/canvas/shape.py and node_item.py).
TITLE_H = 28.0
ROW_H = 22.0
PAD = 8.0
DEFAULT_WIDTH = 230.0
MULTILINE_ROWS = 4
MESSAGE_H = 46.0  # under a node: its run message
#: The smallest vertical gap left between two nodes one above the other.
MIN_GAP = 24.0
#: A frame's margin around its nodes, and the band its title takes at the top.
FRAME_PAD = 16.0
FRAME_TITLE = 36.0

Rect = tuple[float, float, float, float]  # x, y, width, height


def shows_picture(spec: NodeSpec) -> bool:
    """Whether the canvas shows a picture under the node after a run: an output, the
    sampler's live preview, a loaded image."""
    return spec.output_node or spec.category == "sampling" or spec.type_id == "load_image"


def spec_height(spec: NodeSpec, collapsed: bool = False) -> float:
    """The node's height on the canvas, as ``shape.build_shape`` lays it out."""
    if collapsed:
        return TITLE_H
    links = [i for i in spec.inputs if not i.is_param]
    rows = max(len(links), len(spec.outputs))
    y = TITLE_H + 4.0 + ROW_H * rows
    if spec.params and rows:
        y += 4.0
    for p in spec.params:
        multi = p.type is ValueType.STRING and p.multiline
        y += ROW_H * MULTILINE_ROWS if multi else ROW_H
    return y + 6.0


def node_size(wf: Workflow, node_id: str) -> tuple[float, float]:
    """The room a node takes on the canvas: its width and height, the run message under it
    and, for a node that shows one, a square picture."""
    lay = wf.layout.nodes.get(node_id)
    width = (lay.width if lay is not None else None) or DEFAULT_WIDTH
    collapsed = lay is not None and lay.collapsed
    spec = wf.spec_of(node_id)
    if spec is None:  # a placeholder shows the ports its links use
        node = wf.get_node(node_id)
        ins = {lk.input for lk in wf.links_into(node_id)}
        outs = {lk.output for lk in wf.links_from(node_id)}
        rows = max(len(ins), len(outs), len(node.extra.get("comfyui", {}).get("outputs", [])))
        height = TITLE_H if collapsed else TITLE_H + 10.0 + ROW_H * rows
        return width, height + MESSAGE_H
    height = spec_height(spec, collapsed) + MESSAGE_H
    if shows_picture(spec) and not collapsed:
        height += width - PAD
    return width, height


@dataclass
class _Item:
    """What moves as one: a node, a note, or an outermost frame with all it holds."""

    old: Rect  # where ComfyUI had it, at ComfyUI's size
    new: Rect  # at Studio's size, where it goes
    holder: int | None = None  # the smallest frame holding it
    #: For a frame: the columns its nodes and notes take (a node beside the frame's
    #: edge in ComfyUI need not go below it).
    cols: tuple[float, float] | None = None
    nodes: list[str] = field(default_factory=list)
    notes: list[int] = field(default_factory=list)
    frames: list[int] = field(default_factory=list)


def tidy_layout(wf: Workflow, comfy_heights: dict[str, float]) -> None:
    """Move nodes, notes and frames up or down so that nothing overlaps at Studio's sizes.

    ``comfy_heights``: each node's height in the ComfyUI file (gaps are measured with
    them). A node or note belongs to the smallest group holding its ComfyUI centre (ComfyUI's
    rule, and Studio's when a frame is dragged). The nodes and notes of an outermost group
    are stacked among themselves and the group (with the groups inside it) is fitted around
    them, never smaller than it was; then the outermost groups, each moving as one, are
    stacked with the nodes and notes outside any group. Reroute points move with the node
    their link goes into.
    """
    lay = wf.layout
    before = {nid: nl.pos[1] for nid, nl in lay.nodes.items()}
    frames = [f.rect for f in lay.frames]
    parent = [_holder(frames, r, skip=i) for i, r in enumerate(frames)]
    top = [_outermost(parent, i) for i in range(len(frames))]
    groups: dict[int | None, list[_Item]] = {None: []}
    groups.update({i: [] for i in range(len(frames)) if parent[i] is None})
    for n in wf.nodes:
        nl = lay.nodes.get(n.id)
        if nl is None:
            continue
        w, h = node_size(wf, n.id)
        old_h = TITLE_H if nl.collapsed else comfy_heights.get(n.id) or h
        old = (nl.pos[0], nl.pos[1], w, old_h)
        f = _holder(frames, old)
        item = _Item(old, (nl.pos[0], nl.pos[1], w, h), f, nodes=[n.id])
        groups[None if f is None else top[f]].append(item)
    for k, note in enumerate(lay.notes):
        r = (*note.pos, *note.size)
        f = _holder(frames, r)
        groups[None if f is None else top[f]].append(_Item(r, r, f, notes=[k]))
    for f, items in list(groups.items()):
        if f is None:
            continue
        _place(wf, items, frames)
        tree = [i for i in range(len(frames)) if top[i] == f]
        _fit(tree, parent, items, frames)
        cols = (
            (min(it.new[0] for it in items), max(it.new[0] + it.new[2] for it in items))
            if items
            else None
        )
        groups[None].append(
            _Item(
                lay.frames[f].rect,
                frames[f],
                nodes=[n for it in items for n in it.nodes],
                notes=[k for it in items for k in it.notes],
                frames=tree,
                cols=cols,
            )
        )
    _place(wf, groups[None], frames)
    for i, f in enumerate(lay.frames):
        f.rect = frames[i]
    for link_id, points in lay.reroutes.items():
        link = wf.get_link(link_id)
        target = link.target if link is not None else None
        if target in before and target in lay.nodes:
            dy = lay.nodes[target].pos[1] - before[target]
            lay.reroutes[link_id] = [(x, y + dy) for x, y in points]


def _place(wf: Workflow, items: list[_Item], frames: list[Rect]) -> None:
    """Top to bottom as ComfyUI had them: each item goes below every item placed before it
    that shares some of its columns, as far below as ComfyUI had it (at least MIN_GAP); an
    item with nothing above it stays where it was. What an item holds moves with it."""
    placed: dict[int, list[_Item]] = {}  # by column band: who could be above whom
    for it in sorted(items, key=lambda i: (i.old[1], i.old[0])):
        y = it.new[1]
        near = {id(p): p for band in _bands(it) for p in placed.get(band, ())}
        above = [p for p in near.values() if _share_columns(p, it)]
        if above:
            to = max(
                p.new[1] + p.new[3] + max(MIN_GAP, it.old[1] - (p.old[1] + p.old[3])) for p in above
            )
            _shift(wf, it, to - y, frames)
        for band in _bands(it):
            placed.setdefault(band, []).append(it)


_BAND = 256.0


def _bands(it: _Item) -> range:
    """The column bands an item's columns and box touch (a finite range for any input)."""
    x0, x1 = it.new[0], it.new[0] + it.new[2]
    if it.cols is not None:
        x0, x1 = min(x0, it.cols[0]), max(x1, it.cols[1])
    if not (abs(x0) < 1e12 and abs(x1) < 1e12):  # NaN or absurd: one band for all of them
        return range(0, 1)
    first, last = int(x0 // _BAND), int(x1 // _BAND)
    if last - first > 10_000:
        return range(first, first + 1)
    return range(first, last + 1)


def _share_columns(a: _Item, b: _Item) -> bool:
    """Whether one of two items could sit on the other: their columns overlap, or the
    centre of one is within a frame's width."""

    def span(it: _Item) -> tuple[float, float]:
        return it.cols or (it.new[0], it.new[0] + it.new[2])

    def centre_in(it: _Item, other: _Item) -> bool:
        c = it.new[0] + it.new[2] / 2
        return other.new[0] <= c <= other.new[0] + other.new[2]

    (a0, a1), (b0, b1) = span(a), span(b)
    return (a0 < b1 and b0 < a1) or centre_in(a, b) or centre_in(b, a)


def _shift(wf: Workflow, it: _Item, dy: float, frames: list[Rect]) -> None:
    if not dy:
        return
    lay = wf.layout
    x, y, w, h = it.new
    it.new = (x, y + dy, w, h)
    for nid in it.nodes:
        px, py = lay.nodes[nid].pos
        lay.nodes[nid].pos = (px, py + dy)
    for k in it.notes:
        px, py = lay.notes[k].pos
        lay.notes[k].pos = (px, py + dy)
    for i in it.frames:
        fx, fy, fw, fh = frames[i]
        frames[i] = (fx, fy + dy, fw, fh)


def _fit(tree: list[int], parent: list[int | None], items: list[_Item], frames: list[Rect]):
    """Each frame of an outermost frame's tree grown (innermost first) around the nodes,
    notes and frames it holds, with room for its title; never shrunk."""

    def depth(i: int) -> int:
        d = 0
        while parent[i] is not None and d < len(parent):
            i, d = parent[i], d + 1
        return d

    for i in sorted(tree, key=depth, reverse=True):
        held = [it.new for it in items if it.holder is not None and _within(it.holder, i, parent)]
        held += [frames[j] for j in tree if j != i and _within(j, i, parent)]
        if not held:
            continue
        x, y, w, h = frames[i]
        # sideways only what sticks out (ComfyUI's margins are kept), downwards with room
        left = min([x, *(r[0] - FRAME_PAD for r in held if r[0] < x)])
        up = min(y, *(r[1] - FRAME_TITLE for r in held))
        right = max([x + w, *(r[0] + r[2] + FRAME_PAD for r in held if r[0] + r[2] > x + w)])
        down = max(y + h, *(r[1] + r[3] + FRAME_PAD for r in held))
        frames[i] = (left, up, right - left, down - up)


def _within(i: int, frame: int, parent: list[int | None]) -> bool:
    """Whether frame ``i`` is ``frame`` or inside it."""
    for _ in range(len(parent) + 1):
        if i == frame:
            return True
        if parent[i] is None:
            return False
        i = parent[i]
    return False


def _holder(frames: list[Rect], r: Rect, skip: int | None = None) -> int | None:
    """The smallest frame holding the centre of ``r`` (for a frame, ``skip``: a larger one)."""
    cx, cy = r[0] + r[2] / 2, r[1] + r[3] / 2
    best = None
    for i, (x, y, w, h) in enumerate(frames):
        if i == skip or not (x <= cx <= x + w and y <= cy <= y + h):
            continue
        if skip is not None and w * h <= r[2] * r[3]:
            continue
        if best is None or w * h < frames[best][2] * frames[best][3]:
            best = i
    return best


def _outermost(parent: list[int | None], i: int) -> int:
    for _ in range(len(parent)):
        if parent[i] is None:
            break
        i = parent[i]
    return i
