//! Region-based training at intake: `convert --regions`, `convert --from` a region dataset, and the
//! specific refusals of `verify` for hand-written region declarations.
use nnunet_common::convert::{convert, ConvertInput, ConvertOptions};
use nnunet_common::dataset_json::DatasetJson;
use nnunet_common::labels::{LabelManager, LabelOrRegion};
use nnunet_common::verify::verify_dataset;
use std::path::Path;

fn gray_png(path: &Path, w: u32, h: u32, f: impl Fn(u32, u32) -> u8) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::GrayImage::from_fn(w, h, |x, y| image::Luma([f(x, y)])).save(path).unwrap();
}

/// images/ + masks/ with labels 0, 1 (left square), 2 (right square) and 9 (unannotated column).
fn folders(root: &Path, n: usize, with_ignore: bool) -> ConvertOptions {
    let (im, mk) = (root.join("images"), root.join("masks"));
    for i in 0..n {
        gray_png(&im.join(format!("c{i}.png")), 8, 6, |x, y| (x * 10 + y + i as u32) as u8);
        gray_png(&mk.join(format!("c{i}.png")), 8, 6, |x, y| match (x, y) {
            (0, _) if with_ignore => 9,
            (1..=3, 1..=3) => 1,
            (4..=6, 1..=3) => 2,
            _ => 0,
        });
    }
    let input = ConvertInput::Folders { images: im, masks: mk, test_images: None };
    let mut o = ConvertOptions::new(input, root.join("raw"), 903, "Regions");
    o.threads = 1;
    o.regions = vec![("whole".into(), vec![1, 2]), ("posterior".into(), vec![2])];
    o
}

#[test]
fn convert_writes_regions_and_verify_accepts_them() {
    let t = tempfile::tempdir().unwrap();
    let mut o = folders(t.path(), 3, true);
    o.ignore_value = Some(9.0);
    let s = convert(&o).unwrap();
    let text = std::fs::read_to_string(s.dataset_dir.join("dataset.json")).unwrap();
    let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    assert!(compact.contains(r#""labels":{"background":0,"whole":[1,2],"posterior":[2],"ignore":3}"#), "{text}");
    assert!(compact.contains(r#""regions_class_order":[1,2]"#), "{text}");
    let dj = DatasetJson::load(&s.dataset_dir.join("dataset.json")).unwrap();
    let lm = LabelManager::new(&dj).unwrap();
    assert_eq!(lm.evaluation_targets(), vec![LabelOrRegion::Region(vec![1, 2]), LabelOrRegion::Region(vec![2])]);
    assert_eq!((lm.ignore_label(), lm.num_segmentation_heads()), (Some(3), 2));
    let r = verify_dataset(&s.dataset_dir).unwrap();
    assert!(r.problems.is_empty(), "{:?}", r.problems);

    // `convert --from` the converted dataset keeps its regions and their order.
    let mut again = ConvertOptions::new(ConvertInput::NnunetFolder(s.dataset_dir.clone()), t.path().join("raw2"), 904, "Again");
    again.threads = 1;
    let s2 = convert(&again).unwrap();
    let dj2 = DatasetJson::load(&s2.dataset_dir.join("dataset.json")).unwrap();
    assert_eq!(dj2.labels, dj.labels);
    assert_eq!(dj2.regions_class_order, Some(vec![1, 2]));
}

#[test]
fn verify_names_what_is_wrong_with_hand_written_regions() {
    let t = tempfile::tempdir().unwrap();
    let s = convert(&folders(t.path(), 2, false)).unwrap();
    let path = s.dataset_dir.join("dataset.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let problems = |edited: String| {
        std::fs::write(&path, edited).unwrap();
        verify_dataset(&s.dataset_dir).unwrap().problems.join("\n")
    };
    // regions without regions_class_order
    let p = problems(text.replace("\"regions_class_order\"", "\"regions_order\""));
    assert!(p.contains("regions_class_order is missing"), "{p}");
    // a region naming a label no mask has (and no other entry): a gap in the labels
    let p = problems(text.replace("\"posterior\": [\n      2\n    ]", "\"posterior\": [\n      5\n    ]"));
    assert!(p.contains("[\"posterior\"] name label 5 or higher"), "{p}");
    // one regions_class_order entry per region
    let p = problems(text.replace("\"regions_class_order\": [\n    1,\n    2\n  ]", "\"regions_class_order\": [\n    1\n  ]"));
    assert!(p.contains("has 1 entries but labels declare 2 foreground regions"), "{p}");
}
