//! A synthetic preprocessed dataset in nnU-Net's on-disk layout (plans, dataset.json, splits and
//! `nnUNetPlans_2d/` cases), for the resume test, the GPU check and the step benchmark. Cases are
//! noisy images with bright discs labelled 1; plans follow `ExperimentPlanner.get_plans_for_configuration` (features `min(512, 32·2^i)`,
//! 3x3 kernels, stride 2 after the first stage).
use nnunet_common::case::CaseProperties;
use nnunet_common::plans::ArchKwargs;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::path::Path;

/// nnU-Net's 2D `arch_kwargs` for `n_stages` stages (32..512 features).
pub fn arch_kwargs(n_stages: usize) -> ArchKwargs {
    arch_kwargs_with_base(n_stages, 32)
}

/// Like [`arch_kwargs`] with another base feature count (tests use tiny networks).
pub fn arch_kwargs_with_base(n_stages: usize, base: usize) -> ArchKwargs {
    ArchKwargs {
        n_stages,
        features_per_stage: (0..n_stages).map(|i| (base << i).min(512)).collect(),
        conv_op: "torch.nn.modules.conv.Conv2d".into(),
        kernel_sizes: vec![vec![3, 3]; n_stages],
        strides: std::iter::once(vec![1, 1]).chain(std::iter::repeat_n(vec![2, 2], n_stages - 1)).collect(),
        n_conv_per_stage: vec![2; n_stages],
        n_blocks_per_stage: vec![],
        n_conv_per_stage_decoder: vec![2; n_stages - 1],
        conv_bias: true,
        norm_op: "torch.nn.modules.instancenorm.InstanceNorm2d".into(),
        norm_op_kwargs: serde_json::json!({"eps": 1e-5, "affine": true}),
        dropout_op: None,
        dropout_op_kwargs: None,
        nonlin: "torch.nn.LeakyReLU".into(),
        nonlin_kwargs: serde_json::json!({"inplace": true}),
    }
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct SynthSpec {
    pub cases: usize,
    /// Image edge (square images).
    pub size: usize,
    pub channels: usize,
    /// Patch edge of the plan.
    pub patch: usize,
    pub batch_size: usize,
    pub arch: ArchKwargs,
    pub seed: u64,
}

/// Writes `dir` = `$nnUNet_preprocessed/DatasetXXX_Name` with everything `train_fold` reads.
pub fn write_preprocessed(dir: &Path, spec: &SynthSpec) -> anyhow::Result<()> {
    let data_dir = dir.join("nnUNetPlans_2d");
    std::fs::create_dir_all(&data_dir)?;
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "Dataset999_Synth".into());
    let channel_names: BTreeMap<String, String> = (0..spec.channels)
        .map(|c| (c.to_string(), if spec.channels == 3 { ["R", "G", "B"][c].to_string() } else { format!("ch{c}") }))
        .collect();
    let dataset_json = serde_json::json!({
        "channel_names": channel_names,
        "labels": {"background": 0, "disc": 1},
        "numTraining": spec.cases,
        "file_ending": ".nii.gz",
        "name": name,
    });
    let resampling =
        |is_seg: bool, order: u32| serde_json::json!({"is_seg": is_seg, "order": order, "order_z": 0, "force_separate_z": null});
    let config_2d = serde_json::json!({
        "data_identifier": "nnUNetPlans_2d",
        "preprocessor_name": "DefaultPreprocessor",
        "batch_size": spec.batch_size,
        "patch_size": [spec.patch, spec.patch],
        "median_image_size_in_voxels": [spec.size as f64, spec.size as f64],
        "spacing": [1.0, 1.0],
        "normalization_schemes": vec!["ZScoreNormalization"; spec.channels],
        "use_mask_for_norm": vec![false; spec.channels],
        "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": resampling(false, 3),
        "resampling_fn_seg_kwargs": resampling(true, 1),
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": resampling(false, 1),
        "architecture": {
            "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
            "arch_kwargs": spec.arch,
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
        },
        "batch_dice": true,
    });
    let intensity: BTreeMap<String, serde_json::Value> = (0..spec.channels)
        .map(|c| (c.to_string(), serde_json::json!({"max": 3.0, "mean": 0.0, "median": 0.0, "min": -3.0, "percentile_00_5": -2.5, "percentile_99_5": 2.5, "std": 1.0})))
        .collect();
    let plans = serde_json::json!({
        "dataset_name": name,
        "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [999.0, 1.0, 1.0],
        "original_median_shape_after_transp": [1.0, spec.size as f64, spec.size as f64],
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": {"2d": config_2d},
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": intensity,
    });
    nnunet_common::hash::write_atomic(&dir.join("dataset.json"), &serde_json::to_vec_pretty(&dataset_json)?)?;
    nnunet_common::hash::write_atomic(&dir.join("nnUNetPlans.json"), &serde_json::to_vec_pretty(&plans)?)?;

    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(spec.seed);
    let s = spec.size;
    let ids: Vec<String> = (0..spec.cases).map(|i| format!("synth_{i:03}")).collect();
    for id in &ids {
        let mut seg = vec![0i8; s * s];
        let n_discs = rng.random_range(1..=3);
        for _ in 0..n_discs {
            let r = rng.random_range((s / 12).max(2)..=(s / 5).max(3)) as f64;
            let (cy, cx) = (rng.random_range(0..s) as f64, rng.random_range(0..s) as f64);
            for y in 0..s {
                for x in 0..s {
                    if (y as f64 - cy).powi(2) + (x as f64 - cx).powi(2) <= r * r {
                        seg[y * s + x] = 1;
                    }
                }
            }
        }
        let mut data = vec![0f32; spec.channels * s * s];
        for c in 0..spec.channels {
            for i in 0..s * s {
                let noise: f32 = rng.random::<f32>() - 0.5;
                data[c * s * s + i] = if seg[i] == 1 { 1.0 + 0.2 * c as f32 } else { -0.5 } + noise;
            }
        }
        let fg: Vec<[i64; 4]> = (0..s * s).filter(|&i| seg[i] == 1).step_by(7).map(|i| [0, 0, (i / s) as i64, (i % s) as i64]).collect();
        let props = CaseProperties {
            spacing: vec![999.0, 1.0, 1.0],
            shape_before_cropping: vec![1, s, s],
            bbox_used_for_cropping: vec![[0, 1], [0, s], [0, s]],
            shape_after_cropping_and_before_resampling: vec![1, s, s],
            class_locations: [("1".to_string(), fg)].into_iter().collect(),
            raw_geometry: None,
            data_sha256: String::new(),
            seg_sha256: String::new(),
        };
        nnunet_common::npy::write_npy(&data_dir.join(format!("{id}.npy")), &[spec.channels, 1, s, s], &data)?;
        nnunet_common::npy::write_npy(&data_dir.join(format!("{id}_seg.npy")), &[1, 1, s, s], &seg)?;
        nnunet_common::hash::write_atomic(&data_dir.join(format!("{id}.json")), &serde_json::to_vec(&props)?)?;
    }
    let splits = nnunet_common::splits::generate_splits(&ids, 5.min(ids.len()).max(2))?;
    nnunet_common::hash::write_atomic(&dir.join("splits_final.json"), &serde_json::to_vec_pretty(&splits)?)?;
    Ok(())
}
