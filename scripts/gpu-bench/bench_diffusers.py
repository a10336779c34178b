#!/usr/bin/env python3
"""Time diffusers' StableDiffusionImg2ImgPipeline on a model folder with the settings genie's
`genie bench` uses, and count the FLOPs of one image. Prints one JSON object per batch size,
in the same shape as `genie bench --json`.

    python bench_diffusers.py MODEL_DIR --device cuda --dtype f16 --size 512 --steps 50 \\
        --levels 0.8 --batch 1,8 --repeats 3 [--flops]

A GeNIe-Ada sweep (--levels 0.5,0.6,0.7,0.8,0.9) runs the pipeline once per level, as diffusers
has no way to share one chain between levels; that is the baseline genie's shared-chain sweep is
measured against.
"""

import argparse
import json
import os
import time

import numpy as np
import torch
from diffusers import DPMSolverMultistepScheduler, StableDiffusionImg2ImgPipeline
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
SAMPLE = os.path.join(HERE, "..", "..", "assets", "sample.png")


def peak_memory_mib(device):
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return None


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="f32", choices=["f32", "f16", "bf16"])
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--guidance", type=float, default=7.5)
    ap.add_argument("--levels", default="0.8")
    ap.add_argument("--batch", default="1")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--flops", action="store_true", help="count the FLOPs of one image (one level)")
    ap.add_argument("--matmul-rate", action="store_true", help="measure the device's dense matmul rate in --dtype")
    args = ap.parse_args()

    dtype = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    loading = time.perf_counter()
    pipe = StableDiffusionImg2ImgPipeline.from_pretrained(args.model, torch_dtype=dtype, safety_checker=None)
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config, algorithm_type="dpmsolver++",
                                                            solver_order=2)
    # genie keeps the VAE in f32 (f16 VAEs overflow); do the same so both sides do the same work.
    pipe.vae.to(torch.float32)
    pipe.vae.config.force_upcast = True
    pipe = pipe.to(args.device)
    pipe.set_progress_bar_config(disable=True)
    load_seconds = time.perf_counter() - loading
    source = Image.open(SAMPLE).convert("RGB").resize((args.size, args.size), Image.BICUBIC)
    levels = [float(x) for x in args.levels.split(",")]

    def run(batch):
        images = 0
        for r in levels:
            out = pipe(prompt=[f"a photo of a class {i}." for i in range(batch)], image=[source] * batch,
                       strength=r, num_inference_steps=args.steps, guidance_scale=args.guidance,
                       generator=[torch.Generator(args.device).manual_seed(i) for i in range(batch)],
                       output_type="np")
            images += len(out.images)
        sync(args.device)
        return images

    if args.matmul_rate:
        n = 8192 if args.device.startswith("cuda") else 1024
        a = torch.randn(n, n, device=args.device, dtype=dtype)
        b = torch.randn(n, n, device=args.device, dtype=dtype)
        for _ in range(3):
            a @ b
        sync(args.device)
        reps = 20 if args.device.startswith("cuda") else 3
        started = time.perf_counter()
        for _ in range(reps):
            a @ b
        sync(args.device)
        rate = 2 * n**3 * reps / (time.perf_counter() - started)
        print(json.dumps({"engine": "torch", "matmul_flops_per_second": rate, "n": n, "dtype": args.dtype,
                          "device": args.device}), flush=True)

    if args.flops:
        from torch.utils.flop_counter import FlopCounterMode
        counter = FlopCounterMode(display=False)
        with counter:
            pipe(prompt="a photo of a cat.", image=source, strength=levels[0], num_inference_steps=args.steps,
                 guidance_scale=args.guidance, output_type="np")
        print(json.dumps({"engine": "diffusers", "flops_per_image": counter.get_total_flops(),
                          "level": levels[0], "steps": args.steps, "size": args.size}))

    for batch in [int(b) for b in args.batch.split(",")]:
        run(batch)  # warm-up
        if args.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        seconds = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            images = run(batch)
            seconds.append(time.perf_counter() - started)
        median = sorted(seconds)[len(seconds) // 2]
        print(json.dumps({
            "engine": "diffusers",
            "device": args.device, "dtype": args.dtype, "size": args.size, "steps": args.steps,
            "scheduler": "dpm", "guidance": args.guidance, "levels": [str(r) for r in levels], "batch": batch,
            "images_per_call": images, "seconds_per_call": median, "seconds_per_call_all": seconds,
            "seconds_per_image": median / images, "peak_memory_mib": peak_memory_mib(args.device),
            "load_seconds": load_seconds, "torch": torch.__version__,
        }), flush=True)


if __name__ == "__main__":
    main()
