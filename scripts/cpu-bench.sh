#!/usr/bin/env bash
# genie against diffusers on the CPU, in one run, on the same random-weight SD 1.5 files: the
# marginal cost of one guided denoising step and the fixed cost of a process (issue 19).
#
#   scripts/cpu-bench.sh        # SD 1.5 architecture, 128 px, DPM-Solver++ 2M, guidance 7.5, r = 0.8, f32
#
# Each engine runs in its own process at N = 10 and N = 30 (8 and 24 steps at r = 0.8), one warm-up
# call and REPEATS timed calls each. Per step: the slope of the median call time between the two;
# per call: the rest of a call (text encoder, VAE encode and decode); per process: the wall time of
# the N = 10 process less its calls (start, imports, loading and hashing the weights).
#
# Environment: GENIE (default target/release/genie), PYTHON (torch + diffusers + transformers),
# WEIGHTS (default bench-results/cpu-sd15/sd15-random, written by make_random_sd15.py when missing),
# OUT (default bench-results/cpu-sd15), SIZE (128), REPEATS (2), ENGINES ("genie diffusers").
# Extra arguments go to genie (e.g. to compare allocator settings) as GENIE_ARGS.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
GENIE=${GENIE:-$root/target/release/genie}
PYTHON=${PYTHON:-python3}
OUT=${OUT:-$root/bench-results/cpu-sd15}
WEIGHTS=${WEIGHTS:-$OUT/sd15-random}
SIZE=${SIZE:-128}
REPEATS=${REPEATS:-2}
ENGINES=${ENGINES:-genie diffusers}
LABEL=${LABEL:-}
mkdir -p "$OUT"
[ -d "$WEIGHTS/unet" ] || "$PYTHON" "$root/scripts/gpu-bench/make_random_sd15.py" "$WEIGHTS"
results="$OUT/results.jsonl"
# Both engines start from a warm page cache: otherwise whichever runs first pays for reading the
# 4 GB of weights from disk (genie reads them at load, diffusers lazily during its first call).
cat "$WEIGHTS"/*/*.safetensors > /dev/null

for engine in $ENGINES; do
    for steps in 10 30; do
        started=$(date +%s.%N)
        if [ "$engine" = genie ]; then
            # shellcheck disable=SC2086
            row=$("$GENIE" bench --weights "$WEIGHTS" --size "$SIZE" --steps "$steps" --guidance 7.5 \
                --levels 0.8 --batch 1 --repeats "$REPEATS" --json ${GENIE_ARGS:-})
        else
            row=$("$PYTHON" "$root/scripts/gpu-bench/bench_diffusers.py" "$WEIGHTS" --device cpu \
                --dtype f32 --size "$SIZE" --steps "$steps" --guidance 7.5 --levels 0.8 --batch 1 \
                --repeats "$REPEATS" | tail -1)
        fi
        wall=$(echo "$(date +%s.%N) - $started" | bc)
        echo "{\"label\": \"${LABEL:-$engine}\", \"wall_seconds\": $wall, \"row\": $row}" | tee -a "$results"
    done
done

"$PYTHON" - "$results" "$REPEATS" <<'PY'
import json, sys
from collections import defaultdict
rows = defaultdict(dict)
for line in open(sys.argv[1]):
    r = json.loads(line)
    rows[r["label"]][r["row"]["steps"]] = r
repeats = int(sys.argv[2])
print("| engine | s per guided step | s per call besides the steps | s per process besides the calls | load s |")
print("| --- | --- | --- | --- | --- |")
for label, by in rows.items():
    if 10 not in by or 30 not in by:
        continue
    t10, t30 = by[10]["row"]["seconds_per_call"], by[30]["row"]["seconds_per_call"]
    step = (t30 - t10) / (24 - 8)
    per_call = t10 - 8 * step
    process = by[10]["wall_seconds"] - (1 + repeats) * t10
    load = by[10]["row"].get("load_seconds")
    print(f"| {label} | {step:.3f} | {per_call:.3f} | {process:.2f} | {load:.2f} |")
PY
