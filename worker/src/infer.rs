//! Inference: from trained folds to masks a user can open (nnU-Net v2
//! `nnunetv2/inference/predict_from_raw_data.py`, `nnunetv2/inference/export_prediction.py`, and
//! `nnunetv2/training/nnUNetTrainer/nnUNetTrainer.py::perform_actual_validation`).
//!
//! - [`predict_folder`] ([`folder`]): a folder of raw images in the user's own format (PNG/TIFF/JPEG/BMP/NIfTI,
//!   gray or RGB, one file per case, no `_0000` needed) or an nnU-Net `imagesTs` folder
//!   (`{case}_{XXXX}{ending}` channel files) -> masks in the input's format with the user's original
//!   label values (`dataset.json` `nnunetrs_label_mapping`), optionally `.npz` probabilities, with
//!   the postprocessing chosen on the cross-validation applied when the model folder has one.
//! - [`validate_fold`]: the final validation of one fold from the preprocessed data, evaluated
//!   against `gt_segmentations` into `validation/summary.json`.
//!
//! Per case: preprocess exactly as training did ([`nnunet_common::preprocess::preprocess_case`]),
//! [`sliding_window::predict_case_logits`] (all folds, logits averaged), then [`export_case`]:
//! resample the logits back to the cropped shape (order 1), argmax (softmax for probabilities),
//! paste into the uncropped shape (probabilities: background 1 outside the crop), undo the
//! transpose. Every file is written atomically: an interrupted run leaves no partial mask.
pub mod export;
pub mod folder;
mod model;
pub mod options;
mod pipeline;
mod progress;
pub mod sliding_window;
pub mod validate;

pub use export::{class_values, export_case, Exported};
pub use folder::{discover_cases, predict_folder, predict_folder_with, InputCase};
pub use options::{PredictOptions, PredictReport};
pub use validate::validate_fold;
