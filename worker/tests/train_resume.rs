//! Training end to end through the `nnunet-worker train` binary: kill -9 and `--continue` resume
//! exactly; `load_network` verifies checkpoint hashes. Body in `train_support/resume_body.rs`.
const WORKER_EXE: &str = env!("CARGO_BIN_EXE_nnunet-worker");
include!("train_support/resume_body.rs");
