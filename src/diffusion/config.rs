//! Strict readers for diffusers `config.json` files, mapped onto candle's model configs.
//!
//! Every key is accounted for: read and used, checked to hold the only value we can honour, or
//! known to be irrelevant. Anything else is an error naming the file, the key and the value, so
//! a model we cannot represent exactly is refused instead of silently approximated.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use candle_transformers::models::clip::text_model::{Activation, ClipTextConfig};
use serde_json::{Map, Value};

use super::unet::UNetConfig;

/// A config file that cannot be read or holds something we cannot build.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not JSON (Python's `NaN` / `Infinity` are accepted).
    #[error("{path} is not valid JSON: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The parser's account.
        #[source]
        source: serde_json::Error,
    },
    /// The JSON is not an object.
    #[error("{path} must hold a JSON object")]
    NotAnObject {
        /// The file.
        path: PathBuf,
    },
    /// A key holds a value genie cannot build (wrong type, or an option it does not implement).
    #[error("{file}: unsupported value {value} for \"{key}\" (supported: {expected})")]
    Unsupported {
        /// The file's name.
        file: String,
        /// The key.
        key: String,
        /// Its value, as JSON.
        value: String,
        /// What would be accepted.
        expected: String,
    },
    /// A key genie does not know: it may change the model, so it is not ignored.
    #[error("{file}: unsupported config key \"{key}\" = {value}")]
    UnknownKey {
        /// The file's name.
        file: String,
        /// The key.
        key: String,
        /// Its value, as JSON.
        value: String,
    },
}

/// Python's `json` writes `NaN`, `Infinity` and `-Infinity`, which JSON lacks; diffusers saves
/// DPM-Solver configs with `"lambda_min_clipped": -Infinity`. Those bare words (outside strings)
/// become `null`, which the readers below take as "not set".
fn python_json(text: &str) -> std::borrow::Cow<'_, str> {
    if !(text.contains("NaN") || text.contains("Infinity")) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut in_string = false;
    let mut escaped = false;
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if in_string {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => in_string = false,
                _ => {}
            }
        } else if c == '"' {
            in_string = true;
        } else if let Some(word) = ["-Infinity", "Infinity", "NaN"]
            .into_iter()
            .find(|w| rest.starts_with(w))
        {
            out.push_str("null");
            rest = &rest[word.len()..];
            continue;
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    std::borrow::Cow::Owned(out)
}

/// Reads typed values out of a JSON object and remembers which keys were looked at.
pub struct ConfigReader {
    map: Map<String, Value>,
    file: String,
    seen: BTreeSet<String>,
}

impl ConfigReader {
    /// Reads a config file (Python JSON) that must hold an object.
    pub fn open(path: &Path) -> Result<Self, ConfigError> {
        let text = crate::safe_open::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let value: Value =
            serde_json::from_str(&python_json(&text)).map_err(|source| ConfigError::Json {
                path: path.to_path_buf(),
                source,
            })?;
        match value {
            Value::Object(map) => Ok(Self::from_map(map, &path.display().to_string())),
            _ => Err(ConfigError::NotAnObject {
                path: path.to_path_buf(),
            }),
        }
    }

    /// A reader over an object already parsed; `file` names it in errors.
    pub fn from_map(map: Map<String, Value>, file: &str) -> Self {
        ConfigReader {
            map,
            file: file.to_string(),
            seen: BTreeSet::new(),
        }
    }

    /// The name errors give the file.
    pub fn file(&self) -> &str {
        &self.file
    }

    /// The raw value of a key (marking it as handled).
    pub fn take(&mut self, key: &str) -> Option<Value> {
        self.seen.insert(key.to_string());
        self.map.get(key).cloned()
    }

    /// An "unsupported value" error for a key.
    pub fn bad(&self, key: &str, expected: &str) -> ConfigError {
        ConfigError::Unsupported {
            file: self.file.clone(),
            key: key.to_string(),
            value: self
                .map
                .get(key)
                .map_or_else(|| "(missing)".to_string(), Value::to_string),
            expected: expected.to_string(),
        }
    }

    fn present(&mut self, key: &str) -> Option<Value> {
        match self.take(key) {
            None | Some(Value::Null) => None,
            Some(v) => Some(v),
        }
    }

    /// A non-negative integer, or `default` when absent or null.
    pub fn usize_or(&mut self, key: &str, default: usize) -> Result<usize, ConfigError> {
        match self.present(key) {
            None => Ok(default),
            Some(v) => v
                .as_u64()
                .map(|x| x as usize)
                .ok_or_else(|| self.bad(key, "a non-negative integer")),
        }
    }

    /// A non-negative integer that must be there.
    pub fn usize_req(&mut self, key: &str) -> Result<usize, ConfigError> {
        match self.present(key) {
            None => Err(self.bad(key, "a non-negative integer (required)")),
            Some(v) => v
                .as_u64()
                .map(|x| x as usize)
                .ok_or_else(|| self.bad(key, "a non-negative integer")),
        }
    }

    /// A number, or `default` when absent or null.
    pub fn f64_or(&mut self, key: &str, default: f64) -> Result<f64, ConfigError> {
        match self.present(key) {
            None => Ok(default),
            Some(v) => v.as_f64().ok_or_else(|| self.bad(key, "a number")),
        }
    }

    /// A boolean, or `default` when absent or null.
    pub fn bool_or(&mut self, key: &str, default: bool) -> Result<bool, ConfigError> {
        match self.present(key) {
            None => Ok(default),
            Some(v) => v.as_bool().ok_or_else(|| self.bad(key, "true or false")),
        }
    }

    /// A string, or `default` when absent or null.
    pub fn string_or(&mut self, key: &str, default: &str) -> Result<String, ConfigError> {
        match self.present(key) {
            None => Ok(default.to_string()),
            Some(Value::String(s)) => Ok(s),
            Some(_) => Err(self.bad(key, "a string")),
        }
    }

    /// A list of integers, or one integer repeated `n` times.
    pub fn usize_list_or_scalar(
        &mut self,
        key: &str,
        n: usize,
        default: Option<usize>,
    ) -> Result<Vec<usize>, ConfigError> {
        match self.present(key) {
            None => default
                .map(|d| vec![d; n])
                .ok_or_else(|| self.bad(key, "an integer or a list of integers (required)")),
            Some(Value::Array(items)) => {
                let list: Option<Vec<usize>> = items
                    .iter()
                    .map(|v| v.as_u64().map(|x| x as usize))
                    .collect();
                match list {
                    Some(l) if l.len() == n => Ok(l),
                    _ => Err(self.bad(key, &format!("a list of {n} integers"))),
                }
            }
            Some(v) => v
                .as_u64()
                .map(|x| vec![x as usize; n])
                .ok_or_else(|| self.bad(key, "an integer or a list of integers")),
        }
    }

    /// `norm_num_groups` (32 if absent), which must divide every one of `block_out_channels`.
    pub fn norm_num_groups(&mut self, block_out_channels: &[usize]) -> Result<usize, ConfigError> {
        let groups = self.usize_or("norm_num_groups", 32)?;
        if groups == 0
            || block_out_channels
                .iter()
                .any(|&c| c == 0 || c % groups != 0)
        {
            return Err(self.bad(
                "block_out_channels",
                "positive multiples of norm_num_groups",
            ));
        }
        Ok(groups)
    }

    /// A list of strings that must be there.
    pub fn string_list(&mut self, key: &str) -> Result<Vec<String>, ConfigError> {
        match self.present(key) {
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| v.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| self.bad(key, "a list of strings")),
            _ => Err(self.bad(key, "a list of strings (required)")),
        }
    }

    /// The key must be absent or hold exactly `value` (null counts as absent).
    pub fn require_default(&mut self, key: &str, value: &Value) -> Result<(), ConfigError> {
        self.require_default_one_of(key, std::slice::from_ref(value))
    }

    /// The key must be absent, null, or one of `values`.
    pub fn require_default_one_of(
        &mut self,
        key: &str,
        values: &[Value],
    ) -> Result<(), ConfigError> {
        match self.present(key) {
            None => Ok(()),
            Some(v) if values.iter().any(|d| same_json(d, &v)) => Ok(()),
            Some(_) => {
                let expected = values
                    .iter()
                    .filter(|v| !v.is_null())
                    .map(Value::to_string)
                    .collect::<Vec<_>>()
                    .join(" or ");
                let expected = if expected.is_empty() {
                    "null".to_string()
                } else {
                    expected
                };
                Err(self.bad(key, &expected))
            }
        }
    }

    /// Marks metadata keys (`_class_name`, `_diffusers_version`, …) and `extra` as handled.
    pub fn ignore_private_and(&mut self, extra: &[&str]) {
        let keys: Vec<String> = self
            .map
            .keys()
            .filter(|k| k.starts_with('_') || extra.contains(&k.as_str()))
            .cloned()
            .collect();
        self.seen.extend(keys);
    }

    /// Fails on the first key nobody looked at.
    pub fn finish(self) -> Result<(), ConfigError> {
        match self.map.iter().find(|(k, _)| !self.seen.contains(*k)) {
            None => Ok(()),
            Some((k, v)) => Err(ConfigError::UnknownKey {
                file: self.file,
                key: k.clone(),
                value: v.to_string(),
            }),
        }
    }
}

fn same_json(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

/// Reads diffusers' `UNet2DConditionModel` config.
pub fn unet_spec(mut r: ConfigReader) -> Result<UNetConfig, ConfigError> {
    let null = Value::Null;
    let down = r.string_list("down_block_types")?;
    let up = r.string_list("up_block_types")?;
    let n = down.len();
    if n == 0 {
        return Err(r.bad("down_block_types", "a non-empty list"));
    }
    if up.len() != n {
        return Err(r.bad("up_block_types", "as many blocks as down_block_types"));
    }
    let mut cross = Vec::with_capacity(n);
    for (i, d) in down.iter().enumerate() {
        let is_cross = match d.as_str() {
            "CrossAttnDownBlock2D" => true,
            "DownBlock2D" => false,
            _ => return Err(r.bad("down_block_types", "CrossAttnDownBlock2D or DownBlock2D")),
        };
        // The up path mirrors the down path: up block n-1-i has attention iff down block i has.
        let expect_up = if is_cross {
            "CrossAttnUpBlock2D"
        } else {
            "UpBlock2D"
        };
        if up[n - 1 - i] != expect_up {
            return Err(r.bad(
                "up_block_types",
                "the mirror image of down_block_types (CrossAttnUpBlock2D for CrossAttnDownBlock2D, UpBlock2D for DownBlock2D)",
            ));
        }
        cross.push(is_cross);
    }
    let block_out = r.usize_list_or_scalar("block_out_channels", n, None)?;
    let layers = r.usize_list_or_scalar("layers_per_block", n, Some(2))?;
    if layers.iter().any(|&l| l != layers[0] || l == 0) {
        return Err(r.bad("layers_per_block", "one positive integer for every block"));
    }
    let norm_num_groups = r.norm_num_groups(&block_out)?;
    let head_dim = r.usize_list_or_scalar("attention_head_dim", n, Some(8))?;
    // diffusers' historical naming: without num_attention_heads, attention_head_dim is the head count.
    let heads = match r.take("num_attention_heads") {
        None | Some(Value::Null) => head_dim,
        Some(_) => r.usize_list_or_scalar("num_attention_heads", n, None)?,
    };
    let tlayers = r.usize_list_or_scalar("transformer_layers_per_block", n, Some(1))?;
    if (0..n).any(|i| heads[i] == 0 || block_out[i] % heads[i] != 0) {
        return Err(r.bad(
            "attention_head_dim",
            "head counts that divide block_out_channels",
        ));
    }
    let config = UNetConfig {
        in_channels: r.usize_or("in_channels", 4)?,
        out_channels: r.usize_or("out_channels", 4)?,
        sample_size: r.usize_or("sample_size", 64)?,
        block_out_channels: block_out,
        cross_attention: cross,
        heads,
        transformer_layers: tlayers,
        layers_per_block: layers[0],
        downsample_padding: r.usize_or("downsample_padding", 1)?,
        mid_block_scale_factor: r.f64_or("mid_block_scale_factor", 1.0)?,
        norm_num_groups,
        norm_eps: r.f64_or("norm_eps", 1e-5)?,
        cross_attention_dim: r.usize_or("cross_attention_dim", 1280)?,
        use_linear_projection: r.bool_or("use_linear_projection", false)?,
        center_input_sample: r.bool_or("center_input_sample", false)?,
        flip_sin_to_cos: r.bool_or("flip_sin_to_cos", true)?,
        freq_shift: r.f64_or("freq_shift", 0.0)?,
    };
    r.require_default("mid_block_type", &Value::from("UNetMidBlock2DCrossAttn"))?;
    r.require_default_one_of(
        "only_cross_attention",
        &[Value::Bool(false), serde_json::json!(vec![false; n])],
    )?;
    r.require_default("dropout", &Value::from(0.0))?;
    r.require_default("act_fn", &Value::from("silu"))?;
    r.require_default("reverse_transformer_layers_per_block", &null)?;
    r.require_default("encoder_hid_dim", &null)?;
    r.require_default("encoder_hid_dim_type", &null)?;
    r.require_default("dual_cross_attention", &Value::Bool(false))?;
    r.require_default("class_embed_type", &null)?;
    r.require_default("addition_embed_type", &null)?;
    r.require_default("addition_time_embed_dim", &null)?;
    r.require_default("num_class_embeds", &null)?;
    r.require_default("resnet_time_scale_shift", &Value::from("default"))?;
    r.require_default("resnet_skip_time_act", &Value::Bool(false))?;
    r.require_default("resnet_out_scale_factor", &Value::from(1.0))?;
    r.require_default("time_embedding_type", &Value::from("positional"))?;
    r.require_default("time_embedding_dim", &null)?;
    r.require_default("time_embedding_act_fn", &null)?;
    r.require_default("timestep_post_act", &null)?;
    r.require_default("time_cond_proj_dim", &null)?;
    r.require_default("conv_in_kernel", &Value::from(3))?;
    r.require_default("conv_out_kernel", &Value::from(3))?;
    r.require_default("projection_class_embeddings_input_dim", &null)?;
    r.require_default("attention_type", &Value::from("default"))?;
    r.require_default("class_embeddings_concat", &Value::Bool(false))?;
    r.require_default("mid_block_only_cross_attention", &null)?;
    r.require_default("cross_attention_norm", &null)?;
    // candle computes attention scores in f32, which is what upcast_attention asks for.
    r.take("upcast_attention");
    // Only read when addition_embed_type is set, which we refuse above.
    r.take("addition_embed_type_num_heads");
    r.ignore_private_and(&[]);
    r.finish()?;
    Ok(config)
}

/// Everything we need from `vae/config.json`.
#[derive(Clone, Debug)]
pub struct VaeSpec {
    /// Image channels in (3).
    pub in_channels: usize,
    /// Image channels out (3).
    pub out_channels: usize,
    /// Channels of each resolution level, highest resolution first.
    pub block_out_channels: Vec<usize>,
    /// ResNet blocks per level.
    pub layers_per_block: usize,
    /// Latent channels (4 for SD).
    pub latent_channels: usize,
    /// Groups of every group norm.
    pub norm_num_groups: usize,
    /// Whether the encoder ends in a 1×1 `quant_conv`.
    pub use_quant_conv: bool,
    /// Whether the decoder starts with a 1×1 `post_quant_conv`.
    pub use_post_quant_conv: bool,
    /// Latents are multiplied by this after encoding (0.18215 for SD 1.5).
    pub scaling_factor: f64,
    /// The image side the VAE was trained at.
    pub sample_size: usize,
}

impl VaeSpec {
    /// How much smaller the latents are than the image (2^(blocks−1), 8 for SD).
    pub fn scale_factor(&self) -> usize {
        1 << (self.block_out_channels.len() - 1)
    }
}

/// Reads diffusers' `AutoencoderKL` config.
pub fn vae_spec(mut r: ConfigReader) -> Result<VaeSpec, ConfigError> {
    let null = Value::Null;
    let down = r.string_list("down_block_types")?;
    let up = r.string_list("up_block_types")?;
    let n = down.len();
    if n == 0 || down.iter().any(|d| d != "DownEncoderBlock2D") {
        return Err(r.bad("down_block_types", "a non-empty list of DownEncoderBlock2D"));
    }
    if up.len() != n || up.iter().any(|d| d != "UpDecoderBlock2D") {
        return Err(r.bad(
            "up_block_types",
            "UpDecoderBlock2D, as many as down_block_types",
        ));
    }
    let block_out_channels = r.usize_list_or_scalar("block_out_channels", n, None)?;
    let norm_num_groups = r.norm_num_groups(&block_out_channels)?;
    let spec = VaeSpec {
        in_channels: r.usize_or("in_channels", 3)?,
        out_channels: r.usize_or("out_channels", 3)?,
        block_out_channels,
        layers_per_block: r.usize_or("layers_per_block", 1)?,
        latent_channels: r.usize_or("latent_channels", 4)?,
        norm_num_groups,
        use_quant_conv: r.bool_or("use_quant_conv", true)?,
        use_post_quant_conv: r.bool_or("use_post_quant_conv", true)?,
        scaling_factor: r.f64_or("scaling_factor", 0.18215)?,
        sample_size: r.usize_or("sample_size", 32)?,
    };
    if spec.in_channels != 3 || spec.out_channels != 3 {
        return Err(r.bad("in_channels", "3 input and 3 output channels (RGB)"));
    }
    r.require_default("act_fn", &Value::from("silu"))?;
    r.require_default("shift_factor", &null)?;
    r.require_default("latents_mean", &null)?;
    r.require_default("latents_std", &null)?;
    r.require_default("mid_block_add_attention", &Value::Bool(true))?;
    // Only matters for half-precision runs, where the engine keeps the VAE in f32 anyway.
    r.take("force_upcast");
    r.ignore_private_and(&[]);
    r.finish()?;
    Ok(spec)
}

/// Keys of transformers' `PretrainedConfig` that do not change a text encoder's forward pass.
const HF_GENERIC_KEYS: &[&str] = &[
    "architectures",
    "model_type",
    "torch_dtype",
    "dtype",
    "transformers_version",
    "initializer_factor",
    "initializer_range",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "projection_dim",
    "attention_dropout",
    "dropout",
    "use_cache",
    "return_dict",
    "output_hidden_states",
    "output_attentions",
    "torchscript",
    "use_bfloat16",
    "tf_legacy_loss",
    "pruned_heads",
    "tie_word_embeddings",
    "chunk_size_feed_forward",
    "is_encoder_decoder",
    "is_decoder",
    "cross_attention_hidden_size",
    "add_cross_attention",
    "tie_encoder_decoder",
    "max_length",
    "min_length",
    "do_sample",
    "early_stopping",
    "num_beams",
    "num_beam_groups",
    "diversity_penalty",
    "temperature",
    "top_k",
    "top_p",
    "typical_p",
    "repetition_penalty",
    "length_penalty",
    "no_repeat_ngram_size",
    "encoder_no_repeat_ngram_size",
    "bad_words_ids",
    "num_return_sequences",
    "output_scores",
    "return_dict_in_generate",
    "forced_bos_token_id",
    "forced_eos_token_id",
    "remove_invalid_values",
    "exponential_decay_length_penalty",
    "suppress_tokens",
    "begin_suppress_tokens",
    "finetuning_task",
    "id2label",
    "label2id",
    "tokenizer_class",
    "prefix",
    "sep_token_id",
    "decoder_start_token_id",
    "task_specific_params",
    "problem_type",
    "gradient_checkpointing",
];

/// Everything we need from `text_encoder/config.json` (transformers' `CLIPTextModel`).
#[derive(Clone, Debug)]
pub struct TextSpec {
    /// candle's configuration of the CLIP text transformer.
    pub candle: ClipTextConfig,
}

/// Reads transformers' `CLIPTextModel` config.
pub fn text_spec(mut r: ConfigReader) -> Result<TextSpec, ConfigError> {
    match r.take("hidden_act") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if s == "quick_gelu" => {}
        Some(_) => return Err(r.bad("hidden_act", "\"quick_gelu\" (CLIP ViT-L/14, as in SD 1.x)")),
    }
    let eps = r.f64_or("layer_norm_eps", 1e-5)?;
    if (eps - 1e-5).abs() > 1e-12 {
        return Err(r.bad("layer_norm_eps", "1e-5"));
    }
    let embed_dim = r.usize_req("hidden_size")?;
    let heads = r.usize_req("num_attention_heads")?;
    if heads == 0 || embed_dim % heads != 0 {
        return Err(r.bad("num_attention_heads", "a divisor of hidden_size"));
    }
    let candle = ClipTextConfig {
        vocab_size: r.usize_req("vocab_size")?,
        embed_dim,
        activation: Activation::QuickGelu,
        intermediate_size: r.usize_req("intermediate_size")?,
        max_position_embeddings: r.usize_or("max_position_embeddings", 77)?,
        pad_with: None,
        num_hidden_layers: r.usize_req("num_hidden_layers")?,
        num_attention_heads: heads,
        projection_dim: 0,
    };
    r.ignore_private_and(HF_GENERIC_KEYS);
    r.finish()?;
    Ok(TextSpec { candle })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_infinities_outside_strings_become_null() {
        let text =
            r#"{"a": -Infinity, "b": "NaN -Infinity", "c": [Infinity, NaN], "d": "q\"Infinity"}"#;
        let value: Value = serde_json::from_str(&python_json(text)).expect("valid JSON");
        assert_eq!(value["a"], Value::Null);
        assert_eq!(value["b"], "NaN -Infinity");
        assert_eq!(value["c"], serde_json::json!([null, null]));
        assert_eq!(value["d"], "q\"Infinity");
    }
    use serde_json::json;

    fn reader(v: Value) -> ConfigReader {
        let Value::Object(m) = v else { panic!() };
        ConfigReader::from_map(m, "unet/config.json")
    }

    fn sd15_unet() -> Value {
        json!({
            "_class_name": "UNet2DConditionModel", "_diffusers_version": "0.6.0",
            "act_fn": "silu", "attention_head_dim": 8,
            "block_out_channels": [320, 640, 1280, 1280], "center_input_sample": false,
            "cross_attention_dim": 768,
            "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
            "downsample_padding": 1, "flip_sin_to_cos": true, "freq_shift": 0, "in_channels": 4,
            "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-05,
            "norm_num_groups": 32, "out_channels": 4, "sample_size": 64,
            "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]
        })
    }

    #[test]
    fn sd15_unet_config_is_read() {
        let c = unet_spec(reader(sd15_unet())).unwrap();
        assert_eq!(c.block_out_channels, [320, 640, 1280, 1280]);
        assert_eq!(c.cross_attention, [true, true, true, false]);
        assert_eq!(c.heads, [8, 8, 8, 8]);
        assert_eq!(c.transformer_layers, [1, 1, 1, 1]);
        assert_eq!(c.cross_attention_dim, 768);
        assert_eq!(c.sample_size, 64);
    }

    #[test]
    fn unknown_key_is_named() {
        let mut v = sd15_unet();
        v["frobnicate"] = json!(3);
        let err = unet_spec(reader(v)).unwrap_err().to_string();
        assert!(err.contains("frobnicate"), "{err}");
    }

    #[test]
    fn unsupported_value_is_named() {
        for (key, value) in [
            ("norm_num_groups", json!(48)),
            ("act_fn", json!("gelu")),
            ("class_embed_type", json!("timestep")),
            (
                "down_block_types",
                json!([
                    "CrossAttnDownBlock2D",
                    "CrossAttnDownBlock2D",
                    "CrossAttnDownBlock2D",
                    "SimpleDown"
                ]),
            ),
        ] {
            let mut v = sd15_unet();
            v[key] = value;
            let err = unet_spec(reader(v)).unwrap_err().to_string();
            assert!(err.contains(key), "{key}: {err}");
        }
    }

    #[test]
    fn mismatched_up_blocks_are_refused() {
        let mut v = sd15_unet();
        v["up_block_types"] = json!([
            "CrossAttnUpBlock2D",
            "CrossAttnUpBlock2D",
            "CrossAttnUpBlock2D",
            "UpBlock2D"
        ]);
        assert!(unet_spec(reader(v))
            .unwrap_err()
            .to_string()
            .contains("up_block_types"));
    }
}
