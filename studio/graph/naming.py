"""How messages name nodes: by title, as the artist sees them on the canvas; with a short
id only where two nodes share a title (two "Text Encode"s), so each name still points at
one node."""

from __future__ import annotations

from collections import Counter

from studio.graph.workflow import Workflow

#: Characters of a node id shown where titles repeat (enough to tell nodes apart).
SHORT_ID = 8


def node_names(wf: Workflow) -> dict[str, str]:
    """Every node's name for messages: its title, or ``title #1a2b3c4d`` where it repeats."""
    titles = {n.id: wf.display_title(n) for n in wf.nodes}
    counts = Counter(titles.values())
    return {
        nid: title if counts[title] == 1 else f"{title} #{nid[:SHORT_ID]}"
        for nid, title in titles.items()
    }


def node_name(wf: Workflow, node_id: str) -> str:
    """One node's name for messages (its id when the workflow has no such node)."""
    if not wf.has_node(node_id):
        return node_id
    return node_names(wf)[node_id]
