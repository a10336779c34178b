#!/usr/bin/env bash
# Run on the GPU machine, from a copy of this repository holding target/gpu-bundle (see pack.sh).
# No cargo, no network there: the binary comes xz-compressed in the bundle, its CUDA libraries
# are the ones of the machine's PyTorch (site-packages/nvidia/*/lib) and its driver's libcuda.so.1,
# and diffusers comes from the bundle's wheels into a private folder.
#
#   scripts/gpu-bench/on-device.sh setup            # unpack, install, show what the binary links to
#   scripts/gpu-bench/on-device.sh parity           # f32 (≤ 1e-4) and f16 (≤ 1e-2) vs the fixtures
#   scripts/gpu-bench/on-device.sh bench-genie      # genie's half of run.sh (SD 1.5, random weights)
#   scripts/gpu-bench/on-device.sh bench-diffusers  # diffusers' half
#   scripts/gpu-bench/on-device.sh flops            # FLOPs per image and the measured matmul rate
#   scripts/gpu-bench/on-device.sh train-device     # burn trains genie's ResNet on the GPU as on the CPU
#                                                   # (pack-train-device.sh; GENIE_TRAIN_DEVICE=vulkan)
#
# Each step fits in a few minutes; results go to $OUT (default bench-results/gpu).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
bundle=${BUNDLE:-$root/target/gpu-bundle}
export OUT=${OUT:-$root/bench-results/gpu}
export PYTHON=${PYTHON:-python3}
scratch=${SCRATCH:-${TMPDIR:-/tmp}/genie-gpu}
mkdir -p "$OUT" "$scratch"

# The burn GPU training test needs neither the CUDA build nor Python.
if [ "${1:-}" = train-device ]; then
    test_bin="$scratch/it-train-device"
    if [ ! -x "$test_bin" ]; then
        xz -dc "$bundle/it-train-device.xz" > "$test_bin.part"
        chmod +x "$test_bin.part"
        mv "$test_bin.part" "$test_bin"
    fi
    GENIE_TRAIN_DEVICE=${GENIE_TRAIN_DEVICE:-vulkan} "$test_bin" train_device --nocapture 2>&1 \
        | tee "$OUT/train-device.txt"
    exit "${PIPESTATUS[0]}"
fi

if [ ! -x "$scratch/genie" ]; then
    xz -dc "$bundle/genie.xz" > "$scratch/genie.part"
    chmod +x "$scratch/genie.part"
    mv "$scratch/genie.part" "$scratch/genie"
fi
export GENIE="$scratch/genie"
if [ ! -d "$scratch/py/diffusers" ]; then
    "$PYTHON" -m pip install --quiet --no-index --no-deps --target "$scratch/py" "$bundle"/wheels/*.whl
fi
export PYTHONPATH="$scratch/py${PYTHONPATH:+:$PYTHONPATH}"
nvidia_libs="$("$PYTHON" - <<'PY'
import glob, os, site
dirs = set()
for base in site.getsitepackages():
    dirs.update(os.path.dirname(p) for p in glob.glob(os.path.join(base, "nvidia", "**", "lib*.so*"), recursive=True))
print(":".join(sorted(dirs)))
PY
)"
if [ ! -f "$scratch/lib/libcurand.so.10" ]; then
    mkdir -p "$scratch/lib"
    xz -dc "$bundle/libcurand.so.10.xz" > "$scratch/lib/libcurand.so.10.part"
    mv "$scratch/lib/libcurand.so.10.part" "$scratch/lib/libcurand.so.10"
fi
# PyTorch's libraries first; the bundle's curand only where PyTorch has none.
export LD_LIBRARY_PATH="$nvidia_libs:$scratch/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
"$PYTHON" -c 'import PIL' 2>/dev/null || echo "warning: this python has no Pillow; diffusers needs it" >&2

case "${1:-}" in
    setup)
        "$PYTHON" -c 'import diffusers, torch; print("diffusers", diffusers.__version__, "torch", torch.__version__, "cuda", torch.version.cuda)'
        ldd "$GENIE" | grep -E 'not found|cuda|cublas|curand|nvrtc|cudnn'
        "$GENIE" --version
        ;;
    parity)
        nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
        ldd "$GENIE" | grep -E 'cuda|cublas|curand|nvrtc|cudnn' | tee "$OUT/ldd.txt"
        status=0
        for dtype in f32 f16 bf16; do
            "$GENIE" parity --device cuda:0 --dtype "$dtype" | tee "$OUT/parity-$dtype.txt" || status=1
        done
        exit $status
        ;;
    bench-genie) ENGINES=genie exec "$root/scripts/gpu-bench/run.sh" ;;
    bench-diffusers) ENGINES=diffusers exec "$root/scripts/gpu-bench/run.sh" ;;
    flops) ENGINES=flops exec "$root/scripts/gpu-bench/run.sh" ;;
    *) sed -n '2,16p' "$0"; exit 2 ;;
esac
