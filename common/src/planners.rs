//! The experiment planners a user can choose (`--planner`): nnU-Net v2's default `ExperimentPlanner`
//! (PlainConvUNet, `nnUNetPlans`) and the Residual Encoder presets `nnUNetPlannerResEnc{M,L,XL}`
//! (`ResidualEncoderUNet`, `nnUNetResEncUNet{M,L,XL}Plans`), which nnU-Net's documentation now
//! recommends. Source: `nnunetv2/experiment_planning/experiment_planners/residual_unets/
//! residual_encoder_unet_planners.py::ResEncUNetPlanner.get_plans_for_configuration` and the
//! `compute_conv_feature_map_size` methods of dynamic-network-architectures' `ResidualEncoder`,
//! `StackedResidualBlocks`, `BasicBlockD` and `UNetDecoder`.
//!
//! The ResEnc planners share every step with the default planner (target spacing, transpose,
//! median shape, initial patch, topology, normalization) except three: the network estimate
//! (residual blocks `1, 3, 4, 6, 6, ...`, one conv per decoder stage), the VRAM loop condition
//! (`estimate > reference`, no batch-size factor) and the batch-size cap (the whole dataset instead
//! of 5 %). They keep `data_identifier = nnUNetPlans_2d`, so the default plans' preprocessed data is
//! reused as is.
use crate::dataset_json::DatasetJson;
use crate::fingerprint::Fingerprint;
use crate::paths::DatasetDirs;
use crate::planning::{self, Topology, FEATUREMAP_MIN_EDGE_LENGTH, MIN_BATCH_SIZE, REFERENCE_BS_2D};
use crate::plans::{Configuration2d, Plans};
use crate::{Error, Result};
use std::fmt;
use std::str::FromStr;

/// `ResidualEncoderUNet`'s class path in plans files.
pub const RESENC_CLASS: &str = "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet";
/// `PlainConvUNet`'s class path in plans files.
pub const PLAIN_CLASS: &str = "dynamic_network_architectures.architectures.unet.PlainConvUNet";
/// `ResEncUNetPlanner.UNet_blocks_per_stage_encoder`.
pub const RESENC_BLOCKS_PER_STAGE: [usize; 13] = [1, 3, 4, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6];

/// A planner preset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Planner {
    /// `ExperimentPlanner` (`nnUNetPlans`, PlainConvUNet).
    Default,
    /// `nnUNetPlannerResEncM`: ~9-11 GB of VRAM.
    ResEncM,
    /// `nnUNetPlannerResEncL`: ~24 GB.
    ResEncL,
    /// `nnUNetPlannerResEncXL`: ~40 GB.
    ResEncXL,
}

impl Planner {
    pub const ALL: [Planner; 4] = [Planner::Default, Planner::ResEncM, Planner::ResEncL, Planner::ResEncXL];

    /// The plans name (`<plans_name>.json` in the preprocessed folder, `-p` in nnU-Net).
    pub fn plans_name(self) -> &'static str {
        match self {
            Planner::Default => crate::paths::PLANS_NAME,
            Planner::ResEncM => "nnUNetResEncUNetMPlans",
            Planner::ResEncL => "nnUNetResEncUNetLPlans",
            Planner::ResEncXL => "nnUNetResEncUNetXLPlans",
        }
    }

    /// nnU-Net's class name of the planner (`experiment_planner_used`, `-pl` in nnU-Net).
    pub fn class_name(self) -> &'static str {
        match self {
            Planner::Default => "ExperimentPlanner",
            Planner::ResEncM => "nnUNetPlannerResEncM",
            Planner::ResEncL => "nnUNetPlannerResEncL",
            Planner::ResEncXL => "nnUNetPlannerResEncXL",
        }
    }

    /// The preset's GPU memory target in GB (`gpu_memory_target_in_gb` default).
    pub fn default_gpu_memory_gb(self) -> f64 {
        match self {
            Planner::Default | Planner::ResEncM => 8.0,
            Planner::ResEncL => 24.0,
            Planner::ResEncXL => 40.0,
        }
    }

    /// (`UNet_reference_val_2d`, `UNet_reference_val_corresp_GB`) of a ResEnc preset.
    pub(crate) fn resenc_reference(self) -> Option<(f64, f64)> {
        match self {
            Planner::Default => None,
            Planner::ResEncM => Some((135_000_000.0, 8.0)),
            Planner::ResEncL => Some((380_000_000.0, 24.0)),
            Planner::ResEncXL => Some((560_000_000.0, 40.0)),
        }
    }

    /// The planner whose plans file is named `plans_name`, if it is one of ours.
    pub fn from_plans_name(plans_name: &str) -> Option<Planner> {
        Planner::ALL.into_iter().find(|p| p.plans_name() == plans_name)
    }
}

impl fmt::Display for Planner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Planner::Default => "default",
            Planner::ResEncM => "ResEncM",
            Planner::ResEncL => "ResEncL",
            Planner::ResEncXL => "ResEncXL",
        })
    }
}

impl FromStr for Planner {
    type Err = Error;
    /// Accepts our short names (`default`, `ResEncM`, ...) and nnU-Net's class names
    /// (`ExperimentPlanner`, `nnUNetPlannerResEncM`, ...), case-insensitively.
    fn from_str(s: &str) -> Result<Planner> {
        let t = s.trim().to_ascii_lowercase();
        let t = t.strip_prefix("nnunetplanner").unwrap_or(&t);
        match t {
            "default" | "experimentplanner" | "plain" => Ok(Planner::Default),
            "resencm" | "m" => Ok(Planner::ResEncM),
            "resencl" | "l" => Ok(Planner::ResEncL),
            "resencxl" | "xl" => Ok(Planner::ResEncXL),
            _ => Err(Error::Invalid(format!(
                "unknown planner {s:?}: choose one of default (nnU-Net's ExperimentPlanner), ResEncM, ResEncL, ResEncXL \
                 (nnUNetPlannerResEnc{{M,L,XL}})"
            ))),
        }
    }
}

/// The 2d plans of `planner`. The default planner is [`planning::plan_2d`]; a ResEnc preset starts
/// from it (every shared step) and replaces the network, patch and batch size.
pub fn plan_2d_with(planner: Planner, fp: &Fingerprint, dataset_json: &DatasetJson, dataset_name: &str) -> Result<Plans> {
    plan_2d_with_memory(planner, fp, dataset_json, dataset_name, planner.default_gpu_memory_gb())
}

/// [`plan_2d_with`] with a non-default GPU memory target (nnU-Net's `-gpu_memory_target`).
pub fn plan_2d_with_memory(planner: Planner, fp: &Fingerprint, dj: &DatasetJson, dataset_name: &str, gpu_memory_gb: f64) -> Result<Plans> {
    let mut plans = planning::plan_2d(fp, dj, dataset_name, gpu_memory_gb)?;
    let Some((ref_val, corresp_gb)) = planner.resenc_reference() else { return Ok(plans) };
    let mut cfg: Configuration2d = plans.config_2d()?;
    let inputs = planning::plan_inputs(fp, dj)?;
    let reference = ref_val * (gpu_memory_gb / corresp_gb);
    let (topo, bs) =
        resenc_patch_and_batch(&cfg.spacing, &cfg.median_image_size_in_voxels, inputs.approx_n_voxels, dj.labels.len(), reference);
    let n = topo.pool_op_kernel_sizes.len();
    cfg.batch_size = bs;
    cfg.patch_size = topo.patch_size.clone();
    let arch = &mut cfg.architecture;
    arch.network_class_name = RESENC_CLASS.into();
    arch.arch_kwargs.n_stages = n;
    arch.arch_kwargs.features_per_stage = planning::features_per_stage(n);
    arch.arch_kwargs.kernel_sizes = topo.conv_kernel_sizes.clone();
    arch.arch_kwargs.strides = topo.pool_op_kernel_sizes.clone();
    arch.arch_kwargs.n_conv_per_stage = vec![];
    arch.arch_kwargs.n_blocks_per_stage = RESENC_BLOCKS_PER_STAGE[..n].to_vec();
    arch.arch_kwargs.n_conv_per_stage_decoder = vec![1; n - 1];
    let value = serde_json::to_value(&cfg).map_err(|e| Error::Invalid(format!("cannot serialize the 2d plan: {e}")))?;
    plans.configurations.insert("2d".into(), value);
    plans.plans_name = planner.plans_name().into();
    plans.experiment_planner_used = planner.class_name().into();
    Ok(plans)
}

/// `ResidualEncoderUNet.compute_conv_feature_map_size(patch)` (the planner counts it without deep supervision): the stem
/// (one conv), every residual block (two convs, plus the 1x1 projection of a stage's first block
/// when it strides or changes the width), then the decoder as for PlainConvUNet.
pub fn resenc_feature_map_size(
    patch: &[usize],
    strides: &[Vec<usize>],
    features: &[usize],
    blocks: &[usize],
    n_conv_dec: usize,
    num_classes: usize,
    deep_supervision: bool,
) -> u64 {
    let prod = |s: &[usize]| s.iter().map(|&x| x as u64).product::<u64>();
    let mut total = features[0] as u64 * prod(patch); // stem
    let mut size = patch.to_vec();
    let mut c_in = features[0];
    for (s, st) in strides.iter().enumerate() {
        let after: Vec<usize> = size.iter().zip(st).map(|(a, b)| a / b).collect();
        let f = features[s] as u64;
        let first_has_skip = c_in != features[s] || after != size;
        total += 2 * f * prod(&after) * blocks[s] as u64 + if first_has_skip { f * prod(&after) } else { 0 };
        size = after;
        c_in = features[s];
    }
    total + planning::decoder_feature_map_size(patch, strides, features, n_conv_dec, num_classes, deep_supervision)
}

/// `ResEncUNetPlanner.get_plans_for_configuration` for 2D: the topology and batch size.
pub fn resenc_patch_and_batch(
    spacing: &[f64],
    median: &[f64],
    approx_n_voxels: f64,
    num_classes: usize,
    reference: f64,
) -> (Topology, usize) {
    let mut topo = get_topology(spacing, &planning::initial_patch_2d(spacing, median));
    let estimate = |t: &Topology| {
        let n = t.pool_op_kernel_sizes.len();
        let feats = planning::features_per_stage(n);
        resenc_feature_map_size(&t.patch_size, &t.pool_op_kernel_sizes, &feats, &RESENC_BLOCKS_PER_STAGE[..n], 1, num_classes, false) as f64
    };
    let mut est = estimate(&topo);
    while est > reference {
        topo = get_topology(spacing, &planning::shrink_patch(spacing, median, &topo));
        est = estimate(&topo);
    }
    let bs = crate::stats::round_half_even(reference / est * REFERENCE_BS_2D);
    let prod_patch: f64 = topo.patch_size.iter().map(|&x| x as f64).product();
    // max_dataset_covered = 1: at most the whole dataset per batch
    let cap = crate::stats::round_half_even(approx_n_voxels / prod_patch);
    let bs = (bs.min(cap) as i64).max(MIN_BATCH_SIZE as i64) as usize;
    (topo, bs)
}

fn get_topology(spacing: &[f64], patch: &[usize]) -> Topology {
    planning::get_pool_and_conv_props(spacing, patch, FEATUREMAP_MIN_EDGE_LENGTH)
}

/// Verify + fingerprint + plan + splits (`nnUNetv2_plan_and_preprocess -pl PLANNER` without the
/// preprocessing): writes `dataset_fingerprint.json`, the planner's plans file (`dirs.plans_name`
/// must be the planner's: [`Planner::plans_name`]),
/// `splits_final.json` (respecting a user file in the raw folder) and the `dataset.json` copy.
pub fn plan_dataset(
    dirs: &DatasetDirs,
    planner: Planner,
    gpu_memory_target_gb: Option<f64>,
    n_threads: usize,
    show_progress: bool,
) -> Result<Plans> {
    crate::verify::verify_dataset(&dirs.raw)?.into_result()?;
    let dj = DatasetJson::load(&dirs.raw.join("dataset.json"))?;
    std::fs::create_dir_all(&dirs.preprocessed).map_err(|e| Error::io(&dirs.preprocessed, e))?;
    let fp: Fingerprint = crate::fingerprint::extract(&dirs.raw, n_threads, show_progress)?;
    fp.save(&dirs.fingerprint_file())?;
    if dirs.plans_name != planner.plans_name() {
        return Err(Error::Invalid(format!(
            "planner {planner} writes {}.json, but the dataset folders are set for {}",
            planner.plans_name(),
            dirs.plans_name
        )));
    }
    let gpu = gpu_memory_target_gb.unwrap_or(planner.default_gpu_memory_gb());
    let plans = plan_2d_with_memory(planner, &fp, &dj, &dirs.name, gpu)?;
    plans.save(&dirs.plans_file())?;
    // Settle the preprocessed folder for these plans now, while planning is the only writer:
    // shards preprocessed concurrently afterwards (by several workers) then all find the marker.
    let data_dir = dirs.data_dir();
    std::fs::create_dir_all(&data_dir).map_err(|e| Error::io(&data_dir, e))?;
    crate::case::invalidate_if_plans_changed(&data_dir, &crate::case::plans_digest(&plans, &plans.config_2d()?)?)?;
    let ids: Vec<String> = crate::raw::raw_training_cases(&dirs.raw, &dj)?.into_iter().map(|c| c.id).collect();
    crate::splits::load_or_create(&dirs.preprocessed, &dirs.raw, &ids)?;
    crate::hash::copy_if_changed(&dirs.raw.join("dataset.json"), &dirs.preprocessed.join("dataset.json"))?;
    Ok(plans)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_both_ways() {
        for p in Planner::ALL {
            assert_eq!(p.to_string().parse::<Planner>().unwrap(), p);
            assert_eq!(p.class_name().parse::<Planner>().unwrap(), p);
            assert_eq!(Planner::from_plans_name(p.plans_name()), Some(p));
        }
        let e = "ResEncXXL".parse::<Planner>().unwrap_err().to_string();
        assert!(e.contains("ResEncXXL") && e.contains("ResEncM"), "{e}");
    }

    /// dynamic-network-architectures' own example (`residual_encoder_unet_planners.py`, `__main__`):
    /// ResidualEncoderUNet 2d with deep supervision, 7 stages 32..512, blocks (1,3,4,6,6,6,6), 3 classes,
    /// 512² -> 129793792.
    #[test]
    fn feature_map_size_matches_the_upstream_example() {
        let strides: Vec<Vec<usize>> = std::iter::once(vec![1, 1]).chain(std::iter::repeat_n(vec![2, 2], 6)).collect();
        let feats = [32, 64, 128, 256, 512, 512, 512];
        let got = resenc_feature_map_size(&[512, 512], &strides, &feats, &[1, 3, 4, 6, 6, 6, 6], 1, 3, true);
        assert_eq!(got, 129_793_792);
    }
}
