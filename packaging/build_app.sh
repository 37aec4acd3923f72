#!/usr/bin/env bash
# Build the bundled Studio app with PyInstaller: a folder that runs without Python.
#
#   bash packaging/build_app.sh                 # CPU torch (the default: small, runs anywhere)
#   bash packaging/build_app.sh --cuda          # the CUDA build of torch (NVIDIA GPUs; ~3 GB more)
#   bash packaging/build_app.sh --torch-wheels DIR   # torch from local wheel files (offline)
#   bash packaging/build_app.sh --deps-from .venv    # reuse an environment's installed packages
#                                                    # (quick, offline; its torch build goes in)
#   --no-archive                                     # skip the .tar.gz
#
# Output (Linux): dist/Studio/ (run dist/Studio/studio) and dist/Studio-<version>-linux-x86_64.tar.gz.
# On Windows (Git Bash) and macOS the same command uses packaging/studio-windows.spec or
# packaging/studio-macos.spec (see packaging/README.md). The build uses its own virtual
# environment, build/app-venv, so the bundle holds only Studio's dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
TORCH=cpu
TORCH_WHEELS=""
DEPS_FROM=""
ARCHIVE_IT=1
while [ $# -gt 0 ]; do
    case "$1" in
        --cuda) TORCH=cuda ;;
        --cpu) TORCH=cpu ;;
        --torch-wheels) TORCH_WHEELS=$2; shift ;;
        --deps-from) DEPS_FROM=$2; shift ;;
        --no-archive) ARCHIVE_IT=0 ;;
        -h|--help) sed -n 2,16p "$0"; exit 0 ;;
        *) echo "build_app.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done

case "$(uname -s)" in
    Linux) SPEC=packaging/studio-linux.spec; PLAT=linux ;;
    Darwin) SPEC=packaging/studio-macos.spec; PLAT=macos ;;
    MINGW*|MSYS*|CYGWIN*) SPEC=packaging/studio-windows.spec; PLAT=windows ;;
    *) echo "build_app.sh: unsupported system $(uname -s)" >&2; exit 2 ;;
esac

VENV=build/app-venv-$TORCH
[ -z "$DEPS_FROM" ] || VENV=build/app-venv-shared
if [ ! -x "$VENV/bin/python" ] && [ ! -x "$VENV/Scripts/python.exe" ]; then
    "$PYTHON" -m venv "$VENV"
fi
PY=$VENV/bin/python
[ -x "$PY" ] || PY=$VENV/Scripts/python.exe
PIP=("$PY" -m pip install --quiet --disable-pip-version-check)

if [ -n "$DEPS_FROM" ]; then
    # The packages of an existing environment, found through a .pth line (its own .pth
    # files, an editable install among them, are not run); only PyInstaller and Studio
    # itself (from this checkout, not editable) are installed here.
    deps=$("$DEPS_FROM/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    site=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    echo "$deps" > "$site/_studio_build_deps.pth"
    "${PIP[@]}" 'pyinstaller>=6.10'
    "${PIP[@]}" --no-deps --force-reinstall .
else
    # torch first, from where the chosen build lives; the rest as the constraints pin it, with
    # torch held at the version just installed (so no dependency swaps in another build).
    mkdir -p build
    if [ -n "$TORCH_WHEELS" ]; then
        "${PIP[@]}" "$(ls "$TORCH_WHEELS"/torch-*.whl | sort -V | tail -1)"
    elif [ "$TORCH" = cpu ] && [ "$PLAT" != macos ]; then
        # PyPI's Linux and Windows torch is the CUDA build; the CPU build has its own index.
        "${PIP[@]}" --index-url https://download.pytorch.org/whl/cpu \
            "$(grep '^torch==' packaging/constraints.txt)" "$(grep '^torchvision==' packaging/constraints.txt)"
    else
        # --cuda (Linux: PyPI's default build; Windows: see packaging/README.md), or macOS,
        # where PyPI's torch is the CPU + MPS build.
        "${PIP[@]}" -c packaging/constraints.txt torch torchvision
    fi
    {
        grep -v '^torch' packaging/constraints.txt
        echo "torch==$("$PY" -c 'import importlib.metadata as m; print(m.version("torch"))')"
    } > build/constraints-app.txt
    # With --torch-wheels, torchvision comes from DIR too when it is there: PyPI's Linux
    # torchvision is built against CUDA torch, and its operators do not load with CPU torch.
    "${PIP[@]}" ${TORCH_WHEELS:+--find-links "$TORCH_WHEELS"} -c build/constraints-app.txt \
        torchvision . 'pyinstaller>=6.10'
fi

# The modules Studio imports by name at run time (lazy diffusers/transformers modules, the
# node library): traced by running every default workflow, read by the spec.
"$PY" packaging/trace_imports.py build/traced-modules.txt

"$PY" -m PyInstaller --noconfirm --clean --log-level WARN \
    --distpath dist --workpath build/pyinstaller "$SPEC"

VERSION=$("$PY" -c 'from studio.about import version; print(version())')
if [ "$PLAT" = linux ]; then
    mkdir -p dist/Studio/share/icons
    cp packaging/linux/studio.desktop packaging/linux/studio-mime.xml \
        packaging/linux/install-desktop.sh dist/Studio/share/
    cp -r packaging/icons/studio.svg packaging/icons/png dist/Studio/share/icons/
    echo "built dist/Studio ($(du -sh dist/Studio | cut -f1))"
    if [ "$ARCHIVE_IT" = 1 ]; then
        ARCHIVE=dist/Studio-$VERSION-linux-x86_64.tar.gz
        tar -C dist -czf "$ARCHIVE" Studio
        echo "archived $ARCHIVE ($(du -sh "$ARCHIVE" | cut -f1))"
    fi
else
    echo "built $(ls -d dist/Studio*)"
fi
