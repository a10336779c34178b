#!/usr/bin/env bash
# Fuzzes every parser of user, on-disk and network bytes for a bounded time each (issue 20,
# part 5): pre-warm plans, confusion CSVs, class-name files, images, cache files, `genie serve`
# bodies and answers, shard specs, model configs, tokenizer input, weights files.
#
#   scripts/fuzz.sh                 # every target, 60 s each
#   FUZZ_SECONDS=600 scripts/fuzz.sh plan_lines cache_files
#
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`). Seeds are in
# fuzz/seeds/<target>; the growing corpus goes to fuzz/corpus/<target> (not committed). A crash
# leaves its input in fuzz/artifacts/<target>/ and fails the script: turn it into a fix and a
# regression test (the input, in the test of the parser it broke). A target that fails to build,
# to start, or runs no input fails it too.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${FUZZ_SECONDS:-60}
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo +nightly fuzz list)
fi
cargo +nightly fuzz build -O
failed=()
for target in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$target"
    echo "== $target ($seconds s)"
    log=$(mktemp)
    # Files are written per input (plans, caches): keep them on a RAM disk where there is one.
    # libFuzzer exits 0 only when the time ran out without a crash; a crash, a target that does
    # not build or start, or anything else is a failure, whatever the artifacts folder holds.
    set +e
    TMPDIR=${TMPDIR:-/dev/shm} cargo +nightly fuzz run -O "$target" \
        "fuzz/corpus/$target" "fuzz/seeds/$target" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1 \
        >"$log" 2>&1
    status=$?
    set -e
    grep -E "^(stat::number_of_executed_units|stat::peak_rss_mb|==[0-9]+==ERROR|SUMMARY|artifact_prefix|Test unit written|error)" "$log" || true
    runs=$(sed -n 's/^stat::number_of_executed_units: *\([0-9]*\).*/\1/p' "$log" | tail -n 1)
    if [ "$status" -ne 0 ]; then
        failed+=("$target (exit $status)")
        tail -n 20 "$log"
    elif [ -z "$runs" ] || [ "$runs" -eq 0 ]; then
        failed+=("$target (ran no input)")
        tail -n 20 "$log"
    fi
    rm -f "$log"
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "FAILED: ${failed[*]} (crash inputs, if any, under fuzz/artifacts/)"
    exit 1
fi
echo "no crashes in ${#targets[@]} targets"
