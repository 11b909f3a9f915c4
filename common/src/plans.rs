//! `nnUNetPlans.json`, typed (`ExperimentPlanner.plan_experiment` writes it;
//! `nnunetv2/utilities/plans_handling/plans_handler.py` reads it). Field names are nnU-Net v2's, so our plans file and the
//! reference's can be compared key by key and a reference plans file can be loaded as-is.
//! Only the `2d` configuration is produced by nnunet-rs; other configurations are kept verbatim.
use crate::{error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Plans {
    pub dataset_name: String,
    pub plans_name: String,
    /// Median spacing over the dataset in (Z, X, Y) order, after the transpose.
    pub original_median_spacing_after_transp: Vec<f64>,
    pub original_median_shape_after_transp: Vec<f64>,
    pub image_reader_writer: String,
    pub transpose_forward: Vec<usize>,
    pub transpose_backward: Vec<usize>,
    pub configurations: BTreeMap<String, serde_json::Value>,
    pub experiment_planner_used: String,
    pub label_manager: String,
    pub foreground_intensity_properties_per_channel: BTreeMap<String, IntensityProperties>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// Foreground intensity statistics of one channel (from the fingerprint).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct IntensityProperties {
    pub max: f64,
    pub mean: f64,
    pub median: f64,
    pub min: f64,
    pub percentile_00_5: f64,
    pub percentile_99_5: f64,
    pub std: f64,
}

/// The `configurations["2d"]` entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Configuration2d {
    pub data_identifier: String,
    pub preprocessor_name: String,
    pub batch_size: usize,
    /// In-plane patch size (X, Y).
    pub patch_size: Vec<usize>,
    pub median_image_size_in_voxels: Vec<f64>,
    /// In-plane target spacing.
    pub spacing: Vec<f64>,
    pub normalization_schemes: Vec<Normalization>,
    pub use_mask_for_norm: Vec<bool>,
    pub resampling_fn_data: String,
    pub resampling_fn_seg: String,
    pub resampling_fn_data_kwargs: ResamplingKwargs,
    pub resampling_fn_seg_kwargs: ResamplingKwargs,
    pub resampling_fn_probabilities: String,
    pub resampling_fn_probabilities_kwargs: ResamplingKwargs,
    pub architecture: Architecture,
    pub batch_dice: bool,
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ResamplingKwargs {
    pub is_seg: bool,
    pub order: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_z: Option<u32>,
    #[serde(default)]
    pub force_separate_z: Option<bool>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Architecture {
    pub network_class_name: String,
    pub arch_kwargs: ArchKwargs,
    #[serde(rename = "_kw_requires_import")]
    pub kw_requires_import: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ArchKwargs {
    pub n_stages: usize,
    pub features_per_stage: Vec<usize>,
    pub conv_op: String,
    pub kernel_sizes: Vec<Vec<usize>>,
    pub strides: Vec<Vec<usize>>,
    /// PlainConvUNet: convolutions per encoder stage (absent for ResidualEncoderUNet).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub n_conv_per_stage: Vec<usize>,
    /// ResidualEncoderUNet: residual blocks per encoder stage (absent for PlainConvUNet).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub n_blocks_per_stage: Vec<usize>,
    pub n_conv_per_stage_decoder: Vec<usize>,
    pub conv_bias: bool,
    pub norm_op: String,
    pub norm_op_kwargs: serde_json::Value,
    pub dropout_op: Option<String>,
    pub dropout_op_kwargs: Option<serde_json::Value>,
    pub nonlin: String,
    pub nonlin_kwargs: serde_json::Value,
}

/// Normalization schemes, named exactly as nnU-Net's classes
/// (`nnunetv2/preprocessing/normalization/map_channel_name_to_normalization.py`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum Normalization {
    #[serde(rename = "ZScoreNormalization")]
    ZScore,
    #[serde(rename = "CTNormalization")]
    Ct,
    #[serde(rename = "NoNormalization")]
    NoNorm,
    #[serde(rename = "RescaleTo01Normalization")]
    RescaleTo01,
    #[serde(rename = "RGBTo01Normalization")]
    RgbTo01,
}

impl Normalization {
    /// nnU-Net's `get_normalization_scheme`: case-insensitive channel-name match, default z-score.
    pub fn for_channel_name(name: &str) -> Self {
        match name.to_ascii_lowercase().as_str() {
            "ct" => Normalization::Ct,
            "nonorm" => Normalization::NoNorm,
            "zscore" => Normalization::ZScore,
            "rescale_to_0_1" => Normalization::RescaleTo01,
            "rgb_to_0_1" => Normalization::RgbTo01,
            _ => Normalization::ZScore,
        }
    }
    /// Only z-score leaves pixels outside the mask at zero, so only it may use the mask.
    pub fn leaves_pixels_outside_mask_at_zero_if_use_mask_for_norm_is_true(self) -> bool {
        matches!(self, Normalization::ZScore)
    }
}

impl Plans {
    pub fn load(path: &Path) -> Result<Self> {
        error::read_json(path)
    }
    pub fn save(&self, path: &Path) -> Result<()> {
        error::write_json(path, self)
    }
    /// The typed 2D configuration.
    pub fn config_2d(&self) -> Result<Configuration2d> {
        let v = self
            .configurations
            .get("2d")
            .ok_or_else(|| crate::Error::Invalid(format!("plans for {} have no '2d' configuration", self.dataset_name)))?;
        serde_json::from_value(v.clone()).map_err(|e| crate::Error::Invalid(format!("plans '2d' configuration is malformed: {e}")))
    }
}

impl ArchKwargs {
    /// Deep-supervision scales per decoder output, highest resolution first: `1 / cumprod(strides)`
    /// without the last entry (`nnUNetTrainer._get_deep_supervision_scales`).
    pub fn deep_supervision_scales(&self) -> Vec<Vec<f64>> {
        let dims = self.strides[0].len();
        let mut cum = vec![1usize; dims];
        let mut scales = Vec::new();
        for s in &self.strides {
            for d in 0..dims {
                cum[d] *= s[d];
            }
            scales.push(cum.iter().map(|&c| 1.0 / c as f64).collect());
        }
        scales.pop();
        scales
    }
}
