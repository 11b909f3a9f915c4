//! nnU-Net v2 trainer folders (`plans.json`, `dataset.json`, `fold_K/checkpoint_final.pth`): reading a
//! checkpoint into our [`PlainConvUNet`], with the checks nnU-Net's own predictor relies on
//! (`nnunetv2/inference/predict_from_raw_data.py::nnUNetPredictor.initialize_from_trained_model_folder`:
//! `trainer_name`, `init_args['configuration']`, `inference_allowed_mirroring_axes`, `network_weights`).
//!
//! State-dict names: the reference `PlainConvUNet` keeps a reference to its encoder inside the decoder
//! (dynamic_network_architectures `unet_decoder.py`, `self.encoder = encoder`), so `state_dict()` lists
//! every encoder weight twice, as `encoder.*` and `decoder.encoder.*`, and each conv block its conv and
//! norm twice ([`ALL_MODULES`]). Our parameter names are the `named_parameters()` ones (deduplicated); the
//! copies are skipped when reading and written back by `model_zip::state_dict_names`.
use super::pickle::Value;
use super::pth;
use crate::checkpoint::{CheckpointMeta, GradScalerState, InitArgs, RngState, FORMAT_VERSION};
use crate::net::{NetworkClass, PlainConvUNet};
use anyhow::{anyhow, bail, Context, Result};
use nnunet_common::dataset_json::DatasetJson;
use nnunet_common::plans::Configuration2d;
use std::path::Path;
use tch::Tensor;

/// Prefix under which the reference state_dict repeats the encoder's weights.
pub const STATE_DICT_ALIAS: &str = "decoder.encoder.";

/// Every conv block also lists its conv and norm as `all_modules.0` / `all_modules.1` (a Sequential of the
/// same modules, dynamic_network_architectures `building_blocks/simple_conv_blocks.py::ConvDropoutNormReLU`).
pub const ALL_MODULES: &str = ".all_modules.";

/// The parts of an nnU-Net checkpoint that inference and fine-tuning use.
pub struct NnunetCheckpoint {
    pub trainer_name: String,
    pub configuration: String,
    /// `None` when the checkpoint disables mirroring (e.g. `nnUNetTrainerNoMirroring`).
    pub mirroring_axes: Option<Vec<usize>>,
    /// `network_weights` in file order, `decoder.encoder.*` copies and `_orig_mod.`/`module.` prefixes removed.
    pub weights: Vec<(String, Tensor)>,
    pub current_epoch: Option<i64>,
    pub best_ema: Option<f64>,
}

/// Trainers whose network differs from PlainConvUNet (nnunetv2 `training/nnUNetTrainer/variants/
/// network_architecture/nnUNetTrainerBN.py` and `primus/primus_trainers.py` override
/// `build_network_architecture`).
const REFUSED_TRAINERS: &[(&str, &str)] = &[("nnUNetTrainerBN", "uses BatchNorm"), ("Primus", "builds a Primus transformer")];

/// Refuses trainers whose network we cannot build.
pub fn check_trainer(name: &str) -> Result<()> {
    for (pat, why) in REFUSED_TRAINERS {
        if name.contains(pat) {
            bail!("trainer {name} {why} instead of PlainConvUNet with InstanceNorm; nnunet-rs cannot run it");
        }
    }
    if !name.starts_with("nnUNetTrainer") {
        bail!(
            "trainer {name} is not an nnUNetTrainer variant nnunet-rs knows; only trainers that build the plans' PlainConvUNet unchanged can run"
        );
    }
    Ok(())
}

fn strip_prefixes(name: &str) -> &str {
    let mut n = name;
    loop {
        if let Some(r) = n.strip_prefix("module.").or_else(|| n.strip_prefix("_orig_mod.")) {
            n = r;
        } else {
            return n;
        }
    }
}

/// Reads the weights of a `.pth` (`network_weights`) and the fields inference needs.
pub fn read_checkpoint(path: &Path) -> Result<NnunetCheckpoint> {
    let loaded = pth::read(path)?;
    let root = &loaded.root;
    let field = |k: &str| root.get(k).ok_or_else(|| anyhow!("{}: not an nnU-Net checkpoint (no '{k}' entry)", path.display()));
    let trainer_name = field("trainer_name")?.as_str().ok_or_else(|| anyhow!("{}: trainer_name is not a string", path.display()))?;
    let configuration = field("init_args")?
        .get("configuration")
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("{}: init_args has no configuration name", path.display()))?;
    let mirroring_axes = match root.get("inference_allowed_mirroring_axes") {
        None | Some(Value::None) => None,
        Some(v) => Some(
            v.as_seq()
                .and_then(|s| s.iter().map(|a| a.as_i64().and_then(|i| usize::try_from(i).ok())).collect::<Option<Vec<_>>>())
                .ok_or_else(|| anyhow!("{}: inference_allowed_mirroring_axes is not a tuple of axes", path.display()))?,
        ),
    };
    let Value::Dict(items) = field("network_weights")? else { bail!("{}: network_weights is not a state_dict", path.display()) };
    let mut weights = Vec::with_capacity(items.len());
    for (k, v) in items {
        let name = k.as_str().ok_or_else(|| anyhow!("{}: a network_weights key is not a string", path.display()))?;
        let name = strip_prefixes(name);
        if name.starts_with(STATE_DICT_ALIAS) || name.contains(ALL_MODULES) {
            continue;
        }
        let t = loaded.tensor(v).ok_or_else(|| anyhow!("{}: network_weights[{name}] is not a tensor", path.display()))?;
        weights.push((name.to_string(), t.shallow_clone()));
    }
    Ok(NnunetCheckpoint {
        trainer_name: trainer_name.to_string(),
        configuration: configuration.to_string(),
        mirroring_axes,
        weights,
        current_epoch: root.get("current_epoch").and_then(Value::as_i64),
        best_ema: root.get("_best_ema").and_then(Value::as_f64),
    })
}

/// nnU-Net's configuration lookup with `inherits_from` (`nnunetv2/utilities/plans_handling/plans_handler.py::
/// PlansManager._internal_resolve_configuration_inheritance`), refusing 3D configurations.
pub fn resolve_configuration(plans: &serde_json::Value, name: &str, what: &Path) -> Result<Configuration2d> {
    let configs =
        plans.get("configurations").and_then(|c| c.as_object()).ok_or_else(|| anyhow!("{}: no configurations", what.display()))?;
    let mut chain = vec![name.to_string()];
    let mut merged = serde_json::Map::new();
    let mut cur = name.to_string();
    loop {
        let c = configs.get(&cur).and_then(|c| c.as_object()).ok_or_else(|| {
            anyhow!("{}: configuration '{cur}' is not in the plans (they have {:?})", what.display(), configs.keys().collect::<Vec<_>>())
        })?;
        for (k, v) in c {
            merged.entry(k.clone()).or_insert_with(|| v.clone());
        }
        match c.get("inherits_from").and_then(|p| p.as_str()) {
            Some(p) if chain.iter().any(|c| c == p) => bail!("{}: configuration inheritance cycle {chain:?} -> {p}", what.display()),
            Some(p) => {
                chain.push(p.to_string());
                cur = p.to_string();
            }
            None => break,
        }
    }
    let dims = merged.get("patch_size").and_then(|p| p.as_array()).map(|p| p.len()).unwrap_or(0);
    if dims == 3 || name.starts_with("3d") {
        bail!(
            "{}: the model uses nnU-Net configuration '{name}' ({dims}D patch); nnunet-rs runs 2D models only (configuration '2d')",
            what.display()
        );
    }
    if merged.get("previous_stage").is_some_and(|p| !p.is_null()) {
        bail!("{}: configuration '{name}' is a cascade stage; nnunet-rs runs the 2d configuration only", what.display());
    }
    let config: Configuration2d = serde_json::from_value(serde_json::Value::Object(merged))
        .map_err(|e| anyhow!("{}: configuration '{name}' is malformed: {e}", what.display()))?;
    check_architecture(&config, what)?;
    Ok(config)
}

/// The plans' network must be one we build: PlainConvUNet (`nnUNetPlans`) or ResidualEncoderUNet
/// (`nnUNetResEncUNet{M,L,XL}Plans`), with the arch_kwargs of that class.
pub fn check_architecture(config: &Configuration2d, what: &Path) -> Result<()> {
    let arch = &config.architecture;
    let a = &arch.arch_kwargs;
    let class = NetworkClass::from_class_name(&arch.network_class_name).map_err(|e| anyhow!("{}: {e}", what.display()))?;
    if class != NetworkClass::of(a) {
        bail!(
            "{}: network_class_name {} does not fit its arch_kwargs, which describe a {:?} ({}); the plans file is inconsistent",
            what.display(),
            arch.network_class_name,
            NetworkClass::of(a),
            if a.n_blocks_per_stage.is_empty() { "n_conv_per_stage, no n_blocks_per_stage" } else { "n_blocks_per_stage" }
        );
    }
    let checks = [
        (a.conv_op.ends_with("Conv2d"), format!("conv_op {}", a.conv_op)),
        (a.norm_op.ends_with("InstanceNorm2d"), format!("norm_op {}", a.norm_op)),
        (a.nonlin.ends_with("LeakyReLU"), format!("nonlin {}", a.nonlin)),
        (a.dropout_op.is_none(), format!("dropout_op {:?}", a.dropout_op)),
        (a.nonlin_kwargs.get("negative_slope").is_none_or(|s| s.as_f64() == Some(0.01)), format!("nonlin_kwargs {}", a.nonlin_kwargs)),
    ];
    for (ok, what_) in checks {
        if !ok {
            bail!("{}: the plans' {class:?} uses {what_}; nnunet-rs builds Conv2d + InstanceNorm2d + LeakyReLU(0.01) only", what.display());
        }
    }
    PlainConvUNet::check_arch(a).map_err(|e| anyhow!("{}: {e}", what.display()))
}

/// Checks names and shapes one to one and copies the weights into `net` (like `load_state_dict(strict=True)`).
pub fn copy_weights(net: &PlainConvUNet, vs: &tch::nn::VarStore, weights: &[(String, Tensor)], what: &Path) -> Result<()> {
    let ours = net.named_parameters(vs);
    let theirs: std::collections::HashMap<&str, &Tensor> = weights.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut problems = Vec::new();
    for (name, var) in &ours {
        match theirs.get(name.as_str()) {
            None => problems.push(format!("missing {name} {:?}", var.size())),
            Some(t) if t.size() != var.size() => problems.push(format!("{name}: checkpoint {:?}, network {:?}", t.size(), var.size())),
            _ => {}
        }
    }
    let known: std::collections::HashSet<&str> = ours.iter().map(|(n, _)| n.as_str()).collect();
    problems.extend(weights.iter().filter(|(n, _)| !known.contains(n.as_str())).map(|(n, t)| format!("unexpected {n} {:?}", t.size())));
    if !problems.is_empty() {
        bail!(
            "{}: the weights do not fit the PlainConvUNet built from the plans ({} problem(s)):\n  {}",
            what.display(),
            problems.len(),
            problems.join("\n  ")
        );
    }
    tch::no_grad(|| {
        for (name, mut var) in ours {
            var.copy_(theirs[name.as_str()]);
        }
    });
    Ok(())
}

/// Number of input channels and output classes for `dataset.json` (nnU-Net's
/// `determine_num_input_channels` and `LabelManager.num_segmentation_heads`: one per region with regions).
pub fn channels_and_classes(dj_value: &serde_json::Value, what: &Path) -> Result<(i64, i64)> {
    let dj: DatasetJson =
        serde_json::from_value(dj_value.clone()).map_err(|e| anyhow!("{}: dataset.json is malformed: {e}", what.display()))?;
    let channels = dj_value.get("modality").and_then(|m| m.as_object()).map(|m| m.len()).unwrap_or_else(|| dj.num_channels());
    let heads = nnunet_common::labels::LabelManager::new(&dj).map_err(|e| anyhow!("{}: {e}", what.display()))?.num_segmentation_heads();
    Ok((channels as i64, heads as i64))
}

/// Our checkpoint sidecar for an imported nnU-Net checkpoint.
pub fn meta_for(
    ck: &NnunetCheckpoint,
    config: Configuration2d,
    dataset_json: serde_json::Value,
    fold: nnunet_common::Fold,
    c: (i64, i64),
) -> CheckpointMeta {
    let epoch = ck.current_epoch.unwrap_or(0).max(0) as usize;
    CheckpointMeta {
        format_version: FORMAT_VERSION,
        trainer_name: ck.trainer_name.clone(),
        kind: "final".into(),
        epoch,
        epochs_total: epoch,
        lr: 0.0,
        ema_fg_dice: ck.best_ema,
        best_ema: ck.best_ema,
        logging: vec![],
        rng: RngState { seed: 0, next_epoch: epoch },
        grad_scaler: None::<GradScalerState>,
        weights_file: String::new(),
        sha256: String::new(),
        init_args: InitArgs {
            configuration: config,
            configuration_name: ck.configuration.clone(),
            dataset_json,
            fold,
            num_input_channels: c.0,
            num_classes: c.1,
            inference_allowed_mirroring_axes: ck.mirroring_axes.clone().unwrap_or_default(),
        },
        training_config: serde_json::json!({ "imported_from": "nnU-Net v2 checkpoint" }),
    }
}

/// One fold of an nnU-Net model folder, ready for inference.
pub struct LoadedFold {
    pub vs: tch::nn::VarStore,
    pub net: PlainConvUNet,
    pub meta: CheckpointMeta,
}

/// Loads `model_dir/fold_{fold}/{checkpoint}.pth` with `model_dir`'s plans.json and dataset.json.
pub fn load_fold(model_dir: &Path, fold: nnunet_common::Fold, pth_path: &Path, device: tch::Device) -> Result<LoadedFold> {
    let ck = read_checkpoint(pth_path)?;
    check_trainer(&ck.trainer_name).with_context(|| format!("{}", pth_path.display()))?;
    let plans_path = model_dir.join("plans.json");
    let plans: serde_json::Value = nnunet_common::error::read_json(&plans_path)
        .with_context(|| format!("{} is not an nnU-Net model folder: reading plans.json", model_dir.display()))?;
    let dj_path = model_dir.join("dataset.json");
    let dj: serde_json::Value = nnunet_common::error::read_json(&dj_path)
        .with_context(|| format!("{} is not an nnU-Net model folder: reading dataset.json", model_dir.display()))?;
    let config = resolve_configuration(&plans, &ck.configuration, &plans_path)?;
    let c = channels_and_classes(&dj, &dj_path)?;
    let vs = tch::nn::VarStore::new(device);
    let net = PlainConvUNet::new(&vs.root(), &config.architecture.arch_kwargs, c.0, c.1);
    copy_weights(&net, &vs, &ck.weights, pth_path)?;
    let meta = meta_for(&ck, config, dj, fold, c);
    Ok(LoadedFold { vs, net, meta })
}
