"""What a cold start imports: validating and loading stay off torch; a run imports the model
classes it uses, not their whole families."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = sorted((ROOT / "resources" / "workflows").glob("*.json"))


def _python(
    code: str, tmp_path: Path, extra_path: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(str(p) for p in (ROOT, extra_path) if p),
        STUDIO_DATA_DIR=str(tmp_path / "data"),
        STUDIO_CONFIG_DIR=str(tmp_path / "config"),
        HF_HUB_OFFLINE="1",
        OMP_NUM_THREADS="1",
    )
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *map(str, WORKFLOWS)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_validate_and_loading_a_workflow_never_import_torch_or_diffusers(tmp_path):
    assert WORKFLOWS
    proc = _python(
        """
        import contextlib, io, sys
        from studio.cli import main
        from studio.graph.fileformat import load_workflow
        from studio.library import installed_registry

        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            codes = [main(["validate", path]) for path in sys.argv[1:]]
        reg = installed_registry()
        for path in sys.argv[1:]:
            load_workflow(path, reg)
        heavy = sorted({m.split(".")[0] for m in sys.modules} & {"torch", "diffusers", "transformers"})
        print(codes, heavy)
        print(out.getvalue())
        """,
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    first = proc.stdout.splitlines()[0]
    assert first == f"{[0] * len(WORKFLOWS)} []", proc.stdout
    assert proc.stdout.count(": ok (") == len(WORKFLOWS)


def test_a_run_imports_its_model_classes_not_their_families(tmp_path):
    proc = _python(
        """
        import sys
        from nodes.sdload import preload

        preload()  # what a txt2img run imports (the app does it in the background)
        zoo = [m for m in sys.modules if m.startswith((
            "diffusers.models.transformers.transformer_flux",
            "diffusers.models.unets.unet_3d_condition",
            "diffusers.models.autoencoders.autoencoder_kl_wan",
        ))]
        print("zoo", zoo)
        # The rest of a family is still there for whoever asks for it.
        import diffusers
        from diffusers.models.unets import UNet3DConditionModel
        print(diffusers.FluxTransformer2DModel.__name__, UNet3DConditionModel.__name__)
        print(diffusers.UNet2DConditionModel.__module__)
        """,
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "zoo []", proc.stdout
    assert lines[1] == "FluxTransformer2DModel UNet3DConditionModel"
    assert lines[2] == "diffusers.models.unets.unet_2d_condition"


def test_transformers_models_are_not_all_scanned_and_still_all_there(tmp_path):
    """transformers' ``models/__init__`` reads every model folder to build its import table
    (about half a second); a run imports its model classes without it, and whoever asks
    for the whole family still gets every model."""
    proc = _python(
        """
        import sys
        from nodes.sdload import preload

        preload()
        pkg = sys.modules["transformers.models"]
        lazy = type(pkg).__name__ == "_LazyPackage"  # Studio's stand-in, its __init__ not run
        print("scanned", not lazy or bool(pkg.__dict__.get("_studio_complete")))
        import transformers
        from transformers import AutoConfig, CLIPTextModel, T5EncoderModel
        from transformers.models.t5 import modeling_t5
        cfg = AutoConfig.for_model("t5", d_model=8, num_layers=1, num_heads=1, d_kv=8, d_ff=8)
        print(type(cfg).__name__, CLIPTextModel.__name__, T5EncoderModel is modeling_t5.T5EncoderModel)
        print(transformers.models.bert.BertModel.__name__)
        """,
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "scanned False", proc.stdout
    assert lines[1] == "T5Config CLIPTextModel True"
    assert lines[2] == "BertModel"


def test_a_cold_run_never_imports_torch_dynamo_and_compile_still_works(tmp_path):
    """torch._dynamo (torch.compile's front end) costs about one ``import torch``; the
    libraries import it for decorators only (nodes/fastimport.py defers them). A run does
    without it; importing it later hands it what was deferred, as if it had come first."""
    txt2img = ROOT / "resources" / "workflows" / "txt2img.json"
    proc = _python(
        f"""
        import contextlib, io, sys
        from pathlib import Path
        from studio.cli import main

        with contextlib.redirect_stdout(io.StringIO()):
            code = main(["run", {str(txt2img)!r}, "--out", {str(tmp_path / "out")!r}])
        print(code, sorted(p.name for p in Path({str(tmp_path / "out")!r}).glob("*.png")))
        print("dynamo", "torch._dynamo" in sys.modules)
        print("loaded", sorted(m for m in sys.modules if m.startswith("torch._dynamo")))

        import torch
        import torch._dynamo
        from torch._dynamo import trace_rules
        from diffusers.hooks.group_offloading import ModuleGroup
        from diffusers.models.attention import BasicTransformerBlock
        from transformers.masking_utils import TransformGetItemToIndex

        print("real", type(torch._dynamo).__name__, hasattr(torch._dynamo, "optimize"))
        print("allowed", trace_rules.is_callable_allowed(BasicTransformerBlock))
        print("disabled", getattr(ModuleGroup.onload_, "_torchdynamo_disable", False))
        print("helper", TransformGetItemToIndex.__module__)
        twice = torch.compile(lambda x: x * 2, backend="eager", fullgraph=True)
        print("compiled", twice(torch.ones(2)).tolist())
        """,
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "0 ['txt2img_00001.png']", proc.stdout
    assert lines[1] == "dynamo False", proc.stdout
    # Only the one helper module dynamo's own __init__ does not need.
    assert lines[2] == "loaded ['torch._dynamo._trace_wrapped_higher_order_op']"
    assert lines[3:] == [
        "real module True",
        "allowed True",
        "disabled True",
        "helper torch._dynamo._trace_wrapped_higher_order_op",
        "compiled [2.0, 2.0]",
    ], proc.stdout


#: What a txt2img run does without (nodes/fastimport.py's DEFERRALS): torch's tensor
#: parallelism and flex attention (they import sympy), scipy (beta sigmas, LMS
#: integration, object-detection losses), peft (LoRA), transformers' parallel styles,
#: requests (diffusers' downloads from a URL), transformers' processors (their image
#: utilities import torchvision).
DEFERRED = (
    "peft",
    "requests",
    "scipy.integrate",
    "scipy.optimize",
    "scipy.stats",
    "sympy",
    "torch.distributed.fsdp",
    "torch.distributed.tensor",
    "torch.nn.attention.flex_attention",
    "torchvision",
    "transformers.distributed.tensor_parallel",
    "transformers.image_utils",
    "transformers.integrations.flex_attention",
    "transformers.processing_utils",
)


def test_a_cold_run_defers_what_it_never_uses_and_using_it_gets_the_real_thing(tmp_path):
    """Each deferred module is imported the moment something uses it, and the libraries'
    modules that took names from it then hold its own objects."""
    txt2img = ROOT / "resources" / "workflows" / "txt2img.json"
    proc = _python(
        f"""
        import contextlib, io, sys
        from pathlib import Path
        from studio.cli import main

        with contextlib.redirect_stdout(io.StringIO()):
            code = main(["run", {str(txt2img)!r}, "--out", {str(tmp_path / "out")!r}])
        print(code, sorted(p.name for p in Path({str(tmp_path / "out")!r}).glob("*.png")))
        print("imported", [m for m in {DEFERRED!r} if m in sys.modules])
        stand_ins = [m for m, v in sys.modules.items() if type(v).__name__ == "_ModuleStandIn"]
        print("stand-ins", stand_ins)

        import numpy as np
        import torch
        from diffusers.loaders import lora_base
        from diffusers.utils.peft_utils import scale_lora_layers
        from transformers.distributed import sharding_utils
        from transformers.distributed.utils import is_dtensor

        # Nothing is an instance of what is not imported; the LoRA scaling around every
        # forward is a no-op without peft.
        print("before", isinstance(torch.nn.Linear(1, 1), lora_base.BaseTunerLayer),
              is_dtensor(torch.ones(1)), scale_lora_layers(torch.nn.Linear(1, 1), 0.5))

        # Beta sigmas (scipy.stats), LMS coefficients (scipy.integrate).
        from diffusers import EulerDiscreteScheduler, LMSDiscreteScheduler
        euler = EulerDiscreteScheduler(use_beta_sigmas=True)
        euler.set_timesteps(4)
        lms = LMSDiscreteScheduler()
        lms.set_timesteps(4)
        print("schedulers", len(euler.sigmas), round(float(lms.get_lms_coefficient(2, 1, 0)), 3))

        # The object-detection losses' Hungarian matching (scipy.optimize).
        import scipy.optimize
        from transformers.loss import loss_for_object_detection as od
        rows, cols = od.linear_sum_assignment(np.array([[1.0, 0.0], [0.0, 1.0]]))  # least cost: swap
        print("matching", cols.tolist(), od.linear_sum_assignment is scipy.optimize.linear_sum_assignment)

        # peft, DTensor, flex attention, parallel styles: the real ones.
        import peft.tuners.tuners_utils
        import torch.distributed.tensor
        import torch.nn.attention.flex_attention as flex
        import transformers.integrations.flex_attention
        import transformers.masking_utils
        import transformers.modeling_utils
        from transformers.distributed.parallel_utils import ALL_PARALLEL_STYLES
        print("real", lora_base.BaseTunerLayer is peft.tuners.tuners_utils.BaseTunerLayer,
              sharding_utils.DTensor is torch.distributed.tensor.DTensor,
              transformers.masking_utils.BlockMask is flex.BlockMask,
              transformers.modeling_utils.flex_attention_forward
              is transformers.integrations.flex_attention.flex_attention_forward)
        print("styles", "colwise" in ALL_PARALLEL_STYLES, "grouped_gemm" in ALL_PARALLEL_STYLES)
        import transformers
        from diffusers.loaders import single_file_utils
        auto = transformers.AutoImageProcessor
        print("auto", auto.__module__, single_file_utils.AutoImageProcessor is auto)
        import requests
        from diffusers.utils import loading_utils
        print("requests", loading_utils.requests is requests, single_file_utils.requests is requests)
        # The model modules took typing's Unpack; the processors are all there.
        import typing
        from transformers.models.clip import modeling_clip
        from transformers import CLIPImageProcessor, processing_utils
        print("unpack", modeling_clip.Unpack is typing.Unpack is processing_utils.Unpack,
              CLIPImageProcessor.__name__, "torchvision" in sys.modules)
        """,
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "0 ['txt2img_00001.png']", proc.stdout
    assert lines[1] == "imported []", proc.stdout
    assert lines[2] == "stand-ins []", proc.stdout
    assert lines[3:] == [
        "before False False None",
        "schedulers 5 -8.244",
        "matching [1, 0] True",
        "real True True True True",
        "styles True True",
        "auto transformers.models.auto.image_processing_auto True",
        "requests True True",
        "unpack True CLIPImageProcessor True",
    ], proc.stdout


def test_the_other_default_workflows_stay_off_the_compiler_and_other_model_families(tmp_path):
    """SD3, ControlNet (with its Canny annotator), LoRA, img2img and inpaint runs import
    their own classes: not torch.compile's front end, not diffusers' pipelines, not every
    annotator of controlnet-aux (with timm's model zoo), not every diffusion transformer,
    not torch's distributed tensors (peft's import of transformers' tensor parallelism)."""
    names = ["txt2img_sd3", "controlnet", "lora", "img2img", "inpaint"]
    proc = _python(
        f"""
        import contextlib, io, sys
        from pathlib import Path
        from studio.cli import main

        root = Path({str(ROOT / "resources" / "workflows")!r})
        out = Path({str(tmp_path / "out")!r})
        codes = []
        with contextlib.redirect_stdout(io.StringIO()):
            for name in {names!r}:
                codes.append(main(["run", str(root / (name + ".json")), "--out", str(out)]))
        print(codes, len(list(out.glob("*.png"))) >= {len(names)})
        print("loaded", sorted(m for m in sys.modules if m.startswith((
            "torch._dynamo.",  # a helper module counts only with the package
            "diffusers.pipelines.stable_diffusion.",
            "diffusers.models.transformers.transformer_flux",
            "diffusers.models.transformers.auraflow",
            "controlnet_aux.midas",
            "timm",
            "torchvision",
            "torch.distributed.tensor",  # peft's check for sharded weights (with sympy)
            "sympy",
        )) and m != "torch._dynamo._trace_wrapped_higher_order_op"))
        print("dynamo", "torch._dynamo" in sys.modules)
        # peft looks for DTensors only once torch's distributed tensors are imported
        from peft.tuners import tuners_utils
        before = bool(tuners_utils._torch_supports_distributed)
        import torch.distributed.tensor
        print("dtensor check", before, bool(tuners_utils._torch_supports_distributed))
        """,
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == f"{[0] * len(names)} True", proc.stdout
    assert lines[1:] == ["loaded []", "dynamo False", "dtensor check False True"], proc.stdout


def test_the_libraries_import_scans_are_kept_on_disk_and_redone_when_unusable(tmp_path):
    """diffusers reads the file list of every installed distribution as it is imported,
    transformers every model folder (together about a second); Studio keeps both results
    in its cache folder (written when scanned), and a cache file it cannot use is a scan
    again. Processes with other folders on ``sys.path`` (the app and the command line, two
    checkouts) keep their own files: taking turns, neither scans again."""
    code = """
        from nodes.sdload import preload

        preload()
        import diffusers, transformers
        from transformers.utils import import_utils
        print(diffusers.utils.is_transformers_available(), import_utils._package_distribution_mapping().get("PIL"))
        print(transformers.models.bert.BertModel.__name__, transformers.AutoConfig.__name__)
        """
    cache = tmp_path / "data" / "cache" / "imports"
    elsewhere = tmp_path / "elsewhere"  # another folder on sys.path
    elsewhere.mkdir()

    def run(extra_path: Path | None = None) -> dict[str, int]:
        proc = _python(code, tmp_path, extra_path)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.splitlines() == ["True ['pillow']", "BertModel AutoConfig"]
        return {f.name: f.stat().st_mtime_ns for f in cache.glob("*.json")}

    scanned = run()
    names = sorted(scanned)
    assert [n.split("-")[0] for n in names] == ["packages_distributions", "transformers_models"]
    assert run() == scanned  # read, not written again
    # Another sys.path: its own distributions file, the same models file.
    other = run(elsewhere)
    assert len(other) == 3 and all(other[n] == scanned[n] for n in names)
    assert run() == other and run(elsewhere) == other  # taking turns: no scan
    # A file in a folder on sys.path that is no distribution's: no scan either.
    (elsewhere / "notes").mkdir()
    assert run(elsewhere) == other
    # A distribution installed there: that process scans again.
    (elsewhere / "newpkg-1.0.dist-info").mkdir()
    assert run(elsewhere) != other
    (cache / names[0]).write_bytes(b"not JSON")
    again = run()
    assert again[names[0]] != scanned[names[0]] and again[names[1]] == scanned[names[1]]
    assert (cache / names[0]).read_bytes() != b"not JSON"


def test_a_cold_run_keeps_off_sympy_and_torch_compile_still_gets_the_real_symbolic_shapes(tmp_path):
    """torch's meta-device kernels (where transformers builds every model) import torch.fx's
    symbolic shapes, and with it sympy, for a few checks on plain numbers; a run answers those
    from a stand-in. Shape-dynamic compiling, attribute paths and top-level imports still get
    the real module."""
    txt2img = ROOT / "resources" / "workflows" / "txt2img.json"
    proc = _python(
        f"""
        import contextlib, io, sys
        from studio.cli import main

        name = "torch.fx.experimental.symbolic_shapes"
        with contextlib.redirect_stdout(io.StringIO()):
            code = main(["run", {str(txt2img)!r}, "--out", {str(tmp_path / "out")!r}])
        print(code, "sympy" in sys.modules, type(sys.modules[name]).__name__)

        import torch
        import torch.fx.experimental.symbolic_shapes as ss  # the stand-in, for now

        def plain():  # as torch's kernels ask, importing as they run
            from torch.fx.experimental.symbolic_shapes import (
                guard_or_false, guard_or_true, is_nested_int, sym_eq
            )
            return (guard_or_false(True), guard_or_true(False), sym_eq((1, 2), [1, 2]),
                    sym_eq((1, 2), (1, 3)), is_nested_int(3))

        print("plain", *plain(), "sympy" in sys.modules)
        meta = torch.empty_like(torch.ones(2, 3, device="meta"), device="cpu")
        torch._check(meta.shape[0] == 2)
        print("meta", tuple(meta.shape), "sympy" in sys.modules)

        double = torch.compile(lambda x: x * x.shape[0], backend="eager", dynamic=True)
        print("compiled", double(torch.ones(2)).tolist(), double(torch.ones(3)).tolist())
        real = sys.modules[name]
        print("real", type(real).__name__, "sympy" in sys.modules,
              torch.fx.experimental.symbolic_shapes is real, ss.ShapeEnv is real.ShapeEnv,
              ss.guard_or_false is real.guard_or_false)
        """,
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "0 False _SymbolicShapesStandIn",
        "plain True False True False False False",
        "meta (2, 3) False",
        "compiled [2.0, 2.0] [3.0, 3.0, 3.0]",
        "real module True True True True",
    ], proc.stdout


def test_the_symbolic_shapes_stand_in_answers_plain_numbers_as_the_real_module_does():
    import torch.fx.experimental.symbolic_shapes as real

    from nodes import fastimport

    fast = fastimport._PLAIN_SYMBOLIC
    for name in ("expect_true", "guard_or_false", "guard_or_true", "guard_size_oblivious"):
        for value in (True, False):
            assert fast[name](value) is getattr(real, name)(value)
    pairs = [(1, 1), (1, 2), ((1, 2), [1, 2]), ((1, 2), (1,)), ([], ()), ((1, (2, 3)), (1, (2, 4)))]
    for x, y in pairs:
        assert fast["sym_eq"](x, y) == real.sym_eq(x, y)
    for value in (0, 3, 2.5, True):
        assert fast["is_nested_int"](value) is real.is_nested_int(value)
    # What it does not answer itself, the real module does (errors included).
    with pytest.raises(AssertionError) as real_error:
        real.sym_eq((1,), 1)
    with pytest.raises(AssertionError, match=re.escape(str(real_error.value))):
        fast["sym_eq"]((1,), 1)


def test_an_upscaler_run_keeps_off_torchvision_and_the_architectures_that_use_it_still_work(
    tmp_path,
):
    """spandrel imports every architecture's code to read an upscaler; the two that take
    torchvision's image functions (LaMa, RestoreFormer) get them when one of them runs."""
    hires = ROOT / "resources" / "workflows" / "hires_upscale.json"
    proc = _python(
        f"""
        import contextlib, io, sys
        from pathlib import Path
        from studio.cli import main

        with contextlib.redirect_stdout(io.StringIO()):
            code = main(["run", {str(hires)!r}, "--out", {str(tmp_path / "out")!r}])
        print(code, len(list(Path({str(tmp_path / "out")!r}).glob("*.png"))))
        print("torchvision", "torchvision" in sys.modules, "spandrel" in sys.modules)

        import importlib
        import torch
        lama = importlib.import_module("spandrel.architectures.LaMa.__arch.LaMa")
        restore = importlib.import_module("spandrel.architectures.RestoreFormer")
        x = torch.arange(16.0).reshape(1, 1, 4, 4)
        turned = lama.rotate(x, 90.0, lama.InterpolationMode.BILINEAR, fill=0)
        import torchvision.transforms.functional as tvf
        print("rotate", torch.equal(turned, torch.rot90(x, 1, (2, 3))),
              lama.rotate is tvf.rotate, lama.InterpolationMode is tvf.InterpolationMode,
              restore.tv_normalize is tvf.normalize)
        """,
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines == ["0 1", "torchvision False True", "rotate True True True True"], proc.stdout
