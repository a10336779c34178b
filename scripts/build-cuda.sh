#!/usr/bin/env bash
# Build genie with the `cuda` feature on a machine that reaches only the package registries
# (no CUDA install, no GPU): nvcc, headers and libraries come from NVIDIA's CUDA wheels on PyPI.
#
#   scripts/build-cuda.sh                 # -> target/cuda/release/genie (+ the libraries it needs)
#   CUDA_COMPUTE_CAP=80 scripts/build-cuda.sh   # another GPU generation (default 90: Hopper, H100/H200)
#   GENIE_CUDNN=1 scripts/build-cuda.sh   # also cuDNN convolutions (feature `cudnn`, cuDNN 9 for CUDA 13)
#
# Each build is also kept as target/cuda/genie-sm<CAP>[-cudnn], so both flavours can coexist.
#
# Targets CUDA 13.0 (NVIDIA driver ≥ 580) and one compute capability (CUDA_COMPUTE_CAP, default 90 =
# sm_90, Hopper). candle's kernels are compiled for that capability only.
#
# With CAP 90 candle compiles its kernels for sm_90a: they run on Hopper (H100/H200) only.
#
# At run time the binary needs, on the GPU machine: libcuda.so.1 (the driver's), and
# libcublas.so.13, libcublasLt.so.13, libcudart.so.13, libcurand.so.10, libnvrtc.so.13 (and
# libcudnn.so.9 with GENIE_CUDNN=1) — a PyTorch cu13x install has them under
# site-packages/nvidia/*/lib; this script also copies the wheels' copies next to the binary
# (target/cuda/release/cuda-libs/, not cuDNN's ~1 GB): run with
#   LD_LIBRARY_PATH=target/cuda/release/cuda-libs ./genie …
#
# burn's own `cuda` backend is not built: cubecl-cuda's build script downloads LLVM from GitHub
# (or needs LLVM_SYS_231_PREFIX pointing at an LLVM 23.1 install). The live classifier runs on
# burn's CPU backend; the diffusion engine, the expensive part, runs on the GPU through candle.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

CUDA_VERSION=13.0
COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
features=cuda
flavour="sm$COMPUTE_CAP"
libs="libcublas.so.13 libcublasLt.so.13 libcudart.so.13 libcurand.so.10 libnvrtc.so.13"
if [ "${GENIE_CUDNN:-0}" = 1 ]; then
    features=cuda,cudnn
    flavour="$flavour-cudnn"
fi
toolchain="$root/target/cuda-toolchain"
venv="$toolchain/venv"
links="$toolchain/link"

# 1. nvcc, headers and libraries from the wheels, every NVIDIA package on the same minor version
#    (a newer nvvm writes PTX that the older ptxas refuses).
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet \
    "nvidia-cuda-nvcc==13.0.88" "nvidia-nvvm==13.0.88" "nvidia-cuda-crt==13.0.88" \
    "nvidia-cuda-runtime==$CUDA_VERSION.*" "nvidia-cuda-cccl==$CUDA_VERSION.*" \
    "nvidia-cublas==$CUDA_VERSION.*" "nvidia-curand==10.4.0.*" "nvidia-cuda-nvrtc==$CUDA_VERSION.*"
if [ "$features" = cuda,cudnn ]; then
    "$venv/bin/pip" install --quiet "nvidia-cudnn-cu13==9.*"
fi
cu13="$("$venv/bin/python" -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13"))')"
[ -x "$cu13/bin/nvcc" ] || { echo "nvcc not found under $cu13" >&2; exit 1; }

# 2. A link folder: unversioned names for the libraries, and a stub libcuda (the driver is in no
#    wheel; the real libcuda.so.1 of the GPU machine is used at run time).
mkdir -p "$links"
link_libs="$libs"
[ "$features" = cuda,cudnn ] && link_libs="$libs libcudnn.so.9"
for lib in $link_libs; do
    found="$(find "$venv" -name "$lib" | head -1)"
    [ -n "$found" ] || { echo "missing $lib in the CUDA wheels" >&2; exit 1; }
    ln -sf "$found" "$links/${lib%%.so.*}.so"
    ln -sf "$found" "$links/$lib"
done
if [ ! -f "$links/libcuda.so" ]; then
    # Every driver entry point cudarc declares, as an empty function: enough to link.
    cudarc_src="$(cargo metadata --locked --format-version 1 --features cuda \
        | "$venv/bin/python" -c 'import json, sys; m = json.load(sys.stdin); print(next(p["manifest_path"] for p in m["packages"] if p["name"] == "cudarc"))')"
    cudarc_dir="$(dirname "$cudarc_src")"
    grep -rhoE '\bcu[A-Z][A-Za-z0-9_]*(_v[0-9]+)?\b' "$cudarc_dir/src/driver/sys" \
        | sort -u | awk '{ printf "void %s(void) {}\n", $1 }' > "$toolchain/libcuda_stub.c"
    cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$links/libcuda.so" "$toolchain/libcuda_stub.c"
    echo "libcuda stub: $(grep -c . "$toolchain/libcuda_stub.c") driver symbols"
fi

# 3. The build (its own target folder: a changed RUSTFLAGS would rebuild everything anyway).
export PATH="$cu13/bin:$PATH" CUDA_ROOT="$cu13" CUDA_PATH="$cu13" CUDA_COMPUTE_CAP="$COMPUTE_CAP"
export RUSTFLAGS="-L $links ${RUSTFLAGS:-}"
export CARGO_TARGET_DIR="$root/target/cuda"
# GENIE_EXTRA_FEATURES adds to the CUDA features, e.g. `serve` for `genie serve` on the GPU.
features="$features${GENIE_EXTRA_FEATURES:+,$GENIE_EXTRA_FEATURES}"
cargo build --release --locked --features "$features" --bin genie

# 4. The libraries to carry with the binary.
out="$CARGO_TARGET_DIR/release"
mkdir -p "$out/cuda-libs"
for lib in $libs; do
    cp -L "$links/$lib" "$out/cuda-libs/"
done
cp "$out/genie" "$CARGO_TARGET_DIR/genie-$flavour"
{
    echo "genie $(git -C "$root" describe --always --dirty 2>/dev/null || echo unknown), features $features"
    echo "CUDA $CUDA_VERSION (nvcc $("$cu13/bin/nvcc" --version | awk '/release/ { print $6 }')), compute capability $COMPUTE_CAP"
} > "$CARGO_TARGET_DIR/genie-$flavour.txt"
cat "$CARGO_TARGET_DIR/genie-$flavour.txt"
echo "built $out/genie (also $CARGO_TARGET_DIR/genie-$flavour); it needs:"
readelf -d "$out/genie" | awk '/NEEDED/ { print "  " $5 }' | tr -d '[]'
