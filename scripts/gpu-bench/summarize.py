#!/usr/bin/env python3
"""Turn results.jsonl of scripts/gpu-bench/run.sh into the markdown table of BENCHMARKS.md."""

import json
import sys


def main():
    rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
    timed = [r for r in rows if "seconds_per_image" in r]
    flops = next((r["flops_per_image"] for r in rows if "flops_per_image" in r), None)
    rate = next((r["matmul_flops_per_second"] for r in rows if "matmul_flops_per_second" in r), None)
    gpu_mem = {(r["engine"], r["levels_run"]): r["gpu_memory_used_peak_mib"] for r in rows if "levels_run" in r}
    by = {(r["engine"], ",".join(r["levels"]), r["batch"]): r for r in timed}

    print("| levels | batch | genie s/image | diffusers s/image | diffusers / genie | genie peak MiB | diffusers peak MiB |"
          + (" genie / FLOP floor |" if flops and rate else ""))
    print("| --- | --- | --- | --- | --- | --- | --- |" + (" --- |" if flops and rate else ""))
    for (engine, levels, batch), g in sorted(by.items()):
        if engine != "genie":
            continue
        d = by.get(("diffusers", levels, batch))
        tag = levels.replace(",", "_")

        def mem(e, r):
            sampled = gpu_mem.get((e, f"{e}-{tag}"))
            if sampled is not None:
                return f"{sampled:.0f} (GPU)"
            value = r.get("peak_rss_mib") or r.get("peak_memory_mib") if r else None
            return f"{value:.0f}" if value else "?"

        cells = [levels, str(batch), f"{g['seconds_per_image']:.4f}",
                 f"{d['seconds_per_image']:.4f}" if d else "?",
                 f"{d['seconds_per_image'] / g['seconds_per_image']:.2f}×" if d else "?",
                 mem("genie", g), mem("diffusers", d)]
        if flops and rate:
            # The floor of one r = 0.8 image: its counted FLOPs at the measured dense matmul rate
            # (other levels run other step counts, so only the 0.8 rows get a ratio).
            floor = flops / rate
            cells.append(f"{g['seconds_per_image'] / floor:.1f}×" if levels == "0.8" else "—")
        print("| " + " | ".join(cells) + " |")
    one = {b: r for (e, l, b), r in by.items() if e == "genie" and "," not in l}
    sweep = {b: r for (e, l, b), r in by.items() if e == "genie" and "," in l}
    for b in sorted(set(one) & set(sweep)):
        ratio = sweep[b]["seconds_per_call"] / one[b]["seconds_per_call"]
        print(f"\nAda sweep (5 levels) / one level, batch {b}: {ratio:.2f}× the time of one level")
    if flops and rate:
        print(f"\nFLOPs per image (r = 0.8, counted by torch): {flops / 1e9:.1f} GFLOP; "
              f"measured matmul rate {rate / 1e12:.2f} TFLOP/s; floor {flops / rate:.4f} s/image")


if __name__ == "__main__":
    main()
