#!/usr/bin/env python3
"""Write Stable Diffusion 1.5 with random weights in the diffusers layout, so that genie and
diffusers benchmark identical files.

    python make_random_sd15.py OUT_DIR            # the real SD 1.5 configs (UNet 860M, VAE 84M, CLIP 123M)
    python make_random_sd15.py OUT_DIR --small    # a scaled-down model for CPU smoke runs

The architecture, shapes and FLOPs are SD 1.5's; only the weights are random (seeded), so speed
and memory are those of the real model while no weights need downloading. The tokenizer is the
small one of genie's parity fixtures: token ids stay within SD 1.5's vocabulary, and encoding a
prompt costs the same. Needs torch, diffusers, transformers, safetensors.
"""

import argparse
import os
import shutil

import torch
from diffusers import (
    AutoencoderKL,
    DPMSolverMultistepScheduler,
    StableDiffusionImg2ImgPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
TOKENIZER = os.path.join(HERE, "..", "..", "tests", "parity", "fixtures", "model", "tokenizer")

# stable-diffusion-v1-5/stable-diffusion-v1-5, unet/config.json
UNET = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    attention_head_dim=8,
    cross_attention_dim=768,
    norm_num_groups=32,
    norm_eps=1e-5,
    act_fn="silu",
    downsample_padding=1,
    flip_sin_to_cos=True,
    freq_shift=0,
    mid_block_scale_factor=1,
)
# vae/config.json
VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    latent_channels=4,
    norm_num_groups=32,
    sample_size=512,
    act_fn="silu",
    scaling_factor=0.18215,
)
# text_encoder/config.json
CLIP = dict(
    vocab_size=49408,
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
    projection_dim=768,
    bos_token_id=0,
    eos_token_id=2,
    pad_token_id=1,
)
# scheduler/scheduler_config.json, as DPM-Solver++ 2M (the GeNIe code's sampler)
SCHEDULER = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    steps_offset=1,
    algorithm_type="dpmsolver++",
    solver_order=2,
)


def small(unet, vae, clip):
    """The same block structure at a fraction of the width, for CPU smoke runs (64x64 images)."""
    unet = dict(unet, sample_size=8, block_out_channels=(32, 64, 64, 64), attention_head_dim=4,
                cross_attention_dim=64, norm_num_groups=16, layers_per_block=1)
    vae = dict(vae, sample_size=64, block_out_channels=(16, 32, 32, 32), norm_num_groups=16, layers_per_block=1)
    clip = dict(clip, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                projection_dim=64)
    return unet, vae, clip


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--small", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    unet_cfg, vae_cfg, clip_cfg = (UNET, VAE, CLIP)
    if args.small:
        unet_cfg, vae_cfg, clip_cfg = small(UNET, VAE, CLIP)
    torch.manual_seed(args.seed)
    unet = UNet2DConditionModel(**unet_cfg)
    vae = AutoencoderKL(**vae_cfg)
    text_encoder = CLIPTextModel(CLIPTextConfig(**clip_cfg))
    tokenizer = CLIPTokenizer.from_pretrained(TOKENIZER, model_max_length=77)
    scheduler = DPMSolverMultistepScheduler(**SCHEDULER)
    pipe = StableDiffusionImg2ImgPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    if os.path.exists(args.out):
        shutil.rmtree(args.out)
    pipe.save_pretrained(args.out, safe_serialization=True)
    # transformers >= 5 writes only tokenizer.json; keep the classic files too.
    shutil.copytree(TOKENIZER, os.path.join(args.out, "tokenizer"), dirs_exist_ok=True)
    params = {name: sum(p.numel() for p in m.parameters()) for name, m in
              (("unet", unet), ("vae", vae), ("text_encoder", text_encoder))}
    print(f"wrote {args.out}: " + ", ".join(f"{k} {v / 1e6:.1f}M parameters" for k, v in params.items()))


if __name__ == "__main__":
    main()
