//! nnU-Net's file-name rule for raw datasets, in one place: channel `k` of case `c` is
//! `{c}_{kkkk}{file_ending}` (four digits) in `imagesTr/`/`imagesTs/`, its label is
//! `{c}{file_ending}` in `labelsTr/` (`nnunetv2/utilities/utils.py::
//! get_identifiers_from_splitted_dataset_folder`, `create_lists_from_splitted_dataset_folder`).

/// `{case}_{k:04}{ending}`.
pub fn channel_file_name(case: &str, channel: usize, ending: &str) -> String {
    format!("{case}_{channel:04}{ending}")
}

/// `{case}{ending}`: the label file of a case.
pub fn label_file_name(case: &str, ending: &str) -> String {
    format!("{case}{ending}")
}

/// Splits a stem `{case}_{XXXX}` (file ending already removed) into (case, channel index):
/// exactly four ASCII digits after the last `_`, and a non-empty case id.
pub fn split_channel_stem(stem: &str) -> Option<(&str, usize)> {
    let (case, digits) = stem.rsplit_once('_')?;
    if case.is_empty() || digits.len() != 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((case, digits.parse().ok()?))
}

/// Splits `{case}_{XXXX}{ending}` into (case, channel index); `None` for any other name.
pub fn split_channel_file<'a>(name: &'a str, ending: &str) -> Option<(&'a str, usize)> {
    split_channel_stem(name.strip_suffix(ending)?)
}

/// Files the OS or editors leave behind (hidden files, `Thumbs.db`, `desktop.ini`): not part of a
/// dataset; verification warns about them, conversion skips them.
pub fn is_system_file(name: &str) -> bool {
    name.starts_with('.') || name == "Thumbs.db" || name == "desktop.ini"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_files_round_trip_and_strays_are_refused() {
        let name = channel_file_name("case_01", 2, ".nii.gz");
        assert_eq!(name, "case_01_0002.nii.gz");
        assert_eq!(split_channel_file(&name, ".nii.gz"), Some(("case_01", 2)));
        assert_eq!(label_file_name("case_01", ".png"), "case_01.png");
        for stray in ["case.png", "_0000.png", "case_000.png", "case_00000.png", "case_+001.png", "case_0000.nii.gz", "case_00a1.png"] {
            assert_eq!(split_channel_file(stray, ".png"), None, "{stray}");
        }
        assert_eq!(split_channel_stem("a_b_0010"), Some(("a_b", 10)));
    }
}
