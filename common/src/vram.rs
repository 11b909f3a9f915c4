//! The device memory one training process of a plan needs, from the planner's own VRAM model, for
//! packing several folds onto one GPU (`nnunet run --folds-per-gpu`).
//!
//! nnU-Net's planner calibrates its feature-map count against a reference network: a count of
//! `UNet_reference_val_2d` at batch size `UNet_reference_val_corresp_bs_2d` (12) is about
//! `UNet_reference_val_corresp_GB` of VRAM
//! (`nnunetv2/experiment_planning/experiment_planners/default_experiment_planner.py::ExperimentPlanner.get_plans_for_configuration`,
//! `residual_unets/residual_encoder_unet_planners.py::ResEncUNetPlanner`). The same model read
//! backwards gives a plan's estimate: `count / 12 * batch_size / reference * GB`, plus the CUDA
//! context every process holds.
use crate::planners::{resenc_feature_map_size, Planner, PLAIN_CLASS};
use crate::planning::{conv_feature_map_size, REFERENCE_BS_2D, REFERENCE_VAL_2D, REFERENCE_VAL_CORRESP_GB};
use crate::plans::Plans;
use crate::Result;

/// Device memory of a CUDA context plus libtorch's kernels and workspaces, per process (MiB).
pub const CONTEXT_MIB: u64 = 600;

/// The estimated peak device memory of one training process of `plans` (MiB), context included.
pub fn training_estimate_mib(plans: &Plans, num_classes: usize) -> Result<u64> {
    let cfg = plans.config_2d()?;
    let a = &cfg.architecture.arch_kwargs;
    let (reference, gb) = Planner::from_plans_name(&plans.plans_name)
        .and_then(|p| p.resenc_reference())
        .unwrap_or((REFERENCE_VAL_2D, REFERENCE_VAL_CORRESP_GB));
    let n_dec = a.n_conv_per_stage_decoder.first().copied().unwrap_or(2);
    let count = if cfg.architecture.network_class_name == PLAIN_CLASS || a.n_blocks_per_stage.is_empty() {
        let n_enc = a.n_conv_per_stage.first().copied().unwrap_or(2);
        conv_feature_map_size(&cfg.patch_size, &a.strides, &a.features_per_stage, n_enc, n_dec, num_classes)
    } else {
        resenc_feature_map_size(&cfg.patch_size, &a.strides, &a.features_per_stage, &a.n_blocks_per_stage, n_dec, num_classes, false)
    };
    let mib = count as f64 / REFERENCE_BS_2D * cfg.batch_size as f64 / reference * gb * 1024.0;
    Ok(mib.ceil() as u64 + CONTEXT_MIB)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plans(patch: usize, batch: usize) -> Plans {
        let mut p: Plans = serde_json::from_str(include_str!("../../tests/fixtures/planning/isbi/nnUNetPlans.json")).unwrap();
        let c = p.configurations.get_mut("2d").unwrap();
        c["patch_size"] = serde_json::json!([patch, patch]);
        c["batch_size"] = serde_json::json!(batch);
        p
    }

    #[test]
    fn the_estimate_grows_with_batch_and_patch_and_matches_the_planner_target() {
        // ISBI at 512² and batch 12: the planner fills its 8 GB target (bs = reference / count * 12).
        let full = training_estimate_mib(&plans(512, 12), 2).unwrap();
        assert!((6_000..=10_000).contains(&full), "{full} MiB");
        let half_batch = training_estimate_mib(&plans(512, 6), 2).unwrap();
        assert!(half_batch < full && half_batch > CONTEXT_MIB, "{half_batch} vs {full}");
        let small = training_estimate_mib(&plans(256, 12), 2).unwrap();
        assert!(small < full, "{small} vs {full}");
        // The fixture's own plan (30 images: batch 2 by the 5% rule) and the ResEnc M preset of it.
        let own: Plans = serde_json::from_str(include_str!("../../tests/fixtures/planning/isbi/nnUNetPlans.json")).unwrap();
        let m: Plans = serde_json::from_str(include_str!("../../tests/fixtures/planning/isbi/nnUNetResEncUNetMPlans.json")).unwrap();
        let (own, m) = (training_estimate_mib(&own, 2).unwrap(), training_estimate_mib(&m, 2).unwrap());
        assert!(own > CONTEXT_MIB && own < full && m > CONTEXT_MIB, "plain {own}, ResEnc M {m}");
    }
}
