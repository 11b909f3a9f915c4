//! nnunet-worker: everything that runs on an accelerator.
//!
//! - [`net`]: PlainConvUNet built from the plans, parameters named like the reference.
//! - [`train`]: loss, SGD-Nesterov with our own momentum buffers, poly LR, the epoch loop,
//!   checkpoints, the batch loader over preprocessed data.
//! - [`infer`]: sliding-window prediction with Gaussian weighting and mirroring TTA, export.
//! - [`client`]: the gRPC loop that leases tasks from a coordinator and runs them.
//! - [`device`]: device selection and reporting.
//! - [`cache`]: the bounded local cache of run folders.
//! - [`interop`]: nnU-Net v2 model folders, `.pth` checkpoints, model zips, pretrained weights.

pub mod cache;
pub mod cli_predict;
pub mod cli_train;
pub mod client;
pub mod device;
pub mod infer;
pub mod interop;
pub mod net;
pub mod nvml;
pub mod train;
