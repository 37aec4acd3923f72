"""The images in the output folder, as a history: what made each one (run, seed, prompt,
workflow), read from the PNG's own metadata, newest first. No Qt, no torch.

A history rebuilt this way lasts across sessions and never lies: a file deleted from the
folder is simply not found the next time.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from studio.graph.pngmeta import WORKFLOW_KEY, read_png_text_file
from studio.graph.workflow import Workflow

#: How many of the newest images the history reads back.
MAX_SAVED = 100
CAPTION_WORDS = 5
_SEED = re.compile(r"(?:^|[,\s])Seed:\s*(\d+)")


@dataclass(frozen=True)
class SavedImage:
    """One PNG of the output folder and what its metadata says about it."""

    path: Path
    mtime: float
    prompt: str
    seed: int | None
    workflow_json: str  # "" when the file carries no Studio workflow


def read_saved(path: Path) -> SavedImage | None:
    """What a PNG says about itself; None when it carries neither a Studio workflow nor
    generation parameters (not one of ours) or cannot be read."""
    try:
        st = path.stat()
        text = read_png_text_file(path, (WORKFLOW_KEY, "parameters"))
    except (OSError, ValueError):
        return None
    wf_json = text.get(WORKFLOW_KEY, "")
    params = text.get("parameters", "")
    if not wf_json and not params:
        return None
    prompt = params.split("\n", 1)[0] if params else ""
    if prompt.startswith(("Negative prompt:", "Steps:")):
        prompt = ""
    m = _SEED.search(params)
    return SavedImage(path, st.st_mtime, prompt, int(m.group(1)) if m else None, wf_json)


def scan_outputs(folder: Path, limit: int = MAX_SAVED) -> list[SavedImage]:
    """The newest ``limit`` Studio images under ``folder`` (subfolders too), newest first."""
    try:
        files = [p for p in folder.rglob("*.png") if p.is_file()]
    except OSError:
        return []
    files.sort(key=_mtime, reverse=True)
    found: list[SavedImage] = []
    for p in files:
        if len(found) >= limit:
            break
        saved = read_saved(p)
        if saved is not None:
            found.append(saved)
    return found


def _mtime(p: Path) -> float:
    try:
        return p.stat().st_mtime
    except OSError:
        return 0.0


def describe(wf: Workflow, node_id: str) -> tuple[int | None, str]:
    """The seed and the prompt that made an output node's image: the nearest node with a
    seed upstream of it, and the text feeding that node's positive input."""
    seeder = _upstream(wf, node_id, lambda n: "seed" in n.params)
    if seeder is None:
        return None, ""
    seed = seeder.params.get("seed")
    lk = wf.link_into(seeder.id, "positive")
    prompt = ""
    if lk is not None:
        enc = _upstream(wf, lk.source, lambda n: isinstance(n.params.get("text"), str), True)
        prompt = str(enc.params["text"]) if enc is not None else ""
    return (int(seed) if isinstance(seed, int) else None), prompt


def _upstream(wf: Workflow, start: str, want, include_start: bool = False):
    seen = {start}
    queue = deque([start])
    while queue:
        nid = queue.popleft()
        if not wf.has_node(nid):
            continue
        n = wf.get_node(nid)
        if (nid != start or include_start) and want(n):
            return n
        for lk in wf.links_into(nid):
            if lk.source not in seen:
                seen.add(lk.source)
                queue.append(lk.source)
    return None


def caption(run: str, seed: int | None, prompt: str, words: int = CAPTION_WORDS) -> str:
    """'run 12 · seed 1234' over the prompt's first words."""
    head = run + (f" · seed {seed}" if seed is not None else "")
    ws = prompt.split()
    text = " ".join(ws[:words]) + (" …" if len(ws) > words else "")
    return f"{head}\n{text}" if text else head
