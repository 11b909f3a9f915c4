//! nnunet-common: the pure half of nnunet-rs.
//!
//! Everything here is a function of files and arrays: reading images, converting a folder of
//! images and masks into an nnU-Net v2 raw dataset, verifying it, fingerprinting, planning the 2D
//! configuration, preprocessing one case, splits, augmentation, metrics, postprocessing and
//! ensembling. No libtorch, no network, no async runtime: the coordinator (no CUDA) and the worker
//! (libtorch) both build on it.
//!
//! # Layout
//! - [`paths`], [`dataset_json`], [`plans`], [`case`]: the on-disk contracts, serde types that
//!   mirror nnU-Net v2's files so existing users can switch and compare.
//! - [`npy`]: `.npy`/`.npz` reading (also memory-mapped) and writing, the preprocessed storage.
//! - [`imageio`]: PNG/TIFF/JPEG/BMP/NIfTI readers and writers behind one type.
//! - [`convert`], [`verify`]: intake.
//! - [`fingerprint`], [`planning`], [`preprocess`], [`splits`]: self-configuration.
//! - [`augment`]: the nnU-Net v2 augmentation pipeline on CPU arrays.
//! - [`metrics`], [`postprocess`], [`ensemble`], [`evaluate`]: scoring and the CV summary.
//! - [`train_log`]: per-epoch metrics, the JSON-lines log and `progress.png`.
//! - [`synthetic`]: the built-in default dataset.

pub mod augment;
pub mod case;
pub mod convert;
pub mod dataset_json;
pub mod defaults;
pub mod ensemble;
pub mod error;
pub mod evaluate;
pub mod fingerprint;
pub mod fold;
pub mod hash;
pub mod imageio;
pub mod metrics;
pub mod npy;
pub mod paths;
pub mod planners;
pub mod planning;
pub mod plans;
pub mod postprocess;
pub mod preprocess;
pub mod splits;
pub mod synthetic;
pub mod train_log;
pub mod verify;

pub use error::{Error, Result};
pub use fold::Fold;
