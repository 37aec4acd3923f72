"""The ``studio`` command, run as a user would, with the stub nodes as a node pack."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from studio.graph import Workflow

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent


@pytest.fixture
def pack_env(tmp_path):
    """An environment where the stub nodes are an installed node pack."""
    site = tmp_path / "site"
    dist = site / "stubpack-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: stubpack\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[studio.nodes]\nstubs = stubs:stub_specs\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(TESTS), str(ROOT)])
    env["STUDIO_DATA_DIR"] = str(tmp_path / "data")
    env["STUDIO_CONFIG_DIR"] = str(tmp_path / "config")
    return env


def studio_cmd(env, *args, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "studio.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def paint_workflow(reg, path, value=3):
    wf = Workflow(reg)
    n = wf.add_node("number", {"value": value}, title="Level")
    p = wf.add_node("paint", title="Painter")
    wf.connect(n.id, "value", p.id, "value")
    wf.save(path)
    return wf, n, p


def test_run_writes_images_and_applies_set(stub_registry, pack_env, tmp_path):
    wf_path = tmp_path / "paint.json"
    paint_workflow(stub_registry, wf_path)
    out = tmp_path / "out"
    proc = studio_cmd(pack_env, "run", str(wf_path), "--set", "Level.value=200", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    files = sorted(out.glob("*.png"))
    assert len(files) == 1
    from PIL import Image

    assert Image.open(files[0]).getpixel((0, 0)) == (200, 0, 0)
    assert str(files[0]) in proc.stdout


def test_events_are_json_lines(stub_registry, pack_env, tmp_path):
    wf_path = tmp_path / "paint.json"
    _, n, p = paint_workflow(stub_registry, wf_path)
    proc = studio_cmd(pack_env, "run", str(wf_path), "--events", "--out", str(tmp_path / "o"))
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "run_started" and kinds[-1] == "run_finished"
    finished = [e for e in events if e["event"] == "node_finished"]
    assert {e["node"] for e in finished} == {n.id, p.id}
    assert all({"node", "type", "seconds"} <= set(e) for e in finished)


def test_validate_lists_every_problem(stub_registry, pack_env, tmp_path):
    wf = Workflow(stub_registry)
    wf.add_node("add", {"offset": 1000}, title="Adder")
    wf.add_node("blob_out", title="Sink")
    wf.add_node("nonexistent", title="Ghost")
    path = tmp_path / "bad.json"
    wf.save(path)
    proc = studio_cmd(pack_env, "validate", str(path))
    assert proc.returncode == 2
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 3
    assert any(line.startswith("Adder: ") and "offset" in line for line in lines)
    assert any(
        line.startswith("Sink: ") and "missing required input 'data'" in line for line in lines
    )
    assert any(line.startswith("Ghost: ") and "unknown node type" in line for line in lines)
    assert "Traceback" not in proc.stderr


def test_exit_codes_and_no_tracebacks(stub_registry, pack_env, tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text("{ nope")
    proc = studio_cmd(pack_env, "run", str(broken))
    assert proc.returncode == 2 and "broken.json" in proc.stderr and "not valid JSON" in proc.stderr
    assert "Traceback" not in proc.stderr

    wf = Workflow(stub_registry)
    f = wf.add_node("fail", {"message": "model file is corrupt"}, title="Loader")
    out = wf.add_node("output")
    wf.connect(f.id, "value", out.id, "value")
    failing = tmp_path / "failing.json"
    wf.save(failing)
    proc = studio_cmd(pack_env, "run", str(failing))
    assert proc.returncode == 1
    assert "Loader" in proc.stderr and "model file is corrupt" in proc.stderr
    assert "Traceback" not in proc.stderr

    ok = tmp_path / "ok.json"
    paint_workflow(stub_registry, ok)
    for args, fragment in [
        (["--set", "Level.value=abc"], "expects int"),
        (["--set", "Nobody.value=1"], "no node with id or title 'Nobody'"),
        (["--set", "Level.size=1"], "no param 'size'"),
        (["--set", "novalue"], "expected NODE.PARAM=VALUE"),
    ]:
        proc = studio_cmd(pack_env, "run", str(ok), *args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert fragment in proc.stderr and "Traceback" not in proc.stderr

    proc = studio_cmd(pack_env, "frobnicate")
    assert proc.returncode == 2


# -- issue 17: files and folders the command cannot use are refused up front -----------------


def test_a_number_past_the_digit_limit_is_a_clear_error_everywhere(
    stub_registry, pack_env, tmp_path
):
    wf_path = tmp_path / "paint.json"
    paint_workflow(stub_registry, wf_path)
    text = wf_path.read_text("utf-8").replace('"value": 3', '"value": ' + "7" * 5000)
    wf_path.write_text(text, "utf-8")
    for args in (["validate", str(wf_path)], ["run", str(wf_path), "--out", str(tmp_path)]):
        proc = studio_cmd(pack_env, *args)
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr
        assert str(wf_path) in proc.stderr and '"params.value"' in proc.stderr
        assert "(5000 digits), too large" in proc.stderr


def test_run_refuses_a_workflow_it_could_not_save_into_the_image(stub_registry, pack_env, tmp_path):
    wf = Workflow(stub_registry)
    n = wf.add_node("number", {"value": 3}, title="Level")
    o = wf.add_node("output", title="Out")
    wf.connect(n.id, "value", o.id, "value")
    path = tmp_path / "labelled.json"
    wf.save(path)
    # A byte that is not UTF-8 on the command line arrives as a lone surrogate.
    env = {**pack_env, "PYTHONIOENCODING": "utf-8"}
    label = b"Out.label=caf\xff".decode("utf-8", "surrogateescape")
    proc = subprocess.run(
        [sys.executable, "-m", "studio.cli", "run", str(path), "--events", "--set", label],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=120,
    )
    stderr = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 2, stderr
    assert "cannot be saved" in stderr and '"params.label"' in stderr
    assert "broken character" in stderr and "Traceback" not in stderr
    assert b"run_started" not in proc.stdout  # refused before anything ran


def test_an_output_folder_that_cannot_be_made_is_refused_before_the_run(
    stub_registry, pack_env, tmp_path
):
    wf_path = tmp_path / "paint.json"
    paint_workflow(stub_registry, wf_path)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    for out, fragment in [
        (blocker / "out", "cannot be created"),
        (blocker, "is a file, not a folder"),
    ]:
        proc = studio_cmd(pack_env, "run", str(wf_path), "--out", str(out), "--events")
        assert proc.returncode == 2, proc.stderr
        assert f"the output folder {fragment}: {out}" in proc.stderr
        assert "Traceback" not in proc.stderr
        assert "run_started" not in proc.stdout  # nothing ran before the refusal


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_output_folder_is_refused_before_the_run(stub_registry, pack_env, tmp_path):
    wf_path = tmp_path / "paint.json"
    paint_workflow(stub_registry, wf_path)
    out = tmp_path / "read-only"
    out.mkdir()
    out.chmod(0o500)
    try:
        proc = studio_cmd(pack_env, "run", str(wf_path), "--out", str(out), "--events")
    finally:
        out.chmod(0o700)
    assert proc.returncode == 2 and "the output folder is not writable" in proc.stderr
    assert "run_started" not in proc.stdout


def test_open_with_an_impossible_screenshot_path_fails_at_once(stub_registry, pack_env, tmp_path):
    wf_path = tmp_path / "paint.json"
    paint_workflow(stub_registry, wf_path)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    env = {**pack_env, "QT_QPA_PLATFORM": "offscreen"}
    for shot, fragment in [
        (blocker / "sub" / "shot.png", "the screenshot's folder cannot be created"),
        (tmp_path, "the screenshot path is a folder"),
        (tmp_path / "shot.txt", "the screenshot must be a .png, .jpg, .jpeg, .bmp file"),
    ]:
        proc = studio_cmd(env, "open", str(wf_path), "--screenshot", str(shot), timeout=60)
        assert proc.returncode == 2, proc.stderr
        assert fragment in proc.stderr and "Traceback" not in proc.stderr


def test_validate_names_the_nodes_of_a_cycle_in_a_file(stub_registry, pack_env, tmp_path):
    wf = Workflow(stub_registry)
    a = wf.add_node("add", title="Alpha")
    b = wf.add_node("add", title="Beta")
    out = wf.add_node("output", title="Out")
    wf.connect(a.id, "sum", b.id, "a")
    wf.connect(b.id, "sum", out.id, "value")
    path = tmp_path / "cyclic.json"
    wf.save(path)
    data = json.loads(path.read_text("utf-8"))  # closed by hand: the app would refuse it
    data["links"].append({"id": "x", "source": b.id, "output": "sum", "target": a.id, "input": "a"})
    path.write_text(json.dumps(data), "utf-8")
    for command in ("validate", "run"):
        proc = studio_cmd(pack_env, command, str(path))
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if "is on a cycle" in ln]
        assert len(lines) == 2
        assert all("Alpha -> Beta" in ln and a.id not in ln for ln in lines)
