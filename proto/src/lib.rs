//! The gRPC contract (`proto/nnunet/v1/nnunet.proto`): the worker API (register, lease, heartbeat,
//! metrics, artifacts, complete/fail) and the monitor API (list, get, watch, cancel, retry).
//! Generated types stay at the edges: `coordinator/src/service` and `worker/src/client.rs`.
pub mod v1 {
    tonic::include_proto!("nnunet.v1");
    /// Encoded descriptor set, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("nnunet_descriptor");
}
