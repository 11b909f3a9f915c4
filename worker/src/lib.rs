//! nnunet-worker: everything that runs on an accelerator.
//!
//! - [`net`]: PlainConvUNet built from the plans, parameters named like the reference.
//! - [`train`]: loss, SGD-Nesterov with our own momentum buffers, poly LR, the epoch loop,
//!   checkpoints, the batch loader over preprocessed data.
//! - [`infer`]: sliding-window prediction with Gaussian weighting and mirroring TTA, export.
//! - [`serve`]: the gRPC loop that leases tasks from a coordinator and runs them.
//! - [`error`]: the one error classification and its exit codes.
//! - [`device`]: device selection (`auto`: cuda when visible) and reporting; [`nvml`]: GPU readings and identity;
//!   [`sim_memory`]: a simulated device memory budget for tests of fold packing without a GPU.
//! - [`cache`]: the bounded local cache of run folders.

pub mod cache;
pub mod checkpoint;
pub mod cli_predict;
pub mod cli_train;
pub mod device;
pub mod error;
pub mod infer;
pub mod interop;
pub mod net;
pub mod nvml;
pub mod serve;
pub mod sim_memory;
pub mod train;
