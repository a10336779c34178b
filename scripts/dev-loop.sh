#!/usr/bin/env bash
# Measures the contributor's loop on this machine, from a fresh clone of the committed HEAD:
#   1. clean build of the README's first command (`cargo run --example long_tail`), the main job,
#      and the same command again (which reuses the first run's images); with --empty-registry
#      the clean build starts from an empty cargo registry (downloads included, a CARGO_HOME of
#      its own in WORKDIR) and is then timed again with the registry it downloaded
#   2. the README's second command after it (`cargo test --locked`, built): what it recompiles
#   3. an edit in src/cache/ to a test build
#   4. the test run, and its ten slowest tests
#   5. with --ci: `.ci/run` on another fresh clone
# Usage: scripts/dev-loop.sh [--ci] [--only-ci] [--empty-registry] [--keep] [WORKDIR]   (default WORKDIR: /tmp/genie-dev-loop)
# Each step prints one `step: seconds` line; the whole report is also written to WORKDIR/report.txt.
# The first four steps take about 25 minutes on 2 cores (--empty-registry: 40), `.ci/run` about
# as long again.
set -euo pipefail

ci=0
steps=1
keep=0
empty_registry=0
work=/tmp/genie-dev-loop
for arg in "$@"; do
    case "$arg" in
        --ci) ci=1 ;;
        --only-ci) ci=1 steps=0 ;;
        --keep) keep=1 ;;
        --empty-registry) empty_registry=1 ;;
        -h | --help) sed -n '2,13p' "$0"; exit 0 ;;
        -*) echo "unknown option: $arg" >&2; exit 2 ;;
        *) work="$arg" ;;
    esac
done

repo="$(cd "$(dirname "$0")/.." && pwd)"
export CARGO_TERM_COLOR=never
# A fresh clone owns its target folder: nothing reused from the developer's own builds.
unset CARGO_TARGET_DIR RUSTC_WRAPPER
mkdir -p "$work"
report="$work/report.txt"
: >"$report"
say() { echo "$*" | tee -a "$report"; }

# Runs a command in the clone, logging to WORKDIR/<name>.log; prints the seconds it took.
timed() {
    local name="$1" label="$2" dir="$3"
    shift 3
    local t0 t1
    t0=$(date +%s.%N)
    if ! (cd "$dir" && "$@") >"$work/$name.log" 2>&1; then
        say "$label: FAILED (see $work/$name.log)"
        tail -20 "$work/$name.log"
        exit 1
    fi
    t1=$(date +%s.%N)
    say "$label: $(echo "$t1 - $t0" | bc | xargs printf '%.0f') s"
}

# The crates a build log compiled, other than genie itself.
dependencies_compiled() {
    grep -E '^\s+Compiling ' "$1" | grep -v ' genie v' | sed -E 's/^\s+Compiling //' || true
}

say "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(uname -m); $(cargo --version)"
say "commit: $(git -C "$repo" rev-parse --short HEAD)"

if [ "$steps" = 1 ]; then
    clone="$work/clone"
    rm -rf "$clone"
    git clone --quiet "$repo" "$clone"

    if [ "$empty_registry" = 1 ]; then
        # A registry of its own, empty: the build downloads every crate as a new user's does.
        export CARGO_HOME="$work/cargo-home"
        rm -rf "$CARGO_HOME"
        mkdir -p "$CARGO_HOME"
        timed 1-run-build-empty "1 clean build of \`cargo run --example long_tail\`, registry empty" \
            "$clone" cargo build --locked --example long_tail
        say "  crates downloaded: $(grep -cE '^\s+Downloaded ' "$work/1-run-build-empty.log")"
        rm -rf "$clone/target"
    fi
    timed 1-run-build "1 clean build of \`cargo run --example long_tail\`, registry downloaded" \
        "$clone" cargo build --locked --example long_tail
    say "  crates compiled: $(grep -cE '^\s+Compiling ' "$work/1-run-build.log")"

    # The main job itself, then the same command again: it reuses the first run's images.
    export GENIE_HOME="$work/genie-home"
    rm -rf "$GENIE_HOME"
    timed 1b-run "1b the main job (\`cargo run --example long_tail\`, built)" "$clone" \
        cargo run --locked --example long_tail
    say "  $(grep -m1 'ready before training' "$work/1b-run.log" || true)"
    timed 1c-rerun "1c the same command again" "$clone" cargo run --locked --example long_tail
    say "  $(grep -m1 'generating the hard negatives first: .*/.* images' "$work/1c-rerun.log" || echo 'generated nothing')"
    cmp -s <(sed -n '/^accuracy by group/,/^  Balanced/p' "$work/1b-run.log") \
        <(sed -n '/^accuracy by group/,/^  Balanced/p' "$work/1c-rerun.log") \
        && say "  same table both times" || say "  TABLES DIFFER"
    unset GENIE_HOME

    timed 2-test-build "2 then \`cargo test --locked\` (build)" "$clone" cargo test --locked --no-run
    recompiled="$(dependencies_compiled "$work/2-test-build.log")"
    say "  dependencies recompiled: $(if [ -z "$recompiled" ]; then echo none; else echo "$recompiled" | wc -l; fi)"
    [ -z "$recompiled" ] || echo "$recompiled" | sed -n '1,20s/^/    /p' | tee -a "$report"

    # A change to the library's interface (not a comment, which incremental builds skip).
    echo "pub const DEV_LOOP_EDIT: u64 = $(date +%s);" >>"$clone/src/cache/mod.rs"
    timed 3-edit "3 edit in src/cache/ to test build" "$clone" cargo test --locked --no-run
    git -C "$clone" checkout --quiet src/cache/mod.rs

    # The test run as `cargo test` does it (each test executable from the package root, then the
    # doctests), but with libtest's per-test times. They are an unstable option: RUSTC_BOOTSTRAP is
    # given to the test executables only, since cargo would rebuild everything if rustc saw it.
    (cd "$clone" && cargo test --locked --no-run --message-format=json 2>/dev/null) \
        | python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["profile"]["test"] and m.get("executable"):
        print(m["executable"])' >"$work/test-executables.txt"
    run_tests() {
        local exe
        while read -r exe; do
            RUSTC_BOOTSTRAP=1 "$exe" -Z unstable-options --report-time
        done <"$work/test-executables.txt"
        cargo test --locked --doc
    }
    timed 4-test-run "4 test run (\`cargo test --locked\`, built)" "$clone" run_tests
    say "  ten slowest tests:"
    grep -hE '^test .* <[0-9.]+s>$' "$work/4-test-run.log" \
        | sed -E 's/^test (.*) \.\.\. (ok|ignored|FAILED) <([0-9.]+)s>$/\3 \1/' \
        | sort -rn | sed -n '1,10s/^/    /p' | tee -a "$report"
    say "  $(grep -hE '^test result:' "$work/4-test-run.log" | awk '{p+=$4; f+=$6; i+=$8} END {print p " passed, " f " failed, " i " ignored"}')"
    say "  target folder: $(du -sh "$clone/target" | cut -f1)"
    [ "$keep" = 1 ] || rm -rf "$clone/target"
fi

if [ "$ci" = 1 ]; then
    clone="$work/ci-clone"
    rm -rf "$clone"
    git clone --quiet "$repo" "$clone"
    timed 5-ci "5 .ci/run on a fresh clone" "$clone" .ci/run
    [ "$keep" = 1 ] || rm -rf "$clone/target"
fi
say "report: $report"
