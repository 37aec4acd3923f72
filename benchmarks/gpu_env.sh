# Sourced by the scripts a session runs on a lent GPU machine (gpu_check.sh, gpu_train_flux.sh):
# `gpu_env NAME` goes to the repository root, picks the Python, installs the wheels carried in
# .whl/ (made here by gpu_wheels.sh) when that Python lacks diffusers, puts the checkout on
# PYTHONPATH, and ends the calling script with "NAME: ... skipped" (exit 0) without CUDA.
gpu_env() {
    cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
    export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
    PY=${PYTHON:-}
    if [ -z "$PY" ]; then
        if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
    fi
    if ls .whl/*.whl >/dev/null 2>&1 && ! "$PY" -c "import diffusers" 2>/dev/null; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/site .whl/*.whl || exit 1
        export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
    fi
    export PYTHONPATH=$PWD:${PYTHONPATH:-}
    if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
        echo "$1: no CUDA GPU on this machine: skipped"
        exit 0
    fi
}
