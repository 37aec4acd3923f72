"""The model manager and file fingerprints (no torch: fake modules)."""

from __future__ import annotations

import os
import threading
import time

from studio.engine import Engine, FileFingerprinter, ModelManager
from studio.graph import Workflow
from studio.graph.registry import Registry
from studio.graph.spec import InputSpec, NodeSpec, OutputSpec
from studio.graph.types import ValueType as T


class FakeTensor:
    def __init__(self, n, device="cpu"):
        self.n, self.device = n, type("D", (), {"type": device})()

    def element_size(self):
        return 4

    def nelement(self):
        return self.n


class FakeModule:
    """Looks like a torch module to the manager: parameters, buffers, to(device)."""

    def __init__(self, params: int):
        self.weights = [FakeTensor(params)]
        self.moves: list[str] = []

    def parameters(self):
        return iter(self.weights)

    def buffers(self):
        return iter([])

    def to(self, device):
        self.moves.append(device)
        for w in self.weights:
            w.device = type("D", (), {"type": device})()
        return self


def test_each_model_loads_once_and_is_shared():
    mm = ModelManager(ram_budget=10**9)
    loads = []

    def loader():
        loads.append(1)
        return FakeModule(100)

    a = mm.get(("file", 1, 2, "unet", "fp32", "cpu"), loader)
    b = mm.get(("file", 1, 2, "unet", "fp32", "cpu"), loader)
    assert a is b and len(loads) == 1 and mm.loads == 1
    c = mm.get(("file", 1, 2, "unet", "fp16", "cpu"), loader)  # another dtype: another copy
    assert c is not a and mm.loads == 2


def test_concurrent_requests_load_once():
    mm = ModelManager()
    started = []

    def loader():
        started.append(1)
        time.sleep(0.05)
        return FakeModule(10)

    results = []
    threads = [
        threading.Thread(target=lambda: results.append(mm.get("k", loader))) for _ in range(6)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(started) == 1 and all(r is results[0] for r in results)


def test_ram_budget_drops_least_recently_used():
    mm = ModelManager(ram_budget=1000 * 4 * 2)  # room for two models of 1000 params
    mm.get("a", lambda: FakeModule(1000))
    mm.get("b", lambda: FakeModule(1000))
    mm.get("a", lambda: FakeModule(1000))  # touch a
    mm.get("c", lambda: FakeModule(1000))
    assert mm.contains("a") and mm.contains("c") and not mm.contains("b")


def test_vram_budget_offloads_least_recently_used_to_cpu():
    mm = ModelManager(ram_budget=10**9, vram_budget=1000 * 4 * 2)
    models = {k: mm.get(k, lambda: FakeModule(1000)) for k in "abc"}
    mm.use("a", "cuda")
    mm.use("b", "cuda")
    mm.use("a", "cuda")  # a is now the most recently used
    mm.use("c", "cuda")  # no room for three: b goes back to the CPU
    assert models["b"].moves == ["cuda", "cpu"]
    assert models["a"].moves == ["cuda"] and models["c"].moves == ["cuda"]
    assert mm.bytes_on("cuda") == 2 * 4000


def test_fingerprint_is_remembered_and_follows_content(tmp_path):
    fp = FileFingerprinter()
    f = tmp_path / "model.safetensors"
    f.write_bytes(b"weights-v1")
    first = fp.of(f)
    assert fp.of(f) == first and fp.hashed == 1  # not re-hashed
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched, same content
    assert fp.of(f) == first and fp.hashed == 2
    f.write_bytes(b"weights-v2")
    assert fp.of(f) != first
    assert fp.of(tmp_path / "gone.safetensors").startswith("missing:")


def test_node_reading_a_file_reruns_when_the_file_changes(tmp_path):
    reads = []

    def read(ctx, path):
        reads.append(path)
        with open(path) as fh:
            return fh.read()

    def show(ctx, text):
        ctx.show([text])
        return {}

    reg = Registry(
        [
            NodeSpec(
                "read_text",
                "Read Text",
                "test",
                read,
                inputs=(InputSpec("path", T.STRING, default=""),),
                outputs=(OutputSpec("text", T.STRING),),
                fingerprint=lambda params, ctx: ctx.files.of(params["path"]),
            ),
            NodeSpec(
                "show",
                "Show",
                "test",
                show,
                inputs=(InputSpec("text", T.STRING),),
                output_node=True,
            ),
        ]
    )
    f = tmp_path / "prompt.txt"
    f.write_text("a red circle")
    wf = Workflow(reg)
    r = wf.add_node("read_text", {"path": str(f)})
    s = wf.add_node("show")
    wf.connect(r.id, "text", s.id, "text")
    engine = Engine(reg)
    assert engine.run(wf).images == ["a red circle"]
    assert engine.run(wf).ran == set()
    f.write_text("a blue square")
    result = engine.run(wf)
    assert result.images == ["a blue square"] and len(reads) == 2
    assert result.reasons[r.id] == "a file it reads changed"


def test_size_walk_finds_modules_inside_plain_objects():
    from studio.engine.models import module_nbytes

    class Tokenizerish:
        def __init__(self):
            self.vocab = {f"tok{i}": i for i in range(200_000)}
            self.encoder = FakeModule(10)

    t = time.perf_counter()
    assert module_nbytes(Tokenizerish()) == 40
    assert (
        time.perf_counter() - t < 5
    )  # a sanity bound, not a benchmark: it used to walk every entry


def test_a_node_keeps_the_models_it_uses_on_the_gpu_even_over_the_budget():
    # A Sampler with a ControlNet: both must be on the GPU while it computes, even when the
    # VRAM budget holds only one (the H200 run found the UNet moved off under its feet).
    mm = ModelManager(ram_budget=10**9, vram_budget=1000 * 4)
    models = {k: mm.get(k, lambda: FakeModule(1000)) for k in ("unet", "controlnet", "vae")}
    with mm.node_scope():
        mm.use("unet", "cuda")
        mm.use("controlnet", "cuda")
        assert models["unet"].moves == ["cuda"]  # still there while the node runs
    with mm.node_scope():  # the next node (VAE Decode) may move them off to make room
        mm.use("vae", "cuda")
    assert models["unet"].moves == ["cuda", "cpu"] and models["controlnet"].moves[-1] == "cpu"
    assert mm.bytes_on("cuda") == 4000
