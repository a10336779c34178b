#!/usr/bin/env bash
# genie against diffusers on the same random-weight SD 1.5 files, in one run.
#
#   scripts/gpu-bench/run.sh              # on an NVIDIA GPU: 512 px, 50-step DPM-Solver++, guidance 7.5,
#                                         # f16, r = 0.8 and the 5-level Ada sweep, batch 1 and 8
#   scripts/gpu-bench/run.sh --cpu-smoke  # the same pipeline on the CPU with a small model (proves it runs)
#
# Environment: GENIE (the genie binary; default target/release/genie — a `--features cuda` build for
# the GPU, see scripts/build-cuda.sh), PYTHON (a python with torch, diffusers, transformers;
# default python3), OUT (results folder; default bench-results/<mode>), WEIGHTS (reuse a model folder),
# ENGINES (default "genie diffusers flops": run a part only, e.g. to fit a time limit per command),
# REPEATS (timed runs per batch size). Appends to $OUT/results.jsonl (one JSON object per
# measurement) and rewrites $OUT/summary.md from it.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
mode=gpu
[ "${1:-}" = "--cpu-smoke" ] && mode=cpu

GENIE=${GENIE:-$root/target/release/genie}
PYTHON=${PYTHON:-python3}
OUT=${OUT:-$root/bench-results/$mode}
ENGINES=${ENGINES:-genie diffusers flops}
mkdir -p "$OUT"
results="$OUT/results.jsonl"
wants() { [[ " $ENGINES " == *" $1 "* ]]; }

if [ "$mode" = gpu ]; then
    WEIGHTS=${WEIGHTS:-$OUT/sd15-random}
    [ -d "$WEIGHTS/unet" ] || "$PYTHON" "$here/make_random_sd15.py" "$WEIGHTS"
    common=(--size 512 --steps 50 --guidance 7.5)
    genie_dev=(--device cuda:0 --dtype f16)
    py_dev=(--device cuda --dtype f16)
    batches=1,8
    repeats=${REPEATS:-3}
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
else
    WEIGHTS=${WEIGHTS:-$OUT/sd15-small-random}
    [ -d "$WEIGHTS/unet" ] || "$PYTHON" "$here/make_random_sd15.py" "$WEIGHTS" --small
    common=(--size 64 --steps 10 --guidance 7.5)
    genie_dev=(--device cpu --dtype f32)
    py_dev=(--device cpu --dtype f32)
    batches=1,2
    repeats=${REPEATS:-1}
fi

# Peak GPU memory of a whole process, sampled by nvidia-smi (the same meter for both engines).
sample_gpu_memory() {
    if command -v nvidia-smi >/dev/null 2>&1; then
        nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 > "$OUT/$1.mem" &
        echo $!
    fi
}
stop_sampling() {
    [ -n "${1:-}" ] || return 0
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
    local peak
    peak=$(sort -n "$OUT/$2.mem" | tail -1)
    echo "{\"engine\": \"$3\", \"levels_run\": \"$2\", \"gpu_memory_used_peak_mib\": ${peak:-null}}" >> "$results"
}

for levels in 0.8 0.5,0.6,0.7,0.8,0.9; do
    tag=$(echo "$levels" | tr ',' '_')
    if wants genie; then
        sampler=$(sample_gpu_memory "genie-$tag")
        "$GENIE" bench --weights "$WEIGHTS" "${common[@]}" "${genie_dev[@]}" --scheduler dpm \
            --levels "$levels" --batch "$batches" --repeats "$repeats" --json | tee -a "$results"
        stop_sampling "$sampler" "genie-$tag" genie
    fi
    if wants diffusers; then
        sampler=$(sample_gpu_memory "diffusers-$tag")
        "$PYTHON" "$here/bench_diffusers.py" "$WEIGHTS" "${common[@]}" "${py_dev[@]}" \
            --levels "$levels" --batch "$batches" --repeats "$repeats" | tee -a "$results"
        stop_sampling "$sampler" "diffusers-$tag" diffusers
    fi
done
if wants flops; then
    "$PYTHON" "$here/bench_diffusers.py" "$WEIGHTS" "${common[@]}" "${py_dev[@]}" --levels 0.8 --batch 1 \
        --repeats 1 --flops --matmul-rate | grep -E '"(flops_per_image|matmul_flops_per_second)"' | tee -a "$results"
fi
"$PYTHON" "$here/summarize.py" "$results" | tee "$OUT/summary.md"
