//! Credentials. The legacy single token (`--token-file`, `NNUNET_TOKEN`, `<state-dir>/token`) is an
//! admin token (operator + worker), so existing scripts keep working; role tokens (`nnunet token
//! create --role worker|viewer|operator`) are stored as sha256 hashes in the database and can be
//! revoked. Every token must be at least [`MIN_TOKEN_LEN`] characters, whatever its source.
use crate::domain::Role;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

pub const MIN_TOKEN_LEN: usize = 16;

/// Where the legacy token came from (never the token itself, which is not printed).
#[derive(Debug, Clone, PartialEq)]
pub enum TokenSource {
    File(PathBuf),
    Env,
    /// `<state-dir>/token`, `generated` on this start.
    StateDir {
        path: PathBuf,
        generated: bool,
    },
}

impl std::fmt::Display for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenSource::File(p) => write!(f, "{}", p.display()),
            TokenSource::Env => f.write_str("NNUNET_TOKEN"),
            TokenSource::StateDir { path, generated: true } => write!(f, "{} (generated on this first start, mode 0600)", path.display()),
            TokenSource::StateDir { path, .. } => write!(f, "{}", path.display()),
        }
    }
}

/// Refuses a token that is too short to be a secret.
pub fn check_token(t: &str, source: &str) -> Result<()> {
    if t.len() < MIN_TOKEN_LEN {
        bail!(
            "the token from {source} is {} characters long; tokens must be at least {MIN_TOKEN_LEN} characters (e.g. `openssl rand -hex 32`), \
             or delete it to have one generated",
            t.len()
        );
    }
    if t.chars().any(|c| c.is_whitespace() || c.is_control()) {
        bail!("the token from {source} holds whitespace or control characters");
    }
    Ok(())
}

/// Resolves the coordinator's legacy token: `--token-file`, then `NNUNET_TOKEN`, then
/// `<state-dir>/token` (generated with 256 random bits on first start, created mode 0600).
pub fn resolve_token(token_file: Option<&Path>, state_dir: &Path) -> Result<(String, TokenSource)> {
    if let Some(f) = token_file {
        let t = std::fs::read_to_string(f).with_context(|| format!("reading token file {}", f.display()))?;
        let t = t.trim().to_string();
        check_token(&t, &f.display().to_string())?;
        return Ok((t, TokenSource::File(f.to_path_buf())));
    }
    if let Ok(t) = std::env::var("NNUNET_TOKEN") {
        let t = t.trim().to_string();
        check_token(&t, "NNUNET_TOKEN")?;
        return Ok((t, TokenSource::Env));
    }
    let p = state_dir.join("token");
    match std::fs::read_to_string(&p) {
        Ok(t) => {
            let t = t.trim().to_string();
            check_token(&t, &p.display().to_string())?;
            Ok((t, TokenSource::StateDir { path: p, generated: false }))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let t = crate::domain::random_hex(32);
            std::fs::create_dir_all(state_dir).with_context(|| format!("creating {}", state_dir.display()))?;
            write_secret(&p, t.as_bytes())?;
            Ok((t, TokenSource::StateDir { path: p, generated: true }))
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
    }
}

/// Writes a secret file that is never readable by others: a temp file opened with mode 0600,
/// written, synced, then renamed into place.
pub fn write_secret(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_file_name(format!(".{}.tmp-{}", path.file_name().unwrap_or_default().to_string_lossy(), std::process::id()));
    let res = (|| -> Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
        Ok(())
    })();
    if res.is_err() {
        if let Err(e) = std::fs::remove_file(&tmp) {
            tracing::debug!(path = %tmp.display(), "removing a temp secret: {e}");
        }
    }
    res
}

/// sha256 of a token, hex: what the database keeps.
pub fn token_hash(token: &str) -> String {
    nnunet_common::hash::sha256_bytes(token.as_bytes())
}

/// Constant-time comparison of two secrets.
pub fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A new role token: 256 random bits with a role prefix (the prefix helps a human, not security).
pub fn new_role_token(role: Role) -> String {
    format!("nnu{}_{}", &role.name()[..1], crate::domain::random_hex(32))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn short_tokens_are_refused_from_every_source_and_generated_ones_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("t");
        std::fs::write(&f, "abc\n").unwrap();
        assert!(resolve_token(Some(&f), dir.path()).unwrap_err().to_string().contains("at least 16"));
        std::fs::write(dir.path().join("token"), "").unwrap();
        let e = resolve_token(None, dir.path()).unwrap_err().to_string();
        assert!(e.contains("0 characters"), "{e}");
        std::fs::remove_file(dir.path().join("token")).unwrap();
        let (t, src) = resolve_token(None, dir.path()).unwrap();
        assert_eq!(t.len(), 64);
        assert!(!src.to_string().contains(&t), "the generated token is never printed");
        let mode = std::fs::metadata(dir.path().join("token")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(check_token("x", "NNUNET_TOKEN").is_err());
        assert!(same_secret("abc", "abc") && !same_secret("abc", "abd") && !same_secret("abc", "ab"));
    }
}
