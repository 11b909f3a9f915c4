//! Experiment planning for the 2D configuration, nnU-Net v2's `ExperimentPlanner`:
//! target spacing (median, with the anisotropy rule), transpose, median shape, initial patch
//! (2048² clipped to the median shape), `get_pool_and_conv_props`, the VRAM loop, batch size (5%
//! cap, minimum 2), normalization per channel name and `use_mask_for_norm`.
//! Source: `nnunetv2/experiment_planning/experiment_planners/default_experiment_planner.py`,
//! `network_topology.py`, dynamic-network-architectures `compute_conv_feature_map_size`.
use crate::dataset_json::DatasetJson;
use crate::fingerprint::Fingerprint;
use crate::plans::{ArchKwargs, Architecture, Configuration2d, Normalization, Plans, ResamplingKwargs};
use crate::resample::compute_new_shape;
use crate::stats::{percentile, round_half_even};
use crate::{Error, Result};
use serde_json::json;
use std::collections::BTreeMap;

/// `ExperimentPlanner.__init__` constants (`default_experiment_planner.py`).
pub const BASE_NUM_FEATURES: usize = 32;
pub const MAX_FEATURES_2D: usize = 512;
pub const FEATUREMAP_MIN_EDGE_LENGTH: usize = 4;
pub const REFERENCE_VAL_2D: f64 = 85_000_000.0;
pub const REFERENCE_VAL_CORRESP_GB: f64 = 8.0;
pub const REFERENCE_BS_2D: f64 = 12.0;
pub const DEFAULT_GPU_MEMORY_GB: f64 = 8.0;
pub const MIN_BATCH_SIZE: usize = 2;
pub const MAX_DATASET_COVERED: f64 = 0.05;
pub use crate::resample::ANISO_THRESHOLD;

fn median_axis0(rows: &[Vec<f64>]) -> Vec<f64> {
    let dims = rows[0].len();
    (0..dims).map(|d| percentile(&rows.iter().map(|r| r[d]).collect::<Vec<_>>(), 50.0)).collect()
}

fn argmax(v: &[f64]) -> usize {
    // np.argmax: first maximum
    let mut best = 0;
    for i in 1..v.len() {
        if v[i] > v[best] {
            best = i;
        }
    }
    best
}

/// `ExperimentPlanner.determine_fullres_target_spacing`, in the original (untransposed) axis order.
pub fn fullres_target_spacing(fp: &Fingerprint) -> Vec<f64> {
    let spacings = &fp.spacings;
    let sizes: Vec<Vec<f64>> = fp.shapes_after_crop.iter().map(|s| s.iter().map(|&x| x as f64).collect()).collect();
    let mut target = median_axis0(spacings);
    let target_size = median_axis0(&sizes);
    let worst = argmax(&target);
    let other: Vec<usize> = (0..target.len()).filter(|&i| i != worst).collect();
    let max_other_sp = other.iter().map(|&i| target[i]).fold(f64::MIN, f64::max);
    let min_other_size = other.iter().map(|&i| target_size[i]).fold(f64::MAX, f64::min);
    let aniso_spacing = target[worst] > ANISO_THRESHOLD * max_other_sp;
    let aniso_voxels = target_size[worst] * ANISO_THRESHOLD < min_other_size;
    if aniso_spacing && aniso_voxels {
        let col: Vec<f64> = spacings.iter().map(|s| s[worst]).collect();
        let mut t = percentile(&col, 10.0);
        if t < max_other_sp {
            t = max_other_sp.max(t) + 1e-5;
        }
        target[worst] = t;
    }
    target
}

/// `determine_transpose`: the largest-spacing axis first, the others in order.
pub fn transpose_from_spacing(target_spacing: &[f64]) -> (Vec<usize>, Vec<usize>) {
    let m = argmax(target_spacing);
    let mut fwd = vec![m];
    fwd.extend((0..3).filter(|&i| i != m));
    let bwd = (0..3).map(|i| fwd.iter().position(|&f| f == i).unwrap()).collect();
    (fwd, bwd)
}

/// Output of `get_pool_and_conv_props`.
#[derive(Debug, Clone, PartialEq)]
pub struct Topology {
    pub num_pool_per_axis: Vec<usize>,
    pub pool_op_kernel_sizes: Vec<Vec<usize>>,
    pub conv_kernel_sizes: Vec<Vec<usize>>,
    pub patch_size: Vec<usize>,
    pub must_be_divisible_by: Vec<usize>,
}

/// `network_topology.py::get_pool_and_conv_props`, max_numpool unlimited.
pub fn get_pool_and_conv_props(spacing: &[f64], patch_size: &[usize], min_fm: usize) -> Topology {
    let dim = spacing.len();
    let mut cur_sp = spacing.to_vec();
    let mut cur_size: Vec<f64> = patch_size.iter().map(|&x| x as f64).collect();
    let mut pools = vec![vec![1usize; dim]];
    let mut convs = Vec::new();
    let mut npool = vec![0usize; dim];
    let mut kernel = vec![1usize; dim];
    loop {
        let valid: Vec<usize> = (0..dim).filter(|&i| cur_size[i] >= (2 * min_fm) as f64).collect();
        if valid.is_empty() {
            break;
        }
        let min_sp = valid.iter().map(|&i| cur_sp[i]).fold(f64::MAX, f64::min);
        let valid: Vec<usize> = valid.into_iter().filter(|&i| cur_sp[i] / min_sp < 2.0).collect();
        if valid.len() == 1 && cur_size[valid[0]] < (3 * min_fm) as f64 {
            break;
        }
        if valid.is_empty() {
            break;
        }
        let gmin = cur_sp.iter().cloned().fold(f64::MAX, f64::min);
        for d in 0..dim {
            if kernel[d] != 3 && cur_sp[d] / gmin < 2.0 {
                kernel[d] = 3;
            }
        }
        let mut pk = vec![1usize; dim];
        for &v in &valid {
            pk[v] = 2;
            npool[v] += 1;
            cur_sp[v] *= 2.0;
            cur_size[v] = (cur_size[v] / 2.0).ceil();
        }
        pools.push(pk);
        convs.push(kernel.clone());
    }
    let must: Vec<usize> = npool.iter().map(|&n| 1usize << n).collect();
    let patch = pad_shape(patch_size, &must);
    convs.push(vec![3; dim]);
    Topology {
        num_pool_per_axis: npool,
        pool_op_kernel_sizes: pools,
        conv_kernel_sizes: convs,
        patch_size: patch,
        must_be_divisible_by: must,
    }
}

/// `pad_shape`: round up to a multiple (unchanged when already divisible).
pub fn pad_shape(shape: &[usize], must: &[usize]) -> Vec<usize> {
    shape.iter().zip(must).map(|(&s, &m)| if s % m == 0 { s } else { s + m - s % m }).collect()
}

/// `min(max_features, 32 * 2**i)` per stage.
pub fn features_per_stage(n_stages: usize) -> Vec<usize> {
    (0..n_stages).map(|i| (BASE_NUM_FEATURES << i.min(20)).min(MAX_FEATURES_2D)).collect()
}

/// PlainConvUNet's `compute_conv_feature_map_size(patch)` without deep supervision:
/// the sum of the output element counts of every conv, transposed conv and the final seg head.
pub fn conv_feature_map_size(
    patch: &[usize],
    strides: &[Vec<usize>],
    features: &[usize],
    n_conv_enc: usize,
    n_conv_dec: usize,
    num_classes: usize,
) -> u64 {
    let prod = |s: &[usize]| s.iter().map(|&x| x as u64).product::<u64>();
    let mut total = 0u64;
    // encoder: each stage's convs output at the size after that stage's stride
    let mut size = patch.to_vec();
    for (s, st) in strides.iter().enumerate() {
        size = size.iter().zip(st).map(|(a, b)| a / b).collect();
        total += n_conv_enc as u64 * features[s] as u64 * prod(&size);
    }
    total + decoder_feature_map_size(patch, strides, features, n_conv_dec, num_classes, false)
}

/// `UNetDecoder.compute_conv_feature_map_size(patch)`: per decoder stage its conv blocks and the
/// transposed conv at the skip's size, and a segmentation head (at every stage with deep supervision,
/// else only the last).
pub fn decoder_feature_map_size(
    patch: &[usize],
    strides: &[Vec<usize>],
    features: &[usize],
    n_conv_dec: usize,
    num_classes: usize,
    deep_supervision: bool,
) -> u64 {
    let prod = |s: &[usize]| s.iter().map(|&x| x as u64).product::<u64>();
    let mut skips = Vec::new();
    let mut size = patch.to_vec();
    for st in &strides[..strides.len() - 1] {
        size = size.iter().zip(st).map(|(a, b)| a / b).collect();
        skips.push(size.clone());
    }
    let n_dec = strides.len() - 1;
    let mut total = 0u64;
    for s in 0..n_dec {
        let sk = &skips[skips.len() - 1 - s];
        let f = features[features.len() - 2 - s] as u64;
        total += n_conv_dec as u64 * f * prod(sk); // conv blocks
        total += f * prod(sk); // transposed conv
        if deep_supervision || s == n_dec - 1 {
            total += num_classes as u64 * prod(sk); // seg head
        }
    }
    total
}

/// The initial 2D patch: a 2048² area in the aspect ratio of the spacing, clipped to the median shape.
pub fn initial_patch_2d(spacing: &[f64], median_shape: &[f64]) -> Vec<usize> {
    let tmp: Vec<f64> = spacing.iter().map(|s| 1.0 / s).collect();
    let prod_tmp: f64 = tmp.iter().product();
    let f = (2048.0f64 * 2048.0 / prod_tmp).sqrt();
    tmp.iter().zip(median_shape).map(|(&t, &m)| round_half_even(t * f).min(m) as usize).collect()
}

/// One step of the planner's VRAM loop: the patch with its axis of largest patch/median ratio
/// (`np.argsort(...)[-1]`: the last of equal maxima) reduced by the divisor it would have after
/// the reduction.
pub fn shrink_patch(spacing: &[f64], median_shape: &[f64], topo: &Topology) -> Vec<usize> {
    let ratios: Vec<f64> = topo.patch_size.iter().zip(median_shape).map(|(&p, &m)| p as f64 / m).collect();
    let mut axis = 0;
    for i in 0..ratios.len() {
        if ratios[i] >= ratios[axis] {
            axis = i;
        }
    }
    let mut patch = topo.patch_size.clone();
    let mut tmp_patch = patch.clone();
    tmp_patch[axis] -= topo.must_be_divisible_by[axis];
    let t2 = get_pool_and_conv_props(spacing, &tmp_patch, FEATUREMAP_MIN_EDGE_LENGTH);
    patch[axis] -= t2.must_be_divisible_by[axis];
    patch
}

/// What every planner derives from the fingerprint before planning a configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanInputs {
    /// Target spacing and median shape after resampling, transposed, (Z, X, Y).
    pub target_spacing: Vec<f64>,
    pub median_shape: Vec<f64>,
    pub transpose_forward: Vec<usize>,
    pub transpose_backward: Vec<usize>,
    /// `approximate_n_voxels_dataset`: median voxels x training cases.
    pub approx_n_voxels: f64,
}

/// Target spacing, transpose, median shape after resampling and the dataset's voxel count.
pub fn plan_inputs(fp: &Fingerprint, dataset_json: &DatasetJson) -> Result<PlanInputs> {
    if fp.spacings.is_empty() || fp.spacings.len() != fp.shapes_after_crop.len() {
        return Err(Error::Invalid(format!(
            "the dataset fingerprint holds {} spacings and {} shapes; re-run `nnunet plan` to recompute it",
            fp.spacings.len(),
            fp.shapes_after_crop.len()
        )));
    }
    let target = fullres_target_spacing(fp);
    let (fwd, bwd) = transpose_from_spacing(&target);
    let new_shapes: Vec<Vec<f64>> = fp
        .spacings
        .iter()
        .zip(&fp.shapes_after_crop)
        .map(|(sp, sh)| compute_new_shape(sh, sp, &target).into_iter().map(|x| x as f64).collect())
        .collect();
    let med = median_axis0(&new_shapes);
    let median_shape: Vec<f64> = fwd.iter().map(|&i| med[i]).collect();
    Ok(PlanInputs {
        target_spacing: fwd.iter().map(|&i| target[i]).collect(),
        approx_n_voxels: median_shape.iter().product::<f64>() * dataset_json.num_training as f64,
        median_shape,
        transpose_forward: fwd,
        transpose_backward: bwd,
    })
}

/// `ExperimentPlanner.get_plans_for_configuration` for 2D: returns (patch, topology, batch size, estimate).
pub fn plan_patch_and_batch(
    spacing: &[f64],
    median_shape: &[f64],
    approx_n_voxels_dataset: f64,
    num_classes: usize,
    gpu_memory_target_gb: f64,
) -> (Topology, usize) {
    let mut topo = get_pool_and_conv_props(spacing, &initial_patch_2d(spacing, median_shape), FEATUREMAP_MIN_EDGE_LENGTH);
    let estimate = |t: &Topology| {
        let n = t.pool_op_kernel_sizes.len();
        conv_feature_map_size(&t.patch_size, &t.pool_op_kernel_sizes, &features_per_stage(n), 2, 2, num_classes) as f64
    };
    let reference = REFERENCE_VAL_2D * (gpu_memory_target_gb / REFERENCE_VAL_CORRESP_GB);
    let mut est = estimate(&topo);
    while est / REFERENCE_BS_2D * 2.0 > reference {
        topo = get_pool_and_conv_props(spacing, &shrink_patch(spacing, median_shape, &topo), FEATUREMAP_MIN_EDGE_LENGTH);
        est = estimate(&topo);
    }
    let bs = round_half_even(reference / est * REFERENCE_BS_2D);
    let prod_patch: f64 = topo.patch_size.iter().map(|&x| x as f64).product();
    let bs_5 = round_half_even(approx_n_voxels_dataset * MAX_DATASET_COVERED / prod_patch);
    let bs = (bs.min(bs_5) as i64).max(MIN_BATCH_SIZE as i64) as usize;
    (topo, bs)
}

/// Normalization schemes and `use_mask_for_norm` per channel
/// (`ExperimentPlanner.determine_normalization_scheme_and_whether_mask_is_used_for_norm`).
pub fn normalization_and_mask(dataset_json: &DatasetJson, median_relative_size_after_cropping: f64) -> (Vec<Normalization>, Vec<bool>) {
    let schemes: Vec<Normalization> = dataset_json.channel_names_ordered().iter().map(|n| Normalization::for_channel_name(n)).collect();
    let mask = schemes
        .iter()
        .map(|s| median_relative_size_after_cropping < 0.75 && s.leaves_pixels_outside_mask_at_zero_if_use_mask_for_norm_is_true())
        .collect();
    (schemes, mask)
}

/// nnU-Net's reader class name for a file ending (what `image_reader_writer` records).
pub fn reader_writer_name(file_ending: &str) -> &'static str {
    match file_ending.to_ascii_lowercase().as_str() {
        ".png" | ".bmp" | ".tif" | ".tiff" => "NaturalImage2DIO",
        ".nii.gz" | ".nii" | ".nrrd" | ".mha" | ".gipl" => "SimpleITKIO",
        _ => "NaturalImage2DIO",
    }
}

/// The 2D plan (`ExperimentPlanner.plan_experiment`, 2d only): `nnUNetPlans.json` with the `2d` configuration only.
pub fn plan_2d(fp: &Fingerprint, dataset_json: &DatasetJson, dataset_name: &str, gpu_memory_target_gb: f64) -> Result<Plans> {
    if fp.spacings.is_empty() || fp.spacings.len() != fp.shapes_after_crop.len() {
        return Err(Error::Invalid(format!(
            "dataset fingerprint of {dataset_name} holds {} spacings and {} shapes; re-run `nnunet plan` to recompute it",
            fp.spacings.len(),
            fp.shapes_after_crop.len()
        )));
    }
    if gpu_memory_target_gb.is_nan() || gpu_memory_target_gb <= 0.0 {
        return Err(Error::Invalid(format!("--gpu-memory-target must be > 0 GB, got {gpu_memory_target_gb}")));
    }
    let PlanInputs {
        target_spacing: target_t,
        median_shape: med_t,
        transpose_forward: fwd,
        transpose_backward: bwd,
        approx_n_voxels: approx_n_vox,
    } = plan_inputs(fp, dataset_json)?;
    let num_classes = dataset_json.labels.len();
    let spacing_2d = target_t[1..].to_vec();
    let median_2d = med_t[1..].to_vec();
    let (topo, bs) = plan_patch_and_batch(&spacing_2d, &median_2d, approx_n_vox, num_classes, gpu_memory_target_gb);
    let (schemes, use_mask) = normalization_and_mask(dataset_json, fp.median_relative_size_after_cropping);
    let n_stages = topo.pool_op_kernel_sizes.len();
    let cfg = Configuration2d {
        data_identifier: crate::paths::data_identifier(),
        preprocessor_name: "DefaultPreprocessor".into(),
        batch_size: bs,
        patch_size: topo.patch_size.clone(),
        median_image_size_in_voxels: median_2d,
        spacing: spacing_2d,
        normalization_schemes: schemes,
        use_mask_for_norm: use_mask,
        resampling_fn_data: "resample_data_or_seg_to_shape".into(),
        resampling_fn_seg: "resample_data_or_seg_to_shape".into(),
        resampling_fn_data_kwargs: ResamplingKwargs { is_seg: false, order: 3, order_z: Some(0), force_separate_z: None },
        resampling_fn_seg_kwargs: ResamplingKwargs { is_seg: true, order: 1, order_z: Some(0), force_separate_z: None },
        resampling_fn_probabilities: "resample_data_or_seg_to_shape".into(),
        resampling_fn_probabilities_kwargs: ResamplingKwargs { is_seg: false, order: 1, order_z: Some(0), force_separate_z: None },
        architecture: Architecture {
            network_class_name: "dynamic_network_architectures.architectures.unet.PlainConvUNet".into(),
            arch_kwargs: ArchKwargs {
                n_stages,
                features_per_stage: features_per_stage(n_stages),
                conv_op: "torch.nn.modules.conv.Conv2d".into(),
                kernel_sizes: topo.conv_kernel_sizes.clone(),
                strides: topo.pool_op_kernel_sizes.clone(),
                n_conv_per_stage: vec![2; n_stages],
                n_blocks_per_stage: vec![],
                n_conv_per_stage_decoder: vec![2; n_stages - 1],
                conv_bias: true,
                norm_op: "torch.nn.modules.instancenorm.InstanceNorm2d".into(),
                norm_op_kwargs: json!({"eps": 1e-5, "affine": true}),
                dropout_op: None,
                dropout_op_kwargs: None,
                nonlin: "torch.nn.LeakyReLU".into(),
                nonlin_kwargs: json!({"inplace": true}),
            },
            kw_requires_import: vec!["conv_op".into(), "norm_op".into(), "dropout_op".into(), "nonlin".into()],
        },
        batch_dice: true,
        extra: BTreeMap::new(),
    };
    let orig_sp = median_axis0(&fp.spacings);
    let orig_sh = median_axis0(&fp.shapes_after_crop.iter().map(|s| s.iter().map(|&x| x as f64).collect()).collect::<Vec<_>>());
    let mut configurations = BTreeMap::new();
    configurations
        .insert("2d".to_string(), serde_json::to_value(&cfg).map_err(|e| Error::Invalid(format!("cannot serialize the 2d plan: {e}")))?);
    Ok(Plans {
        dataset_name: dataset_name.to_string(),
        plans_name: crate::paths::PLANS_NAME.into(),
        original_median_spacing_after_transp: fwd.iter().map(|&i| orig_sp[i]).collect(),
        original_median_shape_after_transp: fwd.iter().map(|&i| round_half_even(orig_sh[i])).collect(),
        image_reader_writer: reader_writer_name(&dataset_json.file_ending).into(),
        transpose_forward: fwd,
        transpose_backward: bwd,
        configurations,
        experiment_planner_used: "ExperimentPlanner".into(),
        label_manager: "LabelManager".into(),
        foreground_intensity_properties_per_channel: fp.foreground_intensity_properties_per_channel.clone(),
        extra: BTreeMap::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan_row(h: usize, w: usize, n: usize) -> (Vec<usize>, usize, usize) {
        let med = [h as f64, w as f64];
        let (t, bs) = plan_patch_and_batch(&[1.0, 1.0], &med, (h * w * n) as f64, 2, 8.0);
        (t.patch_size.clone(), bs, t.pool_op_kernel_sizes.len())
    }

    /// The 2d plans nnU-Net v2's `ExperimentPlanner` writes for these datasets (v2 defaults, 8 GB), row by row.
    #[test]
    fn spec_table_rows() {
        // (median H, median W, cases, patch, batch size, stages)
        type Row = (usize, usize, usize, [usize; 2], usize, usize);
        let rows: &[Row] = &[
            (512, 512, 1000, [512, 512], 12, 8),
            (512, 512, 100, [512, 512], 5, 8),
            (384, 384, 1000, [384, 384], 22, 7),
            (320, 480, 1000, [320, 512], 20, 7),
            (256, 256, 1000, [256, 256], 49, 7),
            (128, 128, 1000, [128, 128], 50, 6),
            (1024, 1024, 1000, [1024, 1024], 3, 9),
            (1500, 1500, 24, [1280, 1024], 2, 9),
            (584, 565, 20, [640, 640], 2, 8),
        ];
        for &(h, w, n, patch, bs, stages) in rows {
            let (p, b, s) = plan_row(h, w, n);
            assert_eq!((p.as_slice(), b, s), (&patch[..], bs, stages), "median {h}x{w}, n {n}");
        }
    }

    #[test]
    fn issue_2251_rgb_plan() {
        // MIC-DKFZ/nnUNet issue #2251: median 2848x4288 -> patch 1024x1536, bs 2, 9 stages.
        let (t, bs) = plan_patch_and_batch(&[1.0, 1.0], &[2848.0, 4288.0], 2848.0 * 4288.0 * 100.0, 2, 8.0);
        assert_eq!((t.patch_size, bs, t.pool_op_kernel_sizes.len()), (vec![1024, 1536], 2, 9));
    }

    #[test]
    fn topology_of_512() {
        let t = get_pool_and_conv_props(&[1.0, 1.0], &[512, 512], 4);
        assert_eq!(t.pool_op_kernel_sizes.len(), 8);
        assert_eq!(t.conv_kernel_sizes, vec![vec![3, 3]; 8]);
        assert_eq!(features_per_stage(8), vec![32, 64, 128, 256, 512, 512, 512, 512]);
        // anisotropic spacing: the coarse axis is not pooled until the other catches up
        let t = get_pool_and_conv_props(&[3.0, 1.0], &[64, 256], 4);
        assert_eq!(t.pool_op_kernel_sizes[1], vec![1, 2]);
        assert_eq!(t.conv_kernel_sizes[0], vec![1, 3]);
    }
}
