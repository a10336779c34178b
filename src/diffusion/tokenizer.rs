//! CLIP's byte-level BPE tokenizer, from `tokenizer.json` or from SD 1.5's `vocab.json` + `merges.txt`.

use std::path::{Path, PathBuf};

use serde_json::Value;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::{Lowercase, Replace, Sequence as NormSeq, NFC};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreSeq;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer};

/// CLIP's word-splitting pattern (the one in OpenAI's `simple_tokenizer.py`).
const CLIP_PATTERN: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";
const BOS: &str = "<|startoftext|>";
const EOS: &str = "<|endoftext|>";

/// Why the tokenizer cannot be loaded or cannot encode a prompt.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenizerError {
    /// The folder has neither tokenizer format.
    #[error("tokenizer folder {0} has neither tokenizer.json nor vocab.json + merges.txt")]
    Missing(PathBuf),
    /// The tokenizer files do not load.
    #[error("cannot load tokenizer from {path}: {message}")]
    Load {
        /// The folder.
        path: PathBuf,
        /// The tokenizers crate's account.
        message: String,
    },
    /// A token CLIP needs (start, end, padding) is not in the vocabulary.
    #[error("tokenizer {path} has no token {token:?}")]
    MissingToken {
        /// The folder.
        path: PathBuf,
        /// The token.
        token: String,
    },
    /// A prompt cannot be encoded.
    #[error("cannot tokenize {prompt:?}: {message}")]
    Encode {
        /// The prompt.
        prompt: String,
        /// The tokenizers crate's account.
        message: String,
    },
}

/// Turns prompts into the fixed-length id sequences the text encoder expects.
pub struct ClipTokenizer {
    inner: Tokenizer,
    bos: u32,
    eos: u32,
    pad: u32,
    max_len: usize,
}

/// A tokenized prompt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tokens {
    /// Exactly `max_len` ids: BOS, the prompt, EOS, then padding.
    pub ids: Vec<u32>,
    /// True when the prompt was cut to fit (diffusers does the same and warns).
    pub truncated: bool,
}

fn load_err(path: &Path, e: impl std::fmt::Display) -> TokenizerError {
    TokenizerError::Load {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

impl ClipTokenizer {
    /// Loads from a diffusers `tokenizer/` folder. `max_len` is the text encoder's context (77).
    pub fn from_dir(dir: &Path, max_len: usize) -> Result<Self, TokenizerError> {
        let json = dir.join("tokenizer.json");
        let vocab = dir.join("vocab.json");
        let merges = dir.join("merges.txt");
        let inner = if json.is_file() {
            let mut tok = Tokenizer::from_file(&json).map_err(|e| load_err(&json, e))?;
            // transformers 5 writes its padding (to 77) and truncation into tokenizer.json;
            // `encode` frames, cuts and pads the ids itself, as diffusers' call does.
            tok.with_padding(None);
            tok.with_truncation(None).map_err(|e| load_err(&json, e))?;
            tok
        } else if vocab.is_file() && merges.is_file() {
            Self::from_vocab_merges(&vocab, &merges)?
        } else {
            return Err(TokenizerError::Missing(dir.to_path_buf()));
        };
        let id = |token: &str| {
            inner
                .token_to_id(token)
                .ok_or_else(|| TokenizerError::MissingToken {
                    path: dir.to_path_buf(),
                    token: token.to_string(),
                })
        };
        let (bos, eos) = (id(BOS)?, id(EOS)?);
        let pad = match pad_token(dir) {
            Some(tok) => id(&tok)?,
            None => eos,
        };
        Ok(ClipTokenizer {
            inner,
            bos,
            eos,
            pad,
            max_len,
        })
    }

    /// CLIP's tokenizer as transformers' `CLIPTokenizerFast` defines it: NFC, collapse
    /// whitespace, lowercase; split with CLIP's pattern; byte-level; BPE with `</w>` word ends.
    fn from_vocab_merges(vocab: &Path, merges: &Path) -> Result<Tokenizer, TokenizerError> {
        let bpe = BPE::from_file(&vocab.to_string_lossy(), &merges.to_string_lossy())
            .end_of_word_suffix("</w>".into())
            .unk_token(EOS.into())
            .build()
            .map_err(|e| load_err(vocab, e))?;
        let mut tok = Tokenizer::new(bpe);
        let whitespace = Replace::new(
            tokenizers::normalizers::replace::ReplacePattern::Regex(r"\s+".into()),
            " ",
        )
        .map_err(|e| load_err(vocab, e))?;
        tok.with_normalizer(Some(NormSeq::new(vec![
            NFC.into(),
            whitespace.into(),
            Lowercase.into(),
        ])))
        .map_err(|e| load_err(vocab, e))?;
        let split = Split::new(
            SplitPattern::Regex(CLIP_PATTERN.into()),
            SplitDelimiterBehavior::Removed,
            true,
        )
        .map_err(|e| load_err(vocab, e))?;
        tok.with_pre_tokenizer(Some(PreSeq::new(vec![
            PreTokenizerWrapper::Split(split),
            PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, false)),
        ])));
        Ok(tok)
    }

    /// Tokens per prompt, padding included (77 for CLIP).
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// BOS + prompt + EOS, cut to `max_len` (keeping EOS last) and padded: as diffusers calls the
    /// tokenizer (`padding="max_length", truncation=True`).
    pub fn encode(&self, prompt: &str) -> Result<Tokens, TokenizerError> {
        let enc = self
            .inner
            .encode(prompt, false)
            .map_err(|e| TokenizerError::Encode {
                prompt: prompt.to_string(),
                message: e.to_string(),
            })?;
        let body = enc.get_ids();
        let room = self.max_len.saturating_sub(2);
        let truncated = body.len() > room;
        let mut ids = Vec::with_capacity(self.max_len);
        ids.push(self.bos);
        ids.extend_from_slice(&body[..body.len().min(room)]);
        ids.push(self.eos);
        ids.resize(self.max_len, self.pad);
        Ok(Tokens { ids, truncated })
    }
}

/// The pad token named in `special_tokens_map.json` or `tokenizer_config.json`, if any.
fn pad_token(dir: &Path) -> Option<String> {
    ["special_tokens_map.json", "tokenizer_config.json"]
        .iter()
        .filter_map(|f| crate::safe_open::read_to_string(&dir.join(f)).ok())
        .filter_map(|t| serde_json::from_str::<Value>(&t).ok())
        .find_map(|v| match &v["pad_token"] {
            Value::String(s) => Some(s.clone()),
            Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
            _ => None,
        })
}
