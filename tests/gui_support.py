"""Stub node types and helpers for the GUI tests and benchmarks (no torch, no node library)."""

from __future__ import annotations

from collections import Counter

from studio.graph.registry import Registry
from studio.graph.spec import InputSpec, NodeSpec, OutputSpec
from studio.graph.types import ValueType as T
from studio.graph.workflow import Workflow

RAN: Counter[str] = Counter()


def _run(name, fn):
    def execute(ctx, **kw):
        RAN[name] += 1
        return fn(ctx, **kw)

    return execute


def _show(ctx, image, **kw):
    ctx.show([image])
    return {}


SAMPLERS = ("euler", "euler_ancestral", "dpmpp_2m", "ddim")
SCHEDULERS = ("normal", "karras", "exponential")

GUI_SPECS = [
    NodeSpec(
        "load_checkpoint",
        "Load Checkpoint",
        "loaders",
        _run("load_checkpoint", lambda ctx, ckpt_name: ("model", "clip", "vae")),
        inputs=(
            InputSpec(
                "ckpt_name",
                T.CHOICE,
                choices=("sd15-tiny.safetensors", "dreamshaper_8.safetensors"),
                file_kind="checkpoints",
            ),
        ),
        outputs=(
            OutputSpec("model", T.MODEL),
            OutputSpec("clip", T.CLIP),
            OutputSpec("vae", T.VAE),
        ),
        description="Loads a Stable Diffusion checkpoint file.",
    ),
    NodeSpec(
        "text_encode",
        "Text Encode",
        "conditioning",
        _run("text_encode", lambda ctx, clip, text: f"cond({text})"),
        inputs=(
            InputSpec("clip", T.CLIP),
            InputSpec("text", T.STRING, default="", multiline=True),
        ),
        outputs=(OutputSpec("conditioning", T.CONDITIONING),),
        description="Turns a prompt into conditioning.",
    ),
    NodeSpec(
        "empty_latent",
        "Empty Latent Image",
        "latent",
        _run("empty_latent", lambda ctx, width, height, batch_size: "latent"),
        inputs=(
            InputSpec("width", T.INT, default=512, min=64, max=4096, step=8),
            InputSpec("height", T.INT, default=512, min=64, max=4096, step=8),
            InputSpec("batch_size", T.INT, default=1, min=1, max=64),
        ),
        outputs=(OutputSpec("latent", T.LATENT),),
    ),
    NodeSpec(
        "sampler",
        "Sampler",
        "sampling",
        _run("sampler", lambda ctx, **kw: "latent"),
        inputs=(
            InputSpec("model", T.MODEL),
            InputSpec("positive", T.CONDITIONING),
            InputSpec("negative", T.CONDITIONING),
            InputSpec("latent", T.LATENT),
            InputSpec("seed", T.INT, default=0, min=0, max=2**32 - 1, seed=True),
            InputSpec("steps", T.INT, default=20, min=1, max=150),
            InputSpec("cfg", T.FLOAT, default=7.0, min=0.0, max=30.0, step=0.5),
            InputSpec("sampler_name", T.CHOICE, choices=SAMPLERS, default="euler"),
            InputSpec("scheduler", T.CHOICE, choices=SCHEDULERS, default="normal"),
            InputSpec("denoise", T.FLOAT, default=1.0, min=0.0, max=1.0, step=0.01),
        ),
        outputs=(OutputSpec("latent", T.LATENT),),
        description="Denoises a latent with a model and conditioning.",
    ),
    NodeSpec(
        "vae_decode",
        "VAE Decode",
        "latent",
        _run("vae_decode", lambda ctx, latent, vae: "image"),
        inputs=(InputSpec("latent", T.LATENT), InputSpec("vae", T.VAE)),
        outputs=(OutputSpec("image", T.IMAGE),),
    ),
    NodeSpec(
        "save_image",
        "Save Image",
        "image",
        _run("save_image", _show),
        inputs=(
            InputSpec("image", T.IMAGE),
            InputSpec("filename_prefix", T.STRING, default="studio"),
        ),
        output_node=True,
    ),
    # Small computing nodes for engine checks: "images" are numbers here.
    NodeSpec(
        "make_image",
        "Make Image",
        "image",
        _run("make_image", lambda ctx, value: value),
        inputs=(InputSpec("value", T.INT, default=1, min=0, max=1000),),
        outputs=(OutputSpec("image", T.IMAGE),),
    ),
    NodeSpec(
        "brighten",
        "Brighten",
        "image",
        _run("brighten", lambda ctx, image, amount: image + amount),
        inputs=(
            InputSpec("image", T.IMAGE),
            InputSpec("amount", T.INT, default=10, min=0, max=100),
        ),
        outputs=(OutputSpec("image", T.IMAGE),),
        description="Adds to every pixel.",
    ),
    NodeSpec(
        "show_image",
        "Show Image",
        "image",
        _run("show_image", _show),
        inputs=(InputSpec("image", T.IMAGE),),
        output_node=True,
    ),
    NodeSpec(
        "number",
        "Number",
        "utility",
        _run("number", lambda ctx, value: value),
        inputs=(InputSpec("value", T.INT, default=1, min=-1000, max=1000),),
        outputs=(OutputSpec("value", T.INT),),
    ),
    NodeSpec(
        "toggle",
        "Toggle",
        "utility",
        _run("toggle", lambda ctx, on: on),
        inputs=(InputSpec("on", T.BOOLEAN, default=False),),
        outputs=(OutputSpec("on", T.BOOLEAN),),
    ),
]


def gui_registry() -> Registry:
    return Registry(GUI_SPECS)


def txt2img(registry: Registry) -> Workflow:
    """The usual text-to-image graph, laid out as an artist would."""
    wf = Workflow(registry)
    ck = wf.add_node("load_checkpoint", pos=(40, 180), id="ckpt")
    pos = wf.add_node(
        "text_encode",
        {"text": "a lighthouse on a cliff at dusk, volumetric light, oil painting"},
        pos=(380, 60),
        id="pos",
        title="Positive",
    )
    neg = wf.add_node(
        "text_encode", {"text": "blurry, low quality"}, pos=(380, 300), id="neg", title="Negative"
    )
    lat = wf.add_node("empty_latent", pos=(380, 520), id="latent")
    smp = wf.add_node("sampler", {"seed": 1234}, pos=(720, 160), id="sampler")
    dec = wf.add_node("vae_decode", pos=(1060, 200), id="decode")
    save = wf.add_node("save_image", pos=(1320, 200), id="save")
    wf.connect(ck.id, "clip", pos.id, "clip")
    wf.connect(ck.id, "clip", neg.id, "clip")
    wf.connect(ck.id, "model", smp.id, "model")
    wf.connect(pos.id, "conditioning", smp.id, "positive")
    wf.connect(neg.id, "conditioning", smp.id, "negative")
    wf.connect(lat.id, "latent", smp.id, "latent")
    wf.connect(smp.id, "latent", dec.id, "latent")
    wf.connect(ck.id, "vae", dec.id, "vae")
    wf.connect(dec.id, "image", save.id, "image")
    return wf


def big_workflow(registry: Registry, n: int = 1000, columns: int = 40) -> Workflow:
    """``n`` nodes in chains of image nodes, each linked to the one before it."""
    wf = Workflow(registry)
    prev = None
    for i in range(n):
        col, row = i % columns, i // columns
        pos = (col * 280.0, row * 200.0)
        if col == 0:
            node = wf.add_node("make_image", pos=pos)
        else:
            node = wf.add_node("brighten", pos=pos)
            wf.connect(prev, "image", node.id, "image")
        prev = node.id
    return wf


# -- fixtures (imported by the GUI test modules) ----------------------------------------------

try:
    import pytest
except ImportError:  # benchmarks import this module without pytest
    pytest = None  # type: ignore[assignment]

if pytest is not None:

    @pytest.fixture
    def isolated_settings(tmp_path):
        """QSettings in a temp folder, so tests never touch the user's layout or recent files."""
        from PySide6.QtCore import QSettings

        QSettings.setDefaultFormat(QSettings.Format.IniFormat)
        QSettings.setPath(
            QSettings.Format.IniFormat, QSettings.Scope.UserScope, str(tmp_path / "qsettings")
        )
        return tmp_path / "qsettings"

    @pytest.fixture
    def make_window(qtbot, tmp_path, isolated_settings):
        """Build a shown main window around a workflow, with dialogs answered for tests."""
        from PySide6.QtCore import QPointF

        from studio.app.recovery import RecoveryStore
        from studio.app.theme import apply_theme
        from studio.app.window import MainWindow, UnsavedAnswer

        made = []

        def make(
            wf=None, *, registry=None, recovery_dir=None, size=(1200, 800), studio_settings=None
        ):
            reg = registry or (wf.registry if wf is not None else gui_registry())
            store = RecoveryStore(recovery_dir or tmp_path / "recovery")
            w = MainWindow(reg, autosave=False, recovery=store, studio_settings=studio_settings)
            w.interactive = False
            w.ask_unsaved = lambda: UnsavedAnswer.DISCARD
            if wf is not None:
                w.set_document(wf, None)
            qtbot.addWidget(w)
            w.resize(*size)
            w.show()
            qtbot.waitExposed(w)
            w.activateWindow()
            w.view.setFocus()
            qtbot.wait(1)  # let the deferred fit-to-window run before fixing the zoom
            w.view.set_zoom(1.0, QPointF(300, 200))
            made.append(w)
            return w

        from PySide6.QtWidgets import QApplication

        apply_theme(QApplication.instance())
        yield make
        for w in made:
            w.ask_unsaved = lambda: UnsavedAnswer.DISCARD
            w.recovery.close()
