//! The gRPC contract (`proto/nnunet/v1/nnunet.proto`): the worker API (register, lease, heartbeat,
//! metrics, artifacts, complete/fail) and the monitor API (list, get, watch, cancel, retry).
//! Generated types stay at the edges: `coordinator/src/service` (plus the CLI client) and the worker's
//! connection code.
pub mod wire;

pub mod v1 {
    tonic::include_proto!("nnunet.v1");
    /// Encoded descriptor set, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("nnunet_descriptor");
}

/// The client endpoint of the CLI and of the workers: keep-alive, large HTTP/2 windows (artifact
/// streams are 1 MiB chunks; the 64 KiB default throttles them), a 10 s connect timeout, and TLS
/// when `tls_ca` is given (that CA) or the address is `https://` (the system roots).
pub fn endpoint(addr: &str, tls_ca: Option<&std::path::Path>) -> anyhow::Result<tonic::transport::Endpoint> {
    use anyhow::Context;
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
    let mut ep = Endpoint::from_shared(addr.to_string())
        .with_context(|| format!("bad coordinator address {addr:?}"))?
        .keep_alive_while_idle(true)
        .initial_stream_window_size(Some(wire::STREAM_WINDOW_BYTES))
        .initial_connection_window_size(Some(wire::CONNECTION_WINDOW_BYTES))
        .http2_keep_alive_interval(wire::KEEPALIVE_INTERVAL)
        .keep_alive_timeout(wire::KEEPALIVE_TIMEOUT)
        .connect_timeout(std::time::Duration::from_secs(10));
    if let Some(ca) = tls_ca {
        let pem = std::fs::read(ca).with_context(|| format!("reading CA {}", ca.display()))?;
        ep = ep.tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)))?;
    } else if addr.starts_with("https://") {
        ep = ep.tls_config(ClientTlsConfig::new().with_enabled_roots())?;
    }
    Ok(ep)
}

/// Conversions between the wire type and `nnunet_common::train_log::EpochMetrics`, the one both
/// the worker (which produces it) and the coordinator (which stores it) use.
pub mod convert {
    use super::v1 as pb;
    use nnunet_common::train_log::EpochMetrics;

    pub fn metrics_to_proto(m: &EpochMetrics) -> pb::EpochMetrics {
        pb::EpochMetrics {
            epoch: m.epoch,
            epochs: m.epochs,
            train_loss: m.train_loss,
            val_loss: m.val_loss,
            pseudo_dice: m.pseudo_dice.clone(),
            mean_fg_dice: m.mean_fg_dice,
            ema_fg_dice: m.ema_fg_dice,
            lr: m.lr,
            epoch_seconds: m.epoch_seconds,
            dataloader_wait_seconds: m.dataloader_wait_seconds,
            step_seconds: m.step_seconds,
            device_memory_peak_bytes: m.device_memory_peak_bytes,
            new_best: m.new_best,
        }
    }

    pub fn metrics_from_proto(m: &pb::EpochMetrics) -> EpochMetrics {
        EpochMetrics {
            epoch: m.epoch,
            epochs: m.epochs,
            train_loss: m.train_loss,
            val_loss: m.val_loss,
            pseudo_dice: m.pseudo_dice.clone(),
            mean_fg_dice: m.mean_fg_dice,
            ema_fg_dice: m.ema_fg_dice,
            lr: m.lr,
            epoch_seconds: m.epoch_seconds,
            dataloader_wait_seconds: m.dataloader_wait_seconds,
            step_seconds: m.step_seconds,
            device_memory_peak_bytes: m.device_memory_peak_bytes,
            new_best: m.new_best,
        }
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn metrics_round_trip() {
            let m =
                super::EpochMetrics { epoch: 3, epochs: 10, pseudo_dice: vec![0.5, 0.25], lr: 0.009, new_best: true, ..Default::default() };
            assert_eq!(super::metrics_from_proto(&super::metrics_to_proto(&m)), m);
        }
    }
}

/// Splitting a file into `ArtifactChunk`s: the header (run, task, token, path) rides on the first
/// chunk, the sha256 of the whole file on the last. Used by both ends of the artifact streams.
pub mod chunks {
    use super::v1 as pb;

    /// Header fields of an upload or download stream.
    #[derive(Debug, Clone, Default)]
    pub struct Header {
        pub run_id: String,
        pub task_id: String,
        pub fencing_token: u64,
        pub path: String,
        /// The uploading worker (the coordinator checks it is the lease holder).
        pub worker_id: String,
    }

    /// Chunks of `bytes[start..]`, `chunk_size` each (at least one chunk, even for an empty file).
    pub fn split(bytes: &[u8], start: usize, chunk_size: usize, header: &Header, sha256: &str) -> Vec<pb::ArtifactChunk> {
        let mut out = Vec::new();
        let mut off = start.min(bytes.len());
        loop {
            let end = (off + chunk_size).min(bytes.len());
            let last = end == bytes.len();
            let first = out.is_empty();
            out.push(pb::ArtifactChunk {
                run_id: if first { header.run_id.clone() } else { String::new() },
                task_id: if first { header.task_id.clone() } else { String::new() },
                fencing_token: header.fencing_token,
                path: if first { header.path.clone() } else { String::new() },
                total_size: bytes.len() as u64,
                offset: off as u64,
                data: bytes[off..end].to_vec(),
                sha256: if last { sha256.to_string() } else { String::new() },
                last,
                worker_id: if first { header.worker_id.clone() } else { String::new() },
            });
            if last {
                return out;
            }
            off = end;
        }
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn chunks_cover_the_file_once() {
            let data: Vec<u8> = (0..10u8).collect();
            let h = super::Header { path: "p".into(), ..Default::default() };
            let c = super::split(&data, 0, 4, &h, "abc");
            assert_eq!(c.len(), 3);
            assert_eq!(c.iter().flat_map(|c| c.data.clone()).collect::<Vec<_>>(), data);
            assert!(c[2].last && c[2].sha256 == "abc" && c[0].path == "p" && c[1].path.is_empty());
            assert_eq!(super::split(&[], 0, 4, &h, "e").len(), 1);
        }
    }
}
