//! Everything about a fold that does not change during training ([`Setup`]): plans, dataset.json,
//! the fold's training and validation cases ([`fold_split`]) and the augmentation parameters.
use super::config::FoldSpec;
use super::loader::CaseData;
use crate::net::PlainConvUNet;
use anyhow::{anyhow, bail, Context};
use nnunet_common::augment::AugConfig;
use nnunet_common::dataset_json::DatasetJson;
use nnunet_common::plans::Plans;
use nnunet_common::splits::Split;
use nnunet_common::Fold;
use std::sync::Arc;

/// The training and validation cases of `fold`. A numbered fold is its entry of
/// `splits_final.json` (nnU-Net's random 80:20 split beyond the file's folds); `all` trains and
/// validates on every case (`nnunetv2/training/nnUNetTrainer/nnUNetTrainer.py::do_split`:
/// `if self.fold == 'all': tr_keys = val_keys = all case identifiers`).
pub fn fold_split(splits: &[Split], ids: &[String], fold: Fold) -> Split {
    match fold {
        Fold::Index(k) => nnunet_common::splits::split_for_fold(splits, ids, k as usize),
        Fold::All => Split { train: ids.to_vec(), val: ids.to_vec() },
    }
}

/// Everything about the fold that does not change during training.
pub(crate) struct Setup {
    pub plans_2d: nnunet_common::plans::Configuration2d,
    pub dataset_json: serde_json::Value,
    pub num_classes: i64,
    pub in_channels: i64,
    pub train_cases: Vec<Arc<CaseData>>,
    pub val_cases: Vec<Arc<CaseData>>,
    pub aug: AugConfig,
    /// The dataset's ignore label (`labels.ignore`), masked out of the loss and the pseudo-Dice.
    pub ignore_label: Option<i64>,
    /// Region-based training: the labels of each region, in output order (`num_classes` is then
    /// the number of regions).
    pub regions: Option<Vec<Vec<i64>>>,
}

fn load_plans(pre: &std::path::Path, plans_name: &str) -> anyhow::Result<nnunet_common::plans::Configuration2d> {
    nnunet_common::paths::check_plans_name(plans_name)?;
    let plans_path = pre.join(format!("{plans_name}.json"));
    if !plans_path.is_file() {
        bail!(
            "no plans {} in {}: plan it first (`nnunet plan-and-preprocess ... --planner ...` writes <plans>.json), or pick another --plans",
            plans_path.file_name().unwrap_or_default().to_string_lossy(),
            pre.display()
        );
    }
    let plans = Plans::load(&plans_path).with_context(|| format!("loading plans {}", plans_path.display()))?;
    let plans_2d = plans.config_2d().with_context(|| format!("plans {}", plans_path.display()))?;
    PlainConvUNet::check_arch(&plans_2d.architecture.arch_kwargs).map_err(|e| anyhow!("{}: {e}", plans_path.display()))?;
    if plans_2d.patch_size.len() != 2 {
        bail!("{}: the 2d configuration's patch_size {:?} must have 2 entries", plans_path.display(), plans_2d.patch_size);
    }
    Ok(plans_2d)
}

pub(crate) fn setup(spec: &FoldSpec) -> anyhow::Result<Setup> {
    let pre = &spec.preprocessed_dir;
    let plans_2d = load_plans(pre, &spec.plans_name)?;
    let dj_path = pre.join("dataset.json");
    let ds = DatasetJson::load(&dj_path).with_context(|| format!("loading {}", dj_path.display()))?;
    let dataset_json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&dj_path).with_context(|| format!("reading {}", dj_path.display()))?)?;
    let lm = nnunet_common::labels::LabelManager::new(&ds).with_context(|| format!("checking {}", dj_path.display()))?;
    let num_classes = lm.num_segmentation_heads() as i64;
    if !lm.has_regions() && num_classes < 2 {
        bail!("{}: {num_classes} class(es); training needs background plus at least one label", dj_path.display());
    }
    let regions = lm.has_regions().then(|| lm.foreground_regions().iter().map(|r| r.members().to_vec()).collect());
    let data_dir = pre.join(&plans_2d.data_identifier);
    let ids =
        nnunet_common::case::list_cases(&data_dir).with_context(|| format!("listing preprocessed cases in {}", data_dir.display()))?;
    if ids.is_empty() {
        bail!("no preprocessed cases in {}; run `nnunet preprocess` first", data_dir.display());
    }
    let raw_dir =
        nnunet_common::paths::raw_root().map(|r| r.join(pre.file_name().unwrap_or_default())).unwrap_or_else(|_| pre.join(".no-raw"));
    let splits = nnunet_common::splits::load_or_create(pre, &raw_dir, &ids).with_context(|| format!("splits of {}", pre.display()))?;
    let split = fold_split(&splits, &ids, spec.fold);
    let open = |list: &[String]| -> anyhow::Result<Vec<Arc<CaseData>>> {
        list.iter().map(|id| CaseData::open(&data_dir, id).map(Arc::new)).collect()
    };
    let train_cases = open(&split.train)?;
    let mut val_cases = open(&split.val)?;
    if train_cases.is_empty() {
        bail!("fold {} of {} has no training cases", spec.fold, pre.display());
    }
    if val_cases.is_empty() {
        // nnU-Net would fail here too; validating on the training cases keeps tiny datasets usable.
        val_cases = train_cases.clone();
    }
    let in_channels = train_cases[0].shape[0] as i64;
    if in_channels as usize != ds.num_channels() {
        bail!("preprocessed case {} has {in_channels} channels, dataset.json lists {}", train_cases[0].id, ds.num_channels());
    }
    let patch = [plans_2d.patch_size[0], plans_2d.patch_size[1]];
    let mask_channels = plans_2d.use_mask_for_norm.iter().enumerate().filter(|(_, &m)| m).map(|(i, _)| i).collect();
    let aug = AugConfig {
        patch,
        rotation: AugConfig::rotation_for_patch(patch),
        mirror_axes: vec![0, 1],
        mask_channels,
        ds_scales: plans_2d.architecture.arch_kwargs.deep_supervision_scales(),
    };
    let ignore_label = ds.ignore_label();
    Ok(Setup { plans_2d, dataset_json, num_classes, in_channels, train_cases, val_cases, aug, ignore_label, regions })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fold_all_trains_and_validates_on_every_case() {
        let ids: Vec<String> = (0..6).map(|i| format!("c{i}")).collect();
        let splits = nnunet_common::splits::generate_splits(&ids, 5).unwrap();
        let all = fold_split(&splits, &ids, Fold::All);
        assert_eq!((all.train.clone(), all.val.clone()), (ids.clone(), ids.clone()));
        let f0 = fold_split(&splits, &ids, Fold::Index(0));
        assert_eq!(f0.train.len() + f0.val.len(), ids.len());
    }
}
