"""List the modules Studio imports at run time, for the bundle's hidden imports.

diffusers, transformers and Studio's node library import much of their code by name
(lazy modules, ``importlib``), which PyInstaller's static analysis cannot see. This
runs every default workflow (few steps, 64x64, offline) in the build environment and
writes the names of all imported modules, one a line, to the file given:

    python packaging/trace_imports.py build/traced-modules.txt
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
_home = tempfile.mkdtemp(prefix="studio-trace-")
os.environ["STUDIO_CONFIG_DIR"] = str(Path(_home, "config"))
os.environ["STUDIO_DATA_DIR"] = str(Path(_home, "data"))


def main(out: str) -> int:
    import torch

    torch.set_num_threads(1)
    from studio import load_workflow
    from studio.engine import Engine
    from studio.library import installed_registry
    from studio.modelfiles import RESOURCES

    reg = installed_registry()
    engine = Engine(reg)
    failed = []
    for path in sorted((RESOURCES / "workflows").glob("*.json")):
        wf = load_workflow(path, reg)
        for node in wf.nodes:
            if "steps" in node.params:
                wf.set_param(node.id, "steps", 2)
        result = engine.run(wf)
        if result.errors:
            failed.append(f"{path.name}: {result.errors}")
    # The single-file checkpoint loader too (the default workflows use the folder).
    wf = load_workflow(RESOURCES / "workflows" / "txt2img.json", reg)
    for node in wf.nodes:
        if node.type == "load_checkpoint":
            wf.set_param(node.id, "ckpt_name", "studio-tiny.safetensors")
        if "steps" in node.params:
            wf.set_param(node.id, "steps", 2)
    engine.run(wf)

    import studio.app.window
    import studio.cli  # noqa: F401

    names = sorted(n for n in sys.modules if not n.startswith("__"))
    Path(out).write_text("\n".join(names) + "\n")
    print(f"traced {len(names)} modules into {out}")
    if failed:
        print("workflows that failed while tracing:\n  " + "\n  ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "build/traced-modules.txt"))
