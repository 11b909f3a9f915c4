//! nnU-Net's folder conventions: `nnUNet_raw`, `nnUNet_preprocessed`, `nnUNet_results`, dataset
//! names `DatasetXXX_Name`, and the per-configuration folders (`nnunetv2/paths.py`,
//! `nnunetv2/utilities/dataset_name_id_conversion.py`, nnU-Net's `documentation/setting_up_paths.md`).
use crate::{Error, Result};
use std::path::{Path, PathBuf};

pub const PLANS_NAME: &str = "nnUNetPlans";
pub const CONFIGURATION: &str = "2d";
pub const TRAINER_NAME: &str = "nnUNetTrainer";

/// `nnUNetPlans_2d`: the data identifier, i.e. the folder of preprocessed cases.
pub fn data_identifier() -> String {
    format!("{PLANS_NAME}_{CONFIGURATION}")
}

/// `nnUNetTrainer__nnUNetPlans__2d`: the model folder name under `nnUNet_results/<dataset>/`.
pub fn model_folder_name() -> String {
    model_folder_name_for(PLANS_NAME)
}

/// `nnUNetTrainer__<plans>__2d`: the model folder name for a plans file (`-p` in nnU-Net).
pub fn model_folder_name_for(plans_name: &str) -> String {
    format!("{TRAINER_NAME}__{plans_name}__{CONFIGURATION}")
}

/// Checks a plans name (`-p`/`--plans`) before it becomes part of a file name: nnU-Net's names are
/// identifiers (`nnUNetPlans`, `nnUNetResEncUNetMPlans`, ...).
pub fn check_plans_name(name: &str) -> Result<()> {
    let ok = !name.is_empty() && name.len() <= 128 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!("plans name {name:?} must be letters, digits, '_' or '-' (e.g. nnUNetPlans, nnUNetResEncUNetMPlans)")))
    }
}

fn env_dir(var: &'static str, hint: &'static str) -> Result<PathBuf> {
    match std::env::var_os(var) {
        Some(v) if !v.is_empty() => Ok(PathBuf::from(v)),
        _ => Err(Error::Env { var, hint }),
    }
}

pub fn raw_root() -> Result<PathBuf> {
    env_dir("nnUNet_raw", "export nnUNet_raw=/path/to/nnUNet_raw or pass --out/--raw")
}
pub fn preprocessed_root() -> Result<PathBuf> {
    env_dir("nnUNet_preprocessed", "export nnUNet_preprocessed=/path/to/nnUNet_preprocessed or pass --preprocessed")
}
pub fn results_root() -> Result<PathBuf> {
    env_dir("nnUNet_results", "export nnUNet_results=/path/to/nnUNet_results or pass --results")
}

/// `Dataset%03d_Name`.
pub fn dataset_name(id: u32, name: &str) -> String {
    format!("Dataset{id:03}_{name}")
}

/// Parses `Dataset042_Foo` into (42, "Foo").
pub fn parse_dataset_name(s: &str) -> Option<(u32, String)> {
    let rest = s.strip_prefix("Dataset")?;
    let (id, name) = rest.split_once('_')?;
    if id.len() != 3 || !id.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((id.parse().ok()?, name.to_string()))
}

/// Resolves a dataset given as a path, a full name (`Dataset042_Foo`) or an id (`42`) inside `root`.
pub fn resolve_dataset(root: &Path, spec: &str) -> Result<PathBuf> {
    let as_path = Path::new(spec);
    if as_path.is_dir() {
        return Ok(as_path.to_path_buf());
    }
    let direct = root.join(spec);
    if direct.is_dir() {
        return Ok(direct);
    }
    if let Ok(id) = spec.parse::<u32>() {
        let prefix = format!("Dataset{id:03}_");
        let entries = std::fs::read_dir(root).map_err(|e| Error::io(root, e))?;
        let mut found: Vec<PathBuf> =
            entries.filter_map(|e| e.ok()).filter(|e| e.file_name().to_string_lossy().starts_with(&prefix)).map(|e| e.path()).collect();
        found.sort();
        match found.len() {
            1 => return Ok(found.remove(0)),
            0 => {}
            _ => return Err(Error::Invalid(format!("several datasets with id {id} in {}: {found:?}", root.display()))),
        }
    }
    Err(Error::Invalid(format!(
        "dataset {spec:?} not found: not a folder, and no {} entry in {}",
        if spec.parse::<u32>().is_ok() { "DatasetXXX_*" } else { "such" },
        root.display()
    )))
}

/// The folders of one dataset across the three roots.
#[derive(Debug, Clone)]
pub struct DatasetDirs {
    pub name: String,
    pub raw: PathBuf,
    pub preprocessed: PathBuf,
    pub results: PathBuf,
    /// The plans file in use (`nnUNetPlans`, or a Residual Encoder preset's; nnU-Net's `-p`).
    pub plans_name: String,
}

impl DatasetDirs {
    pub fn new(name: &str, raw_root: &Path, preprocessed_root: &Path, results_root: &Path) -> Self {
        DatasetDirs {
            name: name.to_string(),
            raw: raw_root.join(name),
            preprocessed: preprocessed_root.join(name),
            results: results_root.join(name),
            plans_name: PLANS_NAME.to_string(),
        }
    }
    /// The same folders with another plans file (its plans JSON and model folder; the preprocessed
    /// data folder is the configuration's `data_identifier`, shared by nnU-Net's presets).
    pub fn with_plans(mut self, plans_name: &str) -> Self {
        self.plans_name = plans_name.to_string();
        self
    }
    pub fn plans_file(&self) -> PathBuf {
        self.preprocessed.join(format!("{}.json", self.plans_name))
    }
    pub fn fingerprint_file(&self) -> PathBuf {
        self.preprocessed.join("dataset_fingerprint.json")
    }
    pub fn splits_file(&self) -> PathBuf {
        self.preprocessed.join("splits_final.json")
    }
    pub fn data_dir(&self) -> PathBuf {
        self.preprocessed.join(data_identifier())
    }
    pub fn gt_dir(&self) -> PathBuf {
        self.preprocessed.join("gt_segmentations")
    }
    pub fn model_dir(&self) -> PathBuf {
        self.results.join(model_folder_name_for(&self.plans_name))
    }
    pub fn fold_dir(&self, fold: usize) -> PathBuf {
        self.model_dir().join(format!("fold_{fold}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn dataset_names_round_trip() {
        assert_eq!(dataset_name(7, "Foo"), "Dataset007_Foo");
        assert_eq!(parse_dataset_name("Dataset042_My_Data"), Some((42, "My_Data".into())));
        assert_eq!(parse_dataset_name("Task042_Foo"), None);
        assert_eq!(parse_dataset_name("Dataset42_Foo"), None);
    }
}
