#!/usr/bin/env python3
"""Generate the Python/diffusers reference fixtures for genie's parity tests.

Run by hand (never in CI), from the repository root:

    python3 -m venv .venv
    .venv/bin/pip install torch diffusers transformers safetensors pillow numpy
    .venv/bin/python tests/parity/make_fixtures.py

Everything is written to tests/parity/fixtures/ (the folder is wiped and rebuilt):

  model/                 tiny random Stable Diffusion 1.x model, real diffusers layout
                         (unet/, vae/, text_encoder/, tokenizer/, scheduler/, model_index.json)
  source.png             deterministic 64x64 RGB source picture
  outputs.safetensors    float32 reference tensors (see README.md)
  meta.json              prompts, settings, versions, token ids, timesteps, start-step table

The script is deterministic: running it twice gives byte-identical outputs.safetensors
(it prints the sha256 of every file it writes).
"""

import hashlib
import json
import os
import platform
import shutil
import sys
import tempfile

# The shared CLIP vocabulary layout (scripts/clip_vocab.py).
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "scripts"))
from clip_vocab import build_vocab, bytes_to_unicode, write_vocab_and_merges  # noqa: E402

import numpy as np
import torch
from PIL import Image, ImageDraw

import diffusers
import transformers
import safetensors
from safetensors.torch import load_file, save_file
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    PNDMScheduler,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from diffusers.pipelines.stable_diffusion import pipeline_stable_diffusion_img2img as img2img_module
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "fixtures")
MODEL_DIR = os.path.join(FIXTURES, "model")

SEED = 0
PROMPT = "a photo of a tabby cat, a type of animal."
NEGATIVE_PROMPT = ""
GUIDANCE = 7.5
STEPS = 50
STRENGTHS = [0.5, 0.8, 1.0]
INIT_SCALE = 0.05  # std of biases / embeddings / norm-weight jitter in the re-initialisation
WEIGHT_GAIN = 1.0  # conv / linear weights ~ N(0, (WEIGHT_GAIN / sqrt(fan_in))^2)

SD15_SCHEDULER_CONFIG = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.6.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
    "clip_sample": False,
}

# BPE merges of the tiny tokenizer, in rank order. Each part must already be a vocab entry
# (a byte character, a byte character + "</w>", or an earlier merge result).
MERGES = [
    ("t", "h"),
    ("i", "n"),
    ("a", "n"),
    ("o", "f</w>"),
    ("th", "e</w>"),
    ("in", "g</w>"),
    ("p", "h"),
    ("o", "t"),
    ("ph", "ot"),
    ("phot", "o</w>"),
    ("c", "a"),
    ("ca", "t</w>"),
    ("t", "a"),
    ("b", "b"),
    ("b", "y</w>"),
    ("t", "y"),
    ("p", "e</w>"),
    ("i", "m"),
    ("a", "l</w>"),
    ("an", "im"),
    ("anim", "al</w>"),
    ("e", "r</w>"),
    ("o", "n</w>"),
    ("an", "d</w>"),
    ("r", "e"),
    ("o", "u"),
    ("s", "t"),
    ("e", "n"),
    ("a", "r"),
    ("o", "r"),
    ("i", "s</w>"),
    ("o", "n"),
    ("a", "t</w>"),
    ("e", "s</w>"),
    ("w", "i"),
    ("t", "h</w>"),
    ("wi", "th</w>"),
    ("d", "o"),
    ("do", "g</w>"),
    ("p", "a"),
    ("in", "t"),
    ("pa", "int"),
]


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def dir_size(path):
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            total += os.path.getsize(os.path.join(root, name))
    return total


# --------------------------------------------------------------------------------------
# Tokenizer (OpenAI CLIP style vocab, tiny merge list)
# --------------------------------------------------------------------------------------


def reference_clip_bpe(text, vocab, max_length=77):
    """Independent re-implementation of OpenAI's simple_tokenizer (no ftfy), used to
    cross-check the transformers tokenizer on the vocab/merges files."""
    import regex as re

    byte_encoder = bytes_to_unicode()
    ranks = {m: i for i, m in enumerate(MERGES)}
    pat = re.compile(
        r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
        re.IGNORECASE,
    )

    def bpe(token):
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        while len(word) > 1:
            pairs = {(word[i], word[i + 1]) for i in range(len(word) - 1)}
            best = min(pairs, key=lambda p: ranks.get(p, float("inf")))
            if best not in ranks:
                break
            first, second = best
            new_word, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and word[i] == first and word[i + 1] == second:
                    new_word.append(first + second)
                    i += 2
                else:
                    new_word.append(word[i])
                    i += 1
            word = tuple(new_word)
        return word

    text = " ".join(text.split()).strip().lower()
    ids = [vocab["<|startoftext|>"]]
    for token in re.findall(pat, text):
        token = "".join(byte_encoder[b] for b in token.encode("utf-8"))
        ids.extend(vocab[t] for t in bpe(token))
    eos = vocab["<|endoftext|>"]
    ids = ids[: max_length - 1] + [eos]
    return ids + [eos] * (max_length - len(ids))


# --------------------------------------------------------------------------------------
# Random re-initialisation
# --------------------------------------------------------------------------------------


def reinit(model, seed, scale=INIT_SCALE, gain=WEIGHT_GAIN):
    """Seeded random re-initialisation of every parameter (diffusers zero-inits some
    output convs, which would make outputs trivially zero):
      - GroupNorm / LayerNorm weights ~ 1 + N(0, scale^2), their biases ~ N(0, scale^2)
      - embedding tables ~ N(0, scale^2)
      - other weights (conv / linear, ndim >= 2) ~ N(0, (gain / sqrt(fan_in))^2), so that
        activations keep an O(1) magnitude through the deep VAE / UNet
      - other biases ~ N(0, scale^2)
    """
    g = torch.Generator().manual_seed(seed)
    norm_types = (torch.nn.GroupNorm, torch.nn.LayerNorm)
    with torch.no_grad():
        for _, module in model.named_modules():
            for pname, p in module.named_parameters(recurse=False):
                r = torch.randn(p.shape, generator=g, dtype=torch.float32)
                if isinstance(module, norm_types):
                    r = r * scale + (1.0 if pname == "weight" else 0.0)
                elif isinstance(module, torch.nn.Embedding) or p.ndim < 2:
                    r = r * scale
                else:
                    fan_in = p[0].numel()
                    r = r * (gain / fan_in**0.5)
                p.copy_(r.to(p.dtype))


def json_clean(obj):
    """Strict-JSON-safe, order-stable copy: non-finite floats become strings ("-inf"),
    sets (e.g. diffusers' `_use_default_values`) become sorted lists."""
    if isinstance(obj, dict):
        return {str(k): (sorted(v) if k == "_use_default_values" else json_clean(v)) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        items = sorted(obj) if isinstance(obj, (set, frozenset)) else obj
        return [json_clean(v) for v in items]
    if isinstance(obj, float) and not np.isfinite(obj):
        return str(obj)
    return obj


def n_params(model):
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------------------
# Source picture
# --------------------------------------------------------------------------------------


def make_source_png(path):
    h = w = 64
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    r = x / (w - 1) * 255.0
    g = y / (h - 1) * 255.0
    b = (0.5 + 0.5 * np.sin(x / 6.0) * np.cos(y / 9.0)) * 255.0
    arr = np.stack([r, g, b], axis=-1).round().clip(0, 255).astype(np.uint8)
    img = Image.fromarray(arr, mode="RGB")
    d = ImageDraw.Draw(img)
    d.ellipse([8, 8, 28, 28], fill=(250, 230, 20))
    d.rectangle([36, 10, 56, 26], fill=(20, 40, 200))
    d.polygon([(10, 56), (30, 36), (50, 56)], fill=(200, 30, 30))
    d.line([(0, 32), (63, 32)], fill=(255, 255, 255), width=2)
    img.save(path, format="PNG")


# --------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------


def main():
    torch.manual_seed(SEED)
    np.random.seed(SEED)
    device = "cpu"

    if os.path.exists(FIXTURES):
        shutil.rmtree(FIXTURES)
    os.makedirs(FIXTURES)

    # ---------------- tokenizer ----------------
    vocab = build_vocab(MERGES)
    bos_id = vocab["<|startoftext|>"]
    eos_id = vocab["<|endoftext|>"]
    tok_src = tempfile.mkdtemp(prefix="genie_tok_")
    write_vocab_and_merges(tok_src, vocab, MERGES)
    tokenizer = CLIPTokenizer.from_pretrained(tok_src, model_max_length=77)
    assert tokenizer.bos_token_id == bos_id and tokenizer.eos_token_id == eos_id
    assert tokenizer.pad_token_id == eos_id

    # ---------------- text encoder ----------------
    text_config = CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
        projection_dim=32,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
    )
    torch.manual_seed(SEED)
    text_encoder = CLIPTextModel(text_config)
    reinit(text_encoder, SEED + 1)

    # ---------------- unet ----------------
    torch.manual_seed(SEED)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    reinit(unet, SEED + 2)

    # ---------------- vae ----------------
    torch.manual_seed(SEED)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        block_out_channels=[8, 16, 16, 16],
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
        scaling_factor=0.18215,
    )
    reinit(vae, SEED + 3)

    scheduler = PNDMScheduler.from_config(SD15_SCHEDULER_CONFIG)

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
    pipe.save_pretrained(MODEL_DIR, safe_serialization=True)
    del pipe
    in_memory = {
        "unet": {k: v.clone() for k, v in unet.state_dict().items()},
        "vae": {k: v.clone() for k, v in vae.state_dict().items()},
        "text_encoder": {k: v.clone() for k, v in text_encoder.state_dict().items()},
    }

    # transformers >= 5 saves CLIPTextModel weights without the "text_model." prefix
    # (e.g. "embeddings.token_embedding.weight"); real SD 1.5 checkpoints (and transformers 4)
    # use "text_model.embeddings.token_embedding.weight". Rewrite with the prefix so the
    # fixture matches real checkpoints; transformers 5 strips the prefix again on load.
    te_path = os.path.join(MODEL_DIR, "text_encoder", "model.safetensors")
    te_sd = load_file(te_path)
    te_sd = {(k if k.startswith("text_model.") else "text_model." + k): v.contiguous() for k, v in te_sd.items()}
    save_file(te_sd, te_path, metadata={"format": "pt"})

    # SD 1.5 scheduler config, verbatim.
    with open(os.path.join(MODEL_DIR, "scheduler", "scheduler_config.json"), "w") as f:
        json.dump(SD15_SCHEDULER_CONFIG, f, indent=2)
        f.write("\n")

    # transformers >= 5 only writes tokenizer.json + tokenizer_config.json; add the classic
    # SD 1.5 files (vocab.json, merges.txt, special_tokens_map.json) as well.
    tok_dir = os.path.join(MODEL_DIR, "tokenizer")
    write_vocab_and_merges(tok_dir, vocab, MERGES)
    with open(os.path.join(tok_dir, "special_tokens_map.json"), "w") as f:
        json.dump(
            {
                "bos_token": "<|startoftext|>",
                "eos_token": "<|endoftext|>",
                "pad_token": "<|endoftext|>",
                "unk_token": "<|endoftext|>",
            },
            f,
            indent=2,
        )
        f.write("\n")
    shutil.rmtree(tok_src)

    # ---------------- reload everything from disk ----------------
    unet = UNet2DConditionModel.from_pretrained(MODEL_DIR, subfolder="unet").eval()
    vae = AutoencoderKL.from_pretrained(MODEL_DIR, subfolder="vae").eval()
    text_encoder = CLIPTextModel.from_pretrained(MODEL_DIR, subfolder="text_encoder").eval()
    tokenizer = CLIPTokenizer.from_pretrained(MODEL_DIR, subfolder="tokenizer")
    assert tokenizer.model_max_length == 77, tokenizer.model_max_length

    for name, model in (("unet", unet), ("vae", vae), ("text_encoder", text_encoder)):
        reloaded = model.state_dict()
        assert reloaded.keys() == in_memory[name].keys(), name
        assert all(torch.equal(reloaded[k], in_memory[name][k]) for k in reloaded), name
    del in_memory

    counts = {"unet": n_params(unet), "vae": n_params(vae), "text_encoder": n_params(text_encoder)}
    print("parameter counts:", counts, "total", sum(counts.values()))
    print("model/ size: %.2f MB" % (dir_size(MODEL_DIR) / 1e6))

    # ---------------- tokens & embeddings ----------------
    def ids_for(text):
        return tokenizer(
            text, padding="max_length", max_length=77, truncation=True, return_tensors="pt"
        ).input_ids

    prompt_ids = ids_for(PROMPT)
    uncond_ids = ids_for(NEGATIVE_PROMPT)
    # Cross-checks: tokenizer built from vocab.json + merges.txt only, and a pure-Python BPE.
    tok_dir_only_classic = tempfile.mkdtemp(prefix="genie_tok2_")
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(os.path.join(tok_dir, name), tok_dir_only_classic)
    tok_classic = CLIPTokenizer.from_pretrained(tok_dir_only_classic, model_max_length=77)
    shutil.rmtree(tok_dir_only_classic)
    extra_texts = ["The dog is painting with a photo, and 42 cats!", "  Hello   WORLD  ", "x" * 200]
    for text in [PROMPT, NEGATIVE_PROMPT] + extra_texts:
        a = ids_for(text)[0].tolist()
        b = tok_classic(text, padding="max_length", max_length=77, truncation=True).input_ids
        c = reference_clip_bpe(text, vocab)
        assert a == b == c, (text, a, b, c)
    print("prompt tokens:", tokenizer.convert_ids_to_tokens(prompt_ids[0].tolist()[:16]))
    print("prompt ids:", prompt_ids[0].tolist()[:16])
    print("uncond ids:", uncond_ids[0].tolist()[:4])

    with torch.no_grad():
        prompt_embeds = text_encoder(prompt_ids)[0]
        uncond_embeds = text_encoder(uncond_ids)[0]
    print("prompt_embeds", tuple(prompt_embeds.shape), "std %.4f" % prompt_embeds.std().item())

    # ---------------- source image & latents ----------------
    src_path = os.path.join(FIXTURES, "source.png")
    make_source_png(src_path)
    src_img = Image.open(src_path).convert("RGB")
    # Same preprocessing as the pipeline (VaeImageProcessor with vae_scale_factor 8).
    vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
    image_processor = diffusers.image_processor.VaeImageProcessor(vae_scale_factor=vae_scale_factor)
    source_image = image_processor.preprocess(src_img).to(torch.float32)
    assert tuple(source_image.shape) == (1, 3, 64, 64)
    with torch.no_grad():
        source_latents = vae.encode(source_image).latent_dist.mode() * vae.config.scaling_factor
    print("source_latents", tuple(source_latents.shape), "std %.4f" % source_latents.std().item())

    noise = torch.randn([1, 4, 8, 8], generator=torch.Generator().manual_seed(SEED))

    # ---------------- single UNet evaluation (isolates UNet parity) ----------------
    with torch.no_grad():
        t_probe = torch.tensor(981)
        unet_cond = unet(noise, t_probe, encoder_hidden_states=prompt_embeds).sample
        unet_uncond = unet(noise, t_probe, encoder_hidden_states=uncond_embeds).sample
        vae_decoded_source = vae.decode(source_latents / vae.config.scaling_factor).sample
    print(
        "UNet output std (t=981): cond %.4f uncond %.4f, mean abs diff %.4f"
        % (unet_cond.std().item(), unet_uncond.std().item(), (unet_cond - unet_uncond).abs().mean().item())
    )

    tensors = {
        "noise": noise,
        "source_image": source_image,
        "source_latents": source_latents,
        "prompt_ids": prompt_ids.to(torch.int64),
        "uncond_ids": uncond_ids.to(torch.int64),
        "prompt_embeds": prompt_embeds,
        "uncond_embeds": uncond_embeds,
        "unet_t981_cond": unet_cond,
        "unet_t981_uncond": unet_uncond,
        "vae_roundtrip_image": (vae_decoded_source / 2 + 0.5).clamp(0, 1),
    }

    # ---------------- full pipeline runs ----------------
    sched_classes = {"ddim": DDIMScheduler, "dpm": DPMSolverMultistepScheduler}
    orig_randn_tensor = img2img_module.randn_tensor

    def fake_randn_tensor(shape, generator=None, device=None, dtype=None, layout=None):
        assert tuple(shape) == tuple(noise.shape), f"randn_tensor asked for {shape}"
        return noise.clone().to(device=device or "cpu", dtype=dtype or torch.float32)

    runs = {}
    scheduler_configs = {}
    for sname, scls in sched_classes.items():
        scheduler_configs[sname] = {
            k: v for k, v in dict(scls.from_pretrained(MODEL_DIR, subfolder="scheduler").config).items()
        }
        for r in STRENGTHS:
            key = f"{sname}_r{int(round(r * 1000))}"
            sched = scls.from_pretrained(MODEL_DIR, subfolder="scheduler")
            if r < 1.0:
                pipe = StableDiffusionImg2ImgPipeline.from_pretrained(
                    MODEL_DIR, scheduler=sched, safety_checker=None, requires_safety_checker=False
                )
            else:
                pipe = StableDiffusionPipeline.from_pretrained(
                    MODEL_DIR, scheduler=sched, safety_checker=None, requires_safety_checker=False
                )
            pipe.set_progress_bar_config(disable=True)

            captured = {"t": [], "latents": []}
            orig_prepare = pipe.prepare_latents

            def wrapped_prepare(*args, _orig=orig_prepare, _cap=captured, **kwargs):
                out = _orig(*args, **kwargs)
                _cap["init"] = out.detach().clone()
                return out

            pipe.prepare_latents = wrapped_prepare

            def on_step_end(p, i, t, kw, _cap=captured):
                _cap["t"].append(int(t))
                _cap["latents"].append(kw["latents"].detach().clone())
                return {}

            common = dict(
                prompt=PROMPT,
                num_inference_steps=STEPS,
                guidance_scale=GUIDANCE,
                output_type="latent",
                callback_on_step_end=on_step_end,
                callback_on_step_end_tensor_inputs=["latents"],
            )
            img2img_module.randn_tensor = fake_randn_tensor
            try:
                with torch.no_grad():
                    if r < 1.0:
                        out = pipe(image=source_latents.clone(), strength=r, **common)
                    else:
                        out = pipe(latents=noise.clone(), height=64, width=64, **common)
            finally:
                img2img_module.randn_tensor = orig_randn_tensor
            latents = out.images
            with torch.no_grad():
                decoded = vae.decode(latents / vae.config.scaling_factor).sample
            image = (decoded / 2 + 0.5).clamp(0, 1).to(torch.float32)

            assert torch.isfinite(latents).all() and torch.isfinite(image).all(), key
            assert image.std().item() > 1e-3, f"{key}: image is constant"

            tensors[f"{key}_latents"] = latents.to(torch.float32)
            tensors[f"{key}_image"] = image
            tensors[f"{key}_init_latents"] = captured["init"].to(torch.float32)
            tensors[f"{key}_step_latents"] = torch.stack(captured["latents"]).to(torch.float32)

            runs[key] = {
                "scheduler": sname,
                "strength": r,
                "pipeline": type(pipe).__name__,
                "num_steps_run": len(captured["t"]),
                "timesteps": captured["t"],
                "noise_timestep": captured["t"][0] if r < 1.0 else None,
                "first_timestep": captured["t"][0],
            }
            print(
                "%-10s steps=%2d t=[%d..%d] latents std %.4f  image mean %.4f std %.4f"
                % (
                    key,
                    len(captured["t"]),
                    captured["t"][0],
                    captured["t"][-1],
                    latents.std().item(),
                    image.mean().item(),
                    image.std().item(),
                )
            )
            del pipe

    # ---------------- start-step table ----------------
    table_pipe = StableDiffusionImg2ImgPipeline.from_pretrained(
        MODEL_DIR, safety_checker=None, requires_safety_checker=False
    )
    start_table = {}
    for sname, scls in sched_classes.items():
        start_table[sname] = {}
        for n in (10, 25, 50):
            sched = scls.from_pretrained(MODEL_DIR, subfolder="scheduler")
            sched.set_timesteps(n)
            full = [int(t) for t in sched.timesteps]
            entry = {"timesteps": full, "order": sched.order, "strengths": {}}
            for k in range(1, 11):
                r = k / 10
                sched = scls.from_pretrained(MODEL_DIR, subfolder="scheduler")
                sched.set_timesteps(n)
                table_pipe.scheduler = sched
                ts, n_run = table_pipe.get_timesteps(n, r, "cpu")
                entry["strengths"][repr(r)] = {
                    "t_start": n - n_run,
                    "num_steps": n_run,
                    "timesteps": [int(t) for t in ts],
                    "begin_index": getattr(sched, "begin_index", None),
                }
            start_table[sname][str(n)] = entry

    # ---------------- write outputs ----------------
    tensors = {k: v.detach().contiguous() for k, v in tensors.items()}
    out_path = os.path.join(FIXTURES, "outputs.safetensors")
    save_file(tensors, out_path)

    meta = {
        "prompt": PROMPT,
        "negative_prompt": NEGATIVE_PROMPT,
        "guidance_scale": GUIDANCE,
        "num_inference_steps": STEPS,
        "seed": SEED,
        "noise": "torch.randn([1,4,8,8], generator=torch.Generator().manual_seed(seed))",
        "height": 64,
        "width": 64,
        "vae_scale_factor": vae_scale_factor,
        "scaling_factor": vae.config.scaling_factor,
        "init_scale": INIT_SCALE,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "transformers": transformers.__version__,
            "safetensors": safetensors.__version__,
            "numpy": np.__version__,
            "pillow": Image.__version__,
        },
        "token_ids": {
            "prompt": prompt_ids[0].tolist(),
            "negative_prompt": uncond_ids[0].tolist(),
            "prompt_tokens": tokenizer.convert_ids_to_tokens(prompt_ids[0].tolist()),
            "bos": bos_id,
            "eos": eos_id,
            "pad": eos_id,
            "vocab_size": len(vocab),
        },
        "parameter_counts": counts,
        "scheduler_configs": scheduler_configs,
        "runs": runs,
        "start_step_table": start_table,
        "tensors": {k: [list(v.shape), str(v.dtype).replace("torch.", "")] for k, v in sorted(tensors.items())},
    }
    meta_path = os.path.join(FIXTURES, "meta.json")
    with open(meta_path, "w") as f:
        json.dump(json_clean(meta), f, indent=1, allow_nan=False)
        f.write("\n")

    print()
    print("model/ size: %.2f MB" % (dir_size(MODEL_DIR) / 1e6))
    for root, _, files in sorted(os.walk(FIXTURES)):
        for name in sorted(files):
            p = os.path.join(root, name)
            print("%9d  %s  %s" % (os.path.getsize(p), sha256(p)[:16], os.path.relpath(p, FIXTURES)))
    print("outputs.safetensors + meta.json: %.2f MB" % ((os.path.getsize(out_path) + os.path.getsize(meta_path)) / 1e6))


if __name__ == "__main__":
    sys.exit(main())
