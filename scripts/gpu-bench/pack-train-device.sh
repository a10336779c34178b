#!/usr/bin/env bash
# Pack the burn GPU training test (tests/it/train_device.rs, genie built with `burn-vulkan` and
# `burn-wgpu`) for a GPU machine without cargo or network: the `it` test binary, stripped and
# xz-compressed. It needs no CUDA build and no Python there, only a Vulkan driver
# (libvulkan.so.1 and the GPU's ICD).
#
#   scripts/gpu-bench/pack.sh && scripts/gpu-bench/pack-train-device.sh   # pack.sh empties the bundle
#   PROFILE=test scripts/gpu-bench/pack-train-device.sh                    # quicker to build
#
# Then, on the GPU machine: scripts/gpu-bench/on-device.sh train-device
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
bundle=${BUNDLE:-$root/target/gpu-bundle}
profile=${PROFILE:-release}

exe="$(cargo test --locked --profile "$profile" --features burn-vulkan,burn-wgpu --test it --no-run \
    --message-format=json \
    | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "it" and m.get("executable"):
        print(m["executable"])
')"
[ -x "$exe" ] || { echo "no test binary built" >&2; exit 1; }
mkdir -p "$bundle"
strip -o "$bundle/it-train-device" "$exe"
xz -T0 -6 -f "$bundle/it-train-device"
echo "packed $exe ($profile) as $bundle/it-train-device.xz ($(du -h "$bundle/it-train-device.xz" | cut -f1))"
