#!/usr/bin/env bash
# Pack what a GPU machine without cargo or network needs to check and bench genie: the CUDA build
# of the genie binary and libcurand.so.10 (xz-compressed, ~51 MB together, to fit a small transfer:
# PyTorch ≥ 2.10 no longer ships curand, every other library the binary needs comes with PyTorch)
# and the pure-Python wheels of diffusers and of what a python with torch + transformers may lack
# (Pillow is not packed: it is built per Python version, and torch installs usually have it).
#
#   scripts/build-cuda.sh && scripts/gpu-bench/pack.sh    # -> target/gpu-bundle/
#   FLAVOUR=sm90-cudnn scripts/gpu-bench/pack.sh           # the GENIE_CUDNN=1 build instead
#
# Then, on the GPU machine, from a copy of this repository that holds target/gpu-bundle:
#   scripts/gpu-bench/on-device.sh parity | bench-genie | bench-diffusers | flops
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
flavour=${FLAVOUR:-sm90}
binary=${GENIE_CUDA_BINARY:-$root/target/cuda/genie-$flavour}
bundle=${BUNDLE:-$root/target/gpu-bundle}
python=${PYTHON:-python3}

[ -x "$binary" ] || { echo "no CUDA build at $binary: run scripts/build-cuda.sh first" >&2; exit 1; }
rm -rf "$bundle"
mkdir -p "$bundle/wheels"
strip -o "$bundle/genie" "$binary"
xz -T0 -6 "$bundle/genie"
# The reference's versions (tests/parity/README.md); --no-deps: torch and transformers are there.
"$python" -m pip download --quiet --no-deps --dest "$bundle/wheels" \
    "diffusers==0.42.1" "importlib_metadata" "zipp"
xz -T0 -6 -c "$root/target/cuda-toolchain/link/libcurand.so.10" > "$bundle/libcurand.so.10.xz"
cp "$binary.txt" "$bundle/build-info.txt" 2>/dev/null || true
du -sh "$bundle"/* | sed 's/^/  /'
echo "bundle: $bundle ($(du -sh "$bundle" | cut -f1))"
