//! What a submit brings besides the dataset: pretrained weights, copied into the run directory
//! (checked: a regular file, `.safetensors` or `.pth`, within the upload size limit, its format's
//! header readable, sha256 recorded), and the submitter's nnU-Net roots, accepted only where the
//! coordinator is allowed and able to write (checked with a probe file, so a bad folder fails the
//! submit, not the end of the run).
use crate::domain::run_options::{PRETRAINED_DIR, PRETRAINED_EXTENSIONS};
use crate::domain::{PretrainedWeights, RunOptions, RunSpec};
use crate::user_dirs::UserDirs;
use anyhow::{bail, Context, Result};
use sha2::Digest;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Largest safetensors header accepted (the JSON index of the tensors).
const MAX_SAFETENSORS_HEADER: u64 = 64 << 20;

/// The run options of `spec`: its roots checked against `allowed`, its pretrained weights copied
/// into `run_dir` (blocking).
pub fn resolve(spec: &RunSpec, run_dir: &Path, allowed: &UserDirs, state_dir: &Path, max_bytes: u64) -> Result<RunOptions> {
    let results_root = spec.results_dir.as_deref().map(|d| check_root("results", d, allowed, state_dir)).transpose()?;
    let preprocessed_root = spec.preprocessed_dir.as_deref().map(|d| check_root("preprocessed", d, allowed, state_dir)).transpose()?;
    let pretrained = spec.pretrained_weights.as_deref().map(|p| ingest_pretrained(p, run_dir, max_bytes)).transpose()?;
    Ok(RunOptions { pretrained, results_root, preprocessed_root })
}

/// A submitted nnU-Net root: absolute, outside the coordinator's state, under one of the roots the
/// coordinator allows (its own `$nnUNet_*`/`--results`, `--allow-output-under`), created if needed
/// and writable. Returns it canonical.
pub fn check_root(what: &str, dir: &Path, allowed: &UserDirs, state_dir: &Path) -> Result<PathBuf> {
    if !dir.is_absolute() {
        bail!("the {what} folder {} must be an absolute path as the coordinator sees it", dir.display());
    }
    if dir.components().any(|c| matches!(c, std::path::Component::ParentDir | std::path::Component::CurDir)) {
        bail!("the {what} folder {} must not contain '.' or '..'", dir.display());
    }
    let resolved = |roots: &[&PathBuf]| -> Vec<PathBuf> { roots.iter().filter_map(|r| resolve_path(r).ok()).collect() };
    let own = resolved(&allowed.results.iter().chain(&allowed.preprocessed).collect::<Vec<_>>());
    let extra = resolved(&allowed.allow_under.iter().collect::<Vec<_>>());
    let canonical = resolve_path(dir).with_context(|| format!("the {what} folder {}", dir.display()))?;
    // Under the coordinator's own folders anything goes (they may lie in its state directory);
    // elsewhere, only under an allowed folder and never inside the state directory.
    if !own.iter().any(|r| canonical.starts_with(r)) {
        let state = state_dir.canonicalize().unwrap_or_else(|_| state_dir.to_path_buf());
        if canonical.starts_with(&state) {
            bail!("the {what} folder {} is inside the coordinator's state directory {}", dir.display(), state.display());
        }
        if !extra.iter().any(|r| canonical.starts_with(r)) {
            let list: Vec<String> = allowed.allowed_roots().iter().map(|r| r.display().to_string()).collect();
            bail!(
                "the coordinator may not write the {what} folder {} (allowed: {}); its operator can allow it with `nnunet serve --allow-output-under DIR`, or submit with --coordinator-dirs to use the coordinator's own folders",
                dir.display(),
                if list.is_empty() { "none".to_string() } else { list.join(", ") }
            );
        }
    }
    std::fs::create_dir_all(&canonical)
        .with_context(|| format!("the coordinator cannot create the {what} folder {}", canonical.display()))?;
    let probe = canonical.join(format!(".nnunet-write-probe-{}", crate::domain::random_hex(4)));
    std::fs::write(&probe, b"probe")
        .with_context(|| format!("the coordinator cannot write into the {what} folder {}", canonical.display()))?;
    std::fs::remove_file(&probe).with_context(|| format!("removing {}", probe.display()))?;
    Ok(canonical)
}

/// `p` made absolute, its existing part resolved through links (the part that does not
/// exist yet is appended as it is, so a link cannot lead the rest elsewhere).
fn resolve_path(p: &Path) -> Result<PathBuf> {
    let mut existing = std::path::absolute(p).with_context(|| format!("resolving {}", p.display()))?;
    let mut rest = Vec::new();
    while !existing.exists() {
        rest.push(existing.file_name().context("has no existing parent")?.to_owned());
        existing = existing.parent().context("has no existing parent")?.to_path_buf();
    }
    let mut canonical = existing.canonicalize().with_context(|| format!("resolving {}", existing.display()))?;
    for c in rest.iter().rev() {
        canonical.push(c);
    }
    Ok(canonical)
}

/// Copies `src` to `<run_dir>/inputs/pretrained_weights.<ext>` (temp + fsync + rename), hashing it on the way.
pub fn ingest_pretrained(src: &Path, run_dir: &Path, max_bytes: u64) -> Result<PretrainedWeights> {
    let canonical =
        src.canonicalize().with_context(|| format!("pretrained weights {} are not readable by the coordinator", src.display()))?;
    let md = std::fs::metadata(&canonical).with_context(|| format!("reading {}", canonical.display()))?;
    if !md.is_file() {
        bail!("pretrained weights {} are not a regular file", canonical.display());
    }
    let ext = canonical.extension().map(|e| e.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
    if !PRETRAINED_EXTENSIONS.contains(&ext.as_str()) {
        bail!(
            "pretrained weights {} must be our .safetensors checkpoint or an nnU-Net .pth checkpoint (got {:?})",
            canonical.display(),
            ext
        );
    }
    if md.len() > max_bytes {
        bail!(
            "pretrained weights {} are {} bytes; the coordinator accepts at most {max_bytes} (--max-upload-mib)",
            canonical.display(),
            md.len()
        );
    }
    check_format(&canonical, &ext, md.len())?;
    let rel = format!("{PRETRAINED_DIR}/pretrained_weights.{ext}");
    let dest = run_dir.join(&rel);
    let mut hasher = sha2::Sha256::new();
    let mut size = 0u64;
    let mut input = std::fs::File::open(&canonical).with_context(|| format!("opening {}", canonical.display()))?;
    nnunet_common::hash::write_atomic_with(&dest, |w| {
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = input.read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            size += n as u64;
            if size > max_bytes {
                return Err(std::io::Error::other(format!("grew beyond {max_bytes} bytes while being copied")));
            }
            hasher.update(&buf[..n]);
            w.write_all(&buf[..n])?;
        }
    })
    .with_context(|| format!("copying pretrained weights {} into the run", canonical.display()))?;
    Ok(PretrainedWeights { path: rel, sha256: hex::encode(hasher.finalize()), size, source: canonical.to_string_lossy().into_owned() })
}

/// A cheap check of the container: a safetensors header that parses, or a zip archive (PyTorch's
/// `.pth` format since 1.6). Whether the tensors fit the network is checked by the worker, which
/// builds it.
fn check_format(path: &Path, ext: &str, len: u64) -> Result<()> {
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut head = [0u8; 8];
    f.read_exact(&mut head).with_context(|| format!("{} is too short to be a checkpoint", path.display()))?;
    if ext == "pth" {
        if &head[..4] != b"PK\x03\x04" {
            bail!("{} is not a PyTorch zip checkpoint (torch.save's format since PyTorch 1.6)", path.display());
        }
        return Ok(());
    }
    let n = u64::from_le_bytes(head);
    if n == 0 || n > MAX_SAFETENSORS_HEADER || n > len - 8 {
        bail!("{} is not a safetensors file (header length {n} for a file of {len} bytes)", path.display());
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header).with_context(|| format!("reading the safetensors header of {}", path.display()))?;
    let v: serde_json::Value = serde_json::from_slice(&header)
        .with_context(|| format!("{} is not a safetensors file (its header is not JSON)", path.display()))?;
    if !v.is_object() {
        bail!("{} is not a safetensors file (its header is not a JSON object)", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn safetensors_bytes() -> Vec<u8> {
        let header = br#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
        let mut b = (header.len() as u64).to_le_bytes().to_vec();
        b.extend_from_slice(header);
        b.extend_from_slice(&[0, 0, 128, 63]);
        b
    }

    #[test]
    fn pretrained_weights_are_checked_and_copied_with_their_sha256() {
        let t = tempfile::tempdir().unwrap();
        let run = t.path().join("run");
        let src = t.path().join("w.safetensors");
        std::fs::write(&src, safetensors_bytes()).unwrap();
        let p = ingest_pretrained(&src, &run, 1 << 20).unwrap();
        assert_eq!(p.path, "inputs/pretrained_weights.safetensors");
        assert_eq!(p.sha256, nnunet_common::hash::sha256_file(&src).unwrap());
        assert_eq!(std::fs::read(run.join(&p.path)).unwrap(), safetensors_bytes());
        let bad = |name: &str, bytes: &[u8], limit: u64| {
            let f = t.path().join(name);
            std::fs::write(&f, bytes).unwrap();
            format!("{:#}", ingest_pretrained(&f, &t.path().join("run2"), limit).unwrap_err())
        };
        assert!(bad("w.bin", &safetensors_bytes(), 1 << 20).contains(".safetensors"));
        assert!(bad("big.safetensors", &safetensors_bytes(), 10).contains("at most 10"));
        assert!(bad("trunc.safetensors", &safetensors_bytes()[..20], 1 << 20).contains("not a safetensors file"));
        assert!(bad("x.pth", b"\x80\x02not a zip", 1 << 20).contains("not a PyTorch zip checkpoint"));
        assert!(!t.path().join("run2").join("inputs").exists() || std::fs::read_dir(t.path().join("run2/inputs")).unwrap().count() == 0);
        assert!(ingest_pretrained(&t.path().join("missing.pth"), &run, 1 << 20).is_err());
    }

    #[test]
    fn submitted_roots_must_be_allowed_writable_and_outside_the_state() {
        let t = tempfile::tempdir().unwrap();
        let allowed_root = t.path().join("shared");
        std::fs::create_dir_all(&allowed_root).unwrap();
        let state = t.path().join("state");
        std::fs::create_dir_all(&state).unwrap();
        let allowed = UserDirs { allow_under: vec![allowed_root.clone()], ..Default::default() };
        let ok = check_root("results", &allowed_root.join("me/results"), &allowed, &state).unwrap();
        assert!(ok.is_dir() && std::fs::read_dir(&ok).unwrap().count() == 0, "created, probe removed");
        let err = |d: &Path| format!("{:#}", check_root("results", d, &allowed, &state).unwrap_err());
        assert!(err(Path::new("relative/results")).contains("absolute"));
        assert!(err(&t.path().join("elsewhere")).contains("--allow-output-under"));
        assert!(err(&allowed_root.join("a/../../escape")).contains("'..'"));
        std::os::unix::fs::symlink(t.path(), allowed_root.join("link")).unwrap();
        assert!(err(&allowed_root.join("link/elsewhere")).contains("may not write"));
        let inside_state = UserDirs { allow_under: vec![t.path().to_path_buf()], ..Default::default() };
        assert!(format!("{:#}", check_root("results", &state.join("runs"), &inside_state, &state).unwrap_err()).contains("state directory"));
        // The coordinator's own results folder may lie in its state directory: a submitter may name it.
        let own_in_state = UserDirs { results: Some(state.join("nnUNet_results")), ..Default::default() };
        check_root("results", &state.join("nnUNet_results"), &own_in_state, &state).unwrap();
        // A folder the coordinator cannot write (read-only parent): refused at submit.
        if unsafe { libc::geteuid() } != 0 {
            let ro = allowed_root.join("ro");
            std::fs::create_dir_all(&ro).unwrap();
            std::fs::set_permissions(&ro, std::os::unix::fs::PermissionsExt::from_mode(0o555)).unwrap();
            assert!(err(&ro.join("results")).contains("cannot create"));
        }
    }
}
