#!/usr/bin/env bash
# Installs LibTorch 2.11.0 (the only version tch 0.24 works with) inside the repo, under
# .libtorch/, the way ../shared/GPU.md describes: three PyPI wheels, unpacked partially.
# Also NVRTC (nvidia-cuda-nvrtc, the version torch 2.11's CUDA install ships) beside it in
# the same layout, so the fused attention kernels compile in tests on machines without a
# GPU exactly as they do on GPU machines. Idempotent: a second run with a complete install
# does nothing. Prints the LIBTORCH path.
set -euo pipefail

TORCH_VERSION="2.11.0"
CUDART_VERSION="13.0.96"
CUPTI_VERSION="13.0.85"
NVRTC_VERSION="13.0.88"

root_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="${SURGERY_LIBTORCH_DIR:-$root_dir/.libtorch}"
stamp="$dest/root/INSTALLED"

need() {
    if ! command -v "$1" >/dev/null 2>&1; then
        echo "setup: '$1' is missing; install it first ($2)" >&2
        exit 2
    fi
}

# A LIBTORCH the user set by hand must be the one version tch 0.24 supports: torch-sys
# skips its own version check when LIBTORCH is set, so this is the only guard.
check_version_file() {
    local version_py="$1/version.py"
    if [ ! -f "$version_py" ]; then
        echo "setup: $1 has no version.py; cannot tell which torch it is" >&2
        exit 2
    fi
    local found
    found="$(sed -n "s/^__version__ = '\([^'+]*\).*'/\1/p" "$version_py")"
    if [ "$found" != "$TORCH_VERSION" ]; then
        echo "setup: LibTorch at $1 is version '$found'; surgery needs exactly $TORCH_VERSION (tch 0.24)" >&2
        exit 2
    fi
}

if [ -n "${LIBTORCH:-}" ] && [ "$LIBTORCH" != "$dest/root/torch" ]; then
    check_version_file "$LIBTORCH"
    echo "$LIBTORCH"
    exit 0
fi

# NVRTC into $1/nvidia/cu13/lib (where torch's own CUDA install keeps it).
install_nvrtc() {
    local root="$1"
    local nvrtc_stamp="$root/nvidia/cu13/NVRTC_INSTALLED"
    if [ -f "$nvrtc_stamp" ] && [ "$(cat "$nvrtc_stamp")" = "$NVRTC_VERSION" ]; then
        return
    fi
    need python3 "Python 3 with pip"
    need unzip "apt-get install unzip"
    mkdir -p "$dest/wheels"
    echo "setup: downloading nvidia-cuda-nvrtc==$NVRTC_VERSION (about 90 MB) into $dest/wheels" >&2
    python3 -m pip download -q --no-deps --only-binary=:all: -d "$dest/wheels" \
        "nvidia-cuda-nvrtc==$NVRTC_VERSION" >&2
    unzip -q -o "$dest"/wheels/nvidia_cuda_nvrtc-"$NVRTC_VERSION"-*.whl nvidia/cu13/lib/libnvrtc.so.13 \
        nvidia/cu13/lib/libnvrtc-builtins.so.13.0 -d "$root"
    echo "$NVRTC_VERSION" > "$nvrtc_stamp"
}

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$TORCH_VERSION" ]; then
    check_version_file "$dest/root/torch"
    install_nvrtc "$dest/root"
    echo "$dest/root/torch"
    exit 0
fi

need python3 "Python 3 with pip"
python3 -m pip --version >/dev/null 2>&1 || { echo "setup: 'pip' is missing; install it first (python3 -m ensurepip)" >&2; exit 2; }
need unzip "apt-get install unzip"
need g++ "apt-get install g++ (torch-sys compiles a C++ wrapper)"

mkdir -p "$dest/wheels"
echo "setup: downloading torch==$TORCH_VERSION wheels (about 540 MB) into $dest/wheels" >&2
python3 -m pip download -q --no-deps --only-binary=:all: -d "$dest/wheels" \
    "torch==$TORCH_VERSION" "nvidia-cuda-runtime==$CUDART_VERSION" "nvidia-cuda-cupti==$CUPTI_VERSION" >&2

shopt -s nullglob
torch_wheels=("$dest"/wheels/torch-*.whl)
if [ "${#torch_wheels[@]}" -ne 1 ]; then
    echo "setup: expected one torch wheel in $dest/wheels, found ${#torch_wheels[@]}: remove the folder and rerun" >&2
    exit 2
fi
case "$(basename "${torch_wheels[0]}")" in
    "torch-$TORCH_VERSION-"*) ;;
    *) echo "setup: downloaded $(basename "${torch_wheels[0]}"), not torch $TORCH_VERSION" >&2; exit 2 ;;
esac

rm -rf "$dest/root.tmp"
unzip -q -o "${torch_wheels[0]}" 'torch/include/*' torch/lib/libtorch_cpu.so torch/lib/libtorch.so \
    torch/lib/libc10.so torch/lib/libgomp.so.1 torch/version.py -d "$dest/root.tmp"
unzip -q -o "$dest"/wheels/nvidia_cuda_runtime-*.whl nvidia/cu13/lib/libcudart.so.13 -d "$dest/root.tmp"
unzip -q -o "$dest"/wheels/nvidia_cuda_cupti-*.whl nvidia/cu13/lib/libcupti.so.13 -d "$dest/root.tmp"
check_version_file "$dest/root.tmp/torch"
echo "$TORCH_VERSION" > "$dest/root.tmp/INSTALLED"
rm -rf "$dest/root"
mv "$dest/root.tmp" "$dest/root"
install_nvrtc "$dest/root"
echo "$dest/root/torch"
