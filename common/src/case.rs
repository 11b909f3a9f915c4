//! One preprocessed case on disk (ARCHITECTURE.md, "Preprocessed storage"):
//! `{case}.npy` float32 (C, Z, X, Y), `{case}_seg.npy` int8 (1, Z, X, Y) with -1 outside the
//! nonzero mask, `{case}.json` [`CaseProperties`]. `.npy` can be memory-mapped by the loader.
use crate::plans::{Configuration2d, Plans};
use crate::{error, hash, npy, Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CaseProperties {
    /// Spacing of the raw case, (Z, X, Y) after the transpose.
    pub spacing: Vec<f64>,
    pub shape_before_cropping: Vec<usize>,
    /// Half-open [lo, hi) per axis (Z, X, Y).
    pub bbox_used_for_cropping: Vec<[usize; 2]>,
    pub shape_after_cropping_and_before_resampling: Vec<usize>,
    /// Foreground label -> sampled voxel coordinates (channel 0, z, x, y) in the preprocessed array.
    pub class_locations: BTreeMap<String, Vec<[i64; 4]>>,
    /// Geometry of the raw file, to write predictions back.
    #[serde(default)]
    pub raw_geometry: Option<crate::imageio::Geometry>,
    /// sha256 of the `.npy` data and seg files, for sharding and resume.
    #[serde(default)]
    pub data_sha256: String,
    #[serde(default)]
    pub seg_sha256: String,
}

/// Paths of one preprocessed case inside a data folder (`nnUNetPlans_2d/`).
#[derive(Debug, Clone)]
pub struct CaseFiles {
    pub data: PathBuf,
    pub seg: PathBuf,
    pub props: PathBuf,
}

impl CaseFiles {
    pub fn new(data_dir: &Path, case: &str) -> Self {
        CaseFiles {
            data: data_dir.join(format!("{case}.npy")),
            seg: data_dir.join(format!("{case}_seg.npy")),
            props: data_dir.join(format!("{case}.json")),
        }
    }
    /// A case is complete when its properties file exists: it is written last.
    pub fn is_complete(&self) -> bool {
        self.props.is_file() && self.data.is_file() && self.seg.is_file()
    }
    pub fn load_props(&self) -> Result<CaseProperties> {
        error::read_json(&self.props)
    }
    /// Memory-maps the data array.
    pub fn map_data(&self) -> Result<npy::MappedArray<f32>> {
        npy::MappedArray::open(&self.data)
    }
    pub fn map_seg(&self) -> Result<npy::MappedArray<i8>> {
        npy::MappedArray::open(&self.seg)
    }
}

/// Lists the case ids of a preprocessed data folder (those with a properties file), sorted.
pub fn list_cases(data_dir: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let rd = std::fs::read_dir(data_dir).map_err(|e| crate::Error::io(data_dir, e))?;
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        if let Some(case) = name.strip_suffix(".json") {
            out.push(case.to_string());
        }
    }
    out.sort();
    Ok(out)
}

/// What the preprocessed arrays depend on: the 2d configuration, the transpose and the
/// intensity properties (CT normalization). Hashed into `nnUNetPlans_2d/.plans_sha256`.
pub fn plans_digest(plans: &Plans, config: &Configuration2d) -> Result<String> {
    // Only what the preprocessed arrays depend on: the Residual Encoder presets share the default
    // plans' data (same data_identifier) although their patch, batch and network differ.
    let v = serde_json::json!({
        "data_identifier": config.data_identifier,
        "preprocessor_name": config.preprocessor_name,
        "spacing": config.spacing,
        "normalization_schemes": config.normalization_schemes,
        "use_mask_for_norm": config.use_mask_for_norm,
        "resampling_fn_data": config.resampling_fn_data,
        "resampling_fn_data_kwargs": config.resampling_fn_data_kwargs,
        "resampling_fn_seg": config.resampling_fn_seg,
        "resampling_fn_seg_kwargs": config.resampling_fn_seg_kwargs,
        "transpose_forward": plans.transpose_forward,
        "intensity": plans.foreground_intensity_properties_per_channel,
    });
    let bytes = serde_json::to_vec(&v).map_err(|e| Error::Invalid(format!("cannot hash the plans: {e}")))?;
    Ok(hash::sha256_bytes(&bytes))
}

/// Resume must not mix cases preprocessed under different plans: when the plans changed (or the
/// folder predates the marker) every case file is removed, as nnU-Net removes the folder on each run.
pub fn invalidate_if_plans_changed(data_dir: &Path, digest: &str) -> Result<()> {
    let marker = data_dir.join(".plans_sha256");
    let old = std::fs::read_to_string(&marker).ok();
    if old.as_deref().map(str::trim) == Some(digest) {
        return Ok(());
    }
    let rd = std::fs::read_dir(data_dir).map_err(|e| Error::io(data_dir, e))?;
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".npy") || name.ends_with(".json") {
            std::fs::remove_file(e.path()).map_err(|err| Error::io(e.path(), err))?;
        }
    }
    hash::write_atomic(&marker, digest.as_bytes())
}
