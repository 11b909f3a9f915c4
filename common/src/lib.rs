//! nnunet-common: the pure half of nnunet-rs.
//!
//! Everything here is a function of files and arrays: reading images, converting a folder of
//! images and masks into an nnU-Net v2 raw dataset, verifying it, fingerprinting, planning the 2D
//! configuration, preprocessing one case, splits, augmentation, metrics, postprocessing and
//! ensembling. No libtorch, no network, no async runtime: the coordinator (no CUDA) and the worker
//! (libtorch) both build on it.
//!
//! # Layout, by pipeline stage (a module only imports from its own stage or the ones above it)
//! - Shared helpers: [`atomic`] (temp + fsync + rename), [`error`], [`hash`] (sha256, atomic writes), [`stats`] (numpy-compatible
//!   statistics), [`np_random`] (numpy's `RandomState`), [`parallel`] (bounded runner + progress),
//!   [`naming`] (the `{case}_{XXXX}{ending}` rule), [`fold`], [`defaults`], [`nnunet_flags`] (nnU-Net's flag spellings).
//! - On-disk contracts: [`paths`], [`dataset_json`], [`plans`], [`case`] (serde types that mirror
//!   nnU-Net v2's files), [`labels`] (labels or regions, nnU-Net's LabelManager), [`npy`], [`imageio`] (PNG/TIFF/JPEG/BMP/NIfTI behind one type),
//!   [`masks`] (label volumes and mask folders).
//! - Intake: [`raw`] (a raw dataset's training cases), [`convert`], [`verify`], [`synthetic`].
//! - Array steps shared by fingerprint, preprocessing and inference: [`crop`], [`resample`].
//! - Self-configuration: [`fingerprint`] -> [`planning`] -> [`splits`] -> [`preprocess`]; [`vram`] (a plan's device memory).
//! - Training side: [`augment`] (the v2 augmentation pipeline on CPU arrays), [`train_log`].
//! - Scoring: [`metrics`] -> [`evaluate`] -> [`postprocess`] -> [`crossval`]; [`ensemble`].

// Stricter than the workspace: no function over ~100 lines (clippy.toml sets the threshold) and
// every `unsafe` block says why it is sound.
#![warn(clippy::too_many_lines, clippy::undocumented_unsafe_blocks)]

pub mod atomic;
pub mod augment;
pub mod case;
pub mod convert;
pub mod crop;
pub mod crossval;
pub mod dataset_json;
pub mod defaults;
pub mod ensemble;
pub mod error;
pub mod evaluate;
pub mod fingerprint;
pub mod fold;
pub mod hash;
pub mod imageio;
pub mod labels;
pub mod masks;
pub mod metrics;
pub mod naming;
pub mod nnunet_flags;
pub mod np_random;
pub mod npy;
pub mod parallel;
pub mod paths;
pub mod planners;
pub mod planning;
pub mod plans;
pub mod postprocess;
pub mod preprocess;
pub mod raw;
pub mod resample;
pub mod splits;
pub mod stats;
pub mod synthetic;
pub mod tensorboard;
pub mod train_log;
pub mod verify;
pub mod vram;

pub use error::{Error, Result};
pub use fold::Fold;
