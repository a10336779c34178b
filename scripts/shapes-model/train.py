#!/usr/bin/env python3
"""Train genie's shapes model: a small latent diffusion model of Stable Diffusion 1.5's family
(AutoencoderKL, UNet2DConditionModel, CLIP text encoder + BPE tokenizer, DPM-Solver++ scheduler
config) on genie's drawn-shapes dataset, saved in the diffusers folder layout.

Run by hand (never in CI), from the repository root:

    python3 -m venv .venv
    .venv/bin/pip install torch diffusers transformers safetensors pillow numpy
    cargo run --release --example synthetic_dataset -- --out /tmp/shapes-data --per-class 3000 --size 64 --seed 1
    .venv/bin/python scripts/shapes-model/train.py --data /tmp/shapes-data --out assets/shapes-model

Prompts are "a photo of a {class}." (the paper's), with 10 % of them dropped to "" so that
classifier-free guidance works. Everything is seeded; see README.md here for the run time and
the hashes of the committed files.
"""

import argparse
import hashlib
import json
import math
import os
import random
import shutil
import sys
import time

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import diffusers
import transformers
from diffusers import (
    AutoencoderKL,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

# The shared CLIP vocabulary layout (scripts/clip_vocab.py).
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from clip_vocab import build_vocab, write_vocab_and_merges  # noqa: E402

CLASSES = [
    "circle", "square", "triangle", "cross", "ring", "diamond", "star", "crescent", "heart",
    "arrow",
]
PROMPT = "a photo of a {}."
WORDS = ["a", "photo", "of"] + CLASSES
SIZE = 64

# Stable Diffusion 1.5's noise schedule.
SCHEDULE = dict(
    num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012
)


def log(*args):
    print(f"[{time.strftime('%H:%M:%S')}]", *args, flush=True)


# ------------------------------------------------------------------------------------------
# Tokenizer: OpenAI CLIP's vocabulary layout, with merges that make each word one token
# ------------------------------------------------------------------------------------------


def word_merges(words):
    """Left-to-right merges that turn each word into a single `word</w>` token."""
    merges, made = [], set()
    for w in words:
        if len(w) == 1:
            continue  # "a</w>" is already a vocabulary entry
        prefix = w[0]
        for i, ch in enumerate(w[1:], start=1):
            last = i == len(w) - 1
            piece = ch + "</w>" if last else ch
            merged = prefix + piece
            if merged not in made:
                merges.append((prefix, piece))
                made.add(merged)
            prefix = merged
    return merges


def write_tokenizer(folder):
    merges = word_merges(WORDS)
    ids = build_vocab(merges)
    write_vocab_and_merges(folder, ids, merges)
    tokenizer = CLIPTokenizer(
        os.path.join(folder, "vocab.json"),
        os.path.join(folder, "merges.txt"),
        model_max_length=77,
        pad_token="<|endoftext|>",
    )
    return tokenizer, len(ids)


# ------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------


def load_images(folder):
    """All images of `folder/<class>/*.png` as a uint8 [N, 64, 64, 3] array and labels."""
    images, labels = [], []
    for label, name in enumerate(CLASSES):
        files = sorted(os.listdir(os.path.join(folder, name)))
        for fname in files:
            with Image.open(os.path.join(folder, name, fname)) as im:
                a = np.asarray(im.convert("RGB"))
            assert a.shape == (SIZE, SIZE, 3), (fname, a.shape)
            images.append(a)
            labels.append(label)
    return np.stack(images), np.array(labels, dtype=np.int64)


def to_tensor(batch):
    return torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 127.5 - 1.0


# ------------------------------------------------------------------------------------------
# Models
# ------------------------------------------------------------------------------------------


def make_vae():
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 32),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=16,
        sample_size=SIZE,
    )


def make_unet():
    return UNet2DConditionModel(
        sample_size=SIZE // 4,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64, 128),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=64,
        attention_head_dim=8,
        norm_num_groups=32,
    )


def make_text_encoder(vocab_size):
    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        projection_dim=64,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
    )
    return CLIPTextModel(config)


def cosine_lr(step, total, peak, warmup=200):
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t)))


# ------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------


def train_vae(images, steps, batch, rng):
    vae = make_vae()
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    n = len(images)
    started = time.time()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, steps, 1e-3)
        idx = rng.integers(0, n, batch)
        x = to_tensor(images[idx])
        # Random flips: every shape class is closed under them up to its own rotations.
        if rng.random() < 0.5:
            x = x.flip(3)
        dist = vae.encode(x).latent_dist
        recon = vae.decode(dist.sample()).sample
        loss = (recon - x).pow(2).mean() + 0.5 * (recon - x).abs().mean() + 1e-6 * dist.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"vae step {step}/{steps} loss {loss.item():.4f} ({time.time() - started:.0f} s)")
    vae.eval()
    return vae


@torch.no_grad()
def encode_all(vae, images, batch=256):
    means = []
    for i in range(0, len(images), batch):
        means.append(vae.encode(to_tensor(images[i : i + batch])).latent_dist.mode())
    return torch.cat(means)


def train_unet(latents, labels, tokenizer, text_encoder, steps, batch, rng, dropout=0.1):
    unet = make_unet()
    ema = make_unet()
    ema.load_state_dict(unet.state_dict())
    ema.requires_grad_(False)
    ema_text = make_text_encoder(text_encoder.config.vocab_size)
    ema_text.load_state_dict(text_encoder.state_dict())
    ema_text.requires_grad_(False)
    pairs = list(zip(ema.parameters(), unet.parameters())) + list(
        zip(ema_text.parameters(), text_encoder.parameters())
    )
    scheduler = DDPMScheduler(**SCHEDULE)
    prompts = [PROMPT.format(c) for c in CLASSES] + [""]
    tokens = tokenizer(prompts, padding="max_length", max_length=77, return_tensors="pt").input_ids
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=5e-4, weight_decay=0.0)
    n = len(latents)
    started = time.time()
    for step in range(steps):
        lr = cosine_lr(step, steps, 5e-4)
        for g in opt.param_groups:
            g["lr"] = lr
        idx = rng.integers(0, n, batch)
        z = latents[idx]
        cond = torch.from_numpy(labels[idx]).clone()
        drop = torch.from_numpy(rng.random(batch) < dropout)
        cond[drop] = len(CLASSES)  # the empty prompt
        # The prompts of this batch are among 11: encode those 11 once.
        embeddings = text_encoder(tokens)[0]
        context = embeddings[cond]
        noise = torch.randn_like(z)
        t = torch.from_numpy(rng.integers(0, SCHEDULE["num_train_timesteps"], batch))
        noisy = scheduler.add_noise(z, noise, t)
        pred = unet(noisy, t, context).sample
        loss = (pred - noise).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():
            decay = min(0.999, (1 + step) / (10 + step))
            for e, p in pairs:
                e.mul_(decay).add_(p, alpha=1 - decay)
        if step % 100 == 0 or step == steps - 1:
            log(f"unet step {step}/{steps} loss {loss.item():.4f} lr {lr:.2e} ({time.time() - started:.0f} s)")
    return ema, ema_text


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def fix_text_encoder_prefix(folder):
    """transformers 5 saves CLIPTextModel weights without the `text_model.` prefix; real SD 1.5
    checkpoints (and genie's loader) have it."""
    path = os.path.join(folder, "text_encoder", "model.safetensors")
    tensors = load_file(path)
    if all(k.startswith("text_model.") for k in tensors):
        return
    fixed = {k if k.startswith("text_model.") else "text_model." + k: v for k, v in tensors.items()}
    save_file(fixed, path, metadata={"format": "pt"})


def to_fp16(folder):
    """Stores every weight file as its `.fp16.safetensors` variant (half the bytes; genie and
    diffusers load it into f32 models), removing the f32 file."""
    for component in ["unet", "vae", "text_encoder"]:
        d = os.path.join(folder, component)
        for name in sorted(os.listdir(d)):
            if not name.endswith(".safetensors") or name.endswith(".fp16.safetensors"):
                continue
            path = os.path.join(d, name)
            tensors = {k: v.half().contiguous() for k, v in load_file(path).items()}
            save_file(tensors, path.replace(".safetensors", ".fp16.safetensors"), metadata={"format": "pt"})
            os.remove(path)


def print_hashes(folder):
    for root, _, files in sorted(os.walk(folder)):
        for name in sorted(files):
            path = os.path.join(root, name)
            print(f"{sha256(path)}  {os.path.relpath(path, folder)}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="image folder written by the synthetic_dataset example")
    ap.add_argument("--out", required=True, help="model folder to write (diffusers layout)")
    ap.add_argument("--to-fp16-only", action="store_true", help="only convert --out's weights to fp16")
    ap.add_argument("--vae-steps", type=int, default=1500)
    ap.add_argument("--vae-batch", type=int, default=32)
    ap.add_argument("--unet-steps", type=int, default=7000)
    ap.add_argument("--unet-batch", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.to_fp16_only:
        to_fp16(args.out)
        print_hashes(args.out)
        return
    if not args.data:
        ap.error("--data is required")

    torch.manual_seed(args.seed)
    random.seed(args.seed)
    rng = np.random.default_rng(args.seed)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    log(f"torch {torch.__version__}, diffusers {diffusers.__version__}, transformers {transformers.__version__}, {torch.get_num_threads()} threads")

    images, labels = load_images(args.data)
    log(f"{len(images)} images of {len(CLASSES)} classes")
    t0 = time.time()
    vae = train_vae(images, args.vae_steps, args.vae_batch, rng)
    vae_seconds = time.time() - t0

    latents = encode_all(vae, images)
    std = latents.std().item()
    scaling = 1.0 / std
    vae.register_to_config(scaling_factor=scaling)
    latents = latents * scaling
    log(f"latents {tuple(latents.shape)}, std {std:.4f} -> scaling_factor {scaling:.5f}")

    staging = args.out + ".staging"
    shutil.rmtree(staging, ignore_errors=True)
    tokenizer, vocab_size = write_tokenizer(os.path.join(staging, "tokenizer"))
    text_encoder = make_text_encoder(vocab_size)
    t0 = time.time()
    unet, text_encoder = train_unet(
        latents, labels, tokenizer, text_encoder, args.unet_steps, args.unet_batch, rng
    )
    unet_seconds = time.time() - t0
    text_encoder.eval()

    scheduler = DPMSolverMultistepScheduler(
        **SCHEDULE, algorithm_type="dpmsolver++", solver_order=2, steps_offset=1,
        prediction_type="epsilon",
    )
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(staging, safe_serialization=True)
    fix_text_encoder_prefix(staging)
    to_fp16(staging)
    with open(os.path.join(staging, "TRAINING.json"), "w") as f:
        json.dump(
            {
                "classes": CLASSES,
                "prompt": PROMPT,
                "data": os.path.abspath(args.data),
                "images": int(len(images)),
                "seed": args.seed,
                "vae_steps": args.vae_steps,
                "vae_batch": args.vae_batch,
                "unet_steps": args.unet_steps,
                "unet_batch": args.unet_batch,
                "vae_seconds": round(vae_seconds),
                "unet_seconds": round(unet_seconds),
                "threads": torch.get_num_threads(),
                "torch": torch.__version__,
                "diffusers": diffusers.__version__,
                "transformers": transformers.__version__,
                "python": sys.version.split()[0],
            },
            f,
            indent=2,
        )
    shutil.rmtree(args.out, ignore_errors=True)
    os.rename(staging, args.out)
    print_hashes(args.out)
    log(f"done: vae {vae_seconds:.0f} s, unet {unet_seconds:.0f} s")


if __name__ == "__main__":
    main()
