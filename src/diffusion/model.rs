//! Finding and checking the files of a diffusers-layout model: a local folder or the Hugging Face Hub.

use std::path::{Path, PathBuf};

use super::DiffusionError;

/// SD 1.5 on the Hugging Face Hub.
pub const SD15_REPO: &str = "stable-diffusion-v1-5/stable-diffusion-v1-5";
/// The commit of [`SD15_REPO`] genie is tested against (pinned so that the weights, and so the
/// cache keys, cannot change under a user).
pub const SD15_REVISION: &str = "451f4fe16113bff5a5d2269ed5ad43b0592e9a14";

/// One of the three networks of a Stable Diffusion model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Component {
    /// The denoising UNet.
    Unet,
    /// The autoencoder.
    Vae,
    /// The CLIP text encoder.
    TextEncoder,
}

impl Component {
    /// Its folder in the diffusers layout.
    pub fn folder(self) -> &'static str {
        match self {
            Component::Unet => "unet",
            Component::Vae => "vae",
            Component::TextEncoder => "text_encoder",
        }
    }

    fn weight_stem(self) -> &'static str {
        match self {
            Component::Unet | Component::Vae => "diffusion_pytorch_model",
            Component::TextEncoder => "model",
        }
    }
}

/// Where the model comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelSource {
    /// A folder in the diffusers layout (`unet/`, `vae/`, `text_encoder/`, `tokenizer/`, `scheduler/`).
    Local(PathBuf),
    /// A Hub repository at a fixed revision, fetched into the Hugging Face cache (`HF_HOME`).
    Hub {
        /// `owner/name`.
        repo: String,
        /// A commit or branch.
        revision: String,
    },
}

impl ModelSource {
    /// SD 1.5 at the pinned revision.
    pub fn sd15() -> Self {
        ModelSource::Hub {
            repo: SD15_REPO.to_string(),
            revision: SD15_REVISION.to_string(),
        }
    }

    /// A short identity for fingerprints and logs.
    pub fn describe(&self) -> String {
        match self {
            ModelSource::Local(p) => p.display().to_string(),
            ModelSource::Hub { repo, revision } => format!("{repo}@{revision}"),
        }
    }
}

/// The resolved files of a model, all on the local disk.
#[derive(Clone, Debug)]
pub struct ModelFiles {
    /// The model's folder.
    pub root: PathBuf,
    /// `unet/config.json`.
    pub unet_config: PathBuf,
    /// The UNet's safetensors files.
    pub unet_weights: Vec<PathBuf>,
    /// `vae/config.json`.
    pub vae_config: PathBuf,
    /// The VAE's safetensors files.
    pub vae_weights: Vec<PathBuf>,
    /// `text_encoder/config.json`.
    pub text_config: PathBuf,
    /// The text encoder's safetensors files.
    pub text_weights: Vec<PathBuf>,
    /// `tokenizer/` (vocab.json, merges.txt).
    pub tokenizer_dir: PathBuf,
    /// `scheduler/scheduler_config.json`.
    pub scheduler_config: PathBuf,
}

impl ModelFiles {
    /// Resolves a source; `prefer_fp16` picks `.fp16.safetensors` variants first.
    pub fn resolve(source: &ModelSource, prefer_fp16: bool) -> Result<Self, DiffusionError> {
        match source {
            ModelSource::Local(dir) => Self::local(dir, prefer_fp16),
            ModelSource::Hub { repo, revision } => {
                let dir = hub::snapshot(repo, revision, prefer_fp16)?;
                Self::local(&dir, prefer_fp16)
            }
        }
    }

    /// Resolves a local diffusers folder.
    pub fn local(root: &Path, prefer_fp16: bool) -> Result<Self, DiffusionError> {
        if !root.is_dir() {
            return Err(DiffusionError::MissingFile {
                path: root.to_path_buf(),
                expected: "a model folder in the diffusers layout",
            });
        }
        let need = |rel: &str, expected: &'static str| {
            let p = root.join(rel);
            if p.is_file() {
                Ok(p)
            } else {
                Err(DiffusionError::MissingFile { path: p, expected })
            }
        };
        let tokenizer_dir = root.join("tokenizer");
        if !tokenizer_dir.is_dir() {
            return Err(DiffusionError::MissingFile {
                path: tokenizer_dir,
                expected: "a tokenizer folder (tokenizer.json, or vocab.json + merges.txt)",
            });
        }
        Ok(ModelFiles {
            unet_config: need("unet/config.json", "the UNet's config.json")?,
            unet_weights: weight_files(root, Component::Unet, prefer_fp16)?,
            vae_config: need("vae/config.json", "the VAE's config.json")?,
            vae_weights: weight_files(root, Component::Vae, prefer_fp16)?,
            text_config: need("text_encoder/config.json", "the text encoder's config.json")?,
            text_weights: weight_files(root, Component::TextEncoder, prefer_fp16)?,
            scheduler_config: need("scheduler/scheduler_config.json", "scheduler_config.json")?,
            tokenizer_dir,
            root: root.to_path_buf(),
        })
    }

    /// Every file whose bytes can change the pixels: configs, weights, tokenizer, scheduler.
    pub fn identity_files(&self) -> Vec<PathBuf> {
        let mut files = vec![
            self.unet_config.clone(),
            self.vae_config.clone(),
            self.text_config.clone(),
        ];
        files.extend(self.unet_weights.iter().cloned());
        files.extend(self.vae_weights.iter().cloned());
        files.extend(self.text_weights.iter().cloned());
        for name in [
            "tokenizer.json",
            "vocab.json",
            "merges.txt",
            "special_tokens_map.json",
            "tokenizer_config.json",
        ] {
            let p = self.tokenizer_dir.join(name);
            if p.is_file() {
                files.push(p);
            }
        }
        files.push(self.scheduler_config.clone());
        files
    }

    /// `blake3:<hex>` over the identity files' names (relative to the model folder) and contents.
    /// Each file's hash is remembered for the life of the process (keyed by path, size and
    /// modification time), so reloading an engine does not re-read gigabytes of weights, and a
    /// weight file's across processes (in `$GENIE_HOME/file-hashes.json`), so a start does not either.
    pub fn identity(&self) -> Result<String, DiffusionError> {
        let mut h = blake3::Hasher::new();
        h.update(b"genie-model-identity-v1");
        for file in self.identity_files() {
            let rel = file.strip_prefix(&self.root).unwrap_or(&file);
            let rel = rel.to_string_lossy().replace('\\', "/");
            h.update(&(rel.len() as u64).to_le_bytes());
            h.update(rel.as_bytes());
            h.update(file_hash(&file)?.as_bytes());
        }
        Ok(format!("blake3:{}", h.finalize().to_hex()))
    }

    /// The weight files of component `c`.
    pub fn weights(&self, c: Component) -> &[PathBuf] {
        match c {
            Component::Unet => &self.unet_weights,
            Component::Vae => &self.vae_weights,
            Component::TextEncoder => &self.text_weights,
        }
    }
}

/// Files at least this large have their hash remembered across processes ([`super::hash_memo`]).
const HASH_MEMO_MIN_LEN: u64 = 1 << 20;

fn file_hash(path: &Path) -> Result<blake3::Hash, DiffusionError> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    type Memo = Mutex<HashMap<(PathBuf, u64, std::time::SystemTime), blake3::Hash>>;
    static MEMO: OnceLock<Memo> = OnceLock::new();
    let bad = |e: std::io::Error| DiffusionError::BadWeights {
        file: path.to_path_buf(),
        message: format!("cannot hash: {e}"),
    };
    let file = crate::safe_open::open_regular(path).map_err(bad)?;
    let meta = file.metadata().map_err(bad)?;
    let id = (
        path.to_path_buf(),
        meta.len(),
        meta.modified().map_err(bad)?,
    );
    let memo = MEMO.get_or_init(Default::default);
    if let Some(h) = memo.lock().ok().and_then(|m| m.get(&id).copied()) {
        return Ok(h);
    }
    // Across processes only for weight-sized files: a small file hashes faster than the memo
    // is read and written.
    let stamp = (meta.len() >= HASH_MEMO_MIN_LEN)
        .then(|| super::hash_memo::Stamp::of(&meta))
        .flatten();
    let remembered = stamp
        .as_ref()
        .and_then(|s| super::hash_memo::recall(path, s));
    let h = match remembered {
        Some(h) => h,
        None => {
            let mut hasher = blake3::Hasher::new();
            hasher.update_reader(file).map_err(bad)?;
            let h = hasher.finalize();
            if let Some(s) = &stamp {
                super::hash_memo::remember(path, s, &h);
            }
            h
        }
    };
    if let Ok(mut m) = memo.lock() {
        m.insert(id, h);
    }
    Ok(h)
}

/// The safetensors files of one component: the plain file, its fp16 variant, or a sharded index.
fn weight_files(
    root: &Path,
    c: Component,
    prefer_fp16: bool,
) -> Result<Vec<PathBuf>, DiffusionError> {
    let dir = root.join(c.folder());
    let stem = c.weight_stem();
    let variants: [&str; 2] = if prefer_fp16 {
        [".fp16", ""]
    } else {
        ["", ".fp16"]
    };
    for v in variants {
        let single = dir.join(format!("{stem}{v}.safetensors"));
        if single.is_file() {
            return Ok(vec![single]);
        }
        let index = dir.join(format!("{stem}{v}.safetensors.index.json"));
        if index.is_file() {
            return sharded_files(&index);
        }
    }
    let pickled = ["bin", "ckpt", "pt", "pth"].iter().any(|ext| {
        std::fs::read_dir(&dir)
            .map(|rd| {
                rd.flatten()
                    .any(|e| e.path().extension().is_some_and(|x| x == *ext))
            })
            .unwrap_or(false)
    });
    if pickled {
        return Err(DiffusionError::PickleOnly { dir });
    }
    Err(DiffusionError::MissingFile {
        path: dir.join(format!("{stem}.safetensors")),
        expected: "safetensors weights (or the .fp16.safetensors variant)",
    })
}

fn sharded_files(index: &Path) -> Result<Vec<PathBuf>, DiffusionError> {
    let bad = |message: String| DiffusionError::BadWeights {
        file: index.to_path_buf(),
        message,
    };
    let text = crate::safe_open::read_to_string(index).map_err(|e| bad(e.to_string()))?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let map = json["weight_map"]
        .as_object()
        .ok_or_else(|| bad("no \"weight_map\" object".into()))?;
    let dir = index.parent().unwrap_or(Path::new("."));
    let mut files: Vec<PathBuf> = Vec::new();
    for v in map.values() {
        let name = v
            .as_str()
            .ok_or_else(|| bad("weight_map values must be file names".into()))?;
        if name.contains('/') || name.contains('\\') || name.starts_with('.') {
            return Err(bad(format!(
                "shard name {name:?} must be a plain file name"
            )));
        }
        let p = dir.join(name);
        if !files.contains(&p) {
            files.push(p);
        }
    }
    files.sort();
    Ok(files)
}

mod hub {
    //! Fetching a model from the Hugging Face Hub into its standard cache.

    use std::path::PathBuf;

    use hf_hub::{Cache, Repo, RepoType};

    use super::DiffusionError;

    /// The files genie reads from a diffusers repository.
    fn wanted(prefer_fp16: bool) -> Vec<String> {
        let v = if prefer_fp16 { ".fp16" } else { "" };
        vec![
            "model_index.json".into(),
            "unet/config.json".into(),
            format!("unet/diffusion_pytorch_model{v}.safetensors"),
            "vae/config.json".into(),
            format!("vae/diffusion_pytorch_model{v}.safetensors"),
            "text_encoder/config.json".into(),
            format!("text_encoder/model{v}.safetensors"),
            "tokenizer/vocab.json".into(),
            "tokenizer/merges.txt".into(),
            "tokenizer/special_tokens_map.json".into(),
            "tokenizer/tokenizer_config.json".into(),
            "scheduler/scheduler_config.json".into(),
        ]
    }

    fn offline() -> bool {
        std::env::var("HF_HUB_OFFLINE")
            .map(|v| !v.is_empty() && v != "0" && !v.eq_ignore_ascii_case("false"))
            .unwrap_or(false)
    }

    /// Returns the snapshot folder holding every wanted file, downloading what is missing unless
    /// `HF_HUB_OFFLINE` is set (then the network is never touched).
    pub fn snapshot(
        repo: &str,
        revision: &str,
        prefer_fp16: bool,
    ) -> Result<PathBuf, DiffusionError> {
        let hub_repo = Repo::with_revision(repo.to_string(), RepoType::Model, revision.to_string());
        let cache = Cache::from_env().repo(hub_repo.clone());
        let mut snapshot: Option<PathBuf> = None;
        let api = if offline() {
            None
        } else {
            Some(
                hf_hub::api::sync::ApiBuilder::from_env()
                    .build()
                    .map_err(|e| DiffusionError::Hub {
                        repo: repo.to_string(),
                        message: e.to_string(),
                    })?
                    .repo(hub_repo),
            )
        };
        for file in wanted(prefer_fp16) {
            let path = match (cache.get(&file), &api) {
                (Some(p), _) => p,
                (None, Some(api)) => api.get(&file).map_err(|e| DiffusionError::Hub {
                    repo: format!("{repo}@{revision}"),
                    message: format!("{file}: {e}"),
                })?,
                (None, None) => {
                    return Err(DiffusionError::Hub {
                        repo: format!("{repo}@{revision}"),
                        message: format!(
                            "{file} is not in the Hugging Face cache and HF_HUB_OFFLINE is set"
                        ),
                    })
                }
            };
            if snapshot.is_none() {
                // `model_index.json` sits at the snapshot root.
                snapshot = path.parent().map(PathBuf::from);
            }
        }
        snapshot.ok_or_else(|| DiffusionError::Hub {
            repo: repo.to_string(),
            message: "empty snapshot".into(),
        })
    }
}
