"""``studio run`` on a terminal: the node that runs, a progress bar with the time left, the
nodes' times at the end; the libraries' own bars and warnings hidden. Without a terminal
(or with --events) only what scripts read."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from studio.engine.events import Event, EventKind
from studio.terminal import TerminalProgress

ROOT = Path(__file__).resolve().parent.parent
TXT2IMG = ROOT / "resources" / "workflows" / "txt2img.json"


def _env(tmp_path: Path) -> dict[str, str]:
    return dict(
        os.environ,
        PYTHONPATH=str(ROOT),
        STUDIO_DATA_DIR=str(tmp_path / "data"),
        STUDIO_CONFIG_DIR=str(tmp_path / "config"),
        HF_HUB_OFFLINE="1",
        OMP_NUM_THREADS="1",
        COLUMNS="100",
    )


@pytest.mark.skipif(sys.platform == "win32", reason="needs a pseudo-terminal")
def test_a_terminal_sees_nodes_steps_time_left_and_node_times(tmp_path):
    import pty

    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "studio.cli", "run", str(TXT2IMG), "--out", str(tmp_path)],
        stdout=slave,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        cwd=ROOT,
        env=_env(tmp_path),
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    stderr = proc.stderr.read().decode() if proc.stderr else ""
    assert proc.wait(timeout=600) == 0, stderr
    shown = b"".join(chunks).decode("utf-8", "replace")
    live = shown.split("\r")
    assert any(s.startswith("[1/7] Load Checkpoint") for s in live)
    bars = [s for s in live if "Sampler" in s and "/20" in s]
    assert any("20/20" in s for s in bars) and any(" left" in s for s in bars)
    # At the end: a line per node with its time, then the image's path.
    lines = [ln.split("\r")[-1].strip() for ln in shown.replace("\r\n", "\n").split("\n")]
    lines = [ln for ln in lines if ln]
    for title in ("Load Checkpoint", "Sampler", "VAE Decode", "Save Image", "total"):
        assert any(ln.startswith(title) and ln.endswith(("ms", "s")) for ln in lines), lines
    assert lines[-1].endswith(".png") and Path(lines[-1]).is_file()
    assert stderr == ""  # no "Loading weights" bar, no library warnings


def test_without_a_terminal_only_what_scripts_read(tmp_path):
    code = f"""
import sys
sys.path.insert(0, {str(ROOT / "tests")!r})
import studio.cli, studio.library
from studio.graph.registry import Registry
from studio.graph.spec import InputSpec, NodeSpec
from studio.graph.types import ValueType as T
from studio.graph import Workflow

def work(ctx, steps):
    for i in range(1, steps + 1):
        ctx.progress(i, steps)
    ctx.show(["done"])
    return {{}}

reg = Registry([NodeSpec("work", "Work", "test", work,
                         inputs=(InputSpec("steps", T.INT, default=5),), output_node=True)])
studio.library.installed_registry = lambda: reg
wf = Workflow(reg)
wf.add_node("work")
wf.save({str(tmp_path / "wf.json")!r})
sys.exit(studio.cli.main(["run", {str(tmp_path / "wf.json")!r}] + sys.argv[1:]))
"""
    plain = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True
    )
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout == ""  # nothing saved as a file, nothing drawn
    events = subprocess.run(
        [sys.executable, "-c", code, "--events"],
        cwd=ROOT,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
    )
    assert events.returncode == 0, events.stderr
    kinds = [json.loads(line)["event"] for line in events.stdout.splitlines()]
    assert kinds.count("progress") == 5 and kinds[-1] == "run_finished"


def test_a_notice_stays_above_the_live_line():
    out = io.StringIO()
    show = TerminalProgress(out, total=1)
    show(Event(EventKind.NODE_STARTED, node="s", title="Sampler"))
    show(Event(EventKind.PROGRESS, node="s", title="Sampler", step=1, total=4))
    show(Event(EventKind.NOTICE, message="unet (10.3 GB) does not fit the RAM budget"))
    show(Event(EventKind.PROGRESS, node="s", title="Sampler", step=2, total=4))
    show(Event(EventKind.NODE_FINISHED, node="s", title="Sampler", seconds=2.5))
    show(Event(EventKind.RUN_FINISHED, seconds=2.6))
    text = out.getvalue()
    assert "note: unet (10.3 GB) does not fit the RAM budget\n" in text
    assert "2/4" in text.split("note:")[1]  # the bar came back below the note
    summary = [line.split() for line in text.rstrip().splitlines()[-2:]]
    assert summary == [["Sampler", "2.5", "s"], ["total", "2.6", "s"]]
