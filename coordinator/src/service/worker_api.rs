//! `WorkerApi`: register, lease, heartbeat, metrics, logs, artifacts, complete, fail.
use super::convert::{apply_status, bounded, metrics_in, order_to_proto, refusal_status, upload_status};
use crate::domain::TaskKind;
use crate::domain::{limits, WorkerId};
use crate::engine::{checkpoint_part, open_download, safe_rel_path, sidecar_weights, upload_allowed, Coordinator, Part, UploadSink};
use crate::state::Worker;
use nnunet_proto::v1 as pb;
use nnunet_proto::v1::worker_api_server::WorkerApi;
use nnunet_proto::wire;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

pub struct WorkerService(pub Arc<Coordinator>);

type ChunkStream = Pin<Box<dyn Stream<Item = Result<pb::ArtifactChunk, Status>> + Send>>;

fn sanitize(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '-' }).take(40).collect()
}

fn worker_id(s: &str) -> Result<WorkerId, Status> {
    Ok(WorkerId(bounded("worker_id", s, limits::SHORT)?.to_string()))
}

impl WorkerService {
    fn refused(&self, call: &'static str, r: crate::state::Refusal) -> Status {
        self.0.counters.fenced(call);
        tracing::info!("refused a worker write: {r}");
        refusal_status(r)
    }
}

impl WorkerService {
    /// Commits the held weights that the uploaded `sidecar` names (same lease, same sha256), or
    /// checks that they are already in place; otherwise refuses the sidecar with DATA_LOSS so that
    /// the worker uploads the pair again.
    async fn commit_weights_of(&self, sidecar: &UploadSink, task_id: &str, token: u64) -> Result<(), Status> {
        let bytes = tokio::fs::read(sidecar.tmp()).await.map_err(|e| Status::internal(format!("reading the uploaded sidecar: {e}")))?;
        let (file, sha) = sidecar_weights(&bytes)
            .ok_or_else(|| Status::invalid_argument("a checkpoint sidecar must name its weights_file and sha256"))?;
        let stem = sidecar.dest().file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        if file != format!("{stem}.safetensors") {
            return Err(Status::invalid_argument(format!("sidecar {stem}.json names weights {file:?}, not {stem}.safetensors")));
        }
        let weights = sidecar.dest().with_file_name(&file);
        if let Some(w) = self.0.take_weights(&weights, task_id, token, &sha) {
            w.commit().await.map_err(upload_status)?;
            return Ok(());
        }
        let (c, w2) = (self.0.clone(), weights.clone());
        let on_disk =
            tokio::task::spawn_blocking(move || c.hash_of(&w2).ok().map(|(h, _)| h)).await.map_err(|e| Status::internal(e.to_string()))?;
        if on_disk.as_deref() == Some(sha.as_str()) {
            return Ok(());
        }
        tracing::warn!(task = %task_id, "sidecar of {file} arrived without its weights; asking for the pair again");
        Err(Status::data_loss(format!(
            "the checkpoint weights {file} (sha256 {sha}) named by this sidecar were not received; upload the pair again"
        )))
    }
}

#[tonic::async_trait]
impl WorkerApi for WorkerService {
    async fn register(&self, req: Request<pb::RegisterRequest>) -> Result<Response<pb::RegisterReply>, Status> {
        let r = req.into_inner();
        for (f, v) in [
            ("host", &r.host),
            ("device", &r.device),
            ("device_name", &r.device_name),
            ("version", &r.version),
            ("device_key", &r.device_key),
        ] {
            bounded(f, v, limits::SHORT)?;
        }
        bounded("shared_root", &r.shared_root, limits::PATH)?;
        let id = WorkerId(format!("w-{}-{}", sanitize(&r.host), crate::domain::random_hex(8)));
        let now = self.0.now_ms();
        let w = Worker {
            id: id.clone(),
            host: r.host,
            device: r.device,
            device_name: r.device_name,
            registered_ms: now,
            last_seen_ms: now,
            device_key: r.device_key,
            device_free_mib: r.device_memory_free_bytes >> 20,
        };
        self.0.apply("register", move |st, _| Ok(((), st.register_worker(w)))).await.map_err(apply_status)?;
        tracing::info!(worker = %id, "worker registered");
        Ok(Response::new(pb::RegisterReply {
            worker_id: id.to_string(),
            heartbeat_interval_ms: self.0.cfg.heartbeat_interval.as_millis() as i64,
            lease_ttl_ms: self.0.cfg.lease_ttl.as_millis() as i64,
        }))
    }

    async fn lease(&self, req: Request<pb::LeaseRequest>) -> Result<Response<pb::LeaseReply>, Status> {
        let w = worker_id(&req.into_inner().worker_id)?;
        match self.0.lease(w).await.map_err(apply_status)? {
            (Some(order), _) => {
                Ok(Response::new(pb::LeaseReply { task: Some(order_to_proto(&order)), retry_after_ms: 0, shutdown: false }))
            }
            (None, idle) => Ok(Response::new(pb::LeaseReply { task: None, retry_after_ms: 500, shutdown: idle })),
        }
    }

    async fn heartbeat(&self, req: Request<pb::HeartbeatRequest>) -> Result<Response<pb::HeartbeatReply>, Status> {
        let r = req.into_inner();
        let w = worker_id(&r.worker_id)?;
        self.0.telemetry.record(w.as_str(), super::convert::heartbeat_sample(&r, self.0.now_ms()));
        match self.0.heartbeat(&r.task_id, r.fencing_token, &w) {
            Ok(cancel) => Ok(Response::new(pb::HeartbeatReply {
                ok: !cancel,
                reason: if cancel { "the run was cancelled or has ended".into() } else { String::new() },
                cancel,
            })),
            Err(e) => {
                self.0.counters.fenced("heartbeat");
                tracing::info!(task = %r.task_id, worker = %w, "heartbeat refused: {e}");
                Ok(Response::new(pb::HeartbeatReply { ok: false, reason: e.to_string(), cancel: false }))
            }
        }
    }

    async fn report_metrics(&self, req: Request<pb::MetricsReport>) -> Result<Response<pb::Ack>, Status> {
        let r = req.into_inner();
        let w = worker_id(&r.worker_id)?;
        let m = metrics_in(r.metrics.as_ref())?;
        let (task, token) = (r.task_id, r.fencing_token);
        self.0.apply("metrics", move |st, now| Ok(((), st.report_metrics(&task, token, &w, m, now)?))).await.map_err(apply_status)?;
        Ok(Response::new(pb::Ack {}))
    }

    async fn log(&self, req: Request<pb::LogLines>) -> Result<Response<pb::Ack>, Status> {
        let r = req.into_inner();
        let w = worker_id(&r.worker_id)?;
        if r.lines.len() > limits::LINES {
            return Err(Status::invalid_argument(format!("{} log lines in one call; at most {}", r.lines.len(), limits::LINES)));
        }
        let lines: Vec<String> = r.lines.iter().map(|l| truncate(l, limits::TEXT)).collect();
        let (task, token) = (r.task_id, r.fencing_token);
        self.0.apply("log", move |st, now| Ok(((), st.log(&task, token, &w, &lines, now)?))).await.map_err(apply_status)?;
        Ok(Response::new(pb::Ack {}))
    }

    async fn upload_artifact(&self, req: Request<Streaming<pb::ArtifactChunk>>) -> Result<Response<pb::UploadReply>, Status> {
        let mut stream = req.into_inner();
        let first = stream.message().await?.ok_or_else(|| Status::invalid_argument("empty upload"))?;
        let rel = safe_rel_path(&first.path).map_err(Status::invalid_argument)?;
        let worker = if first.worker_id.is_empty() { None } else { Some(worker_id(&first.worker_id)?) };
        let (task_id, token) = (first.task_id.clone(), first.fencing_token);
        let (task, run) = self.0.fenced_task(&task_id, token, worker.as_ref()).map_err(|r| self.refused("upload", r))?;
        if task.run_id.as_str() != first.run_id {
            return Err(Status::invalid_argument("task does not belong to that run"));
        }
        upload_allowed(&run, &task, &rel).map_err(|m| {
            self.0.counters.fenced("upload");
            tracing::warn!(task = %task.id, "refused upload: {m}");
            Status::permission_denied(m)
        })?;
        let dest = PathBuf::from(&run.run_dir).join(&rel);
        let tag = format!("{}", token & 0xffff_ffff);
        let mut sink = UploadSink::create(dest, first.total_size, self.0.cfg.max_upload_bytes, &tag).await.map_err(upload_status)?;
        let mut chunk = Some(first);
        let mut claimed = None;
        while let Some(c) = chunk {
            sink.write(c.offset, &c.data).await.map_err(upload_status)?;
            if c.last {
                claimed = Some(c.sha256);
                break;
            }
            chunk = stream.message().await?;
        }
        let claimed = claimed.ok_or_else(|| Status::data_loss(format!("upload of {} ended before its last chunk", rel.display())))?;
        let (digest, size) = sink.finish(&claimed).await.map_err(upload_status)?;
        // Check the fence again at commit time: the lease may have been lost during the transfer.
        self.0.fenced_task(&task_id, token, worker.as_ref()).map_err(|r| self.refused("upload", r))?;
        let reply = pb::UploadReply { path: rel.to_string_lossy().into_owned(), sha256: digest.clone(), size };
        self.0.counters.bytes_uploaded.fetch_add(size, Ordering::Relaxed);
        // Checkpoint weights wait for their sidecar; the pair is committed together (engine::pairs).
        match checkpoint_part(&rel).filter(|_| task.kind == TaskKind::Train) {
            Some(Part::Weights) => {
                let dest = sink.dest().to_path_buf();
                self.0.hold_weights(dest, &task_id, token, digest, sink);
                return Ok(Response::new(reply));
            }
            Some(Part::Sidecar) => self.commit_weights_of(&sink, &task_id, token).await?,
            None => {}
        }
        let dest = sink.commit().await.map_err(upload_status)?;
        let rel2 = rel.clone();
        let ck = tokio::task::spawn_blocking(move || crate::pipeline::checkpoint_from_upload(&rel2, &dest))
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        if let Some((ck, epoch)) = ck {
            self.0
                .apply("checkpoint", move |st, now| Ok(((), st.checkpoint_uploaded(&task_id, token, worker.as_ref(), &ck, epoch, now)?)))
                .await
                .map_err(apply_status)?;
        }
        Ok(Response::new(reply))
    }

    type DownloadArtifactStream = ChunkStream;

    async fn download_artifact(&self, req: Request<pb::DownloadRequest>) -> Result<Response<ChunkStream>, Status> {
        let r = req.into_inner();
        let rel = safe_rel_path(&r.path).map_err(Status::invalid_argument)?;
        let run = self
            .0
            .read(|st| st.runs.get(r.run_id.as_str()).cloned())
            .ok_or_else(|| Status::not_found(format!("unknown run {}", r.run_id)))?;
        let coord = self.0.clone();
        let c2 = coord.clone();
        let opened = tokio::task::spawn_blocking(move || {
            let d = open_download(&run, &rel)?;
            let (sha, _) = c2.hash_of(&d.path).map_err(|e| format!("{e:#}"))?;
            Ok::<_, String>((d, sha))
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
        let (d, sha) = opened.map_err(|m| {
            tracing::info!("refused a download: {m}");
            Status::not_found(m)
        })?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let path = r.path.clone();
        let start = r.offset.min(d.size);
        tokio::spawn(async move {
            if let Err(s) = stream_file(d, start, path, sha, &tx, &coord).await {
                if tx.send(Err(s)).await.is_err() {
                    tracing::debug!("download receiver gone");
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn complete(&self, req: Request<pb::CompleteRequest>) -> Result<Response<pb::Ack>, Status> {
        let r = req.into_inner();
        let w = worker_id(&r.worker_id)?;
        bounded("result_json", &r.result_json, limits::RESULT)?;
        let (task, token, result) = (r.task_id, r.fencing_token, r.result_json);
        let t2 = task.clone();
        self.0.apply("complete", move |st, now| Ok(((), st.complete(&task, token, &w, result, now)?))).await.map_err(apply_status)?;
        tracing::info!(task = %t2, "task done");
        Ok(Response::new(pb::Ack {}))
    }

    async fn fail(&self, req: Request<pb::FailRequest>) -> Result<Response<pb::Ack>, Status> {
        let r = req.into_inner();
        let w = worker_id(&r.worker_id)?;
        let error = truncate(&r.error, limits::TEXT);
        let (task, token, retry, oom) = (r.task_id, r.fencing_token, r.retryable, r.out_of_memory);
        tracing::warn!(task = %task, worker = %w, retryable = retry, out_of_memory = oom, "task failed: {error}");
        self.0
            .apply("fail", move |st, now| {
                let fx = if oom {
                    st.fail_out_of_memory(&task, token, &w, &error, now)?
                } else {
                    st.fail(&task, token, &w, &error, retry, now)?
                };
                Ok(((), fx))
            })
            .await
            .map_err(apply_status)?;
        Ok(Response::new(pb::Ack {}))
    }
}

/// A string cut to at most `max` bytes (on a character boundary).
fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Sends `d` from `start` in [`wire::CHUNK_BYTES`] chunks; memory stays at one chunk per stream.
async fn stream_file(
    d: crate::engine::Download,
    start: u64,
    path: String,
    sha: String,
    tx: &tokio::sync::mpsc::Sender<Result<pb::ArtifactChunk, Status>>,
    coord: &Coordinator,
) -> Result<(), Status> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let total = d.size;
    let mut f = tokio::fs::File::from_std(d.file);
    f.seek(std::io::SeekFrom::Start(start)).await.map_err(|e| Status::internal(e.to_string()))?;
    let mut off = start;
    let mut first = true;
    loop {
        let want = (total - off).min(wire::CHUNK_BYTES as u64) as usize;
        let mut buf = vec![0u8; want];
        f.read_exact(&mut buf).await.map_err(|e| Status::data_loss(format!("{path} changed while being read: {e}")))?;
        let last = off + want as u64 == total;
        let chunk = pb::ArtifactChunk {
            path: if first { path.clone() } else { String::new() },
            total_size: total,
            offset: off,
            data: buf,
            sha256: if last { sha.clone() } else { String::new() },
            last,
            ..Default::default()
        };
        coord.counters.bytes_downloaded.fetch_add(want as u64, Ordering::Relaxed);
        if tx.send(Ok(chunk)).await.is_err() {
            return Ok(());
        }
        if last {
            return Ok(());
        }
        off += want as u64;
        first = false;
    }
}
