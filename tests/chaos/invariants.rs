//! The invariants checked after a chaos run. Each check returns how many things it verified and
//! appends a precise message per violation (file, fold, sequence number) to `violations`.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Files under `root`, recursively, not following symbolic links (the run dir links the user's raw dataset).
pub fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

/// The `[seq]` prefix of an event line of `nnunet watch --lines` / `nnunet logs`.
pub fn seq_of(line: &str) -> Option<u64> {
    line.strip_prefix('[')?.split_once(']')?.0.parse().ok()
}

/// The watcher (one `nnunet watch` started before the first kill, reconnecting by itself) saw every
/// event of the journal exactly once, in order, with the same content as `nnunet logs` replays.
pub fn watcher_saw_everything(watch_lines: &[String], journal: &str, violations: &mut Vec<String>) -> usize {
    let watched: Vec<(u64, &str)> = watch_lines.iter().filter_map(|l| seq_of(l).map(|s| (s, l.as_str()))).collect();
    let replayed: Vec<(u64, &str)> = journal.lines().filter_map(|l| seq_of(l).map(|s| (s, l))).collect();
    for (i, (s, _)) in watched.iter().enumerate() {
        if *s != i as u64 {
            violations.push(format!("watcher: event #{i} has sequence number {s} (expected {i}): a gap or a duplicate"));
            break;
        }
    }
    if watched.len() != replayed.len() {
        let terminal = watched.last().filter(|(_, l)| ["DONE", "FAILED", "CANCELLED"].iter().any(|s| l.ends_with(&format!("run is {s}"))));
        let after = match terminal {
            Some((s, l)) if watched.len() < replayed.len() => format!(
                "; the watcher stopped at {l:?} (a run's terminal state ends every watch) and the journal went on after it with {} more event(s), first {:?}: writes for a task of a finished run are still accepted and journaled",
                replayed.len() - watched.len(),
                replayed.iter().find(|(q, _)| q > s).map(|(_, l)| *l).unwrap_or("")
            ),
            _ => String::new(),
        };
        violations.push(format!("watcher saw {} events, the journal (`nnunet logs`) holds {}{after}", watched.len(), replayed.len()));
    }
    for ((a, la), (b, lb)) in watched.iter().zip(&replayed) {
        if a != b || la != lb {
            violations.push(format!("watcher and journal differ at seq {a}/{b}:\n  watch: {la}\n  logs:  {lb}"));
            break;
        }
    }
    watched.len()
}

/// In the journal, each fold's task (train/validate/predict of fold k) is leased with a strictly
/// growing attempt number: a lease never reuses an older one. Returns the number of leases checked.
pub fn attempts_grow(journal: &str, violations: &mut Vec<String>) -> usize {
    let mut last: BTreeMap<String, (u64, u32)> = BTreeMap::new();
    let mut n = 0;
    for l in journal.lines() {
        let Some(seq) = seq_of(l) else { continue };
        let rest = l.split_once("] ").map(|x| x.1).unwrap_or("");
        let Some(after) = rest.strip_prefix("fold ") else { continue };
        let words: Vec<&str> = after.split_whitespace().collect();
        if words.len() < 5 || words[2] != "RUNNING" || words[3] != "(attempt" {
            continue;
        }
        let key = format!("fold {} {}", words[0], words[1]);
        let attempt: u32 = words[4].trim_end_matches([',', ')']).parse().unwrap_or(0);
        n += 1;
        if let Some((pseq, prev)) = last.get(&key) {
            if attempt <= *prev {
                violations.push(format!("{key}: leased with attempt {attempt} at seq {seq} after attempt {prev} at seq {pseq}"));
            }
        }
        last.insert(key, (seq, attempt));
    }
    n
}

fn epochs_of_jsonl(text: &str) -> Result<Vec<u64>, String> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).map_err(|e| format!("bad line {l:?}: {e}"))?;
            v["epoch"].as_u64().ok_or_else(|| format!("no epoch in {l:?}"))
        })
        .collect()
}

/// Every fold's final training history holds each epoch exactly once, in order: the JSON-lines
/// training log and the final checkpoint's `logging`. Returns the number of histories checked.
pub fn training_histories(model_dir: &Path, folds: &[u32], epochs: u64, violations: &mut Vec<String>) -> usize {
    let want: Vec<u64> = (0..epochs).collect();
    let mut n = 0;
    for f in folds {
        let dir = model_dir.join(format!("fold_{f}"));
        let log = dir.join("training_log.jsonl");
        match std::fs::read_to_string(&log).map_err(|e| e.to_string()).and_then(|t| epochs_of_jsonl(&t)) {
            Ok(ep) if ep == want => n += 1,
            Ok(ep) => violations.push(format!("{}: epochs {ep:?}, expected each of 0..{epochs} once", log.display())),
            Err(e) => violations.push(format!("{}: {e}", log.display())),
        }
        let side = dir.join("checkpoint_final.json");
        let hist = std::fs::read_to_string(&side).map_err(|e| e.to_string()).and_then(|t| -> Result<Vec<u64>, String> {
            let v: serde_json::Value = serde_json::from_str(&t).map_err(|e| e.to_string())?;
            let logging = v["logging"].as_array().ok_or("no logging history")?;
            logging.iter().map(|m| m["epoch"].as_u64().ok_or_else(|| "an entry without epoch".to_string())).collect()
        });
        match hist {
            Ok(ep) if ep == want => n += 1,
            Ok(ep) => violations.push(format!("{}: logging epochs {ep:?}, expected each of 0..{epochs} once", side.display())),
            Err(e) => violations.push(format!("{}: {e}", side.display())),
        }
    }
    n
}

fn check_hash(file: &Path, want: &str, what: &str, violations: &mut Vec<String>) -> bool {
    match nnunet_common::hash::sha256_file(file) {
        Ok(h) if h == want => true,
        Ok(h) => {
            violations.push(format!("{}: sha256 {h}, but its {what} says {want}", file.display()));
            false
        }
        Err(e) => {
            violations.push(format!("{} (named by its {what}): {e}", file.display()));
            false
        }
    }
}

/// Every artifact that carries a content hash matches it: checkpoint weights against their sidecar's
/// `sha256`, preprocessed `.npy` arrays against their case JSON's `data_sha256`/`seg_sha256`; in the
/// run directory and in every worker cache. Returns the number of files verified.
pub fn artifact_hashes(roots: &[PathBuf], violations: &mut Vec<String>) -> usize {
    let mut n = 0;
    for root in roots {
        for p in walk(root) {
            if p.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let Ok(text) = std::fs::read_to_string(&p) else { continue };
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else { continue };
            let dir = p.parent().unwrap();
            if let (Some(w), Some(sha)) = (v["weights_file"].as_str(), v["sha256"].as_str()) {
                n += check_hash(&dir.join(w), sha, &format!("sidecar {}", p.display()), violations) as usize;
            }
            let stem = p.file_stem().unwrap().to_string_lossy().into_owned();
            for (key, file) in [("data_sha256", format!("{stem}.npy")), ("seg_sha256", format!("{stem}_seg.npy"))] {
                if let Some(sha) = v[key].as_str().filter(|s| !s.is_empty()) {
                    n += check_hash(&dir.join(file), sha, &format!("case file {} ({key})", p.display()), violations) as usize;
                }
            }
        }
    }
    n
}

/// A file name that only exists while something is being written: `common::hash::temp_path`
/// (`.name.tmp-PID`), the coordinator's upload temp (`.name.upload-TASK-TOKEN`), `nnunet convert`'s
/// `.name.partial`.
pub fn is_temp_name(name: &str) -> bool {
    name.contains(".tmp-") || name.contains(".upload-") || name.ends_with(".partial") || name.ends_with(".tmp")
}

/// No temporary file is left anywhere under `roots` once every process is idle or gone. Returns the
/// number of files looked at.
pub fn no_temp_files(roots: &[PathBuf], violations: &mut Vec<String>) -> usize {
    let mut n = 0;
    for root in roots {
        for p in walk(root) {
            n += 1;
            let name = p.file_name().unwrap().to_string_lossy();
            if is_temp_name(&name) {
                let size = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
                let why = if name.contains(".upload-") {
                    "an upload cut short (by a killed worker or coordinator) whose temp file nobody removed, not even a restarted coordinator (issue 12, finding 6)"
                } else {
                    "a write cut short by a killed process whose temp file nobody removed"
                };
                violations.push(format!("temporary file left behind: {} ({size} bytes): {why}", p.display()));
            }
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watcher_check_finds_gaps_and_duplicates() {
        let journal = "[0] run is PLANNING\n[1] run is PREPROCESSING\n[2] run is DONE\n";
        let ok: Vec<String> = journal.lines().map(String::from).collect();
        let mut v = vec![];
        assert_eq!(watcher_saw_everything(&ok, journal, &mut v), 3);
        assert!(v.is_empty(), "{v:?}");
        let gap = vec![ok[0].clone(), ok[2].clone()];
        watcher_saw_everything(&gap, journal, &mut v);
        assert!(v.iter().any(|m| m.contains("gap")), "{v:?}");
        let mut v = vec![];
        let dup = vec![ok[0].clone(), ok[1].clone(), ok[1].clone(), ok[2].clone()];
        watcher_saw_everything(&dup, journal, &mut v);
        assert!(!v.is_empty());
    }

    #[test]
    fn attempts_must_grow_per_fold_task() {
        let mut v = vec![];
        let j = "[3] fold 0 train RUNNING (attempt 1, worker w-a)\n[9] fold 0 train RUNNING (attempt 2, worker w-b): resumes from the checkpoint of epoch 2\n[10] fold 1 train RUNNING (attempt 1, worker w-a)\n";
        assert_eq!(attempts_grow(j, &mut v), 3);
        assert!(v.is_empty(), "{v:?}");
        let j = "[3] fold 0 train RUNNING (attempt 2, worker w-a)\n[9] fold 0 train RUNNING (attempt 1, worker w-b)\n";
        attempts_grow(j, &mut v);
        assert_eq!(v.len(), 1, "{v:?}");
    }

    #[test]
    fn temp_names() {
        assert!(is_temp_name(".checkpoint_latest.safetensors.upload-t-3-7"));
        assert!(is_temp_name(".case_001.npy.tmp-4242"));
        assert!(!is_temp_name("checkpoint_latest.safetensors"));
        assert!(!is_temp_name("coordinator.db-wal"));
    }

    #[test]
    fn hash_check_catches_a_changed_file() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("w.safetensors"), b"weights").unwrap();
        let sha = nnunet_common::hash::sha256_bytes(b"weights");
        let side = serde_json::json!({"weights_file": "w.safetensors", "sha256": sha});
        std::fs::write(d.path().join("checkpoint_latest.json"), side.to_string()).unwrap();
        let mut v = vec![];
        assert_eq!(artifact_hashes(&[d.path().to_path_buf()], &mut v), 1);
        assert!(v.is_empty());
        std::fs::write(d.path().join("w.safetensors"), b"weightz").unwrap();
        assert_eq!(artifact_hashes(&[d.path().to_path_buf()], &mut v), 0);
        assert_eq!(v.len(), 1);
    }
}
