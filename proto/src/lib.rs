//! The gRPC contract (`proto/nnunet/v1/nnunet.proto`): the worker API (register, lease, heartbeat,
//! metrics, artifacts, complete/fail) and the monitor API (list, get, watch, cancel, retry).
//! Generated types stay at the edges: `coordinator/src/service` and `worker/src/client.rs`.
pub mod v1 {
    tonic::include_proto!("nnunet.v1");
    /// Encoded descriptor set, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("nnunet_descriptor");
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
            let m = super::EpochMetrics { epoch: 3, epochs: 10, pseudo_dice: vec![0.5, 0.25], lr: 0.009, new_best: true, ..Default::default() };
            assert_eq!(super::metrics_from_proto(&super::metrics_to_proto(&m)), m);
        }
    }
}
