//! Intake tests: `convert` and `verify` on bad inputs (each fixture made here, each asserting its
//! specific message), one dataset with many problems reported in one run, v1/v2 folder input,
//! and real data (ISBI 2012, PH2, MSD hippocampus from `../shared`) read back with nibabel.
use nnunet_common::convert::{convert, ConvertInput, ConvertOptions};
use nnunet_common::dataset_json::DatasetJson;
use nnunet_common::imageio::{self, Geometry};
use nnunet_common::verify::verify_dataset;
use std::path::{Path, PathBuf};

// ---------------------------------------------------------------- fixture helpers

fn gray_png(path: &Path, w: u32, h: u32, f: impl Fn(u32, u32) -> u8) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::GrayImage::from_fn(w, h, |x, y| image::Luma([f(x, y)])).save(path).unwrap();
}

fn rgb_png(path: &Path, w: u32, h: u32, f: impl Fn(u32, u32) -> [u8; 3]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::RgbImage::from_fn(w, h, |x, y| image::Rgb(f(x, y))).save(path).unwrap();
}

fn float_tiff(path: &Path, w: u32, h: u32, data: &[f32]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let f = std::fs::File::create(path).unwrap();
    let mut enc = tiff::encoder::TiffEncoder::new(f).unwrap();
    enc.write_image::<tiff::encoder::colortype::Gray32Float>(w, h, data).unwrap();
}

/// A folder pair images/ + masks/ with `n` gray 8x6 cases, masks 0/255 (a square).
fn folders(root: &Path, n: usize) -> (PathBuf, PathBuf) {
    let (im, mk) = (root.join("images"), root.join("masks"));
    for i in 0..n {
        gray_png(&im.join(format!("c{i}.png")), 8, 6, |x, y| (x * 10 + y + i as u32) as u8);
        gray_png(&mk.join(format!("c{i}.png")), 8, 6, |x, y| if (2..5).contains(&x) && (1..4).contains(&y) { 255 } else { 0 });
    }
    (im, mk)
}

fn opts(images: &Path, masks: &Path, out: &Path) -> ConvertOptions {
    let input = ConvertInput::Folders { images: images.into(), masks: masks.into(), test_images: None };
    let mut o = ConvertOptions::new(input, out.into(), 901, "T");
    o.threads = 2;
    o
}

fn err_of(o: &ConvertOptions) -> String {
    match convert(o) {
        Ok(s) => panic!("conversion should fail but wrote {}", s.dataset_dir.display()),
        Err(e) => e.to_string(),
    }
}

fn assert_has(msg: &str, needles: &[&str]) {
    for n in needles {
        assert!(msg.contains(n), "expected {n:?} in:\n{msg}");
    }
}

/// A valid converted dataset to break in the verify tests.
fn good_dataset(root: &Path, n: usize) -> PathBuf {
    let (im, mk) = folders(root, n);
    convert(&opts(&im, &mk, &root.join("raw"))).unwrap().dataset_dir
}

fn set_json(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let p = dir.join("dataset.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(&p, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
}

fn problems(dir: &Path) -> Vec<String> {
    verify_dataset(dir).unwrap().problems
}

fn one_problem_with(dir: &Path, needles: &[&str]) {
    let p = problems(dir);
    assert!(p.iter().any(|m| needles.iter().all(|n| m.contains(n))), "no problem containing {needles:?} in {p:#?}");
}

// ---------------------------------------------------------------- convert: the good paths

#[test]
fn zero_255_masks_become_0_1_and_mapping_is_saved() {
    let t = tempfile::tempdir().unwrap();
    let (im, mk) = folders(t.path(), 3);
    let s = convert(&opts(&im, &mk, &t.path().join("raw"))).unwrap();
    assert_eq!(s.n_train, 3);
    let dj = DatasetJson::load(&s.dataset_dir.join("dataset.json")).unwrap();
    assert_eq!(dj.label_values(), vec![0, 1]);
    assert_eq!(dj.file_ending, ".nii.gz");
    assert_eq!(dj.num_training, 3);
    let m = dj.nnunetrs_label_mapping.unwrap();
    assert_eq!(m.original_to_label.get("255"), Some(&1));
    assert_eq!(m.label_to_original.get("1"), Some(&255.0));
    let seg = imageio::read_nifti(&s.dataset_dir.join("labelsTr/c1.nii.gz")).unwrap();
    assert_eq!(seg.shape, [1, 1, 6, 8]);
    assert_eq!(seg.data.iter().filter(|&&v| v == 1.0).count(), 9);
    assert!(seg.data.iter().all(|&v| v == 0.0 || v == 1.0));
    let img = imageio::read_nifti(&s.dataset_dir.join("imagesTr/c1_0000.nii.gz")).unwrap();
    assert_eq!(img.geometry.spacing, [999.0, 1.0, 1.0]);
    assert_eq!(img.data[8 + 3], 32.0); // row y=1, column x=3 of case i=1: x*10 + y + i
}

#[test]
fn value_set_0_128_255_maps_in_sorted_order_across_the_dataset() {
    let t = tempfile::tempdir().unwrap();
    let (im, mk) = (t.path().join("i"), t.path().join("m"));
    // Case a holds {0, 255}, case b holds {0, 128}: 255 must be label 2 in BOTH.
    gray_png(&im.join("a.png"), 4, 4, |x, _| x as u8);
    gray_png(&im.join("b.png"), 4, 4, |x, _| x as u8);
    gray_png(&mk.join("a.png"), 4, 4, |x, _| if x > 1 { 255 } else { 0 });
    gray_png(&mk.join("b.png"), 4, 4, |x, _| if x > 2 { 128 } else { 0 });
    let mut o = opts(&im, &mk, &t.path().join("raw"));
    o.label_names = Some(vec!["background".into(), "low".into(), "high".into()]);
    let s = convert(&o).unwrap();
    let dj = DatasetJson::load(&s.dataset_dir.join("dataset.json")).unwrap();
    let m = dj.nnunetrs_label_mapping.unwrap().original_to_label;
    assert_eq!((m["0"], m["128"], m["255"]), (0, 1, 2));
    assert_eq!(dj.labels.get("high").and_then(|v| v.as_int()), Some(2));
    let a = imageio::read_nifti(&s.dataset_dir.join("labelsTr/a.nii.gz")).unwrap();
    assert_eq!(a.data[..4], [0.0, 0.0, 2.0, 2.0]);
    let b = imageio::read_nifti(&s.dataset_dir.join("labelsTr/b.nii.gz")).unwrap();
    assert_eq!(b.data[..4], [0.0, 0.0, 0.0, 1.0]);
}

#[test]
fn map_binarize_and_label_count_checks() {
    let t = tempfile::tempdir().unwrap();
    let (im, mk) = (t.path().join("i"), t.path().join("m"));
    gray_png(&im.join("a.png"), 3, 1, |x, _| x as u8);
    gray_png(&mk.join("a.png"), 3, 1, |x, _| [0, 128, 255][x as usize]);
    let mut o = opts(&im, &mk, &t.path().join("raw"));
    o.binarize = true;
    let s = convert(&o).unwrap();
    assert_eq!(imageio::read_nifti(&s.dataset_dir.join("labelsTr/a.nii.gz")).unwrap().data, [0.0, 1.0, 1.0]);
    let mut o = opts(&im, &mk, &t.path().join("raw2"));
    o.map = vec![(255.0, 1), (128.0, 2)];
    let s = convert(&o).unwrap();
    assert_eq!(imageio::read_nifti(&s.dataset_dir.join("labelsTr/a.nii.gz")).unwrap().data, [0.0, 2.0, 1.0]);
    let mut o = opts(&im, &mk, &t.path().join("raw3"));
    o.map = vec![(255.0, 1)];
    assert_has(&err_of(&o), &["mask value 128", "--map 128:LABEL"]);
    let mut o = opts(&im, &mk, &t.path().join("raw4"));
    o.label_names = Some(vec!["background".into(), "lesion".into()]);
    assert_has(&err_of(&o), &["--labels gives 2 name(s)", "3 label(s)"]);
}

#[test]
fn rgb_images_become_three_channel_files_named_r_g_b() {
    let t = tempfile::tempdir().unwrap();
    let (im, mk) = (t.path().join("i"), t.path().join("m"));
    rgb_png(&im.join("x.png"), 5, 4, |x, y| [x as u8, y as u8, 7]);
    gray_png(&mk.join("x_mask.png"), 5, 4, |x, _| if x > 2 { 255 } else { 0 }); // suffix tolerated
    let s = convert(&opts(&im, &mk, &t.path().join("raw"))).unwrap();
    let dj = DatasetJson::load(&s.dataset_dir.join("dataset.json")).unwrap();
    assert_eq!(dj.channel_names_ordered(), vec!["R", "G", "B"]);
    let g = imageio::read_nifti(&s.dataset_dir.join("imagesTr/x_0001.nii.gz")).unwrap();
    assert_eq!(g.shape, [1, 1, 4, 5]);
    assert_eq!(g.data[5..10], [1.0; 5]);
    assert!(s.dataset_dir.join("imagesTr/x_0002.nii.gz").is_file());
}

#[test]
fn palette_png_masks_use_their_indices() {
    let t = tempfile::tempdir().unwrap();
    let (im, mk) = (t.path().join("i"), t.path().join("m"));
    gray_png(&im.join("v.png"), 4, 1, |x, _| x as u8);
    std::fs::create_dir_all(&mk).unwrap();
    // A VOC-style indexed PNG: indices 0, 1, 2 shown in black, red, green.
    let mut enc = png::Encoder::new(std::fs::File::create(mk.join("v.png")).unwrap(), 4, 1);
    enc.set_color(png::ColorType::Indexed);
    enc.set_palette(vec![0, 0, 0, 128, 0, 0, 0, 128, 0]);
    enc.write_header().unwrap().write_image_data(&[0, 2, 1, 2]).unwrap();
    let s = convert(&opts(&im, &mk, &t.path().join("raw"))).unwrap();
    assert_eq!(imageio::read_nifti(&s.dataset_dir.join("labelsTr/v.nii.gz")).unwrap().data, [0.0, 2.0, 1.0, 2.0]);
}

#[test]
fn output_is_deterministic_across_thread_counts() {
    let t = tempfile::tempdir().unwrap();
    let (im, mk) = folders(t.path(), 6);
    let mut a = opts(&im, &mk, &t.path().join("a"));
    a.threads = 1;
    let mut b = opts(&im, &mk, &t.path().join("b"));
    b.threads = 3;
    let (da, db) = (convert(&a).unwrap().dataset_dir, convert(&b).unwrap().dataset_dir);
    for f in ["dataset.json", "imagesTr/c4_0000.nii.gz", "labelsTr/c5.nii.gz"] {
        assert_eq!(std::fs::read(da.join(f)).unwrap(), std::fs::read(db.join(f)).unwrap(), "{f}");
    }
}

// ---------------------------------------------------------------- convert: bad inputs

#[test]
fn wrong_mask_size_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let (im, mk) = folders(t.path(), 2);
    gray_png(&mk.join("c1.png"), 8, 7, |_, _| 0);
    let e = err_of(&opts(&im, &mk, &t.path().join("raw")));
    assert_has(&e, &["case c1", "image/mask size mismatch", "[1, 6, 8]", "[1, 7, 8]"]);
    assert!(!t.path().join("raw/Dataset901_T").exists(), "nothing is published on failure");
}

#[test]
fn jpeg_mask_is_refused_with_the_reason() {
    let t = tempfile::tempdir().unwrap();
    let (im, mk) = folders(t.path(), 2);
    std::fs::remove_file(mk.join("c0.png")).unwrap();
    image::GrayImage::from_pixel(8, 6, image::Luma([255])).save(mk.join("c0.jpg")).unwrap();
    let e = err_of(&opts(&im, &mk, &t.path().join("raw")));
    assert_has(&e, &["c0.jpg", "JPEG masks are refused", "lossy", "Re-export the masks as PNG"]);
}

#[test]
fn rgb_mask_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let (im, mk) = folders(t.path(), 2);
    rgb_png(&mk.join("c0.png"), 8, 6, |x, _| [x as u8, 0, 0]);
    let e = err_of(&opts(&im, &mk, &t.path().join("raw")));
    assert_has(&e, &["c0.png", "segmentation has 3 channels", "single-channel"]);
}

#[test]
fn nan_in_float_tiff_image_is_reported() {
    let t = tempfile::tempdir().unwrap();
    let (im, mk) = (t.path().join("i"), t.path().join("m"));
    float_tiff(&im.join("f.tif"), 2, 2, &[0.5, f32::NAN, 1.0, 2.0]);
    gray_png(&mk.join("f.png"), 2, 2, |x, _| x as u8);
    let e = err_of(&opts(&im, &mk, &t.path().join("raw")));
    assert_has(&e, &["case f", "f_0000.nii.gz", "1 NaN"]);
}

#[test]
fn corrupt_png_is_reported_by_name() {
    let t = tempfile::tempdir().unwrap();
    let (im, mk) = folders(t.path(), 2);
    let p = im.join("c1.png");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    let e = err_of(&opts(&im, &mk, &t.path().join("raw")));
    assert_has(&e, &["case c1", "c1.png", "cannot decode"]);
}

#[test]
fn duplicate_case_ids_are_refused() {
    let t = tempfile::tempdir().unwrap();
    let (im, mk) = folders(t.path(), 2);
    gray_png(&im.join("c1.bmp"), 8, 6, |_, _| 1);
    gray_png(&im.join("c 0.png"), 8, 6, |_, _| 1);
    gray_png(&im.join("c_0.png"), 8, 6, |_, _| 1);
    let e = err_of(&opts(&im, &mk, &t.path().join("raw")));
    assert_has(&e, &["duplicate case id \"c1\"", "c1.bmp", "duplicate case id \"c_0\""]);
}

#[test]
fn all_empty_masks_are_refused() {
    let t = tempfile::tempdir().unwrap();
    let (im, mk) = folders(t.path(), 2);
    for i in 0..2 {
        gray_png(&mk.join(format!("c{i}.png")), 8, 6, |_, _| 0);
    }
    assert_has(&err_of(&opts(&im, &mk, &t.path().join("raw"))), &["all 2 mask(s) hold only the value 0", "nothing to segment"]);
}

#[test]
fn images_without_masks_and_masks_without_images_are_listed() {
    let t = tempfile::tempdir().unwrap();
    let (im, mk) = folders(t.path(), 2);
    gray_png(&im.join("lonely.png"), 8, 6, |_, _| 1);
    gray_png(&mk.join("orphan.png"), 8, 6, |_, _| 0);
    std::fs::write(im.join("notes.txt"), "x").unwrap();
    let e = err_of(&opts(&im, &mk, &t.path().join("raw")));
    assert_has(&e, &["case lonely", "has no mask", "orphan.png: mask without an image", "notes.txt: not an image file"]);
}

#[test]
fn nnunet_v1_task_is_converted_to_v2() {
    let t = tempfile::tempdir().unwrap();
    let task = t.path().join("Task077_Vol");
    let g = Geometry { spacing: [2.0, 0.5, 0.5], affine: None, format: "nii.gz".into() };
    let mut training = Vec::new();
    for c in ["v1", "v2"] {
        let img: Vec<f32> = (0..24).map(|v| v as f32).collect();
        imageio::write_nifti_f32(&task.join(format!("imagesTr/{c}_0000.nii.gz")), [2, 3, 4], &img, &g).unwrap();
        imageio::write_nifti_f32(&task.join(format!("imagesTr/{c}_0001.nii.gz")), [2, 3, 4], &img, &g).unwrap();
        let seg: Vec<u16> = (0..24).map(|v| (v % 3) as u16).collect();
        imageio::write_nifti_seg(&task.join(format!("labelsTr/{c}.nii.gz")), [2, 3, 4], &seg, &g).unwrap();
        training.push(serde_json::json!({"image": format!("./imagesTr/{c}.nii.gz"), "label": format!("./labelsTr/{c}.nii.gz")}));
    }
    let dj = serde_json::json!({"name": "Vol", "modality": {"0": "T1", "1": "T2"}, "labels": {"0": "background", "1": "a", "2": "b"},
        "numTraining": 2, "numTest": 0, "training": training, "test": [], "licence": "CC-BY"});
    std::fs::write(task.join("dataset.json"), serde_json::to_vec(&dj).unwrap()).unwrap();
    let mut o = ConvertOptions::new(ConvertInput::NnunetFolder(task.clone()), t.path().join("raw"), 77, "Vol");
    o.threads = 1;
    let s = convert(&o).unwrap();
    let out = DatasetJson::load(&s.dataset_dir.join("dataset.json")).unwrap();
    assert_eq!(out.channel_names_ordered(), vec!["T1", "T2"]);
    assert_eq!(out.labels.get("b").and_then(|v| v.as_int()), Some(2));
    assert_eq!(out.extra.get("licence"), Some(&serde_json::json!("CC-BY")));
    let img = imageio::read_nifti(&s.dataset_dir.join("imagesTr/v2_0001.nii.gz")).unwrap();
    assert_eq!((img.shape, img.geometry.spacing), ([1, 2, 3, 4], [2.0, 0.5, 0.5]));
}

#[test]
fn nnunet_v2_png_dataset_is_converted_to_nifti() {
    let t = tempfile::tempdir().unwrap();
    let ds = t.path().join("Dataset120_Road");
    // nnU-Net's own RGB PNG layout: ONE _0000.png holding 3 channels (NaturalImage2DIO).
    rgb_png(&ds.join("imagesTr/r1_0000.png"), 4, 3, |x, _| [x as u8, 9, 200]);
    gray_png(&ds.join("labelsTr/r1.png"), 4, 3, |x, _| (x > 1) as u8);
    let dj = serde_json::json!({"channel_names": {"0": "R", "1": "G", "2": "B"}, "labels": {"background": 0, "road": 1}, "numTraining": 1, "file_ending": ".png"});
    std::fs::write(ds.join("dataset.json"), serde_json::to_vec(&dj).unwrap()).unwrap();
    assert!(verify_dataset(&ds).unwrap().problems.is_empty(), "{:?}", verify_dataset(&ds).unwrap().problems);
    let s = convert(&ConvertOptions::new(ConvertInput::NnunetFolder(ds), t.path().join("raw"), 120, "Road")).unwrap();
    let b = imageio::read_nifti(&s.dataset_dir.join("imagesTr/r1_0002.nii.gz")).unwrap();
    assert_eq!(b.data, [200.0; 12]);
    let l = imageio::read_nifti(&s.dataset_dir.join("labelsTr/r1.nii.gz")).unwrap();
    assert_eq!(l.data[..4], [0.0, 0.0, 1.0, 1.0]);
}

// ---------------------------------------------------------------- verify: one fixture per problem

#[test]
fn verify_accepts_what_convert_wrote() {
    let t = tempfile::tempdir().unwrap();
    let d = good_dataset(t.path(), 3);
    let r = verify_dataset(&d).unwrap();
    assert!(r.problems.is_empty() && r.warnings.is_empty(), "{r:?}");
    assert_eq!(r.n_cases, 3);
    r.into_result().unwrap();
}

#[test]
fn verify_missing_channel_file() {
    let t = tempfile::tempdir().unwrap();
    let d = good_dataset(t.path(), 2);
    set_json(&d, |v| v["channel_names"]["1"] = serde_json::json!("extra"));
    one_problem_with(&d, &["case c0", "missing channel file imagesTr/c0_0001.nii.gz"]);
}

#[test]
fn verify_nan_in_nifti() {
    let t = tempfile::tempdir().unwrap();
    let d = good_dataset(t.path(), 2);
    let mut data = vec![1.0f32; 48];
    data[3] = f32::NAN;
    data[4] = f32::INFINITY;
    imageio::write_nifti_f32(
        &d.join("imagesTr/c1_0000.nii.gz"),
        [1, 6, 8],
        &data,
        &Geometry { spacing: [999.0, 1.0, 1.0], ..Default::default() },
    )
    .unwrap();
    one_problem_with(&d, &["case c1", "c1_0000.nii.gz", "1 NaN and 1 infinite"]);
}

#[test]
fn verify_wrong_size() {
    let t = tempfile::tempdir().unwrap();
    let d = good_dataset(t.path(), 2);
    imageio::write_nifti_seg(
        &d.join("labelsTr/c0.nii.gz"),
        [1, 5, 8],
        &[0; 40],
        &Geometry { spacing: [999.0, 1.0, 1.0], ..Default::default() },
    )
    .unwrap();
    one_problem_with(&d, &["case c0", "image/mask size mismatch", "[1, 6, 8]", "[1, 5, 8]"]);
}

#[test]
fn verify_labels_outside_declared() {
    let t = tempfile::tempdir().unwrap();
    let d = good_dataset(t.path(), 2);
    let mut seg = vec![0u16; 48];
    seg[0] = 255;
    seg[1] = 3;
    imageio::write_nifti_seg(
        &d.join("labelsTr/c1.nii.gz"),
        [1, 6, 8],
        &seg,
        &Geometry { spacing: [999.0, 1.0, 1.0], ..Default::default() },
    )
    .unwrap();
    one_problem_with(&d, &["case c1", "unexpected label value(s) {255, 3}", "{0, 1}"]);
}

#[test]
fn verify_num_training_mismatch() {
    let t = tempfile::tempdir().unwrap();
    let d = good_dataset(t.path(), 2);
    set_json(&d, |v| v["numTraining"] = serde_json::json!(5));
    one_problem_with(&d, &["numTraining is 5", "holds 2 case(s)"]);
}

#[test]
fn verify_stray_files() {
    let t = tempfile::tempdir().unwrap();
    let d = good_dataset(t.path(), 2);
    std::fs::write(d.join("imagesTr/readme.txt"), "x").unwrap();
    std::fs::copy(d.join("labelsTr/c0.nii.gz"), d.join("labelsTr/ghost.nii.gz")).unwrap();
    std::fs::write(d.join("imagesTr/.DS_Store"), "x").unwrap();
    one_problem_with(&d, &["readme.txt", "stray file in imagesTr/"]);
    one_problem_with(&d, &["ghost.nii.gz", "stray label file"]);
    let r = verify_dataset(&d).unwrap();
    assert_eq!(r.problems.len(), 2, "{:?}", r.problems);
    assert!(r.warnings.iter().any(|w| w.contains(".DS_Store")));
}

#[test]
fn verify_multichannel_mask_and_wrong_channel_count_in_png_dataset() {
    let t = tempfile::tempdir().unwrap();
    let ds = t.path().join("Dataset001_P");
    rgb_png(&ds.join("imagesTr/a_0000.png"), 4, 3, |_, _| [1, 2, 3]);
    rgb_png(&ds.join("labelsTr/a.png"), 4, 3, |x, _| [x as u8, 0, 0]);
    let dj =
        serde_json::json!({"channel_names": {"0": "gray"}, "labels": {"background": 0, "x": 1}, "numTraining": 1, "file_ending": ".png"});
    std::fs::write(ds.join("dataset.json"), serde_json::to_vec(&dj).unwrap()).unwrap();
    one_problem_with(&ds, &["case a", "the mask has 3 channels"]);
    one_problem_with(&ds, &["case a", "unexpected number of channels: read 3", "declares 1"]);
}

#[test]
fn verify_duplicate_case_ids_by_letter_case() {
    let t = tempfile::tempdir().unwrap();
    let d = good_dataset(t.path(), 2);
    std::fs::copy(d.join("imagesTr/c0_0000.nii.gz"), d.join("imagesTr/C0_0000.nii.gz")).unwrap();
    std::fs::copy(d.join("labelsTr/c0.nii.gz"), d.join("labelsTr/C0.nii.gz")).unwrap();
    set_json(&d, |v| v["numTraining"] = serde_json::json!(3));
    let p = problems(&d);
    assert!(p.iter().any(|m| m.contains("duplicate case id") && m.contains("\"C0\"") && m.contains("\"c0\"")), "{p:#?}");
}

#[test]
fn verify_missing_keys_and_nonconsecutive_labels() {
    let t = tempfile::tempdir().unwrap();
    let d = good_dataset(t.path(), 1);
    set_json(&d, |v| {
        v["labels"] = serde_json::json!({"background": 0, "a": 2});
    });
    one_problem_with(&d, &["labels must be consecutive", "[0, 2]"]);
    set_json(&d, |v| {
        v.as_object_mut().unwrap().remove("file_ending");
    });
    one_problem_with(&d, &["required key(s) [\"file_ending\"] missing"]);
}

#[test]
fn verify_reports_every_problem_in_one_run() {
    let t = tempfile::tempdir().unwrap();
    let d = good_dataset(t.path(), 5);
    let g = Geometry { spacing: [999.0, 1.0, 1.0], ..Default::default() };
    // c0: wrong-size mask; c1: NaN; c2: undeclared label; c3: label file missing; c4: corrupt image;
    // plus a stray file and a wrong numTraining.
    imageio::write_nifti_seg(&d.join("labelsTr/c0.nii.gz"), [1, 6, 7], &[0; 42], &g).unwrap();
    let mut data = vec![0f32; 48];
    data[0] = f32::NAN;
    imageio::write_nifti_f32(&d.join("imagesTr/c1_0000.nii.gz"), [1, 6, 8], &data, &g).unwrap();
    imageio::write_nifti_seg(&d.join("labelsTr/c2.nii.gz"), [1, 6, 8], &[7; 48], &g).unwrap();
    std::fs::remove_file(d.join("labelsTr/c3.nii.gz")).unwrap();
    std::fs::write(d.join("imagesTr/c4_0000.nii.gz"), b"\x1f\x8bnot really gzip").unwrap();
    std::fs::write(d.join("labelsTr/junk.png"), b"x").unwrap();
    set_json(&d, |v| v["numTraining"] = serde_json::json!(4));
    let r = verify_dataset(&d).unwrap();
    let expect: [&[&str]; 7] = [
        &["case c0", "image/mask size mismatch"],
        &["case c1", "NaN"],
        &["case c2", "unexpected label value(s) {7}"],
        &["case c3", "label file labelsTr/c3.nii.gz is missing"],
        &["case c4", "c4_0000.nii.gz", "unreadable or corrupt"],
        &["junk.png", "stray file in labelsTr/"],
        &["numTraining is 4"],
    ];
    for needles in expect {
        assert!(r.problems.iter().any(|m| needles.iter().all(|n| m.contains(n))), "missing {needles:?} in {:#?}", r.problems);
    }
    assert_eq!(r.problems.len(), 7, "{:#?}", r.problems);
    let e = r.into_result().unwrap_err().to_string();
    assert_has(&e, &["failed verification with 7 problem(s)"]);
}

// ---------------------------------------------------------------- real data + an independent reader

fn shared_dir() -> Option<PathBuf> {
    let p =
        std::env::var_os("NNUNET_SHARED").map(PathBuf::from).unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared"));
    p.join("datasets").is_dir().then_some(p)
}

/// A Python with nibabel: $NNUNET_PYTHON, the project .venv, or the reference harness venv.
fn python_with_nibabel() -> Option<PathBuf> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut cands: Vec<PathBuf> = Vec::new();
    if let Some(p) = std::env::var_os("NNUNET_PYTHON") {
        cands.push(p.into());
    }
    cands.push(repo.join(".venv/bin/python"));
    if let Some(h) = std::env::var_os("HOME") {
        cands.push(Path::new(&h).join(".cache/nnunet-peer-venv/bin/python"));
    }
    cands
        .into_iter()
        .find(|p| std::process::Command::new(p).args(["-c", "import nibabel, numpy"]).output().map(|o| o.status.success()).unwrap_or(false))
}

/// Copies the first `n` (sorted) image/mask pairs of a shared 2D dataset into `dst`.
fn subset(src: &Path, dst: &Path, n: usize) -> (PathBuf, PathBuf) {
    let (im, mk) = (dst.join("images"), dst.join("masks"));
    std::fs::create_dir_all(&im).unwrap();
    std::fs::create_dir_all(&mk).unwrap();
    let mut names: Vec<String> =
        std::fs::read_dir(src.join("images")).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    for n in names.iter().take(n) {
        std::fs::copy(src.join("images").join(n), im.join(n)).unwrap();
        std::fs::copy(src.join("masks").join(n), mk.join(n)).unwrap();
    }
    (im, mk)
}

/// nibabel checks (shape, pixdim, dtype, values) of converted 2D cases against their source PNG
/// pixels, passed as raw float32 / uint8 files decoded by the `image` crate's PNG decoder (through
/// `read_natural`), so the NIfTI side is read by a reader that shares no code with ours.
const NIB_CHECK_2D: &str = r#"
import json, sys, nibabel as nib, numpy as np
spec = json.load(open(sys.argv[1]))
out = []
for c in spec:
    h, w = c["h"], c["w"]
    src = np.fromfile(c["pixels"], dtype="<f4").reshape(-1, h, w)
    for k in range(src.shape[0]):
        im = nib.load(c["ds"] + "/imagesTr/%s_%04d.nii.gz" % (c["id"], k))
        a = np.asarray(im.dataobj)
        # nibabel gives (x, y, z) = (W, H, 1); numpy order (1, H, W) is its transpose.
        out.append(dict(shape=list(a.shape), dtype=str(a.dtype), pixdim=[float(x) for x in im.header["pixdim"][1:4]],
                        equal=bool(np.array_equal(a[:, :, 0].T.astype(np.float32), src[k]))))
    sg = nib.load(c["ds"] + "/labelsTr/%s.nii.gz" % c["id"])
    s = np.asarray(sg.dataobj)
    m = np.fromfile(c["mask"], dtype=np.uint8).reshape(h, w)
    out.append(dict(shape=list(s.shape), dtype=str(s.dtype), pixdim=[float(x) for x in sg.header["pixdim"][1:4]],
                    equal=bool(np.array_equal(s[:, :, 0].T, m))))
print(json.dumps(out))
"#;

fn check_2d_with_nibabel(name: &str, n: usize, expect_channels: usize) {
    let Some(shared) = shared_dir() else {
        eprintln!("SKIP {name}: ../shared/datasets not found (set NNUNET_SHARED)");
        return;
    };
    let Some(py) = python_with_nibabel() else {
        eprintln!("SKIP {name}: no python with nibabel ($NNUNET_PYTHON, <repo>/.venv, ~/.cache/nnunet-peer-venv)");
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let (im, mk) = subset(&shared.join("datasets").join(name), t.path(), n);
    let s = convert(&opts(&im, &mk, &t.path().join("raw"))).unwrap();
    assert_eq!(s.n_train, n);
    assert_eq!(s.channel_names.len(), expect_channels);
    let mut spec = Vec::new();
    let mut names: Vec<String> = std::fs::read_dir(&im).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    for f in &names {
        let src = imageio::read_natural(&im.join(f)).unwrap();
        let mask = imageio::read_natural(&mk.join(f)).unwrap();
        let (h, w) = (src.shape[2], src.shape[3]);
        let id = imageio::strip_image_ending(f).unwrap();
        let pix = t.path().join(format!("{id}.f32"));
        std::fs::write(&pix, src.data.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
        // Both datasets store masks as 0/255: the converted labels are mask / 255.
        let mpath = t.path().join(format!("{id}.u8"));
        std::fs::write(&mpath, mask.data.iter().map(|&v| (v / 255.0) as u8).collect::<Vec<u8>>()).unwrap();
        spec.push(serde_json::json!({"ds": s.dataset_dir, "id": id, "h": h, "w": w, "pixels": pix, "mask": mpath}));
    }
    let spec_path = t.path().join("spec.json");
    std::fs::write(&spec_path, serde_json::to_vec(&spec).unwrap()).unwrap();
    let o = std::process::Command::new(&py).arg("-c").arg(NIB_CHECK_2D).arg(&spec_path).output().unwrap();
    assert!(o.status.success(), "nibabel failed: {}", String::from_utf8_lossy(&o.stderr));
    let res: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(res.len(), n * (expect_channels + 1));
    let mut k = 0;
    for (f, c) in names.iter().zip(&spec) {
        for ch in 0..=expect_channels {
            let r = &res[k];
            k += 1;
            assert_eq!(r["shape"], serde_json::json!([c["w"], c["h"], 1]), "{f}");
            assert_eq!(r["pixdim"], serde_json::json!([1.0, 1.0, 999.0]), "{f}");
            // 8-bit sources are stored as uint8 (exact, like nnU-Net v1's conversion).
            assert_eq!(r["dtype"], "uint8", "{f}");
            assert_eq!(r["equal"], true, "{f} channel {ch}: values differ from the source");
        }
    }
}

#[test]
fn isbi_subset_reads_back_with_nibabel() {
    check_2d_with_nibabel("isbi2012_em", 3, 1);
}

#[test]
fn ph2_subset_reads_back_with_nibabel() {
    check_2d_with_nibabel("ph2_skin_lesion", 3, 3);
}

#[test]
fn hippocampus_volumes_convert_and_match_nibabel() {
    let Some(shared) = shared_dir() else {
        eprintln!("SKIP hippocampus: ../shared/datasets not found (set NNUNET_SHARED)");
        return;
    };
    let vol = shared.join("datasets/msd_hippocampus/volumes");
    let t = tempfile::tempdir().unwrap();
    let (im, mk) = (t.path().join("images"), t.path().join("masks"));
    std::fs::create_dir_all(&im).unwrap();
    std::fs::create_dir_all(&mk).unwrap();
    for c in ["hippocampus_001", "hippocampus_003", "hippocampus_004"] {
        std::fs::copy(vol.join(format!("imagesTr/{c}.nii.gz")), im.join(format!("{c}.nii.gz"))).unwrap();
        std::fs::copy(vol.join(format!("labelsTr/{c}.nii.gz")), mk.join(format!("{c}.nii.gz"))).unwrap();
    }
    let mut o = opts(&im, &mk, &t.path().join("raw"));
    o.label_names = Some(vec!["background".into(), "Anterior".into(), "Posterior".into()]);
    let s = convert(&o).unwrap();
    assert_eq!(s.n_train, 3);
    let dj = DatasetJson::load(&s.dataset_dir.join("dataset.json")).unwrap();
    assert_eq!(dj.label_values(), vec![0, 1, 2]);
    assert_eq!(dj.channel_names_ordered(), vec!["image"]);
    // Our reader on both sides: same voxels, same spacing and affine.
    for c in ["hippocampus_001", "hippocampus_004"] {
        let a = imageio::read_nifti(&im.join(format!("{c}.nii.gz"))).unwrap();
        let b = imageio::read_nifti(&s.dataset_dir.join(format!("imagesTr/{c}_0000.nii.gz"))).unwrap();
        assert_eq!((a.shape, &a.data, a.geometry.spacing, a.geometry.affine), (b.shape, &b.data, b.geometry.spacing, b.geometry.affine));
        assert!(a.shape[1] > 1, "a real 3D volume");
    }
    let Some(py) = python_with_nibabel() else {
        eprintln!("SKIP hippocampus nibabel part: no python with nibabel");
        return;
    };
    let script = r#"
import sys, nibabel as nib, numpy as np
src, dst = sys.argv[1], sys.argv[2]
for c in ["hippocampus_001", "hippocampus_003", "hippocampus_004"]:
    a = nib.load(f"{src}/images/{c}.nii.gz"); b = nib.load(f"{dst}/imagesTr/{c}_0000.nii.gz")
    assert a.shape == b.shape, (a.shape, b.shape)
    assert np.allclose(a.affine, b.affine), (a.affine, b.affine)
    assert np.array_equal(a.get_fdata(), b.get_fdata())
    assert np.allclose(a.header.get_zooms(), b.header.get_zooms())
    la = nib.load(f"{src}/masks/{c}.nii.gz"); lb = nib.load(f"{dst}/labelsTr/{c}.nii.gz")
    assert np.array_equal(la.get_fdata(), lb.get_fdata()) and lb.get_data_dtype() == np.uint8
print("ok")
"#;
    let o = std::process::Command::new(&py)
        .args(["-c", script, &t.path().display().to_string(), &s.dataset_dir.display().to_string()])
        .output()
        .unwrap();
    assert!(o.status.success(), "nibabel check failed: {}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
}
