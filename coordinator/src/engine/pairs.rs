//! Checkpoint pairs: a checkpoint is a weights file (`checkpoint_K.safetensors`) and its JSON sidecar
//! (`checkpoint_K.json`, which names the weights and carries their sha256), uploaded one after the
//! other under fixed names. Renaming each into place as it arrives would leave new weights beside
//! the old sidecar when the worker dies between the two, and every later resume would fail. So the
//! weights of a training task are held in their upload temp file until their sidecar arrives
//! ([`Coordinator::hold_weights`]), and the pair is committed together, weights then sidecar
//! ([`Coordinator::take_weights`]); a sidecar that names other weights is refused and the worker
//! sends the pair again. The one remaining window (a coordinator killed between the two renames) is
//! covered at lease time: [`resume_checkpoint`] hands out the newest consistent pair of the fold.
use super::{lock, Coordinator, UploadSink};
use std::path::{Path, PathBuf};

/// Which part of a checkpoint pair a file name is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Weights,
    Sidecar,
}

/// `checkpoint_{latest,best,final}.{safetensors,json}`: a checkpoint part; anything else: `None`.
pub fn checkpoint_part(rel: &Path) -> Option<Part> {
    let name = rel.file_name()?.to_str()?;
    let (stem, ext) = name.rsplit_once('.')?;
    if !matches!(stem, "checkpoint_latest" | "checkpoint_best" | "checkpoint_final") {
        return None;
    }
    match ext {
        "safetensors" => Some(Part::Weights),
        "json" => Some(Part::Sidecar),
        _ => None,
    }
}

/// What a sidecar says about its weights: (file name, sha256).
pub fn sidecar_weights(bytes: &[u8]) -> Option<(String, String)> {
    let v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    Some((v.get("weights_file")?.as_str()?.to_string(), v.get("sha256")?.as_str()?.to_ascii_lowercase()))
}

/// Weights received and verified, waiting for their sidecar.
pub struct HeldWeights {
    task_id: String,
    token: u64,
    sha256: String,
    sink: UploadSink,
}

impl Coordinator {
    /// Holds finished weights (`sink`, verified `sha256`) for `dest` until their sidecar arrives; a
    /// pair still waiting for the same file is superseded (its temp file goes).
    pub fn hold_weights(&self, dest: PathBuf, task_id: &str, token: u64, sha256: String, sink: UploadSink) {
        let held = HeldWeights { task_id: task_id.to_string(), token, sha256: sha256.to_ascii_lowercase(), sink };
        lock(&self.held).insert(dest, held);
    }

    /// The held weights for `dest` uploaded under this lease with this sha256, to be committed with
    /// their sidecar. Held weights of this lease with another hash are dropped (they can never match).
    pub fn take_weights(&self, dest: &Path, task_id: &str, token: u64, sha256: &str) -> Option<UploadSink> {
        let mut held = lock(&self.held);
        let h = held.get(dest)?;
        if h.task_id != task_id || h.token != token {
            return None;
        }
        let h = held.remove(dest)?;
        (h.sha256 == sha256.to_ascii_lowercase()).then_some(h.sink)
    }

    /// Drops held weights whose lease is gone (their worker died or was fenced before the sidecar
    /// came); their temp files are removed.
    pub fn drop_orphaned_weights(&self) -> usize {
        let mut held = lock(&self.held);
        let before = held.len();
        held.retain(|_, h| self.fenced_task(&h.task_id, h.token, None).is_ok());
        before - held.len()
    }
}

/// Whether the pair `weights` + sidecar `json` on disk belong together (blocking: hashes the weights).
fn consistent(c: &Coordinator, weights: &Path, json: &Path) -> Option<u64> {
    let bytes = std::fs::read(json).ok()?;
    let (file, sha) = sidecar_weights(&bytes)?;
    let meta: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    if Some(file.as_str()) != weights.file_name().and_then(|n| n.to_str()) {
        return None;
    }
    let (got, _) = c.hash_of(weights).ok()?;
    (got == sha).then(|| meta.get("epoch").and_then(|e| e.as_u64()).unwrap_or(0))
}

/// The checkpoint a training task resumes from (relative to the run dir): `recorded` when its pair
/// is consistent, else the newest consistent `latest`/`best` pair of the same folder, else none
/// (training starts over rather than failing every attempt on a torn pair). Blocking.
pub fn resume_checkpoint(c: &Coordinator, run_dir: &Path, recorded: &str) -> Option<String> {
    let rec = run_dir.join(recorded);
    if consistent(c, &rec, &rec.with_extension("json")).is_some() {
        return Some(recorded.to_string());
    }
    let rel_dir = Path::new(recorded).parent()?;
    let best = ["checkpoint_latest", "checkpoint_best"]
        .into_iter()
        .filter_map(|stem| {
            let w = run_dir.join(rel_dir).join(format!("{stem}.safetensors"));
            consistent(c, &w, &w.with_extension("json")).map(|epoch| (epoch, rel_dir.join(format!("{stem}.safetensors"))))
        })
        .max_by_key(|(epoch, _)| *epoch);
    match &best {
        Some((epoch, p)) => {
            tracing::warn!("checkpoint {recorded} does not match its sidecar; resuming from {} (epoch {epoch})", p.display())
        }
        None => tracing::warn!(
            "checkpoint {recorded} does not match its sidecar and no other consistent checkpoint exists; training starts over"
        ),
    }
    best.map(|(_, p)| p.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_parts_by_name() {
        assert_eq!(checkpoint_part(Path::new("r/fold_0/checkpoint_latest.safetensors")), Some(Part::Weights));
        assert_eq!(checkpoint_part(Path::new("r/fold_0/checkpoint_final.json")), Some(Part::Sidecar));
        assert_eq!(checkpoint_part(Path::new("r/fold_0/checkpoint_best.json")), Some(Part::Sidecar));
        assert_eq!(checkpoint_part(Path::new("r/fold_0/training_log.jsonl")), None);
        assert_eq!(checkpoint_part(Path::new("r/fold_0/validation/summary.json")), None);
        let side = br#"{"epoch": 3, "weights_file": "checkpoint_latest.safetensors", "sha256": "AB"}"#;
        assert_eq!(sidecar_weights(side), Some(("checkpoint_latest.safetensors".into(), "ab".into())));
        assert_eq!(sidecar_weights(b"{}"), None);
    }
}
