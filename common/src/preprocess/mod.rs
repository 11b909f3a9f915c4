//! Preprocessing, nnU-Net v2's `DefaultPreprocessor.run_case_npy`
//! (`nnunetv2/preprocessing/preprocessors/default_preprocessor.py`): transpose -> crop to
//! nonzero -> normalize -> resample, then foreground locations for oversampling.
//!
//! [`preprocess_case`] is a pure function of (plans, case arrays): any worker can run it, and the
//! inference engine runs it with `seg = None` on raw test images. [`preprocess_dataset`] runs it over
//! a dataset (or a shard of it) on a bounded thread pool and writes the storage contract of
//! ARCHITECTURE.md ("Preprocessed storage"): `{case}.npy` (float32 C,Z,X,Y), `{case}_seg.npy` (int8
//! 1,Z,X,Y, -1 outside the nonzero mask), `{case}.json` (properties with the sha256 of both arrays,
//! written last: its presence marks the case complete, so an interrupted run resumes where it
//! stopped). NIfTI volumes are stored whole; the 2D loader picks slices along Z, as nnU-Net's 2d
//! configuration does.
//!
//! - [`run_case`]: one case ([`preprocess_case`]).
//! - [`normalize`]: per-channel intensity normalization.
//! - [`locations`]: foreground locations for oversampling.
//! - [`dataset`]: the dataset/shard runner and the on-disk writes.
//!
//! The array steps shared with the fingerprint and inference live below this stage:
//! [`crate::crop`] and [`crate::resample`] (re-exported here for callers).
pub mod dataset;
pub mod locations;
pub mod normalize;
pub mod run_case;

pub use crate::crop::{crop_to_nonzero, fill_holes, nonzero_mask, revert_cropping, transpose_spatial, Cropped};
pub use crate::planners::plan_dataset;
pub use crate::raw::basic_verify;
pub use crate::resample::{resample_data_to_shape, separate_z_axis};
pub use dataset::{preprocess_and_write_case, preprocess_dataset, PreprocessReport};
pub use locations::{sample_foreground_locations, LocationClass};
pub use normalize::normalize_channel;
pub use run_case::{preprocess_case, PreprocessedCase};
