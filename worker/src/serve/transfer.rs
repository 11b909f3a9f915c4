//! Artifact transfers with the coordinator.
//!
//! - [`upload`]: reads and hashes the file off the runtime threads, then streams it in
//!   [`CHUNK_BYTES`] chunks with the task's fencing token (a refusal means the lease is gone).
//! - [`download`]: streams into a temp file next to the destination (`.NAME.part-PID-SEQ`), never
//!   more bytes than announced, checks size and sha256, fsyncs and renames; a failed or aborted
//!   download removes its temp file ([`PartFile`] on drop), and [`sweep_stale_parts`] removes those
//!   of a killed worker process, with its atomic writes' `.NAME.tmp-PID` files.
use crate::error::WorkerError;
use crate::serve::connection::Conn;
use anyhow::{anyhow, bail, Context, Result};
use nnunet_proto::chunks::{split, Header};
use nnunet_proto::v1 as pb;
use nnunet_proto::wire::CHUNK_BYTES;
use sha2::Digest;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Marker in the name of a download's temp file.
const PART_MARK: &str = ".part-";

/// Uploads `local` as `rel` (relative to the run directory) for `task`.
pub async fn upload(conn: &Conn, task: &pb::Task, local: &Path, rel: &str) -> Result<()> {
    let header = Header {
        run_id: task.run_id.clone(),
        task_id: task.task_id.clone(),
        fencing_token: task.fencing_token,
        path: rel.to_string(),
        worker_id: conn.id(),
    };
    let path = local.to_path_buf();
    let chunks: Vec<pb::ArtifactChunk> = tokio::task::spawn_blocking(move || -> Result<_> {
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let sha = nnunet_common::hash::sha256_bytes(&bytes);
        Ok(split(&bytes, 0, CHUNK_BYTES, &header, &sha))
    })
    .await
    .context("the upload reader panicked")??;
    let chunks = Arc::new(chunks);
    conn.call("upload", |mut api| {
        let chunks = chunks.clone();
        async move { api.upload_artifact(tokio_stream::iter((0..chunks.len()).map(move |i| chunks[i].clone()))).await }
    })
    .await
    .map_err(|s| {
        anyhow::Error::new(WorkerError::LeaseLost(format!("upload of {rel} refused: {}", s.message()))).context(format!("{:?}", s.code()))
    })?;
    Ok(())
}

/// A download's temp file: removed on drop unless [`PartFile::commit`]ted.
pub struct PartFile {
    tmp: PathBuf,
    file: Option<std::fs::File>,
    hasher: sha2::Sha256,
    len: u64,
}

impl PartFile {
    /// Creates the temp file for `dest` in its folder.
    pub fn create(dest: &Path) -> std::io::Result<PartFile> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let dir = dest.parent().ok_or_else(|| std::io::Error::other("destination has no folder"))?;
        std::fs::create_dir_all(dir)?;
        let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let tmp = dir.join(format!(".{name}{PART_MARK}{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed)));
        let file = std::fs::File::create(&tmp)?;
        Ok(PartFile { tmp, file: Some(file), hasher: sha2::Sha256::new(), len: 0 })
    }

    /// Appends `data`.
    pub fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.file.as_mut().ok_or_else(|| std::io::Error::other("temp file closed"))?.write_all(data)?;
        self.hasher.update(data);
        self.len += data.len() as u64;
        Ok(())
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Checks size and sha256, fsyncs and renames onto `dest`.
    pub fn commit(mut self, dest: &Path, size: u64, sha256: &str) -> Result<()> {
        if self.len != size {
            bail!("{} bytes received, {size} announced", self.len);
        }
        let got = hex::encode(std::mem::take(&mut self.hasher).finalize());
        if got != sha256 {
            bail!("sha256 {got}, expected {sha256} (changed on the coordinator during the transfer?)");
        }
        let f = self.file.take().ok_or_else(|| anyhow!("temp file closed"))?;
        f.sync_all().with_context(|| format!("syncing {}", self.tmp.display()))?;
        drop(f);
        std::fs::rename(&self.tmp, dest).with_context(|| format!("renaming onto {}", dest.display()))?;
        self.tmp = PathBuf::new();
        Ok(())
    }
}

impl Drop for PartFile {
    fn drop(&mut self) {
        if self.tmp.as_os_str().is_empty() {
            return;
        }
        drop(self.file.take());
        if let Err(e) = std::fs::remove_file(&self.tmp) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!("could not remove the partial download {}: {e}", self.tmp.display());
            }
        }
    }
}

/// Appends a chunk off the runtime threads (write and hash).
async fn append(part: PartFile, data: Vec<u8>) -> std::io::Result<PartFile> {
    tokio::task::spawn_blocking(move || {
        let mut part = part;
        part.write(&data).map(|_| part)
    })
    .await
    .map_err(std::io::Error::other)?
}

/// Downloads `input` of `run_id` to `dest` (see the module docs).
pub async fn download(conn: &Conn, run_id: &str, input: &pb::ArtifactRef, dest: &Path) -> Result<()> {
    let rel = input.path.clone();
    let req = pb::DownloadRequest { run_id: run_id.into(), path: rel.clone(), offset: 0 };
    let size = input.size;
    let part = conn
        .call("download", |mut api| {
            let (req, dest) = (req.clone(), dest.to_path_buf());
            async move {
                let io = |e: std::io::Error| tonic::Status::internal(format!("writing the download: {e}"));
                let mut s = api.download_artifact(req).await?.into_inner();
                let mut part = PartFile::create(&dest).map_err(io)?;
                while let Some(c) = s.message().await? {
                    if part.len() + c.data.len() as u64 > size {
                        return Err(tonic::Status::out_of_range(format!("the coordinator sent more than the announced {size} bytes")));
                    }
                    let last = c.last;
                    part = append(part, c.data).await.map_err(io)?;
                    if last {
                        break;
                    }
                }
                Ok(tonic::Response::new(part))
            }
        })
        .await
        .map_err(|s| anyhow!("downloading {rel}: {}", s.message()))?;
    let (dest, sha) = (dest.to_path_buf(), input.sha256.clone());
    tokio::task::spawn_blocking(move || part.commit(&dest, size, &sha))
        .await
        .context("the download writer panicked")?
        .with_context(|| format!("downloaded {rel}"))
}

/// Removes temp files of downloads whose worker process is gone (killed mid-transfer) under `dir`.
/// Returns how many were removed.
pub fn sweep_stale_parts(dir: &Path) -> usize {
    let mut removed = 0;
    let Ok(rd) = std::fs::read_dir(dir) else { return 0 };
    for e in rd.flatten() {
        let Ok(ft) = e.file_type() else { continue };
        let p = e.path();
        if ft.is_dir() {
            removed += sweep_stale_parts(&p);
            continue;
        }
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = temp_writer(&name) else { continue };
        if name.starts_with('.') && !process_alive(pid) {
            match std::fs::remove_file(&p) {
                Ok(()) => removed += 1,
                Err(err) => tracing::warn!("could not remove the stale partial download {}: {err}", p.display()),
            }
        }
    }
    removed
}

/// The process that writes the temp file `name`: a download's `.NAME.part-PID-SEQ`, or an atomic
/// write's `.NAME.tmp-PID` (`nnunet_common::atomic::temp_path`: checkpoints, logs, cache markers).
fn temp_writer(name: &str) -> Option<i32> {
    if let Some((_, t)) = name.rsplit_once(PART_MARK) {
        return t.split('-').next()?.parse().ok();
    }
    name.rsplit_once(".tmp-")?.1.parse().ok()
}

fn process_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists; no memory is involved.
    pid > 0 && (unsafe { libc::kill(pid, 0) } == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    }

    #[test]
    fn a_part_file_leaves_nothing_unless_committed_whole() {
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("sub/case.npy");
        let mut p = PartFile::create(&dest).unwrap();
        p.write(b"abc").unwrap();
        drop(p); // aborted
        assert!(entries(&tmp.path().join("sub")).is_empty());
        let sha = nnunet_common::hash::sha256_bytes(b"abcdef");
        for (data, size, sha) in [(&b"abcdef"[..], 7, sha.as_str()), (b"abcdef", 6, "00")] {
            let mut p = PartFile::create(&dest).unwrap();
            p.write(data).unwrap();
            assert!(p.commit(&dest, size, sha).is_err());
            assert!(entries(&tmp.path().join("sub")).is_empty(), "a refused download leaves no file");
        }
        let mut p = PartFile::create(&dest).unwrap();
        p.write(b"abcdef").unwrap();
        p.commit(&dest, 6, &sha).unwrap();
        assert_eq!(entries(&tmp.path().join("sub")), vec!["case.npy"]);
    }

    #[test]
    fn stale_parts_of_dead_processes_are_swept() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("runs/r/preprocessed");
        std::fs::create_dir_all(&d).unwrap();
        // pid 0x7fff_fff0 does not exist; ours does
        std::fs::write(d.join(format!(".a.npy{PART_MARK}{}-0", i32::MAX - 15)), b"x").unwrap();
        std::fs::write(d.join(format!(".b.npy{PART_MARK}{}-1", std::process::id())), b"x").unwrap();
        std::fs::write(d.join("c.npy"), b"x").unwrap();
        // An atomic write cut short by a killed worker (a checkpoint), and one of a live process.
        std::fs::write(d.join(format!(".checkpoint_latest.safetensors.tmp-{}", i32::MAX - 15)), b"x").unwrap();
        std::fs::write(d.join(format!(".training_log.jsonl.tmp-{}", std::process::id())), b"x").unwrap();
        assert_eq!(sweep_stale_parts(tmp.path()), 2);
        assert_eq!(
            entries(&d),
            vec![
                format!(".b.npy{PART_MARK}{}-1", std::process::id()),
                format!(".training_log.jsonl.tmp-{}", std::process::id()),
                "c.npy".to_string()
            ]
        );
    }
}
