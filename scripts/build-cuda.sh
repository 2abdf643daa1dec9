#!/usr/bin/env bash
# Build the CUDA programs of cuda_src/ (ap-bandwidth, ap-gpumem, ap-selftest) into cuda_src/bin/.
#
# Without nvcc this is a no-op that exits 0 (most developer machines and CI have no CUDA).
# With nvcc it finds cuBLAS, in this order: $CUBLAS_HOME; the CUDA toolkit's own; a wheel already
# unpacked in .deps/cublas; the nvidia-cublas wheel of nvcc's major version, installed now into
# .deps/cublas with $PIP (default: the project venv's pip). Then it runs make; a build break
# fails the script.
#
# Environment: NVCC (default nvcc), CUBLAS_HOME, PIP, BIN_DIR (default cuda_src/bin), GENCODE (nvcc
# -gencode flags; default: every architecture the Makefile lists; one is quicker on a known GPU).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
NVCC=${NVCC:-nvcc}

if ! command -v "$NVCC" >/dev/null 2>&1; then
    echo "nvcc not found: skipping CUDA build"
    exit 0
fi

major=$("$NVCC" --version | sed -n 's/.*release \([0-9][0-9]*\)\..*/\1/p' | head -n 1)
if [[ -z "$major" ]]; then
    echo "build-cuda: cannot read the CUDA version from '$NVCC --version'" >&2
    exit 1
fi
toolkit=$("$NVCC" -dryrun -c -x cu /dev/null -o /dev/null 2>&1 | sed -n 's|^#\$ TOP=\(.*\)/bin/\.\.$|\1|p' | head -n 1)

# The wheel layout changed with CUDA 13: nvidia/cu13/{include,lib}; before: nvidia/cublas/...
if (( major >= 13 )); then
    wheel="nvidia-cublas==${major}.*"
    wheel_home="$root/.deps/cublas/nvidia/cu${major}"
else
    wheel="nvidia-cublas-cu${major}"
    wheel_home="$root/.deps/cublas/nvidia/cublas"
fi

has_cublas() { [[ -n "$1" && -f "$1/include/cublas_v2.h" ]] && compgen -G "$1/lib*/libcublas.so*" >/dev/null; }

if [[ -n "${CUBLAS_HOME:-}" ]]; then
    has_cublas "$CUBLAS_HOME" || { echo "build-cuda: CUBLAS_HOME=$CUBLAS_HOME has no cuBLAS" >&2; exit 1; }
elif has_cublas "$toolkit"; then
    CUBLAS_HOME=$toolkit
elif has_cublas "$wheel_home"; then
    CUBLAS_HOME=$wheel_home
else
    pip=${PIP:-$root/.venv/bin/pip}
    if [[ ! -x "$pip" ]]; then pip="python3 -m pip"; fi
    echo "build-cuda: no cuBLAS in $toolkit; installing $wheel into .deps/cublas"
    rm -rf "$root/.deps/cublas"
    # --no-deps: only headers and libraries are wanted, not the Python packaging around them.
    $pip install --quiet --disable-pip-version-check --no-deps --target "$root/.deps/cublas" "$wheel"
    has_cublas "$wheel_home" || { echo "build-cuda: $wheel did not provide $wheel_home" >&2; exit 1; }
    CUBLAS_HOME=$wheel_home
fi

echo "build-cuda: nvcc $major ($toolkit), cuBLAS from $CUBLAS_HOME"
make -C "$root/cuda_src" NVCC="$NVCC" CUBLAS_HOME="$CUBLAS_HOME" ${BIN_DIR:+BIN_DIR="$BIN_DIR"} ${GENCODE:+GENCODE="$GENCODE"}
