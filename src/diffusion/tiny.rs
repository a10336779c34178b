//! A tiny random Stable Diffusion model written in the real diffusers layout, for tests and demos.
//!
//! Same files as SD 1.5 (configs, safetensors, CLIP `vocab.json` + `merges.txt`, scheduler),
//! just a few channels wide and 64 px, so that everything downstream — the loader, the config
//! checks, the samplers, the cache — runs on the real path in milliseconds. **Its weights are
//! random: its images are meaningless noise-like pictures.** Use real SD 1.5 weights for
//! anything you want to look at.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use candle_transformers::models::clip::text_model::ClipTextTransformer;
use serde_json::{json, Value};

use super::config::{self, ConfigReader};
use super::unet::UNet;
use super::vae::Vae;
use super::DiffusionError;

/// Words whose BPE merges the tiny vocabulary knows (others fall back to single bytes).
const MERGES: &[(&str, &str)] = &[
    ("o", "f</w>"),
    ("t", "h"),
    ("th", "e</w>"),
    ("p", "h"),
    ("ph", "o"),
    ("t", "o</w>"),
    ("pho", "to</w>"),
    ("a", "n"),
    ("c", "a"),
    ("ca", "t</w>"),
    ("t", "y"),
    ("ty", "p"),
    ("typ", "e</w>"),
    ("d", "o"),
    ("do", "g</w>"),
];

/// OpenAI CLIP's reversible byte → printable-character table, in CLIP's vocabulary order.
pub fn bytes_to_unicode() -> Vec<(u8, char)> {
    let mut bs: Vec<u32> = (u32::from(b'!')..=u32::from(b'~'))
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    bs.into_iter()
        .zip(cs)
        .map(|(b, c)| (b as u8, char::from_u32(c).expect("valid code point")))
        .collect()
}

fn write(path: &Path, contents: &str) -> Result<(), DiffusionError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(DiffusionError::write(parent))?;
    }
    std::fs::write(path, contents).map_err(DiffusionError::write(path))
}

fn write_json(path: &Path, v: &Value) -> Result<(), DiffusionError> {
    write(
        path,
        &serde_json::to_string_pretty(v).expect("JSON values serialise"),
    )
}

/// The tiny model's component configs, in diffusers' own key format.
pub fn configs(vocab_size: usize) -> (Value, Value, Value) {
    let unet = json!({
        "_class_name": "UNet2DConditionModel",
        "act_fn": "silu", "attention_head_dim": 8, "block_out_channels": [32, 64],
        "center_input_sample": false, "cross_attention_dim": 32,
        "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
        "downsample_padding": 1, "flip_sin_to_cos": true, "freq_shift": 0,
        "in_channels": 4, "layers_per_block": 1, "mid_block_scale_factor": 1,
        "norm_eps": 1e-05, "norm_num_groups": 32, "out_channels": 4, "sample_size": 8,
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"]
    });
    let vae = json!({
        "_class_name": "AutoencoderKL",
        "act_fn": "silu", "block_out_channels": [8, 16, 16, 16],
        "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
        "in_channels": 3, "latent_channels": 4, "layers_per_block": 1, "norm_num_groups": 8,
        "out_channels": 3, "sample_size": 64, "scaling_factor": 0.18215,
        "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"]
    });
    let text = json!({
        "architectures": ["CLIPTextModel"], "model_type": "clip_text_model",
        "hidden_act": "quick_gelu", "hidden_size": 32, "intermediate_size": 64,
        "layer_norm_eps": 1e-05, "max_position_embeddings": 77, "num_attention_heads": 4,
        "num_hidden_layers": 2, "projection_dim": 32, "vocab_size": vocab_size,
        "bos_token_id": vocab_size - 2, "eos_token_id": vocab_size - 1, "pad_token_id": vocab_size - 1
    });
    (unet, vae, text)
}

/// Replaces every variable with seeded values: N(0, 1/fan_in) for weights, small values for
/// biases, and about 1 for normalisation scales, so activations stay in a sane range.
fn randomise(varmap: &VarMap, seed: u64) -> Result<(), DiffusionError> {
    let data = crate::sync::lock(varmap.data());
    let sorted: BTreeMap<&String, &candle_core::Var> = data.iter().collect();
    for (i, (name, var)) in sorted.into_iter().enumerate() {
        let dims = var.dims().to_vec();
        let len: usize = dims.iter().product();
        let noise = crate::noise::gaussian(seed.wrapping_add(i as u64 * 0x9E37_79B9), len);
        let is_norm = name.contains("norm") && name.ends_with(".weight");
        let values: Vec<f32> = if is_norm {
            noise.iter().map(|z| 1.0 + 0.05 * z).collect()
        } else if dims.len() == 1 {
            noise.iter().map(|z| 0.02 * z).collect()
        } else {
            let fan_in: usize = dims[1..].iter().product::<usize>().max(1);
            let scale = (fan_in as f32).sqrt().recip();
            noise.iter().map(|z| z * scale).collect()
        };
        var.set(&Tensor::from_vec(values, dims, &Device::Cpu)?)?;
    }
    Ok(())
}

/// Writes the tiny model into `dir` (created if needed), deterministically from `seed`.
pub fn write_tiny_model(dir: &Path, seed: u64) -> Result<(), DiffusionError> {
    // Tokenizer: CLIP's byte alphabet, the same with word ends, merges, then the two specials.
    let alphabet: Vec<String> = bytes_to_unicode()
        .into_iter()
        .map(|(_, c)| c.to_string())
        .collect();
    let mut vocab: Vec<String> = alphabet.clone();
    vocab.extend(alphabet.iter().map(|c| format!("{c}</w>")));
    vocab.extend(MERGES.iter().map(|(a, b)| format!("{a}{b}")));
    vocab.push("<|startoftext|>".into());
    vocab.push("<|endoftext|>".into());
    let vocab_json: serde_json::Map<String, Value> = vocab
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), json!(i)))
        .collect();
    let tok = dir.join("tokenizer");
    write_json(&tok.join("vocab.json"), &Value::Object(vocab_json))?;
    let mut merges = String::from("#version: 0.2\n");
    for (a, b) in MERGES {
        merges.push_str(&format!("{a} {b}\n"));
    }
    write(&tok.join("merges.txt"), &merges)?;
    write_json(
        &tok.join("special_tokens_map.json"),
        &json!({"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
                "pad_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}),
    )?;
    write_json(
        &tok.join("tokenizer_config.json"),
        &json!({"model_max_length": 77, "tokenizer_class": "CLIPTokenizer", "do_lower_case": true}),
    )?;

    let (unet_cfg, vae_cfg, text_cfg) = configs(vocab.len());
    write_json(&dir.join("unet/config.json"), &unet_cfg)?;
    write_json(&dir.join("vae/config.json"), &vae_cfg)?;
    write_json(&dir.join("text_encoder/config.json"), &text_cfg)?;
    write_json(
        &dir.join("scheduler/scheduler_config.json"),
        &json!({"_class_name": "PNDMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
                "beta_start": 0.00085, "num_train_timesteps": 1000, "set_alpha_to_one": false,
                "skip_prk_steps": true, "steps_offset": 1, "trained_betas": null, "clip_sample": false}),
    )?;
    write_json(
        &dir.join("model_index.json"),
        &json!({"_class_name": "StableDiffusionImg2ImgPipeline",
                "_genie_note": "tiny random model written by genie: its images are meaningless",
                "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
                "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
                "scheduler": ["diffusers", "PNDMScheduler"]}),
    )?;

    // Weights: build each network with a variable map (so names and shapes are exactly what the
    // loader will ask for), fill it deterministically, save as safetensors.
    let reader = |v: Value, name: &str| match v {
        Value::Object(m) => ConfigReader::from_map(m, name),
        _ => unreachable!("configs are objects"),
    };
    let dev = Device::Cpu;
    let write_weights = |file: &str,
                         seed: u64,
                         build: &dyn Fn(VarBuilder) -> candle_core::Result<()>|
     -> Result<(), DiffusionError> {
        let varmap = VarMap::new();
        build(VarBuilder::from_varmap(&varmap, DType::F32, &dev))?;
        randomise(&varmap, seed)?;
        let path = dir.join(file);
        varmap
            .save(&path)
            .map_err(|e| DiffusionError::write(&path)(std::io::Error::other(e)))
    };

    let spec = config::unet_spec(reader(unet_cfg, "tiny unet"))?;
    write_weights("unet/diffusion_pytorch_model.safetensors", seed, &|vb| {
        UNet::new(vb, &spec).map(drop)
    })?;
    let spec = config::vae_spec(reader(vae_cfg, "tiny vae"))?;
    write_weights(
        "vae/diffusion_pytorch_model.safetensors",
        seed ^ 0x5A5A,
        &|vb| Vae::new(vb, &spec).map(drop),
    )?;
    let spec = config::text_spec(reader(text_cfg, "tiny text encoder"))?;
    write_weights("text_encoder/model.safetensors", seed ^ 0xA5A5, &|vb| {
        ClipTextTransformer::new(vb.pp("text_model"), &spec.candle).map(drop)
    })?;
    Ok(())
}

/// Bumped when the tiny model's architecture or weights change.
pub const TINY_MODEL_VERSION: u32 = 1;
/// Seed of the tiny model that `--model tiny` uses.
pub const TINY_MODEL_SEED: u64 = 0x6E1E;

/// Makes sure a tiny model exists in `dir` (written once, atomically: into a temporary sibling
/// folder that is then renamed, so concurrent callers never see half a model) and returns it.
pub fn ensure_tiny_model(dir: &Path) -> Result<std::path::PathBuf, DiffusionError> {
    if dir.join("model_index.json").is_file() {
        return Ok(dir.to_path_buf());
    }
    let parent = dir.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(DiffusionError::write(parent))?;
    let tmp = tempfile::Builder::new()
        .prefix(".tiny-model-")
        .tempdir_in(parent)
        .map_err(DiffusionError::write(parent))?;
    write_tiny_model(tmp.path(), TINY_MODEL_SEED)?;
    make_readable_by_all(tmp.path())?;
    let staged = tmp.keep();
    if let Err(e) = std::fs::rename(&staged, dir) {
        let _ = std::fs::remove_dir_all(&staged);
        // Another process may have won the race; its model is identical.
        if !dir.join("model_index.json").is_file() {
            return Err(DiffusionError::write(dir)(e));
        }
    }
    Ok(dir.to_path_buf())
}

/// A staging folder is made private (0700) by `tempfile`; the model it becomes is shared by
/// everyone who uses the same `GENIE_HOME`, so it is opened to reading like any other install.
pub(crate) fn make_readable_by_all(dir: &Path) -> Result<(), DiffusionError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
            .map_err(DiffusionError::write(dir))?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Where `--model tiny` keeps its model: `$GENIE_HOME/tiny-v{N}`, or the user's cache folder.
pub fn default_tiny_dir() -> std::path::PathBuf {
    genie_home().join(format!("tiny-v{TINY_MODEL_VERSION}"))
}

/// genie's own folder for the models it writes: `$GENIE_HOME`, else `$XDG_CACHE_HOME/genie`,
/// else `~/.cache/genie`, else the temporary folder.
pub fn genie_home() -> std::path::PathBuf {
    std::env::var_os("GENIE_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::var_os("XDG_CACHE_HOME").map(|p| std::path::PathBuf::from(p).join("genie"))
        })
        .or_else(|| {
            std::env::var_os("HOME").map(|p| std::path::PathBuf::from(p).join(".cache/genie"))
        })
        .unwrap_or_else(|| std::env::temp_dir().join("genie"))
}
