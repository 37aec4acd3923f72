"""What a cold start imports: validating and loading stay off torch; a run imports the model
classes it uses, not their whole families."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = sorted((ROOT / "resources" / "workflows").glob("*.json"))


def _python(code: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = dict(
        os.environ,
        PYTHONPATH=str(ROOT),
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
