//! The bearer token `genie serve` and its clients share: read from a file or the environment,
//! never printed, compared in constant time.

use std::io::Read as _;
use std::path::{Path, PathBuf};

/// The environment variable that holds the token itself.
pub const TOKEN_ENV: &str = "GENIE_TOKEN";
/// The environment variable that names a file holding the token.
pub const TOKEN_FILE_ENV: &str = "GENIE_TOKEN_FILE";
/// The shortest token accepted: 16 characters of `openssl rand -hex 32`'s 64 are already 64 bits.
pub const MIN_TOKEN_CHARS: usize = 16;
/// The longest token (and token file) read.
const MAX_TOKEN_BYTES: usize = 4096;

/// How to make a token, as the errors that want one say it.
pub const HOW_TO_MAKE_A_TOKEN: &str = "make one with `(umask 077; openssl rand -hex 32 > \
     genie.token)` and pass `--token-file genie.token` (or set GENIE_TOKEN_FILE); clients read \
     the same file through GENIE_TOKEN_FILE or the token itself through GENIE_TOKEN";

/// A shared secret. Its `Debug` does not show it; two tokens compare by a digest in constant
/// time, so the time a refusal takes says nothing about how much of a guess was right.
#[derive(Clone)]
pub struct Token {
    secret: String,
    digest: blake3::Hash,
}

/// Why a token cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// The token file cannot be read.
    #[error("cannot read the token file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The token is shorter than [`MIN_TOKEN_CHARS`] (or empty).
    #[error("the token from {from} has {chars} characters; at least {MIN_TOKEN_CHARS} are needed: {HOW_TO_MAKE_A_TOKEN}")]
    TooShort {
        /// Where it came from.
        from: String,
        /// Its length.
        chars: usize,
    },
    /// The token is longer than 4 kiB.
    #[error("the token from {from} is longer than {MAX_TOKEN_BYTES} bytes")]
    TooLong {
        /// Where it came from.
        from: String,
    },
    /// The token holds a character an HTTP header cannot carry as it is.
    #[error("the token from {from} holds a space, a control or a non-ASCII character; use printable ASCII (hex or base64)")]
    NotPrintable {
        /// Where it came from.
        from: String,
    },
}

impl Token {
    /// A token from its text (surrounding whitespace, such as a file's last newline, removed);
    /// `from` says where it came from in errors.
    pub fn new(text: &str, from: &str) -> Result<Token, TokenError> {
        let secret = text.trim();
        if secret.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::TooLong { from: from.into() });
        }
        if !secret.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(TokenError::NotPrintable { from: from.into() });
        }
        if secret.len() < MIN_TOKEN_CHARS {
            return Err(TokenError::TooShort {
                from: from.into(),
                chars: secret.len(),
            });
        }
        Ok(Token {
            secret: secret.to_string(),
            digest: blake3::hash(secret.as_bytes()),
        })
    }

    /// The token in the file at `path`. A file that others than its owner may read is used,
    /// with a warning in the log.
    pub fn from_file(path: &Path) -> Result<Token, TokenError> {
        let read_error = |source| TokenError::Read {
            path: path.to_path_buf(),
            source,
        };
        let file = crate::safe_open::open_regular(path).map_err(read_error)?;
        #[cfg(unix)]
        if let Ok(meta) = file.metadata() {
            use std::os::unix::fs::PermissionsExt as _;
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(path = %path.display(), "the token file can be read by others than its owner: chmod 600 it");
            }
        }
        let mut text = String::new();
        file.take(MAX_TOKEN_BYTES as u64 + 2)
            .read_to_string(&mut text)
            .map_err(read_error)?;
        Token::new(&text, &path.display().to_string())
    }

    /// The token the environment gives: [`TOKEN_ENV`] itself, else the file named by
    /// [`TOKEN_FILE_ENV`]; `None` when neither is set.
    pub fn from_env() -> Result<Option<Token>, TokenError> {
        if let Some(text) = std::env::var_os(TOKEN_ENV) {
            let text = text.to_str().ok_or_else(|| TokenError::NotPrintable {
                from: TOKEN_ENV.into(),
            })?;
            return Token::new(text, TOKEN_ENV).map(Some);
        }
        match std::env::var_os(TOKEN_FILE_ENV) {
            Some(path) => Token::from_file(Path::new(&path)).map(Some),
            None => Ok(None),
        }
    }

    /// Whether an `Authorization` header's value carries this token (`Bearer TOKEN`, the scheme
    /// in any case).
    pub fn admits(&self, authorization: Option<&[u8]>) -> bool {
        let Some(value) = authorization else {
            return false;
        };
        let presented = match value.split_at_checked(7) {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case(b"bearer ") => rest,
            _ => return false,
        };
        // blake3::Hash's equality is constant time; hashing first also hides the length.
        blake3::hash(presented.trim_ascii()) == self.digest
    }

    /// The `Authorization` header's value a client sends.
    pub fn header_value(&self) -> String {
        format!("Bearer {}", self.secret)
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(…)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_checked_admitted_only_whole_and_never_shown() {
        let token = Token::new("0123456789abcdef0123\n", "test").unwrap();
        assert!(token.admits(Some(b"Bearer 0123456789abcdef0123")));
        assert!(token.admits(Some(b"bearer 0123456789abcdef0123")));
        assert!(!token.admits(Some(b"Bearer 0123456789abcdef012")));
        assert!(!token.admits(Some(b"Bearer 0123456789abcdef01234")));
        assert!(!token.admits(Some(b"Basic 0123456789abcdef0123")));
        assert!(!token.admits(Some(b"Bearer")));
        assert!(!token.admits(None));
        assert_eq!(token.header_value(), "Bearer 0123456789abcdef0123");
        assert!(!format!("{token:?}").contains("0123"));

        assert!(matches!(
            Token::new("short", "x"),
            Err(TokenError::TooShort { chars: 5, .. })
        ));
        assert!(matches!(
            Token::new("0123456789 abcdef0123", "x"),
            Err(TokenError::NotPrintable { .. })
        ));
        assert!(matches!(
            Token::new(&"a".repeat(5000), "x"),
            Err(TokenError::TooLong { .. })
        ));
        let e = Token::new("", "genie.token").unwrap_err().to_string();
        assert!(e.contains("openssl rand"), "{e}");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t");
        std::fs::write(&path, "0123456789abcdef0123\n").unwrap();
        let from_file = Token::from_file(&path).unwrap();
        assert!(from_file.admits(Some(b"Bearer 0123456789abcdef0123")));
        assert!(matches!(
            Token::from_file(&dir.path().join("missing")),
            Err(TokenError::Read { .. })
        ));
    }
}
