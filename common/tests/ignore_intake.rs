//! The ignore label at intake: `convert --ignore-value V` (V becomes the highest label, declared as
//! `"ignore"`), nnU-Net v2 inputs that declare `"ignore"`, and the specific refusals.
use nnunet_common::convert::{convert, ConvertInput, ConvertOptions};
use nnunet_common::dataset_json::DatasetJson;
use nnunet_common::imageio;
use nnunet_common::verify::verify_dataset;
use std::path::Path;

fn gray_png(path: &Path, w: u32, h: u32, f: impl Fn(u32, u32) -> u8) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::GrayImage::from_fn(w, h, |x, y| image::Luma([f(x, y)])).save(path).unwrap();
}

/// images/ + masks/: 0 background, 255 foreground (a square), 128 unannotated (the left columns).
fn sparse_folders(root: &Path, n: usize) -> ConvertOptions {
    let (im, mk) = (root.join("images"), root.join("masks"));
    for i in 0..n {
        gray_png(&im.join(format!("c{i}.png")), 8, 6, |x, y| (x * 10 + y + i as u32) as u8);
        gray_png(&mk.join(format!("c{i}.png")), 8, 6, |x, y| match (x, y) {
            (0..=1, _) => 128,
            (2..=4, 1..=3) => 255,
            _ => 0,
        });
    }
    let input = ConvertInput::Folders { images: im, masks: mk, test_images: None };
    let mut o = ConvertOptions::new(input, root.join("raw"), 902, "Sparse");
    o.threads = 1;
    o
}

fn err_of(o: &ConvertOptions) -> String {
    match convert(o) {
        Ok(s) => panic!("conversion should fail but wrote {}", s.dataset_dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn ignore_value_becomes_the_highest_label() {
    let t = tempfile::tempdir().unwrap();
    let mut o = sparse_folders(t.path(), 3);
    o.ignore_value = Some(128.0);
    let s = convert(&o).unwrap();
    let dj = DatasetJson::load(&s.dataset_dir.join("dataset.json")).unwrap();
    assert_eq!(dj.label_values(), vec![0, 1], "classes exclude the ignore label");
    assert_eq!(dj.ignore_label(), Some(2));
    assert_eq!(dj.num_classes(), 2);
    let m = dj.nnunetrs_label_mapping.unwrap();
    assert_eq!((m.original_to_label.get("255"), m.original_to_label.get("128")), (Some(&1), Some(&2)));
    let seg = imageio::read_nifti(&s.dataset_dir.join("labelsTr/c0.nii.gz")).unwrap();
    let count = |v: f32| seg.data.iter().filter(|&&x| x == v).count();
    assert_eq!((count(0.0), count(1.0), count(2.0)), (48 - 12 - 9, 9, 12));
    let r = verify_dataset(&s.dataset_dir).unwrap();
    assert!(r.problems.is_empty(), "{:?}", r.problems);
    // Without --ignore-value the same masks are three classes in sorted order.
    let mut plain = sparse_folders(&t.path().join("b"), 3);
    plain.ignore_value = None;
    let dj = DatasetJson::load(&convert(&plain).unwrap().dataset_dir.join("dataset.json")).unwrap();
    assert_eq!((dj.label_values(), dj.ignore_label()), (vec![0, 1, 2], None));
}

#[test]
fn ignore_value_with_binarize_and_map() {
    let t = tempfile::tempdir().unwrap();
    let mut o = sparse_folders(t.path(), 2);
    o.ignore_value = Some(128.0);
    o.binarize = true;
    let dj = DatasetJson::load(&convert(&o).unwrap().dataset_dir.join("dataset.json")).unwrap();
    assert_eq!((dj.label_values(), dj.ignore_label()), (vec![0, 1], Some(2)), "--binarize leaves the ignore value out");
    let mut o = sparse_folders(&t.path().join("m"), 2);
    o.ignore_value = Some(128.0);
    o.map = vec![(255.0, 1), (128.0, 1)];
    let e = err_of(&o);
    assert!(e.contains("mask value 128 is both the ignore value and in --map"), "{e}");
    let mut o = sparse_folders(&t.path().join("n"), 2);
    o.ignore_value = Some(f64::NAN);
    assert!(err_of(&o).contains("not a finite mask value"));
}

/// An nnU-Net v2 dataset (PNG) whose labels are `labels` and masks 0/1 with the value `ig` on the left.
fn v2_dataset(root: &Path, labels: serde_json::Value, ig: u8) -> std::path::PathBuf {
    let ds = root.join("Dataset121_Part");
    for i in 0..2 {
        gray_png(&ds.join(format!("imagesTr/p{i}_0000.png")), 6, 4, |x, y| (x + y) as u8);
        gray_png(&ds.join(format!("labelsTr/p{i}.png")), 6, 4, |x, _| match x {
            0 => ig,
            1..=2 => 1,
            _ => 0,
        });
    }
    let dj = serde_json::json!({"channel_names": {"0": "gray"}, "labels": labels, "numTraining": 2, "file_ending": ".png"});
    std::fs::write(ds.join("dataset.json"), serde_json::to_vec(&dj).unwrap()).unwrap();
    ds
}

#[test]
fn a_v2_dataset_with_an_ignore_label_is_accepted_by_verify_and_convert() {
    let t = tempfile::tempdir().unwrap();
    let ds = v2_dataset(t.path(), serde_json::json!({"background": 0, "fg": 1, "ignore": 2}), 2);
    let r = verify_dataset(&ds).unwrap();
    assert!(r.problems.is_empty(), "{:?}", r.problems);
    let s = convert(&ConvertOptions::new(ConvertInput::NnunetFolder(ds), t.path().join("raw"), 121, "Part")).unwrap();
    let dj = DatasetJson::load(&s.dataset_dir.join("dataset.json")).unwrap();
    assert_eq!((dj.label_values(), dj.ignore_label()), (vec![0, 1], Some(2)));
    let l = imageio::read_nifti(&s.dataset_dir.join("labelsTr/p0.nii.gz")).unwrap();
    assert_eq!(l.data[..6], [2.0, 1.0, 1.0, 0.0, 0.0, 0.0]);
    // Asking for a different ignore value than the one declared is refused by name.
    let ds = v2_dataset(&t.path().join("b"), serde_json::json!({"background": 0, "fg": 1, "ignore": 2}), 2);
    let mut o = ConvertOptions::new(ConvertInput::NnunetFolder(ds), t.path().join("raw2"), 121, "Part");
    o.ignore_value = Some(7.0);
    let e = err_of(&o);
    assert!(e.contains("--ignore-value 7") && e.contains("already declares the ignore label 2"), "{e}");
}

#[test]
fn an_ignore_label_that_is_not_the_highest_is_refused_with_the_fix() {
    let t = tempfile::tempdir().unwrap();
    let ds = v2_dataset(t.path(), serde_json::json!({"background": 0, "ignore": 1, "fg": 2}), 1);
    let e = err_of(&ConvertOptions::new(ConvertInput::NnunetFolder(ds.clone()), t.path().join("raw"), 121, "Part"));
    assert!(e.contains("the ignore label is 1 but label \"fg\" is 2") && e.contains("highest label value: give it 3"), "{e}");
    let p = verify_dataset(&ds).unwrap().problems;
    assert!(p.iter().any(|m| m.contains("ignore label (1) must be the highest label value")), "{p:?}");
    // A gap above the classes.
    let ds = v2_dataset(&t.path().join("g"), serde_json::json!({"background": 0, "fg": 1, "ignore": 5}), 5);
    let e = err_of(&ConvertOptions::new(ConvertInput::NnunetFolder(ds), t.path().join("raw2"), 121, "Part"));
    assert!(e.contains("the ignore label is 5 but the highest label is 1") && e.contains("must be 2"), "{e}");
}
