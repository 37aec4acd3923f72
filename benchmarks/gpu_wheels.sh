#!/usr/bin/env bash
# Download (here, where PyPI is reachable) the wheels the GPU machine lacks into .whl/, for
# benchmarks/gpu_check.sh to install there: that machine has Python 3.12 with torch,
# transformers, safetensors, numpy, pillow, opencv, timm, scikit-image, but no diffusers and
# no network. Keep .whl/ out of git (.git/info/exclude) and carry it to the machine.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >>.git/info/exclude
want() { .venv/bin/pip show "$1" 2>/dev/null | awk '/^Version/{print $2}'; }
for spec in "diffusers==$(want diffusers)" "platformdirs==$(want platformdirs)" \
    "spandrel==$(want spandrel)" "controlnet-aux==$(want controlnet-aux)" \
    "torchsde==$(want torchsde)" trampoline importlib_metadata lazy-importer zipp gguf; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
        -d .whl "$spec" 2>&1 | grep -v '^WARNING: Location' || true
done
du -sh .whl
