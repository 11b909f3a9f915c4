//! Model folders both ways:
//! - [`export_model`]: our model folder -> the zip `nnUNetv2_install_pretrained_model_from_zip` installs
//!   (`nnunetv2/model_sharing/model_import.py::install_model_from_zip_file` extracts it into
//!   `nnUNet_results`): `DatasetXXX_Name/nnUNetTrainer__<plans_name>__2d/{plans.json, dataset.json,
//!   dataset_fingerprint.json, fold_K/checkpoint_final.pth}`, each `.pth` holding what
//!   `nnUNetTrainer.save_checkpoint` writes and the predictor reads.
//! - [`import_model`]: such a zip -> our model folder (`.safetensors` + sidecar per fold), ready for
//!   `nnunet predict`. Extracted into a temporary folder next to the output and renamed into place, so
//!   a failure leaves nothing behind.
use super::nnunet_model::{self, STATE_DICT_ALIAS};
use super::pickle::Out;
use super::pth;
use crate::checkpoint;
use anyhow::{anyhow, bail, Context, Result};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use tch::Tensor;

/// JSON -> pickle (dicts keep their order; integers stay ints).
pub fn json_to_out(v: &serde_json::Value) -> Out {
    use serde_json::Value as J;
    match v {
        J::Null => Out::None,
        J::Bool(b) => Out::Bool(*b),
        J::Number(n) => n.as_i64().map(Out::Int).unwrap_or_else(|| Out::Float(n.as_f64().unwrap_or(f64::NAN))),
        J::String(s) => Out::Str(s.clone()),
        J::Array(a) => Out::List(a.iter().map(json_to_out).collect()),
        J::Object(o) => Out::Dict(o.iter().map(|(k, v)| (k.clone(), json_to_out(v))).collect()),
    }
}

/// The `.pth` of one fold: `network_weights` as `state_dict()` lists them (with the `decoder.encoder.*`
/// copies, sharing the encoder's storages) plus the entries nnU-Net's predictor and trainer read.
pub fn fold_pth(ckpt_stem: &Path, plans: &serde_json::Value) -> Result<(Out, Vec<Tensor>)> {
    let (_vs, net, meta) = checkpoint::load_network(ckpt_stem, tch::Device::Cpu)?;
    let params = net.named_parameters(&_vs);
    let tensors: Vec<Tensor> = params.iter().map(|(_, t)| t.shallow_clone()).collect();
    let sd = state_dict_names(&params.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>());
    let ordered: Vec<(String, Out)> = sd.into_iter().map(|(n, i)| (n, pth::tensor_out(i, &tensors[i]))).collect();
    let h = &meta.logging;
    let list = |f: &dyn Fn(&nnunet_common::train_log::EpochMetrics) -> Out| Out::List(h.iter().map(f).collect());
    let logging = Out::Dict(vec![
        ("mean_fg_dice".into(), list(&|m| Out::Float(m.mean_fg_dice))),
        ("ema_fg_dice".into(), list(&|m| Out::Float(m.ema_fg_dice))),
        ("dice_per_class_or_region".into(), list(&|m| Out::List(m.pseudo_dice.iter().map(|&d| Out::Float(d)).collect()))),
        ("train_losses".into(), list(&|m| Out::Float(m.train_loss))),
        ("val_losses".into(), list(&|m| Out::Float(m.val_loss))),
        ("lrs".into(), list(&|m| Out::Float(m.lr))),
    ]);
    let a = &meta.init_args;
    let root = Out::Dict(vec![
        ("network_weights".into(), Out::OrderedDict(ordered)),
        ("grad_scaler_state".into(), Out::None),
        ("logging".into(), logging),
        ("_best_ema".into(), meta.best_ema.map(Out::Float).unwrap_or(Out::None)),
        ("current_epoch".into(), Out::Int(meta.epoch as i64)),
        (
            "init_args".into(),
            Out::Dict(vec![
                ("plans".into(), json_to_out(plans)),
                ("configuration".into(), Out::Str(a.configuration_name.clone())),
                (
                    "fold".into(),
                    match a.fold.index() {
                        Some(k) => Out::Int(k as i64),
                        None => Out::Str("all".into()),
                    },
                ),
                ("dataset_json".into(), json_to_out(&a.dataset_json)),
                ("device".into(), Out::Device("cpu".into())),
            ]),
        ),
        ("trainer_name".into(), Out::Str("nnUNetTrainer".into())),
        (
            "inference_allowed_mirroring_axes".into(),
            Out::Tuple(a.inference_allowed_mirroring_axes.iter().map(|&x| Out::Int(x as i64)).collect()),
        ),
    ]);
    Ok((root, tensors))
}

/// The reference `state_dict()` keys for our parameter names, each with the index of the parameter it
/// aliases: every ConvDropoutNormReLU also registers its conv and norm in `all_modules` (a Sequential,
/// dynamic_network_architectures `building_blocks/simple_conv_blocks.py`), and the decoder holds the encoder
/// (`decoder.encoder.*`). Order: encoder, decoder.encoder, then the decoder's stages, transpconvs, heads.
pub fn state_dict_names(params: &[String]) -> Vec<(String, usize)> {
    let mut with_blocks: Vec<(String, usize)> = Vec::with_capacity(params.len() * 2);
    let mut block: Vec<(String, usize)> = Vec::new();
    for (i, name) in params.iter().enumerate() {
        with_blocks.push((name.clone(), i));
        if name.contains(".conv.") || name.contains(".norm.") {
            block.push((name.clone(), i));
        }
        if name.ends_with(".norm.bias") {
            for (n, j) in block.drain(..) {
                with_blocks.push((n.replace(".conv.", ".all_modules.0.").replace(".norm.", ".all_modules.1."), j));
            }
        }
    }
    let (encoder, rest): (Vec<_>, Vec<_>) = with_blocks.into_iter().partition(|(n, _)| n.starts_with("encoder."));
    let copies: Vec<(String, usize)> = encoder.iter().map(|(n, i)| (format!("{STATE_DICT_ALIAS}{}", &n["encoder.".len()..]), *i)).collect();
    encoder.into_iter().chain(copies).chain(rest).collect()
}

/// Fold numbers of `model_dir` that have `{checkpoint}.safetensors`.
pub fn folds_with(model_dir: &Path, checkpoint: &str) -> Vec<usize> {
    let mut v: Vec<usize> = std::fs::read_dir(model_dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().to_string_lossy().strip_prefix("fold_").and_then(|f| f.parse().ok()))
                .filter(|f: &usize| checkpoint::checkpoint_paths(&model_dir.join(format!("fold_{f}")).join(checkpoint)).0.is_file())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn valid_dataset_name(n: &str) -> bool {
    n.len() > 11 && n.starts_with("Dataset") && n[7..10].bytes().all(|b| b.is_ascii_digit()) && n.as_bytes()[10] == b'_' && !n.contains('/')
}

/// Writes `out_zip` from our model folder. Returns the zip's entries.
pub fn export_model(model_dir: &Path, folds: Option<&[usize]>, checkpoint_name: &str, out_zip: &Path) -> Result<Vec<String>> {
    let read = |n: &str| -> Result<serde_json::Value> {
        nnunet_common::error::read_json(&model_dir.join(n))
            .with_context(|| format!("{} is not a model folder: reading {n}", model_dir.display()))
    };
    let plans = read("plans.json")?;
    let dataset_json = read("dataset.json")?;
    let dataset = plans.get("dataset_name").and_then(|d| d.as_str()).unwrap_or("").to_string();
    if !valid_dataset_name(&dataset) {
        bail!("{}: plans.json dataset_name {dataset:?} is not of the form DatasetXXX_Name, which nnU-Net needs", model_dir.display());
    }
    let folds: Vec<usize> = match folds {
        Some(f) if !f.is_empty() => f.to_vec(),
        _ => folds_with(model_dir, checkpoint_name),
    };
    if folds.is_empty() {
        bail!("{}: no fold_K/{checkpoint_name}.safetensors to export; train a fold first", model_dir.display());
    }
    let plans_name = plans.get("plans_name").and_then(|d| d.as_str()).unwrap_or(nnunet_common::paths::PLANS_NAME);
    nnunet_common::paths::check_plans_name(plans_name).with_context(|| format!("{}: plans.json plans_name", model_dir.display()))?;
    let base = format!("{dataset}/{}", nnunet_common::paths::model_folder_name_for(plans_name));
    let mut files: Vec<(String, Vec<u8>)> = vec![
        (format!("{base}/plans.json"), serde_json::to_vec_pretty(&plans)?),
        (format!("{base}/dataset.json"), serde_json::to_vec_pretty(&dataset_json)?),
    ];
    let fp = model_dir.join("dataset_fingerprint.json");
    if fp.is_file() {
        files.push((format!("{base}/dataset_fingerprint.json"), std::fs::read(&fp).with_context(|| format!("reading {}", fp.display()))?));
    }
    for f in &folds {
        let stem = model_dir.join(format!("fold_{f}")).join(checkpoint_name);
        let (root, tensors) = fold_pth(&stem, &plans).with_context(|| format!("exporting fold {f} ({})", stem.display()))?;
        files.push((format!("{base}/fold_{f}/checkpoint_final.pth"), pth::to_bytes(&root, &tensors)?));
    }
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut z = zip::ZipWriter::new(&mut buf);
        let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
        for (name, bytes) in &files {
            z.start_file(name.as_str(), opts)?;
            z.write_all(bytes)?;
        }
        z.finish()?;
    }
    nnunet_common::hash::write_atomic(out_zip, buf.get_ref()).with_context(|| format!("writing {}", out_zip.display()))?;
    Ok(files.into_iter().map(|(n, _)| n).collect())
}

/// What [`import_model`] did.
#[derive(Debug)]
pub struct Imported {
    pub model_folder_in_zip: String,
    pub folds: Vec<nnunet_common::Fold>,
    pub trainer_name: String,
}

/// The model folder inside an nnU-Net zip: the one `X/Trainer__Plans__Config/plans.json` with a 2d config.
fn pick_model_folder(names: &[String], zip_path: &Path) -> Result<String> {
    let mut candidates: Vec<String> =
        names.iter().filter_map(|n| n.strip_suffix("/plans.json")).filter(|d| d.matches('/').count() == 1).map(str::to_string).collect();
    candidates.sort();
    candidates.dedup();
    if candidates.is_empty() {
        bail!(
            "{}: no plans.json inside (an nnU-Net model zip holds DatasetXXX_Name/<Trainer>__<Plans>__<configuration>/plans.json); not an nnU-Net model export",
            zip_path.display()
        );
    }
    let two_d: Vec<&String> = candidates.iter().filter(|d| d.ends_with("__2d")).collect();
    match two_d.as_slice() {
        [one] => Ok((*one).clone()),
        [] => bail!(
            "{}: the zip holds only {candidates:?}; nnunet-rs runs 2d models only (a <Trainer>__<Plans>__2d folder)",
            zip_path.display()
        ),
        many => bail!("{}: the zip holds several 2d model folders {many:?}; export one model per zip", zip_path.display()),
    }
}

/// Reads `zip_path` (an nnU-Net model zip) into our model folder `out_dir` (must not exist yet).
pub fn import_model(zip_path: &Path, out_dir: &Path) -> Result<Imported> {
    if out_dir.exists() {
        bail!("{} already exists; give a new folder for the imported model", out_dir.display());
    }
    let file = std::fs::File::open(zip_path).with_context(|| format!("opening {}", zip_path.display()))?;
    let mut z = zip::ZipArchive::new(file)
        .map_err(|e| anyhow!("{}: not a readable zip archive ({e}); the file may be truncated", zip_path.display()))?;
    let names: Vec<String> = z.file_names().map(str::to_string).collect();
    let folder = pick_model_folder(&names, zip_path)?;
    let parent = out_dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let tmp = tempfile::Builder::new()
        .prefix(".nnunet-import-")
        .tempdir_in(parent)
        .with_context(|| format!("temp folder in {}", parent.display()))?;
    let mut read = |name: &str| -> Result<Vec<u8>> {
        let mut f = z.by_name(name).map_err(|e| anyhow!("{}: {name}: {e}", zip_path.display()))?;
        let mut b = Vec::new();
        f.read_to_end(&mut b).map_err(|e| anyhow!("{}: reading {name}: {e} (truncated zip?)", zip_path.display()))?;
        Ok(b)
    };
    for n in ["plans.json", "dataset.json", "dataset_fingerprint.json"] {
        let entry = format!("{folder}/{n}");
        if names.contains(&entry) {
            nnunet_common::hash::write_atomic(&tmp.path().join(n), &read(&entry)?)?;
        } else if n != "dataset_fingerprint.json" {
            bail!("{}: {entry} is missing from the zip", zip_path.display());
        }
    }
    let mut folds = Vec::new();
    let mut trainer_name = String::new();
    let mut fold_entries: Vec<(nnunet_common::Fold, String, String)> = names
        .iter()
        .filter_map(|n| {
            let rest = n.strip_prefix(&format!("{folder}/fold_"))?;
            let (f, file) = rest.split_once('/')?;
            let stem = file.strip_suffix(".pth").filter(|s| *s == "checkpoint_final" || *s == "checkpoint_best")?;
            Some((f.parse().ok()?, stem.to_string(), n.clone()))
        })
        .collect();
    fold_entries.sort();
    if !fold_entries.iter().any(|(_, s, _)| s == "checkpoint_final") {
        bail!("{}: {folder} holds no fold_K/checkpoint_final.pth", zip_path.display());
    }
    for (fold, stem, entry) in &fold_entries {
        let fold_dir = tmp.path().join(fold.dir_name());
        let pth_path = fold_dir.join(format!("{stem}.pth"));
        nnunet_common::hash::write_atomic(&pth_path, &read(entry)?)?;
        let l = nnunet_model::load_fold(tmp.path(), *fold, &pth_path, tch::Device::Cpu)
            .with_context(|| format!("{}: converting {entry}", zip_path.display()))?;
        let mut meta = l.meta;
        meta.kind = stem.trim_start_matches("checkpoint_").to_string();
        trainer_name = meta.trainer_name.clone();
        checkpoint::save(&fold_dir, stem, &l.net.named_parameters(&l.vs), &[], &mut meta)?;
        std::fs::remove_file(&pth_path)?;
        if stem == "checkpoint_final" {
            folds.push(*fold);
        }
    }
    let kept: PathBuf = tmp.keep();
    std::fs::rename(&kept, out_dir).with_context(|| format!("moving the imported model to {}", out_dir.display()))?;
    Ok(Imported { model_folder_in_zip: folder, folds, trainer_name })
}
