//! nnU-Net v2 interop, end to end with the real `nnunet-worker` binary and a model trained by the reference
//! nnU-Net v2 (`tests/fixtures/interop`, made by `make_fixture.sh` there):
//! - parity: `predict -m <nnU-Net folder>` against nnUNetv2_predict's masks (>= 99.9% of pixels, same Dice);
//! - import (nnU-Net zip -> our folder) predicts the same masks; export (our folder -> zip) opens in torch;
//! - refusals: truncated .pth, 3d model, unknown architecture, other trainers, zip without plans.json;
//! - pretrained weights: heads fresh, everything else transferred, mismatches listed.
use nnunet_worker::interop::{model_zip, nnunet_model, pickle::Out, pretrained, pth};
use nnunet_worker::net::PlainConvUNet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/interop")
}
fn model_dir() -> PathBuf {
    fixture().join("Dataset951_PH2tiny/nnUNetTrainer_Budget__nnUNetPlans__2d")
}
fn worker() -> Command {
    Command::new(env!("CARGO_BIN_EXE_nnunet-worker"))
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run nnunet-worker");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}
fn run_err(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run nnunet-worker");
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{cmd:?} should fail; stderr:\n{text}");
    text
}

fn read_mask(p: &Path) -> Vec<u8> {
    image::open(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).to_luma8().into_raw()
}

fn dice(pred: &[u8], gt: &[u8]) -> f64 {
    let tp = pred.iter().zip(gt).filter(|(p, g)| **p == 1 && **g == 1).count() as f64;
    let fp = pred.iter().zip(gt).filter(|(p, g)| **p == 1 && **g != 1).count() as f64;
    let fneg = pred.iter().zip(gt).filter(|(p, g)| **p != 1 && **g == 1).count() as f64;
    2.0 * tp / (2.0 * tp + fp + fneg)
}

/// (pixel agreement with the reference masks, our mean Dice, the reference's mean Dice).
fn compare_with_reference(pred_dir: &Path) -> (f64, f64, f64) {
    let (mut same, mut total, mut ours, mut theirs, mut n) = (0usize, 0usize, 0.0, 0.0, 0.0);
    for e in std::fs::read_dir(fixture().join("labelsTs")).unwrap() {
        let name = e.unwrap().file_name();
        let gt = read_mask(&fixture().join("labelsTs").join(&name));
        let r = read_mask(&fixture().join("reference_predictions").join(&name));
        let p = read_mask(&pred_dir.join(&name));
        assert_eq!(p.len(), r.len(), "{name:?}: mask size differs from the reference's");
        same += p.iter().zip(&r).filter(|(a, b)| a == b).count();
        total += p.len();
        ours += dice(&p, &gt);
        theirs += dice(&r, &gt);
        n += 1.0;
    }
    assert!(n >= 4.0);
    (same as f64 / total as f64, ours / n, theirs / n)
}

#[test]
fn predicts_an_nnunet_model_folder_like_nnunetv2_predict() {
    let out = tempfile::tempdir().unwrap();
    let log = run_ok(
        worker()
            .args(["predict", "-f", "0", "--device", "cpu", "-m"])
            .arg(model_dir())
            .arg("-i")
            .arg(fixture().join("imagesTs"))
            .arg("-o")
            .arg(out.path()),
    );
    let (agree, ours, theirs) = compare_with_reference(out.path());
    eprintln!("parity: pixel agreement {:.5}, mean Dice ours {ours:.6} reference {theirs:.6}\n{log}", agree);
    assert!(agree >= 0.999, "pixel agreement {agree}");
    assert!((ours - theirs).abs() < 1e-9, "Dice ours {ours} vs reference {theirs}");
    // The reference's own evaluation agrees with ours.
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture().join("reference_predictions/summary.json")).unwrap()).unwrap();
    let ref_mean = summary["foreground_mean"]["Dice"].as_f64().unwrap();
    assert!((ref_mean - theirs).abs() < 1e-6, "nnUNetv2_evaluate_folder says {ref_mean}, we compute {theirs}");

    let out_best = tempfile::tempdir().unwrap();
    run_ok(
        worker()
            .args(["predict", "-f", "0", "--disable-tta", "--checkpoint", "checkpoint_best.pth", "-m"])
            .arg(model_dir())
            .arg("-i")
            .arg(fixture().join("imagesTs"))
            .arg("-o")
            .arg(out_best.path()),
    );
    assert_eq!(std::fs::read_dir(out_best.path()).unwrap().count(), 4);
}

/// Zips the fixture's model folder the way nnUNetv2_export_model_to_zip lays it out.
fn nnunet_zip(dst: &Path, skip: &[&str]) {
    let mut z = zip::ZipWriter::new(std::fs::File::create(dst).unwrap());
    let base = "Dataset951_PH2tiny/nnUNetTrainer_Budget__nnUNetPlans__2d";
    for f in ["plans.json", "dataset.json", "dataset_fingerprint.json", "fold_0/checkpoint_final.pth"] {
        if skip.contains(&f) {
            continue;
        }
        z.start_file(format!("{base}/{f}"), zip::write::SimpleFileOptions::default()).unwrap();
        z.write_all(&std::fs::read(model_dir().join(f)).unwrap()).unwrap();
    }
    z.finish().unwrap();
}

fn project_python() -> Option<PathBuf> {
    let py = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    let ok = py.is_file() && Command::new(&py).args(["-c", "import torch"]).output().map(|o| o.status.success()).unwrap_or(false);
    if !ok {
        eprintln!("skipping the torch.load check: {} with torch not found", py.display());
    }
    ok.then_some(py)
}

#[test]
fn import_then_export_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let zip_in = dir.path().join("nnunet_model.zip");
    nnunet_zip(&zip_in, &[]);
    let ours = dir.path().join("ours/nnUNetTrainer__nnUNetPlans__2d");
    run_ok(worker().arg("import-model").arg(&zip_in).arg("-o").arg(&ours));
    assert!(ours.join("fold_0/checkpoint_final.safetensors").is_file() && ours.join("plans.json").is_file());
    // Our converted folder predicts exactly what the .pth folder predicts.
    let (a, b) = (dir.path().join("pred_pth"), dir.path().join("pred_ours"));
    for (m, o) in [(model_dir(), &a), (ours.clone(), &b)] {
        run_ok(
            worker().args(["predict", "-f", "0", "--disable-tta", "-m"]).arg(m).arg("-i").arg(fixture().join("imagesTs")).arg("-o").arg(o),
        );
    }
    for e in std::fs::read_dir(&a).unwrap() {
        let n = e.unwrap().file_name();
        assert_eq!(read_mask(&a.join(&n)), read_mask(&b.join(&n)), "{n:?}");
    }
    // Export: the zip holds nnU-Net's layout; the .pth holds the same weights, readable by our reader.
    let zip_out = dir.path().join("exported.zip");
    run_ok(worker().arg("export-model").arg("-m").arg(&ours).arg("-o").arg(&zip_out));
    let mut z = zip::ZipArchive::new(std::fs::File::open(&zip_out).unwrap()).unwrap();
    let names: Vec<String> = z.file_names().map(str::to_string).collect();
    let base = "Dataset951_PH2tiny/nnUNetTrainer__nnUNetPlans__2d";
    for f in ["plans.json", "dataset.json", "dataset_fingerprint.json", "fold_0/checkpoint_final.pth"] {
        assert!(names.contains(&format!("{base}/{f}")), "{f} missing from {names:?}");
    }
    let exported_pth = dir.path().join("exported.pth");
    std::io::copy(
        &mut z.by_name(&format!("{base}/fold_0/checkpoint_final.pth")).unwrap(),
        &mut std::fs::File::create(&exported_pth).unwrap(),
    )
    .unwrap();
    let orig = nnunet_model::read_checkpoint(&model_dir().join("fold_0/checkpoint_final.pth")).unwrap();
    let back = nnunet_model::read_checkpoint(&exported_pth).unwrap();
    assert_eq!(back.configuration, "2d");
    assert_eq!(back.mirroring_axes, Some(vec![0, 1]));
    assert_eq!(orig.weights.len(), back.weights.len());
    for ((n1, t1), (n2, t2)) in orig.weights.iter().zip(&back.weights) {
        assert_eq!(n1, n2);
        assert!(t1.equal(t2), "{n1} differs after the round trip");
    }
    // torch.load (as nnU-Net's predictor calls it) opens it: same keys (with decoder.encoder.*) and shapes.
    let Some(py) = project_python() else { return };
    let script = r#"
import sys, json, torch
def desc(p):
    c = torch.load(p, map_location='cpu', weights_only=False)
    w = c['network_weights']
    return {'keys': [[k, list(v.shape)] for k, v in w.items()], 'trainer': c['trainer_name'], 'conf': c['init_args']['configuration'],
            'mirror': list(c['inference_allowed_mirroring_axes']), 'sum': float(sum(v.double().sum() for v in w.values()))}
a, b = desc(sys.argv[1]), desc(sys.argv[2])
torch.load(sys.argv[2], map_location='cpu')  # weights_only=True (torch's default) opens it too
print(json.dumps({'orig': a, 'exported': b}))
"#;
    let out =
        Command::new(py).args(["-c", script]).arg(model_dir().join("fold_0/checkpoint_final.pth")).arg(&exported_pth).output().unwrap();
    assert!(out.status.success(), "torch.load failed: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["orig"]["keys"], v["exported"]["keys"], "state_dict keys/shapes differ");
    assert_eq!(v["exported"]["trainer"], "nnUNetTrainer");
    assert_eq!(v["exported"]["conf"], "2d");
    assert_eq!(v["exported"]["mirror"], serde_json::json!([0, 1]));
    let (s1, s2) = (v["orig"]["sum"].as_f64().unwrap(), v["exported"]["sum"].as_f64().unwrap());
    assert!((s1 - s2).abs() <= 1e-9 * s1.abs().max(1.0), "weight sums {s1} vs {s2}");
}

/// A copy of the fixture model folder in `dir`.
fn copy_model(dir: &Path) -> PathBuf {
    let m = dir.join("model");
    std::fs::create_dir_all(m.join("fold_0")).unwrap();
    for f in ["plans.json", "dataset.json", "fold_0/checkpoint_final.pth"] {
        std::fs::copy(model_dir().join(f), m.join(f)).unwrap();
    }
    m
}

/// Rewrites the fixture's checkpoint with another trainer / configuration name.
fn write_variant(dst: &Path, trainer: &str, configuration: &str) {
    let ck = nnunet_model::read_checkpoint(&model_dir().join("fold_0/checkpoint_final.pth")).unwrap();
    let tensors: Vec<tch::Tensor> = ck.weights.iter().map(|(_, t)| t.shallow_clone()).collect();
    let sd = ck.weights.iter().enumerate().map(|(i, (n, t))| (n.clone(), pth::tensor_out(i, t))).collect();
    let root = Out::Dict(vec![
        ("network_weights".into(), Out::OrderedDict(sd)),
        ("init_args".into(), Out::Dict(vec![("configuration".into(), Out::Str(configuration.into()))])),
        ("trainer_name".into(), Out::Str(trainer.into())),
        ("inference_allowed_mirroring_axes".into(), Out::Tuple(vec![Out::Int(0), Out::Int(1)])),
    ]);
    pth::write(dst, &root, &tensors).unwrap();
}

fn predict_err(model: &Path, dir: &Path) -> String {
    let out = dir.join("pred");
    let err = run_err(worker().args(["predict", "-f", "0", "-m"]).arg(model).arg("-i").arg(fixture().join("imagesTs")).arg("-o").arg(&out));
    let n = std::fs::read_dir(&out).map(|r| r.count()).unwrap_or(0);
    assert_eq!(n, 0, "a refused model must not write masks");
    err
}

#[test]
fn bad_models_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    // Truncated .pth.
    let m = copy_model(dir.path());
    let p = m.join("fold_0/checkpoint_final.pth");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    let e = predict_err(&m, dir.path());
    assert!(e.contains("truncated") && e.contains("checkpoint_final.pth"), "{e}");
    // A 3d model.
    let plans_path = m.join("plans.json");
    let mut plans: serde_json::Value = serde_json::from_slice(&std::fs::read(&plans_path).unwrap()).unwrap();
    let mut c3 = plans["configurations"]["2d"].clone();
    c3["patch_size"] = serde_json::json!([32, 48, 64]);
    plans["configurations"]["3d_fullres"] = c3;
    std::fs::write(&plans_path, serde_json::to_vec(&plans).unwrap()).unwrap();
    write_variant(&p, "nnUNetTrainer", "3d_fullres");
    let e = predict_err(&m, dir.path());
    assert!(e.contains("'3d_fullres'") && e.contains("2D models only"), "{e}");
    // Trainers that build another network.
    write_variant(&p, "nnUNetTrainerBN", "2d");
    let e = predict_err(&m, dir.path());
    assert!(e.contains("nnUNetTrainerBN") && e.contains("BatchNorm"), "{e}");
    // An unknown network_class_name.
    write_variant(&p, "nnUNetTrainer", "2d");
    plans["configurations"]["2d"]["architecture"]["network_class_name"] =
        "dynamic_network_architectures.architectures.unet.ResidualUNet".into();
    std::fs::write(&plans_path, serde_json::to_vec(&plans).unwrap()).unwrap();
    let e = predict_err(&m, dir.path());
    assert!(e.contains("ResidualUNet") && e.contains("not supported"), "{e}");
    // ResidualEncoderUNet named over PlainConvUNet arch_kwargs: an inconsistent plans file.
    plans["configurations"]["2d"]["architecture"]["network_class_name"] =
        "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet".into();
    std::fs::write(&plans_path, serde_json::to_vec(&plans).unwrap()).unwrap();
    let e = predict_err(&m, dir.path());
    assert!(e.contains("ResidualEncoderUNet") && e.contains("does not fit its arch_kwargs"), "{e}");
    // A zip without plans.json: refused, nothing written next to the output.
    let zip_path = dir.path().join("noplans.zip");
    nnunet_zip(&zip_path, &["plans.json"]);
    let target = dir.path().join("imports/model");
    let e = run_err(worker().arg("import-model").arg(&zip_path).arg("-o").arg(&target));
    assert!(e.contains("no plans.json"), "{e}");
    assert!(!target.exists());
    let left: Vec<_> = std::fs::read_dir(dir.path().join("imports"))
        .map(|r| r.filter_map(|e| e.ok()).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left behind: {left:?}");
    // A truncated zip.
    let good = dir.path().join("good.zip");
    nnunet_zip(&good, &[]);
    let b = std::fs::read(&good).unwrap();
    std::fs::write(&good, &b[..b.len() - 100]).unwrap();
    let e = run_err(worker().arg("import-model").arg(&good).arg("-o").arg(&target));
    assert!(e.contains("truncated"), "{e}");
    assert!(!target.exists());
}

#[test]
fn pretrained_weights_follow_nnunet_semantics() {
    let pth_path = model_dir().join("fold_0/checkpoint_final.pth");
    let plans: serde_json::Value = serde_json::from_slice(&std::fs::read(model_dir().join("plans.json")).unwrap()).unwrap();
    let config = nnunet_model::resolve_configuration(&plans, "2d", Path::new("plans.json")).unwrap();
    let arch = &config.architecture.arch_kwargs;
    // Same encoder/decoder, 3 classes instead of 2: everything but the heads is transferred.
    tch::manual_seed(1);
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let net = PlainConvUNet::new(&vs.root(), arch, 3, 3);
    let before = vs.variables()["decoder.seg_layers.0.weight"].copy();
    let msg = pretrained::load_pretrained_weights(&net, &vs, &pth_path).unwrap();
    assert!(msg.contains("start fresh"), "{msg}");
    let vars = vs.variables();
    let ck = nnunet_model::read_checkpoint(&pth_path).unwrap();
    let src: std::collections::HashMap<_, _> = ck.weights.into_iter().collect();
    assert!(vars["encoder.stages.0.0.convs.0.conv.weight"].equal(&src["encoder.stages.0.0.convs.0.conv.weight"]));
    assert!(vars["decoder.transpconvs.0.weight"].equal(&src["decoder.transpconvs.0.weight"]));
    assert!(vars["decoder.seg_layers.0.weight"].equal(&before), "heads must keep their fresh init");
    // A different network (1 input channel, wider stages): refused, every mismatch listed, nothing loaded.
    let mut wide = arch.clone();
    wide.features_per_stage = wide.features_per_stage.iter().map(|f| f * 2).collect();
    let vs2 = tch::nn::VarStore::new(tch::Device::Cpu);
    let net2 = PlainConvUNet::new(&vs2.root(), &wide, 1, 2);
    let e = pretrained::load_pretrained_weights(&net2, &vs2, &pth_path).unwrap_err().to_string();
    assert!(e.contains("encoder.stages.0.0.convs.0.conv.weight: pretrained [8, 3, 3, 3], network [16, 1, 3, 3]"), "{e}");
    assert!(e.contains("decoder.stages.0.convs.0.conv.weight"), "{e}");
    assert!(!e.contains("seg_layers"), "heads are not compared: {e}");
    // Ours (.safetensors, from import) works the same way.
    let dir = tempfile::tempdir().unwrap();
    let zip_in = dir.path().join("m.zip");
    nnunet_zip(&zip_in, &[]);
    let ours = dir.path().join("ours");
    model_zip::import_model(&zip_in, &ours).unwrap();
    let vs3 = tch::nn::VarStore::new(tch::Device::Cpu);
    let net3 = PlainConvUNet::new(&vs3.root(), arch, 3, 5);
    pretrained::load_pretrained_weights(&net3, &vs3, &ours.join("fold_0/checkpoint_final.safetensors")).unwrap();
    assert!(vs3.variables()["encoder.stages.1.0.convs.0.conv.weight"].equal(&src["encoder.stages.1.0.convs.0.conv.weight"]));
}
