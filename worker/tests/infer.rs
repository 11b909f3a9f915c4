//! Inference tests with tiny randomly initialized (or hand-set) networks: the sliding window on
//! images smaller than the patch and not a multiple of it, mirroring TTA against a hand-written
//! sum, `predict_folder` end to end on PH2 PNGs (downscaled here) and on NIfTI, and the bad-input
//! messages (missing fold, hash mismatch, wrong channel count) with no partial outputs left.
#![recursion_limit = "256"]
use nnunet_common::imageio::{self, Geometry};
use nnunet_common::plans::{Configuration2d, Plans};
use nnunet_common::Fold;
use nnunet_worker::checkpoint::{self, CheckpointMeta, InitArgs, RngState};
use nnunet_worker::infer::{self, sliding_window, PredictOptions};
use nnunet_worker::net::PlainConvUNet;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

fn plans_json(n_channels: usize, patch: [usize; 2]) -> serde_json::Value {
    let names: Vec<&str> = if n_channels == 3 { vec!["R", "G", "B"] } else { vec!["MRI"] };
    let props: serde_json::Map<String, serde_json::Value> = (0..n_channels)
        .map(|c| {
            (c.to_string(), serde_json::json!({"max": 255.0, "mean": 100.0, "median": 100.0, "min": 0.0, "percentile_00_5": 1.0, "percentile_99_5": 250.0, "std": 50.0}))
        })
        .collect();
    let _ = names;
    serde_json::json!({
        "dataset_name": "Dataset940_InferTest",
        "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [999.0, 1.0, 1.0],
        "original_median_shape_after_transp": [1.0, 64.0, 64.0],
        "image_reader_writer": "NaturalImage2DIO",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": props,
        "configurations": {"2d": {
            "data_identifier": "nnUNetPlans_2d",
            "preprocessor_name": "DefaultPreprocessor",
            "batch_size": 2,
            "patch_size": patch,
            "median_image_size_in_voxels": [64.0, 64.0],
            "spacing": [1.0, 1.0],
            "normalization_schemes": vec!["ZScoreNormalization"; n_channels],
            "use_mask_for_norm": vec![false; n_channels],
            "resampling_fn_data": "resample_data_or_seg_to_shape",
            "resampling_fn_seg": "resample_data_or_seg_to_shape",
            "resampling_fn_data_kwargs": {"is_seg": false, "order": 3, "order_z": 0, "force_separate_z": null},
            "resampling_fn_seg_kwargs": {"is_seg": true, "order": 1, "order_z": 0, "force_separate_z": null},
            "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
            "resampling_fn_probabilities_kwargs": {"is_seg": false, "order": 1, "order_z": 0, "force_separate_z": null},
            "architecture": {
                "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                "arch_kwargs": {
                    "n_stages": 3,
                    "features_per_stage": [4, 8, 8],
                    "conv_op": "torch.nn.modules.conv.Conv2d",
                    "kernel_sizes": [[3, 3], [3, 3], [3, 3]],
                    "strides": [[1, 1], [2, 2], [2, 2]],
                    "n_conv_per_stage": [2, 2, 2],
                    "n_conv_per_stage_decoder": [2, 2],
                    "conv_bias": true,
                    "norm_op": "torch.nn.modules.instancenorm.InstanceNorm2d",
                    "norm_op_kwargs": {"eps": 1e-05, "affine": true},
                    "dropout_op": null,
                    "dropout_op_kwargs": null,
                    "nonlin": "torch.nn.LeakyReLU",
                    "nonlin_kwargs": {"inplace": true}
                },
                "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]
            },
            "batch_dice": true
        }}
    })
}

fn dataset_json(n_channels: usize, file_ending: &str) -> serde_json::Value {
    let ch: serde_json::Map<String, serde_json::Value> = if n_channels == 3 {
        [("0", "R"), ("1", "G"), ("2", "B")].iter().map(|(k, v)| (k.to_string(), serde_json::json!(v))).collect()
    } else {
        [("0".to_string(), serde_json::json!("MRI"))].into_iter().collect()
    };
    serde_json::json!({
        "channel_names": ch,
        "labels": {"background": 0, "lesion": 1},
        "numTraining": 4,
        "file_ending": file_ending,
        "nnunetrs_label_mapping": {"original_to_label": {"0": 0, "255": 1}, "label_to_original": {"0": 0.0, "1": 255.0}}
    })
}

/// A model folder with `folds`, each a tiny network; `set` may overwrite its weights.
fn make_model(dir: &Path, n_channels: usize, patch: [usize; 2], folds: &[usize], set: impl Fn(&tch::nn::VarStore, usize)) -> PathBuf {
    let model = dir.join("nnUNetTrainer__nnUNetPlans__2d");
    std::fs::create_dir_all(&model).unwrap();
    let plans_v = plans_json(n_channels, patch);
    let dj_v = dataset_json(n_channels, ".png");
    std::fs::write(model.join("plans.json"), serde_json::to_vec_pretty(&plans_v).unwrap()).unwrap();
    std::fs::write(model.join("dataset.json"), serde_json::to_vec_pretty(&dj_v).unwrap()).unwrap();
    let plans: Plans = serde_json::from_value(plans_v).unwrap();
    let config: Configuration2d = plans.config_2d().unwrap();
    for &f in folds {
        tch::manual_seed(f as i64 + 1);
        let vs = tch::nn::VarStore::new(Device::Cpu);
        let net = PlainConvUNet::new(&vs.root(), &config.architecture.arch_kwargs, n_channels as i64, 2);
        set(&vs, f);
        let mut meta = CheckpointMeta {
            format_version: checkpoint::FORMAT_VERSION,
            trainer_name: "nnUNetTrainer".into(),
            kind: "final".into(),
            epoch: 1,
            epochs_total: 1,
            lr: 0.01,
            ema_fg_dice: None,
            best_ema: None,
            logging: vec![],
            rng: RngState { seed: 0, next_epoch: 1 },
            grad_scaler: None,
            weights_file: String::new(),
            sha256: String::new(),
            init_args: InitArgs {
                configuration: config.clone(),
                configuration_name: "2d".into(),
                dataset_json: dj_v.clone(),
                fold: Fold::Index(f as u16),
                num_input_channels: n_channels as i64,
                num_classes: 2,
                inference_allowed_mirroring_axes: vec![0, 1],
            },
            training_config: serde_json::Value::Null,
        };
        let fold_dir = model.join(format!("fold_{f}"));
        std::fs::create_dir_all(&fold_dir).unwrap();
        checkpoint::save(&fold_dir, "checkpoint_final", &net.named_parameters(&vs), &[], &mut meta).unwrap();
    }
    model
}

/// All weights zero and the last seg head's bias = `bias`: the network outputs constant logits.
fn constant_logits(vs: &tch::nn::VarStore, bias: [f32; 2]) {
    tch::no_grad(|| {
        let vars = vs.variables();
        let last_head = vars.keys().filter(|k| k.starts_with("decoder.seg_layers.") && k.ends_with(".bias")).max().unwrap().clone();
        for (name, mut t) in vars {
            if name == last_head {
                t.copy_(&Tensor::from_slice(&bias));
            } else {
                let _ = t.zero_();
            }
        }
    });
}

fn tiny_net(n_channels: i64) -> (tch::nn::VarStore, PlainConvUNet) {
    let plans: Plans = serde_json::from_value(plans_json(n_channels as usize, [32, 32])).unwrap();
    let config = plans.config_2d().unwrap();
    tch::manual_seed(7);
    let vs = tch::nn::VarStore::new(Device::Cpu);
    let net = PlainConvUNet::new(&vs.root(), &config.architecture.arch_kwargs, n_channels, 2);
    (vs, net)
}

#[test]
fn sliding_window_on_images_smaller_than_and_not_a_multiple_of_the_patch() {
    // With constant logits the Gaussian-weighted average must give back exactly the constant,
    // whatever the tiling: smaller than the patch (padded), and 37 x 50 with a 32 x 32 patch
    // (3 x 3 overlapping tiles), one and two z slices.
    let (vs, net) = tiny_net(1);
    constant_logits(&vs, [0.25, -1.5]);
    for (nz, nx, ny) in [(1, 20, 13), (1, 37, 50), (2, 33, 32)] {
        let data = Tensor::randn([1, nz, nx, ny], (Kind::Float, Device::Cpu));
        let p = sliding_window::WindowParams::new([32, 32], 0.5, vec![0, 1], Device::Cpu);
        let logits = sliding_window::predict_case_logits(&[&net], &data, &p);
        assert_eq!(logits.size(), vec![2, nz, nx, ny]);
        let bg = logits.get(0);
        let fg = logits.get(1);
        // float16 accumulators, as the reference's: the constant comes back up to fp16 rounding of the
        // weighted sums (measured: <= 0.014 for 0.25 and <= 0.027 for -1.5 where 3 x 3 tiles overlap).
        let (ebg, efg) = ((bg - 0.25).abs().max().double_value(&[]), (fg + 1.5).abs().max().double_value(&[]));
        assert!(ebg < 0.02 && efg < 0.04, "{nz}x{nx}x{ny}: max error bg {ebg}, fg {efg}");
    }
}

#[test]
fn mirroring_averages_the_four_flipped_predictions() {
    let (_vs, net) = tiny_net(1);
    let _g = tch::no_grad_guard();
    let x = Tensor::randn([1, 1, 32, 32], (Kind::Float, Device::Cpu));
    let f = |t: &Tensor| net.forward(t);
    // (f(x) + flip(f(flip(x, X)), X) + flip(f(flip(x, Y)), Y) + flip(f(flip(x, XY)), XY)) / 4, by hand
    let want = (f(&x) + f(&x.flip([2])).flip([2]) + f(&x.flip([3])).flip([3]) + f(&x.flip([2, 3])).flip([2, 3])) / 4.0;
    let got = sliding_window::predict_with_mirroring(&net, &x, &[0, 1], Device::Cpu);
    assert!((got - &want).abs().max().double_value(&[]) < 1e-4);
    // With all four flips the prediction is equivariant: predicting a flipped image gives the flipped prediction.
    let flipped = sliding_window::predict_with_mirroring(&net, &x.flip([3]), &[0, 1], Device::Cpu);
    assert!((flipped.flip([3]) - &want).abs().max().double_value(&[]) < 1e-4);
    // Without mirroring it is the plain forward pass.
    let plain = sliding_window::predict_with_mirroring(&net, &x, &[], Device::Cpu);
    assert!((plain - f(&x)).abs().max().double_value(&[]) < 1e-6);
}

fn shared_dir() -> Option<PathBuf> {
    let p =
        std::env::var_os("NNUNET_SHARED").map(PathBuf::from).unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared"));
    p.join("datasets/ph2_skin_lesion/images").is_dir().then_some(p)
}

/// Writes downscaled (about 64 px) RGB copies of a few PH2 images; returns their (H, W).
fn ph2_inputs(dst: &Path, n: usize) -> Option<Vec<(String, u32, u32)>> {
    let Some(shared) = shared_dir() else {
        eprintln!("SKIP: ../shared/datasets/ph2_skin_lesion not found (set NNUNET_SHARED); PH2 prediction not tested");
        return None;
    };
    let src = shared.join("datasets/ph2_skin_lesion/images");
    let mut names: Vec<String> = std::fs::read_dir(&src).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    std::fs::create_dir_all(dst).unwrap();
    let mut out = vec![];
    for name in names.into_iter().take(n) {
        let img = image::open(src.join(&name)).unwrap();
        // 765 x 572 -> 64 x 48: not a multiple of the 32 x 32 patch in one axis after cropping.
        let small = img.resize_exact(64 + out.len() as u32, 48, image::imageops::FilterType::Triangle).to_rgb8();
        small.save(dst.join(&name)).unwrap();
        out.push((name, small.height(), small.width()));
    }
    Some(out)
}

#[test]
fn predict_folder_writes_png_masks_with_original_values_and_input_size() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(inputs) = ph2_inputs(&tmp.path().join("in"), 3) else { return };
    // Two folds with random weights, and the fold-1 network biased to foreground so the averaged
    // logits give both classes somewhere is not guaranteed; check the value set instead.
    let model = make_model(tmp.path(), 3, [32, 32], &[0, 1], |_, _| {});
    let out = tmp.path().join("out");
    let opts = PredictOptions { save_probabilities: true, ..Default::default() };
    let report = infer::predict_folder(&model, &[Fold::Index(0), Fold::Index(1)], &tmp.path().join("in"), &out, &opts).unwrap();
    assert_eq!(report.cases.len(), 3);
    for (name, h, w) in &inputs {
        let mask = imageio::read_seg(&out.join(name)).unwrap();
        assert_eq!(mask.shape, [1, 1, *h as usize, *w as usize], "{name}: mask size must equal the input's");
        assert!(mask.data.iter().all(|&v| v == 0.0 || v == 255.0), "{name}: values must be the original 0/255");
        let case = name.trim_end_matches(".png");
        let (shape, probs) = nnunet_common::npy::read_npz_member::<f32>(&out.join(format!("{case}.npz")), "probabilities").unwrap();
        assert_eq!(shape, vec![2, 1, *h as usize, *w as usize]);
        // softmax: channels sum to 1, and the mask is their argmax
        let n = (*h * *w) as usize;
        for i in 0..n {
            assert!((probs[i] + probs[n + i] - 1.0).abs() < 1e-5);
            let fg = probs[n + i] > probs[i];
            assert_eq!(mask.data[i] == 255.0, fg);
        }
    }
    // Biasing every network to foreground gives all-255 masks: the label mapping is applied.
    let tmp2 = tempfile::tempdir().unwrap();
    let model = make_model(tmp2.path(), 3, [32, 32], &[0], |vs, _| constant_logits(vs, [-5.0, 5.0]));
    let out2 = tmp2.path().join("out");
    infer::predict_folder(
        &model,
        &[Fold::Index(0)],
        &tmp.path().join("in"),
        &out2,
        &PredictOptions { use_mirroring: false, ..Default::default() },
    )
    .unwrap();
    let (name, _, _) = &inputs[0];
    let mask = imageio::read_seg(&out2.join(name)).unwrap();
    assert!(mask.data.iter().all(|&v| v == 255.0));
}

#[test]
fn nifti_input_gives_nifti_output_with_the_input_affine() {
    let tmp = tempfile::tempdir().unwrap();
    let model = make_model(tmp.path(), 1, [32, 32], &[0], |vs, _| constant_logits(vs, [-5.0, 5.0]));
    let input = tmp.path().join("imagesTs");
    std::fs::create_dir_all(&input).unwrap();
    let affine = [[0.0, 0.0, -0.8, 10.0], [0.0, 1.5, 0.0, -4.0], [2.0, 0.0, 0.0, 7.5], [0.0, 0.0, 0.0, 1.0]];
    let geom = Geometry { spacing: [2.0, 1.5, 0.8], affine: Some(affine), format: "nii.gz".into() };
    // (Z, X, Y) = (3, 20, 27): a small volume, predicted slice by slice with the 2d configuration.
    let data: Vec<f32> = (0..3 * 20 * 27).map(|i| ((i * 7919) % 97) as f32 + 1.0).collect();
    imageio::write_nifti_f32(&input.join("vol_007_0000.nii.gz"), [3, 20, 27], &data, &geom).unwrap();
    let out = tmp.path().join("out");
    let report = infer::predict_folder(&model, &[Fold::Index(0)], &input, &out, &PredictOptions::default()).unwrap();
    assert_eq!(report.cases, vec!["vol_007".to_string()]);
    let written = imageio::read_nifti(&out.join("vol_007.nii.gz")).unwrap();
    let original = imageio::read_nifti(&input.join("vol_007_0000.nii.gz")).unwrap();
    assert_eq!(written.shape, [1, 3, 20, 27]);
    assert_eq!(written.geometry.affine, original.geometry.affine);
    assert_eq!(written.geometry.spacing, original.geometry.spacing);
    assert!(written.data.iter().all(|&v| v == 255.0));
}

fn no_partial_files(dir: &Path) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd {
            let n = e.unwrap().file_name().to_string_lossy().into_owned();
            assert!(!n.contains(".tmp"), "temporary file {n} left behind");
        }
    }
}

#[test]
fn bad_inputs_get_clear_messages() {
    let tmp = tempfile::tempdir().unwrap();
    let model = make_model(tmp.path(), 3, [32, 32], &[0, 1], |_, _| {});
    let input = tmp.path().join("in");
    std::fs::create_dir_all(&input).unwrap();
    image::RgbImage::from_fn(40, 30, |x, y| image::Rgb([x as u8 * 5, y as u8 * 7, 100])).save(input.join("a.png")).unwrap();
    let out = tmp.path().join("out");

    // A fold that was never trained.
    let err = format!(
        "{:#}",
        infer::predict_folder(&model, &[Fold::Index(0), Fold::Index(3)], &input, &out, &PredictOptions::default()).unwrap_err()
    );
    assert!(err.contains("fold 3 is missing") && err.contains("0 1"), "{err}");

    // A checkpoint whose bytes do not match the sidecar's sha256.
    let w = model.join("fold_1/checkpoint_final.safetensors");
    let mut bytes = std::fs::read(&w).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x55;
    std::fs::write(&w, bytes).unwrap();
    let err = format!(
        "{:#}",
        infer::predict_folder(&model, &[Fold::Index(0), Fold::Index(1)], &input, &out, &PredictOptions::default()).unwrap_err()
    );
    assert!(err.contains("fold 1") && err.contains("sha256"), "{err}");

    // A gray image for an RGB model: every input is checked before anything is written, so the
    // output folder is not even created (no empty or partial output).
    image::GrayImage::from_fn(40, 30, |x, _| image::Luma([x as u8])).save(input.join("b_gray.png")).unwrap();
    let err = format!("{:#}", infer::predict_folder(&model, &[Fold::Index(0)], &input, &out, &PredictOptions::default()).unwrap_err());
    assert!(err.contains("b_gray.png") && err.contains("1 channel(s)") && err.contains("trained on 3"), "{err}");
    assert!(!out.exists(), "a failed prediction leaves no output folder");
    no_partial_files(tmp.path());
}

#[test]
fn nnunet_channel_files_are_grouped_and_user_files_are_cases() {
    let tmp = tempfile::tempdir().unwrap();
    for n in ["c1_0000.nii.gz", "c1_0001.nii.gz", "c2_0000.nii.gz", "c2_0001.nii.gz"] {
        std::fs::write(tmp.path().join(n), b"x").unwrap();
    }
    let cases = infer::discover_cases(tmp.path()).unwrap();
    assert_eq!(cases.iter().map(|c| c.case.as_str()).collect::<Vec<_>>(), vec!["c1", "c2"]);
    assert_eq!(cases[0].files.len(), 2);
    let tmp = tempfile::tempdir().unwrap();
    for n in ["IMD002.png", "img_0001.png"] {
        std::fs::write(tmp.path().join(n), b"x").unwrap();
    }
    let cases = infer::discover_cases(tmp.path()).unwrap();
    assert_eq!(cases.iter().map(|c| c.case.as_str()).collect::<Vec<_>>(), vec!["IMD002", "img_0001"]);
}

#[test]
fn validate_fold_exports_in_raw_geometry_and_evaluates() {
    use nnunet_common::npy;
    let tmp = tempfile::tempdir().unwrap();
    let pre = tmp.path().join("Dataset940_V");
    let data_dir = pre.join("nnUNetPlans_2d");
    let gt_dir = pre.join("gt_segmentations");
    std::fs::create_dir_all(&data_dir).unwrap();
    std::fs::create_dir_all(&gt_dir).unwrap();
    let plans_v = plans_json(1, [32, 32]);
    let mut dj_v = dataset_json(1, ".nii.gz");
    dj_v.as_object_mut().unwrap().remove("nnunetrs_label_mapping");
    std::fs::write(pre.join("nnUNetPlans.json"), serde_json::to_vec(&plans_v).unwrap()).unwrap();
    std::fs::write(pre.join("dataset.json"), serde_json::to_vec(&dj_v).unwrap()).unwrap();
    let cases = ["c0", "c1", "c2", "c3"];
    std::fs::write(
        pre.join("splits_final.json"),
        serde_json::to_vec(&serde_json::json!([{"train": ["c0", "c1"], "val": ["c2", "c3"]}])).unwrap(),
    )
    .unwrap();
    let plans: Plans = serde_json::from_value(plans_v).unwrap();
    let config = plans.config_2d().unwrap();
    let dj: nnunet_common::dataset_json::DatasetJson = serde_json::from_value(dj_v).unwrap();
    let affine = [[-1.0, 0.0, 0.0, 3.0], [0.0, -1.0, 0.0, 2.0], [0.0, 0.0, 999.0, 0.0], [0.0, 0.0, 0.0, 1.0]];
    let geom = Geometry { spacing: [999.0, 1.0, 1.0], affine: Some(affine), format: "nii.gz".into() };
    let (h, w) = (24usize, 30usize);
    let mut fg_sizes = vec![];
    for (i, c) in cases.iter().enumerate() {
        // nonzero everywhere, so the crop keeps the whole image; a square of label 1
        let img = imageio::ImageData {
            shape: [1, 1, h, w],
            data: (0..h * w).map(|j| 1.0 + ((j * 31 + i) % 17) as f32).collect(),
            geometry: geom.clone(),
        };
        let side = 4 + 2 * i;
        let segv: Vec<f32> = (0..h * w).map(|j| if j / w < side && j % w < side { 1.0 } else { 0.0 }).collect();
        fg_sizes.push(side * side);
        let seg = imageio::ImageData { shape: [1, 1, h, w], data: segv.clone(), geometry: geom.clone() };
        let (data, shape, seg8, props) = nnunet_common::preprocess::preprocess_case(&plans, &config, &dj, img, Some(seg)).unwrap();
        npy::write_npy(&data_dir.join(format!("{c}.npy")), &shape, &data).unwrap();
        npy::write_npy(&data_dir.join(format!("{c}_seg.npy")), &[1, shape[1], shape[2], shape[3]], &seg8).unwrap();
        nnunet_common::error::write_json(&data_dir.join(format!("{c}.json")), &props).unwrap();
        let labels: Vec<u16> = segv.iter().map(|&v| v as u16).collect();
        imageio::write_nifti_seg(&gt_dir.join(format!("{c}.nii.gz")), [1, h, w], &labels, &geom).unwrap();
    }
    let model = make_model(tmp.path(), 1, [32, 32], &[0], |vs, _| constant_logits(vs, [-5.0, 5.0]));
    let fold_dir = model.join("fold_0");
    let summary = infer::validate_fold(&pre, Fold::Index(0), &fold_dir, &PredictOptions::default()).unwrap();
    // Everything is predicted foreground: Dice = 2|gt| / (|gt| + H·W) per validation case.
    let n = (h * w) as f64;
    let want: Vec<f64> = [2, 3].iter().map(|&i| 2.0 * fg_sizes[i] as f64 / (fg_sizes[i] as f64 + n)).collect();
    assert_eq!(summary.metric_per_case.len(), 2);
    assert!((summary.mean[&nnunet_common::labels::LabelOrRegion::Label(1)].dice - (want[0] + want[1]) / 2.0).abs() < 1e-12);
    assert!(fold_dir.join("validation/summary.json").is_file());
    let written = imageio::read_nifti(&fold_dir.join("validation/c2.nii.gz")).unwrap();
    let gt = imageio::read_nifti(&gt_dir.join("c2.nii.gz")).unwrap();
    assert_eq!(written.shape, gt.shape);
    assert_eq!(written.geometry.affine, gt.geometry.affine);
}

#[test]
fn a_bad_input_leaves_an_existing_output_folder_as_it_was_and_fold_all_predicts() {
    let tmp = tempfile::tempdir().unwrap();
    let model = make_model(tmp.path(), 3, [32, 32], &[0], |vs, _| constant_logits(vs, [-5.0, 5.0]));
    // A model trained with `--fold all` lives in fold_all.
    std::fs::rename(model.join("fold_0"), model.join("fold_all")).unwrap();
    let input = tmp.path().join("in");
    std::fs::create_dir_all(&input).unwrap();
    image::RgbImage::from_fn(40, 30, |x, y| image::Rgb([x as u8 * 5, y as u8 * 7, 100])).save(input.join("a.png")).unwrap();
    image::GrayImage::from_fn(40, 30, |x, _| image::Luma([x as u8])).save(input.join("b_gray.png")).unwrap();
    let out = tmp.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("mine.txt"), b"the user's").unwrap();
    let err = format!("{:#}", infer::predict_folder(&model, &[Fold::All], &input, &out, &PredictOptions::default()).unwrap_err());
    assert!(err.contains("b_gray.png"), "{err}");
    let names = |d: &Path| {
        let mut v: Vec<String> = std::fs::read_dir(d).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    };
    assert_eq!(names(&out), vec!["mine.txt"]);
    assert_eq!(names(tmp.path()), vec!["in", "nnUNetTrainer__nnUNetPlans__2d", "out"], "no staging folder left");
    std::fs::remove_file(input.join("b_gray.png")).unwrap();
    let report = infer::predict_folder(&model, &[Fold::All], &input, &out, &PredictOptions::default()).unwrap();
    assert_eq!(report.folds, vec![Fold::All]);
    assert_eq!(names(&out), vec!["a.png", "mine.txt"]);
    let err = format!("{:#}", infer::predict_folder(&model, &[Fold::Index(0)], &input, &out, &PredictOptions::default()).unwrap_err());
    assert!(err.contains("fold 0 is missing") && err.contains("all"), "{err}");
}

#[test]
fn region_models_predict_sigmoids_painted_with_regions_class_order() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(inputs) = ph2_inputs(&tmp.path().join("in"), 1) else { return };
    let regions = |model: &Path, extra: &str| {
        let dj = format!(
            r#"{{"channel_names": {{"0": "R", "1": "G", "2": "B"}}, "labels": {{"background": 0, "whole": [1, 2], "posterior": [2]{extra}}},
                "regions_class_order": [1, 2], "numTraining": 4, "file_ending": ".png"}}"#
        );
        std::fs::write(model.join("dataset.json"), dj).unwrap();
    };
    let (name, h, w) = &inputs[0];
    let n = (*h * *w) as usize;
    // Logits (whole, posterior): (5, -5) paints label 1 everywhere; (5, 5) paints 2 (the later region wins).
    for (bias, label) in [([5.0f32, -5.0], 1.0), ([5.0, 5.0], 2.0), ([-5.0, 5.0], 2.0), ([-5.0, -5.0], 0.0)] {
        let model = make_model(&tmp.path().join(format!("m{label}{}", bias[0])), 3, [32, 32], &[0], |vs, _| constant_logits(vs, bias));
        regions(&model, "");
        let out = tmp.path().join(format!("out{label}{}", bias[0]));
        let opts = PredictOptions { use_mirroring: false, save_probabilities: true, ..Default::default() };
        infer::predict_folder(&model, &[Fold::Index(0)], &tmp.path().join("in"), &out, &opts).unwrap();
        let mask = imageio::read_seg(&out.join(name)).unwrap();
        assert!(mask.data.iter().all(|&v| v == label), "bias {bias:?}: every pixel must be {label}");
        let case = name.trim_end_matches(".png");
        let (shape, probs) = nnunet_common::npy::read_npz_member::<f32>(&out.join(format!("{case}.npz")), "probabilities").unwrap();
        assert_eq!(shape, vec![2, 1, *h as usize, *w as usize]);
        let s = |x: f32| 1.0 / (1.0 + (-x).exp());
        assert!((probs[0] - s(bias[0])).abs() < 1e-4 && (probs[n] - s(bias[1])).abs() < 1e-4, "sigmoid per region");
        let sidecar: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join(format!("{case}.json"))).unwrap()).unwrap();
        assert_eq!(sidecar["regions_class_order"], serde_json::json!([1, 2]));
    }
    // A dataset.json with three regions does not fit a two-output network.
    let model = make_model(&tmp.path().join("bad"), 3, [32, 32], &[0], |_, _| {});
    regions(&model, r#", "anterior": [1]"#);
    std::fs::write(
        model.join("dataset.json"),
        std::fs::read_to_string(model.join("dataset.json")).unwrap().replace("[1, 2], \"numTraining\"", "[1, 2, 1], \"numTraining\""),
    )
    .unwrap();
    let err = infer::predict_folder(&model, &[Fold::Index(0)], &tmp.path().join("in"), &tmp.path().join("o"), &PredictOptions::default())
        .unwrap_err();
    assert!(format!("{err:#}").contains("has 2 outputs but its dataset.json declares 3 regions"), "{err:#}");
}
