//! Cross-validation splits, bit-identical to nnU-Net v2's.
//!
//! nnU-Net (`nnunetv2/utilities/crossval_split.py::generate_crossval_split`) runs
//! `sklearn.model_selection.KFold(n_splits=5, shuffle=True, random_state=12345)` over the sorted case
//! ids. sklearn shuffles `arange(n)` with `numpy.random.RandomState(12345).shuffle` and cuts the
//! shuffled indices into `n_splits` consecutive chunks (the first `n % n_splits` one longer); both
//! train and val are then built from boolean masks, so both come out in sorted-id order.
//! To reproduce that we use numpy's legacy generator ([`crate::np_random::NumpyRandomState`]: MT19937 seeded by
//! `init_genrand`, `random_interval` with mask rejection, Fisher-Yates from the end). The same
//! generator reproduces nnU-Net's other seeded draws (fingerprint sampling, foreground locations,
//! the 80:20 fallback split).
pub use crate::np_random::NumpyRandomState;
use crate::{error, Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// One fold, serialized like an entry of nnU-Net's `splits_final.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Split {
    pub train: Vec<String>,
    pub val: Vec<String>,
}

/// `KFold(n_splits, shuffle=True, random_state=seed)` index splits: (train, val) per fold, both sorted.
pub fn kfold_indices(n: usize, n_splits: usize, seed: u32) -> Vec<(Vec<usize>, Vec<usize>)> {
    let mut idx: Vec<usize> = (0..n).collect();
    NumpyRandomState::new(seed).shuffle(&mut idx);
    let mut out = Vec::with_capacity(n_splits);
    let mut start = 0;
    for k in 0..n_splits {
        let size = n / n_splits + usize::from(k < n % n_splits);
        let mut in_val = vec![false; n];
        for &i in &idx[start..start + size] {
            in_val[i] = true;
        }
        start += size;
        let val: Vec<usize> = (0..n).filter(|&i| in_val[i]).collect();
        let train: Vec<usize> = (0..n).filter(|&i| !in_val[i]).collect();
        out.push((train, val));
    }
    out
}

/// nnU-Net's default split: `generate_crossval_split(sorted(ids), seed=12345, n_splits)`.
/// Errors (like sklearn) when there are fewer cases than folds.
pub fn generate_splits(ids: &[String], n_folds: usize) -> Result<Vec<Split>> {
    if n_folds < 2 || ids.len() < n_folds {
        return Err(Error::Invalid(format!(
            "cannot make a {n_folds}-fold cross-validation split of {} case(s): need at least {n_folds} training cases \
             (add cases, or provide your own splits_final.json in the raw dataset folder)",
            ids.len()
        )));
    }
    let mut keys: Vec<String> = ids.to_vec();
    keys.sort();
    Ok(kfold_indices(keys.len(), n_folds, 12345)
        .into_iter()
        .map(|(tr, va)| Split {
            train: tr.into_iter().map(|i| keys[i].clone()).collect(),
            val: va.into_iter().map(|i| keys[i].clone()).collect(),
        })
        .collect())
}

/// The random 80:20 split nnU-Net uses when `fold >= len(splits)` (`nnUNetTrainer.do_split`):
/// `RandomState(12345 + fold).choice(n, int(0.8 n), replace=False)` over the sorted ids; train keeps
/// the draw order, val is in sorted order.
pub fn fallback_split(ids: &[String], fold: usize) -> Split {
    let mut keys: Vec<String> = ids.to_vec();
    keys.sort();
    let n = keys.len();
    let n_tr = (n as f64 * 0.8) as usize;
    let idx_tr = NumpyRandomState::new(12345 + fold as u32).choice_without_replacement(n, n_tr);
    let mut is_tr = vec![false; n];
    for &i in &idx_tr {
        is_tr[i] = true;
    }
    Split {
        train: idx_tr.iter().map(|&i| keys[i].clone()).collect(),
        val: (0..n).filter(|&i| !is_tr[i]).map(|i| keys[i].clone()).collect(),
    }
}

/// The split of `fold` from `splits`, or the 80:20 fallback when the file has fewer folds.
pub fn split_for_fold(splits: &[Split], ids: &[String], fold: usize) -> Split {
    splits.get(fold).cloned().unwrap_or_else(|| fallback_split(ids, fold))
}

/// Reads `splits_final.json`, checking it is a non-empty list of {train, val}.
pub fn load(path: &Path) -> Result<Vec<Split>> {
    let s: Vec<Split> = error::read_json(path)?;
    if s.is_empty() {
        return Err(Error::format(path, "splits file holds no folds; delete it to let nnunet create the default 5-fold split"));
    }
    Ok(s)
}

/// `splits_final.json` in the preprocessed folder: reused if present; else a user-provided
/// `splits_final.json` in the raw dataset folder is copied (as nnU-Net's planner does); else the
/// default 5-fold split over `case_ids` is created and written.
pub fn load_or_create(preprocessed_dataset_dir: &Path, raw_dataset_dir: &Path, case_ids: &[String]) -> Result<Vec<Split>> {
    let target = preprocessed_dataset_dir.join("splits_final.json");
    if target.is_file() {
        return load(&target);
    }
    let user = raw_dataset_dir.join("splits_final.json");
    let splits = if user.is_file() {
        let s = load(&user)?;
        for (k, f) in s.iter().enumerate() {
            for id in f.train.iter().chain(&f.val) {
                if !case_ids.contains(id) {
                    return Err(Error::format(
                        &user,
                        format!("fold {k} names case {id:?}, which is not a training case of this dataset; fix or remove the file"),
                    ));
                }
            }
        }
        s
    } else {
        generate_splits(case_ids, 5)?
    };
    error::write_json(&target, &splits)?;
    Ok(splits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kfold_partitions_indices() {
        for n in [5usize, 6, 13, 31] {
            let f = kfold_indices(n, 5, 12345);
            let mut all: Vec<usize> = f.iter().flat_map(|(_, v)| v.clone()).collect();
            all.sort();
            assert_eq!(all, (0..n).collect::<Vec<_>>());
            for (tr, va) in &f {
                assert_eq!(tr.len() + va.len(), n);
                assert!(tr.windows(2).all(|w| w[0] < w[1]) && va.windows(2).all(|w| w[0] < w[1]));
            }
            // the first n % 5 folds are one longer
            let sizes: Vec<usize> = f.iter().map(|(_, v)| v.len()).collect();
            assert_eq!(sizes.iter().sum::<usize>(), n);
            assert!(sizes.windows(2).all(|w| w[0] >= w[1]));
        }
    }

    #[test]
    fn too_few_cases_is_an_error() {
        let ids: Vec<String> = (0..3).map(|i| format!("c{i}")).collect();
        assert!(generate_splits(&ids, 5).is_err());
    }
}
