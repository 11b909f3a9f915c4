//! `nnunet token create|list|revoke`: role credentials, stored as sha256 hashes in the
//! coordinator's database (works while the coordinator runs; a revocation applies within 2 s).
use crate::access::{new_role_token, token_hash};
use crate::domain::Role;
use crate::store::Store;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

#[derive(clap::Subcommand, Debug)]
pub enum TokenCmd {
    /// Create a token for a role; it is printed once (only its hash is kept).
    Create {
        /// worker (lease, report, upload), viewer (status, watch, logs) or operator (viewer + submit, cancel, retry, delete).
        #[arg(long)]
        role: String,
        /// A name to recognize it by in `token list` and `token revoke`.
        #[arg(long, default_value = "")]
        name: String,
        /// The coordinator's state directory (holds coordinator.db).
        #[arg(long, env = "NNUNET_STATE_DIR", default_value = "nnunet-state")]
        state_dir: PathBuf,
        /// Write the token to this file (mode 0600) instead of printing it.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// List tokens (ids, roles, names; never the tokens).
    List {
        /// The coordinator's state directory (holds coordinator.db).
        #[arg(long, env = "NNUNET_STATE_DIR", default_value = "nnunet-state")]
        state_dir: PathBuf,
    },
    /// Revoke a token by id or name.
    Revoke {
        /// The token's id or name (see `nnunet token list`).
        id_or_name: String,
        /// The coordinator's state directory (holds coordinator.db).
        #[arg(long, env = "NNUNET_STATE_DIR", default_value = "nnunet-state")]
        state_dir: PathBuf,
    },
}

fn store(state_dir: &Path) -> Result<Store> {
    std::fs::create_dir_all(state_dir).with_context(|| format!("creating {}", state_dir.display()))?;
    Store::open(&state_dir.join("coordinator.db"))
}

pub fn run(cmd: TokenCmd) -> Result<()> {
    let now = crate::clock::Clock::now_ms(&crate::clock::SystemClock);
    match cmd {
        TokenCmd::Create { role, name, state_dir, out } => {
            let Some(role) = Role::from_name(&role).filter(|r| *r != Role::Admin) else {
                bail!("unknown role {role:?}: use worker, viewer or operator");
            };
            let token = new_role_token(role);
            let id = store(&state_dir)?.add_token(&token_hash(&token), role, &name, now)?;
            match out {
                Some(p) => {
                    crate::access::write_secret(&p, token.as_bytes())?;
                    eprintln!("created {} token {id}; written to {} (mode 0600)", role.name(), p.display());
                }
                None => {
                    eprintln!("created {} token {id}; it is shown once, store it now:", role.name());
                    println!("{token}");
                }
            }
        }
        TokenCmd::List { state_dir } => {
            println!("{:<18} {:<9} {:<8} NAME", "ID", "ROLE", "STATE");
            for t in store(&state_dir)?.list_tokens()? {
                println!("{:<18} {:<9} {:<8} {}", t.id, t.role.name(), if t.revoked { "revoked" } else { "active" }, t.name);
            }
        }
        TokenCmd::Revoke { id_or_name, state_dir } => match store(&state_dir)?.revoke_token(&id_or_name)? {
            0 => bail!("no active token with id or name {id_or_name:?}"),
            n => eprintln!("revoked {n} token(s)"),
        },
    }
    Ok(())
}
