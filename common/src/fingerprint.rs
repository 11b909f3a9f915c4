//! Dataset fingerprint, nnU-Net v2's `DatasetFingerprintExtractor`
//! (`nnunetv2/experiment_planning/dataset_fingerprint/fingerprint_extractor.py`): per case, read,
//! crop to nonzero, record spacing, cropped shape and relative size, and draw
//! `int(1e8 // n_cases)` foreground intensities per channel with replacement using
//! `RandomState(1234)` (reproduced exactly: [`crate::np_random::NumpyRandomState`]). Statistics
//! over the concatenated samples: mean, median, population std, min, max, 0.5/99.5 percentiles
//! (numpy linear interpolation).
//!
//! The samples are never materialized: each drawn index is counted per value, so a dataset-wide
//! budget of 1e8 samples per channel costs a value histogram, not 400 MB per channel.
use crate::dataset_json::DatasetJson;
use crate::imageio::{self, ImageData};
use crate::np_random::NumpyRandomState;
use crate::parallel::run_parallel;
use crate::plans::IntensityProperties;
pub use crate::raw::{raw_training_cases, RawCase};
use crate::stats;
use crate::{error, Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// `dataset_fingerprint.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Fingerprint {
    /// Spacing per case, numpy (Z, X, Y) order, before any transpose.
    pub spacings: Vec<Vec<f64>>,
    /// Spatial shape per case after cropping to nonzero.
    pub shapes_after_crop: Vec<Vec<usize>>,
    pub median_relative_size_after_cropping: f64,
    pub foreground_intensity_properties_per_channel: BTreeMap<String, IntensityProperties>,
}

impl Fingerprint {
    pub fn load(path: &Path) -> Result<Self> {
        error::read_json(path)
    }
    pub fn save(&self, path: &Path) -> Result<()> {
        error::write_json(path, self)
    }
}

/// nnU-Net's total foreground sample budget (`10e7` in the source).
pub const FOREGROUND_SAMPLE_BUDGET: f64 = 1e8;

/// Per-case fingerprint contribution.
#[derive(Debug, Clone)]
pub struct CaseFingerprint {
    pub spacing: Vec<f64>,
    pub shape_after_crop: Vec<usize>,
    pub relative_size_after_cropping: f64,
    /// Per channel: drawn value -> how many times it was drawn.
    pub sample_counts: Vec<HashMap<u32, u64>>,
}

/// `DatasetFingerprintExtractor.analyze_case` on arrays: crop, then draw `num_samples` foreground values per channel with
/// replacement (`RandomState(1234).choice`).
pub fn analyze_case(image: &ImageData, seg: &ImageData, num_samples: usize) -> CaseFingerprint {
    let crop = crate::crop::crop_to_nonzero(image, Some(seg));
    let [c, z, x, y] = crop.data_shape;
    let n = z * x * y;
    let mut rs = NumpyRandomState::new(1234);
    let fg: Vec<usize> = (0..n).filter(|&i| crop.seg[i] > 0).collect();
    let mut sample_counts = Vec::with_capacity(c);
    for ch in 0..c {
        let mut counts: HashMap<u32, u64> = HashMap::new();
        if !fg.is_empty() {
            let data = &crop.data[ch * n..(ch + 1) * n];
            // count per foreground pixel first (cheap), then per value
            let mut per_px = vec![0u32; fg.len()];
            for i in rs.randint_fill_iter(fg.len(), num_samples) {
                per_px[i] += 1;
            }
            for (k, &cnt) in per_px.iter().enumerate() {
                if cnt > 0 {
                    *counts.entry(data[fg[k]].to_bits()).or_default() += cnt as u64;
                }
            }
        }
        sample_counts.push(counts);
    }
    let before = image.n_voxels() as f64;
    CaseFingerprint {
        spacing: image.geometry.spacing.to_vec(),
        shape_after_crop: vec![z, x, y],
        relative_size_after_cropping: n as f64 / before,
        sample_counts,
    }
}

/// Statistics of a multiset of f32 values given as value -> count (`DatasetFingerprintExtractor.run`:
/// mean, median, std, min, max, 0.5/99.5 percentiles of the concatenated samples).
pub fn intensity_properties(counts: &HashMap<u32, u64>) -> IntensityProperties {
    let mut vals: Vec<(f32, u64)> = counts.iter().map(|(&b, &c)| (f32::from_bits(b), c)).collect();
    vals.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap());
    let total: u64 = vals.iter().map(|v| v.1).sum();
    if total == 0 {
        return IntensityProperties {
            max: f64::NAN,
            mean: f64::NAN,
            median: f64::NAN,
            min: f64::NAN,
            percentile_00_5: f64::NAN,
            percentile_99_5: f64::NAN,
            std: f64::NAN,
        };
    }
    let mean = vals.iter().map(|&(v, c)| v as f64 * c as f64).sum::<f64>() / total as f64;
    let var = vals.iter().map(|&(v, c)| (v as f64 - mean).powi(2) * c as f64).sum::<f64>() / total as f64;
    // k-th smallest sample via cumulative counts
    let kth = |k: u64| -> f64 {
        let mut acc = 0u64;
        for &(v, c) in &vals {
            acc += c;
            if k < acc {
                return v as f64;
            }
        }
        vals.last().unwrap().0 as f64
    };
    let pct = |q: f64| stats::percentile_by_rank(total, q, kth);
    // numpy computes these on float32 arrays; round like it does so the JSON reads the same
    let f = |x: f64| x as f32 as f64;
    IntensityProperties {
        max: vals.last().unwrap().0 as f64,
        mean: f(mean),
        median: f(pct(50.0)),
        min: vals[0].0 as f64,
        percentile_00_5: f(pct(0.5)),
        percentile_99_5: f(pct(99.5)),
        std: f(var.sqrt()),
    }
}

/// Folds per-case results (in case order) into the fingerprint.
pub fn combine(cases: &[CaseFingerprint], num_channels: usize) -> Fingerprint {
    let mut props = BTreeMap::new();
    for ch in 0..num_channels {
        let mut all: HashMap<u32, u64> = HashMap::new();
        for c in cases {
            if let Some(m) = c.sample_counts.get(ch) {
                for (&k, &v) in m {
                    *all.entry(k).or_default() += v;
                }
            }
        }
        props.insert(ch.to_string(), intensity_properties(&all));
    }
    let rel: Vec<f64> = cases.iter().map(|c| c.relative_size_after_cropping).collect();
    Fingerprint {
        spacings: cases.iter().map(|c| c.spacing.clone()).collect(),
        shapes_after_crop: cases.iter().map(|c| c.shape_after_crop.clone()).collect(),
        median_relative_size_after_cropping: stats::percentile(&rel, 50.0),
        foreground_intensity_properties_per_channel: props,
    }
}

/// Extracts the fingerprint of a raw dataset with `n_threads` worker threads (one case in flight
/// per thread).
pub fn extract(raw_dataset_dir: &Path, n_threads: usize, show_progress: bool) -> Result<Fingerprint> {
    let dj = DatasetJson::load(&raw_dataset_dir.join("dataset.json"))?;
    let cases = raw_training_cases(raw_dataset_dir, &dj)?;
    let num_samples = (FOREGROUND_SAMPLE_BUDGET / cases.len() as f64).floor() as usize;
    let results = run_parallel(&cases, n_threads, show_progress, "fingerprint", |case| {
        let img = imageio::read_case_images(&case.images)?;
        let seg = imageio::read_seg(&case.label)?;
        if img.shape[1..] != seg.shape[1..] {
            return Err(Error::format(
                &case.label,
                format!("segmentation shape {:?} differs from image shape {:?} of case {}", &seg.shape[1..], &img.shape[1..], case.id),
            ));
        }
        Ok(analyze_case(&img, &seg, num_samples))
    })?;
    let nch = dj.num_channels();
    if let Some(bad) = results.iter().zip(&cases).find(|(r, _)| r.sample_counts.len() != nch) {
        return Err(Error::Invalid(format!(
            "case {} has {} channel(s) but dataset.json declares {nch}",
            bad.1.id,
            bad.0.sample_counts.len()
        )));
    }
    Ok(combine(&results, nch))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::imageio::Geometry;

    #[test]
    fn stats_match_numpy_on_small_multiset() {
        // values 1,2,2,3,10 -> numpy: mean 3.6, median 2, std 3.2619..., p0.5 1.02, p99.5 9.86
        let mut m = HashMap::new();
        for (v, c) in [(1.0f32, 1u64), (2.0, 2), (3.0, 1), (10.0, 1)] {
            m.insert(v.to_bits(), c);
        }
        let p = intensity_properties(&m);
        assert_eq!((p.min, p.max, p.median), (1.0, 10.0, 2.0));
        assert!((p.mean - 3.6).abs() < 1e-6);
        assert!((p.std - 3.2619012860600183).abs() < 1e-5);
        assert!((p.percentile_00_5 - 1.02).abs() < 1e-6 && (p.percentile_99_5 - 9.86).abs() < 1e-5);
    }

    #[test]
    fn case_without_foreground_contributes_nothing() {
        let img = ImageData {
            shape: [1, 1, 2, 2],
            data: vec![1.0, 2.0, 3.0, 4.0],
            geometry: Geometry { spacing: [999.0, 1.0, 1.0], ..Default::default() },
        };
        let seg = ImageData { shape: [1, 1, 2, 2], data: vec![0.0; 4], geometry: img.geometry.clone() };
        let c = analyze_case(&img, &seg, 100);
        assert!(c.sample_counts[0].is_empty());
        assert_eq!(c.shape_after_crop, vec![1, 2, 2]);
        let seg1 = ImageData { data: vec![0.0, 1.0, 1.0, 0.0], ..seg };
        let c = analyze_case(&img, &seg1, 100);
        assert_eq!(c.sample_counts[0].values().sum::<u64>(), 100);
        assert!(c.sample_counts[0].keys().all(|&k| [2.0f32, 3.0].contains(&f32::from_bits(k))));
    }
}
