"""``studio batch`` and studio.Batch: job expansion, stable ids, resume, worker deaths,
model checks on workers, Ray, and images equal to ``studio run``'s."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from studio.batch import Batch, BatchError, expand
from studio.batch.jobs import read_prompts
from studio.graph import Workflow
from studio.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
REG = "batch_nodes:registry"


def nap_workflow(ms: int = 0) -> Workflow:
    from batch_nodes import registry

    wf = Workflow(registry())
    nap = wf.add_node("nap", {"value": 1, "ms": ms}, title="Nap")
    paint = wf.add_node("paint2", title="Paint")
    wf.connect(nap.id, "value", paint.id, "value")
    return wf


def red(path: Path) -> tuple[int, int, int]:
    with Image.open(path) as im:
        return im.convert("RGB").getpixel((0, 0))


def job_lines(out: Path) -> list[dict]:
    lines = []
    for line in (out / "batch.jsonl").read_text().splitlines():
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if obj.get("record") == "job":
            lines.append(obj)
    return lines


# -- expansion and ids (no workers) ---------------------------------------------------------


def test_sweeps_multiply_and_ranges_include_their_end():
    wf = nap_workflow()
    exp = expand(wf, sweeps=["Nap.value=4:9:1", "Paint.green=0,128"])
    combos = sorted((j.params["Nap.value"], j.params["Paint.green"]) for j in exp.jobs)
    assert combos == [(v, g) for v in range(4, 10) for g in (0, 128)]
    assert len({j.id for j in exp.jobs}) == 12
    # A float range in decimal steps does not drift past its end.
    from studio.batch.jobs import numeric_range

    assert numeric_range("0.1:0.5:0.1", "x") == ["0.1", "0.2", "0.3", "0.4", "0.5"]
    # Texts keep their commas; the same param given again adds a value.
    texts = expand(wf, sweeps=["Nap.gate=a, b", "Nap.gate=c"]).jobs
    assert sorted(j.params["Nap.gate"] for j in texts) == ["a, b", "c"]


def test_job_ids_depend_only_on_the_resulting_workflow():
    wf = nap_workflow()
    a = {j.params["Nap.value"]: j.id for j in expand(wf, sweeps=["Nap.value=1,2,3"]).jobs}
    b = {j.params["Nap.value"]: j.id for j in expand(wf, sweeps={"Nap.value": [3, 2, 1]}).jobs}
    assert a == b
    # The same job reached through --set plus a sweep of another value has the same id.
    (only,) = expand(wf, sets=["Nap.value=2"], sweeps=["Paint.green=0"]).jobs
    assert only.id == a[2]
    # Changing any param the images depend on changes the id; moving a node does not.
    moved = wf.copy()
    moved.set_node_layout(moved.find_node("Nap").id, pos=(500.0, 40.0))
    again = {j.params["Nap.value"]: j.id for j in expand(moved, sweeps=["Nap.value=1,2,3"]).jobs}
    assert again == a
    other = {
        j.params["Nap.value"]: j.id
        for j in expand(wf, sets=["Nap.ms=5"], sweeps=["Nap.value=1,2,3"]).jobs
    }
    assert set(other.values()).isdisjoint(a.values())


def test_prompt_csv_columns_and_text_lines(tmp_path):
    wf = nap_workflow()
    csv_file = tmp_path / "rows.csv"
    csv_file.write_text("Nap.value,Paint.green\n1,10\n2,20\n")
    exp = expand(wf, prompts=read_prompts(csv_file), seeds=None)
    assert sorted((j.params["Nap.value"], j.params["Paint.green"]) for j in exp.jobs) == [
        (1, 10),
        (2, 20),
    ]
    # A plain text file: one prompt a line, into the text node feeding the positive input.
    import studio

    txt2img = studio.load_workflow(ROOT / "resources/workflows/txt2img.json")
    lines = tmp_path / "prompts.txt"
    lines.write_text("a red fox\n\n# a comment\na blue bird\n")
    exp = expand(txt2img, prompts=read_prompts(lines), seeds=[7, 8])
    got = sorted((j.params["Prompt.text"], j.seed) for j in exp.jobs)
    assert got == [("a blue bird", 7), ("a blue bird", 8), ("a red fox", 7), ("a red fox", 8)]
    # Jobs sharing a prompt are neighbours, so one worker reuses its encoding.
    texts = [j.params["Prompt.text"] for j in exp.jobs]
    assert texts in (
        ["a blue bird"] * 2 + ["a red fox"] * 2,
        ["a red fox"] * 2 + ["a blue bird"] * 2,
    )


@pytest.mark.parametrize(
    "sweep, message",
    [
        ("Nope.value=1", "no node with id or title 'Nope'"),
        ("Nap.volume=1", "Nap has no param 'volume'"),
        ("Nap.value=1,x", "'value' expects int, got 'x'"),
        ("Nap.ms=-5", "Nap.ms=-5"),
        ("Nap.value=5:1:1", "never reaches its end"),
    ],
)
def test_bad_sweeps_are_named(sweep, message):
    with pytest.raises(BatchError, match=message.replace("(", r"\(").replace(")", r"\)")):
        expand(nap_workflow(), sweeps=[sweep])


def test_bad_prompt_csv_header_is_named(tmp_path):
    f = tmp_path / "p.csv"
    f.write_text("prompt\nred\n")
    with pytest.raises(BatchError, match="column 1 is named 'prompt'"):
        read_prompts(f)


# -- local workers -------------------------------------------------------------------------


def test_local_batch_writes_images_and_resumes(tmp_path):
    out = tmp_path / "out"
    gate = tmp_path / "gate"
    wf = nap_workflow()
    batch = Batch(
        wf, sweeps={"Nap.value": "1:4:1"}, sets=[f"Nap.gate={gate}"], registry=REG,
        settings=Settings(),
    )  # fmt: skip
    # The gate is shut: every job fails, and says why.
    records = batch.run(out, workers=1)
    assert {r.status for r in records} == {"failed"}
    assert "gate file" in records[0].error
    gate.touch()
    records = batch.run(out, workers=2)
    assert sorted(r.status for r in records) == ["ok"] * 4  # failed jobs are retried
    for r in records:
        (name,) = r.files
        assert red(out / name)[0] == r.params["Nap.value"]
    # Run again: nothing is redone. Damage one image: only that job runs again.
    assert {r.status for r in batch.run(out, workers=1)} == {"skipped"}
    victim = records[2]
    path = out / victim.files[0]
    path.write_bytes(path.read_bytes()[:20])
    again = batch.run(out, workers=1)
    assert [r.job for r in again if r.status == "ok"] == [victim.job]
    assert red(path)[0] == victim.params["Nap.value"]


def test_a_warm_worker_reuses_what_a_downstream_sweep_does_not_change(tmp_path):
    b = Batch(
        nap_workflow(ms=1), sweeps=["Paint.green=0,1"], seeds=range(1, 3), registry=REG,
        settings=Settings(),
    )  # fmt: skip
    records = b.run(tmp_path / "out", workers=1)
    assert sorted((r.params["Paint.green"], r.seed) for r in records) == [
        (0, 1), (0, 2), (1, 1), (1, 2),
    ]  # fmt: skip
    assert [(r.ran, r.cached) for r in records] == [(2, 0)] + [(1, 1)] * 3


def test_count_records_its_seeds_and_a_rerun_keeps_them(tmp_path):
    from stubs import stub_registry  # noqa: F401  (the stub pack has no seed param)

    import studio

    txt2img = studio.load_workflow(ROOT / "resources/workflows/txt2img.json")
    out = tmp_path / "o"
    out.mkdir()
    b = Batch(txt2img, count=3)
    first = {j.seed for j in b.expand(out).jobs}
    assert len(first) == 3
    # The record written at the start of a run keeps them; fake that start here.
    (out / "batch.jsonl").write_text(json.dumps({"record": "batch", "seeds": sorted(first)}) + "\n")
    assert {j.seed for j in Batch(txt2img, count=3).expand(out).jobs} == first
    assert first < {j.seed for j in Batch(txt2img, count=5).expand(out).jobs}


def test_missing_model_on_a_worker_is_named_before_any_job(tmp_path):
    from batch_nodes import registry

    wf = Workflow(registry())
    m = wf.add_node("model_user", {"ckpt": "absent.safetensors"}, title="Model")
    p = wf.add_node("paint2", title="Paint")
    wf.connect(m.id, "value", p.id, "value")
    out = tmp_path / "out"
    settings = Settings(models_root=str(tmp_path / "models"))
    with pytest.raises(BatchError) as info:
        Batch(wf, sweeps=["Paint.green=1,2"], registry=REG, settings=settings).run(out)
    msg = str(info.value)
    assert "worker local0@" in msg and "'absent.safetensors'" in msg
    assert not list(out.glob("*.png")) and not job_lines(out)


def test_a_worker_without_the_node_types_says_so_before_any_job(tmp_path):
    # The workers build another registry (as a machine without the node pack would).
    b = Batch(nap_workflow(), sweeps=["Nap.value=1,2"], registry="stubs:stub_registry")
    with pytest.raises(BatchError, match=r"worker local0@.*cannot run here.*nap"):
        b.run(tmp_path / "out", workers=1)
    assert not list((tmp_path / "out").glob("*.png"))


def test_a_killed_local_worker_has_its_jobs_retried(tmp_path):
    out = tmp_path / "out"
    killed = []

    def on_event(e):
        if e["event"] == "job_finished" and not killed:
            killed.append(e["pid"])
            os.kill(e["pid"], signal.SIGKILL)

    b = Batch(nap_workflow(ms=150), sweeps=["Nap.value=1:8:1"], registry=REG, settings=Settings())
    # The only worker: it is started again and takes the jobs it held.
    records = b.run(out, workers=1, on_event=on_event)
    assert killed
    assert sorted(r.params["Nap.value"] for r in records if r.status == "ok") == list(range(1, 9))
    assert any(r.attempts > 1 for r in records)  # what its worker held was run again
    for r in records:
        assert red(out / r.files[0])[0] == r.params["Nap.value"]


# -- the command, and kill -9 of the driver -------------------------------------------------


@pytest.fixture
def pack_env(tmp_path):
    site = tmp_path / "site"
    dist = site / "batchpack-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: batchpack\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[studio.nodes]\nbatch = batch_nodes:specs\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(TESTS), str(ROOT)])
    return env


def test_resume_after_kill_9_of_the_driver(tmp_path, pack_env):
    wf_path = tmp_path / "nap.json"
    nap_workflow(ms=100).save(wf_path)
    out = tmp_path / "out"
    cmd = [
        sys.executable, "-m", "studio.cli", "batch", str(wf_path), "--out", str(out),
        "--sweep", "Nap.value=1:10:1", "--workers", "1", "--events",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, env=pack_env, stdout=subprocess.PIPE, text=True)
    finished = 0
    deadline = time.monotonic() + 60
    for line in proc.stdout:
        finished += json.loads(line)["event"] == "job_finished"
        if finished == 3 or time.monotonic() > deadline:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert finished == 3
    before = {r["job"] for r in job_lines(out)}
    assert 3 <= len(before) < 10

    done = subprocess.run(cmd, cwd=ROOT, env=pack_env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines()]
    rerun = {e["job"] for e in events if e["event"] == "job_finished"}
    assert rerun.isdisjoint(before)  # no job done twice
    assert events[0]["skipped"] == len(before)
    # Every image is there, whole, and nothing half-written is left.
    records = [r for r in job_lines(out) if r["status"] == "ok"]
    assert len({r["job"] for r in records}) == 10
    pngs = sorted(p.name for p in out.iterdir() if p.name != "batch.jsonl")
    assert pngs == sorted(f"{r['job']}.png" for r in records)
    assert sorted(red(out / n)[0] for n in pngs) == list(range(1, 11))


def test_batch_images_equal_studio_run_images(tmp_path):
    # The same thread count as the one worker gets (all the cores): CPU kernels may split
    # their sums by thread, so other counts can differ in the last bit.
    threads = str(max(1, os.cpu_count() or 1))
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS=threads)
    wf = str(ROOT / "resources/workflows/txt2img.json")
    common = ["--set", "Sampler.steps=2", "--set", "Empty Latent.width=64"]
    # Both at once: each pays for torch and the model load, and there are two cores.
    single = subprocess.Popen(
        [sys.executable, "-m", "studio.cli", "run", wf, *common, "--set", "Sampler.seed=2",
         "--out", str(tmp_path / "single")],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    batch = subprocess.run(
        [sys.executable, "-m", "studio.cli", "batch", wf, *common, "--seeds", "1-2",
         "--out", str(tmp_path / "batch"), "--workers", "1"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    _, err = single.communicate(timeout=600)
    assert single.returncode == 0, err
    assert batch.returncode == 0, batch.stderr
    (ran,) = (tmp_path / "single").glob("*.png")
    by_seed = {r["seed"]: r for r in job_lines(tmp_path / "batch")}
    assert set(by_seed) == {1, 2}
    with Image.open(ran) as a, Image.open(tmp_path / "batch" / by_seed[2]["files"][0]) as b:
        assert a.size == b.size == (64, 64)
        assert a.convert("RGB").tobytes() == b.convert("RGB").tobytes()
        # The seed made a difference, so the comparison above is not trivially true.
        with Image.open(tmp_path / "batch" / by_seed[1]["files"][0]) as c:
            assert c.convert("RGB").tobytes() != b.convert("RGB").tobytes()


# -- Ray ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_session():
    ray = pytest.importorskip("ray")
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(TESTS), str(ROOT)])
    os.environ.setdefault("RAY_worker_niceness", "0")  # as studio batch --ray local does
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
    if old is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = old


def test_ray_batch_survives_a_killed_actor(tmp_path, ray_session):
    out = tmp_path / "out"
    killed = []

    def on_event(e):
        if e["event"] == "job_finished" and not killed:
            killed.append(e["pid"])
            os.kill(e["pid"], signal.SIGKILL)

    b = Batch(nap_workflow(ms=150), sweeps=["Nap.value=1:8:1"], registry=REG)
    records = b.run(out, ray="auto", on_event=on_event)
    assert killed
    assert sorted(r.params["Nap.value"] for r in records if r.status == "ok") == list(range(1, 9))
    assert any(r.attempts > 1 for r in records)
    workers = {r.worker.split("@")[0] for r in records}
    assert workers <= {"ray0", "ray1"} and len(workers) == 2
    for r in records:
        assert red(out / r.files[0])[0] == r.params["Nap.value"]


def test_ray_worker_without_the_model_is_named(tmp_path, ray_session):
    from batch_nodes import registry

    models = tmp_path / "models" / "checkpoints"
    models.mkdir(parents=True)
    (models / "mine.safetensors").write_bytes(b"weights")
    wf = Workflow(registry())
    m = wf.add_node("model_user", {"ckpt": "mine.safetensors"}, title="Model")
    p = wf.add_node("paint2", title="Paint")
    wf.connect(m.id, "value", p.id, "value")
    # The driver has the file; the workers read their own settings, where it is not.
    driver = Settings(models_root=str(tmp_path / "models"))
    with pytest.raises(BatchError, match=r"worker ray\d@.*'mine.safetensors' is not there"):
        Batch(wf, sweeps=["Paint.green=1,2"], registry=REG, settings=driver).run(
            tmp_path / "out", ray="auto", workers=2
        )
    assert not list((tmp_path / "out").glob("*.png"))


def test_input_images_travel_with_the_jobs_to_ray_workers(tmp_path, ray_session):
    from batch_nodes import registry

    inputs = tmp_path / "in"
    inputs.mkdir()
    for name, level in (("dark.png", 40), ("light.png", 220)):
        Image.new("RGB", (4, 4), (level, 0, 0)).save(inputs / name)
    wf = Workflow(registry())
    src = wf.add_node("image_value", {"image": "dark.png"}, title="Source")
    paint = wf.add_node("paint2", title="Paint")
    wf.connect(src.id, "value", paint.id, "value")
    # Only the driver's input folder has the images; the workers get them with the jobs.
    driver = Settings(input_dir=str(inputs))
    b = Batch(
        wf,
        sweeps=["Source.image=dark.png", "Source.image=light.png"],
        registry=REG,
        settings=driver,
    )
    records = b.run(tmp_path / "out", ray="auto", workers=2)
    assert {r.params["Source.image"]: red(tmp_path / "out" / r.files[0])[0] for r in records} == {
        "dark.png": 40,
        "light.png": 220,
    }
