//! The command lines as a user meets them: every subcommand of `nnunet` and `nnunet-worker` (found
//! by walking the `Commands:` sections of the real binaries' `--help`) documents every flag and
//! argument; internal commands are hidden; nnU-Net v2's flag spellings are accepted; and
//! `nnunet predict -d DATASET` resolves the model folder under `$nnUNet_results` like `nnUNetv2_predict`.
mod pretrained;
mod results;
mod submit_dirs;

use nnunet_tests::bin;
use std::path::Path;
use std::process::Command;

/// stdout + stderr of a command, and whether it succeeded.
fn output(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().expect("spawn");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

fn help(binary: &Path, path: &[String]) -> String {
    let (ok, text) = output(Command::new(binary).args(path).arg("--help"));
    assert!(ok, "{} {} --help failed:\n{text}", binary.display(), path.join(" "));
    text
}

/// The entries of one section (`Commands:`, `Arguments:`, `Options:`) of a clap help text:
/// (the entry's first line, whether it has a description on that line or the lines below it).
fn section_entries(text: &str, section: &str) -> Vec<(String, bool)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let Some(start) = lines.iter().position(|l| l.trim_end() == section) else { return out };
    let mut i = start + 1;
    while i < lines.len() {
        let l = lines[i];
        if !l.is_empty() && !l.starts_with(' ') {
            break; // the next section
        }
        let indent = l.len() - l.trim_start().len();
        if !l.trim().is_empty() && indent <= 6 {
            // `  -f, --folds <FOLDS>...  Folds to ...` or the spec alone with the text on the next lines
            // clap's own annotations (`[default: 0]`, `[env: X=]`, `[aliases: ..]`) are not a description
            let text = |t: &str| !t.is_empty() && !t.starts_with('[');
            let inline = l.trim().split_once("  ").is_some_and(|(_, rest)| text(rest.trim()));
            // entries start at column 2 or 6; their text below them at column 10
            let below = lines.get(i + 1).is_some_and(|n| text(n.trim()) && n.len() - n.trim_start().len() > 6);
            out.push((l.trim().to_string(), inline || below));
        }
        i += 1;
    }
    out
}

/// Every subcommand path below `path` (depth first), `help` left out.
fn walk(binary: &Path, path: Vec<String>, seen: &mut Vec<(Vec<String>, String)>) {
    let text = help(binary, &path);
    let subs: Vec<String> = section_entries(&text, "Commands:")
        .into_iter()
        .map(|(l, _)| l.split_whitespace().next().unwrap_or_default().to_string())
        .filter(|n| n != "help")
        .collect();
    seen.push((path.clone(), text));
    for s in subs {
        let mut p = path.clone();
        p.push(s);
        walk(binary, p, seen);
    }
}

#[test]
fn every_flag_of_every_subcommand_has_help() {
    let mut problems = Vec::new();
    let mut n_entries = 0;
    for name in ["nnunet", "nnunet-worker"] {
        let binary = bin(name);
        let mut seen = Vec::new();
        walk(&binary, Vec::new(), &mut seen);
        assert!(seen.len() > 6, "{name}: only {} commands found", seen.len());
        for (path, text) in &seen {
            for section in ["Arguments:", "Options:", "Commands:"] {
                for (entry, has_help) in section_entries(text, section) {
                    n_entries += 1;
                    if !has_help {
                        problems.push(format!("{name} {}: {entry}", path.join(" ")));
                    }
                }
            }
        }
    }
    assert!(n_entries > 200, "only {n_entries} flags found: is the help parser still reading clap's format?");
    assert!(problems.is_empty(), "flags without help text:\n  {}", problems.join("\n  "));
}

#[test]
fn section_parser_sees_a_missing_help() {
    let text = "Usage: x\n\nOptions:\n      --epochs <EPOCHS>\n\n      --iters <ITERS>\n          Training iterations\n\n  -f, --follow  Keep following\n      --seed <SEED>  [default: 0]\n      --np <NP>\n          [default: 0]\n  -h, --help\n";
    let got = section_entries(text, "Options:");
    let flags: Vec<(&str, bool)> = got.iter().map(|(l, h)| (l.as_str(), *h)).collect();
    assert_eq!(
        flags,
        [
            ("--epochs <EPOCHS>", false),
            ("--iters <ITERS>", true),
            ("-f, --follow  Keep following", true),
            ("--seed <SEED>  [default: 0]", false),
            ("--np <NP>", false),
            ("-h, --help", false)
        ]
    );
}

#[test]
fn internal_commands_are_hidden_and_help_names_the_command_typed() {
    let worker = help(&bin("nnunet-worker"), &[]);
    for hidden in ["bench-step", "bench-aug", "synth-preprocessed"] {
        assert!(!worker.contains(hidden), "{hidden} is listed:\n{worker}");
        // hidden, not removed
        help(&bin("nnunet-worker"), &[hidden.to_string()]);
    }
    let predict = help(&bin("nnunet"), &["predict".into()]);
    assert!(predict.contains("Usage: nnunet predict"), "{predict}");
    let export = help(&bin("nnunet"), &["export-model".into()]);
    assert!(export.contains("Usage: nnunet export-model"), "{export}");
    let run = help(&bin("nnunet"), &["run".into()]);
    let binarize = run.split("--binarize").nth(1).unwrap_or_default();
    assert!(binarize.trim_start().starts_with("Map every nonzero mask value"), "run --binarize help:\n{run}");
}

/// A results root with `Dataset501_Skin/` in it (and no model folder).
fn results_root() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(d.path().join("Dataset501_Skin")).unwrap();
    d
}

/// `nnunet predict` with nnUNetv2_predict's spelling: the error names the folder it resolved, which
/// shows how -d, -tr, -p and -c were read; every other nnU-Net flag must parse (else clap exits 2).
fn predict_error(results: &Path, extra: &[&str]) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let (ok, text) = output(
        Command::new(bin("nnunet"))
            .env("nnUNet_results", results)
            .args(["predict", "-i"])
            .arg(tmp.path())
            .arg("-o")
            .arg(tmp.path().join("out"))
            .args(extra),
    );
    assert!(!ok, "no model exists, yet predict succeeded:\n{text}");
    assert!(!text.contains("unexpected argument") && !text.contains("Usage:"), "a flag was refused:\n{text}");
    text
}

#[test]
fn predict_dash_d_resolves_the_model_folder_under_nnunet_results() {
    let r = results_root();
    let want = |t: &str, p: &str| r.path().join("Dataset501_Skin").join(format!("{t}__{p}__2d")).display().to_string();
    let text = predict_error(r.path(), &["-d", "501", "-c", "2d", "-f", "0", "1", "2", "3", "4"]);
    assert!(text.contains(&format!("no model folder {}", want("nnUNetTrainer", "nnUNetPlans"))), "{text}");
    let text = predict_error(r.path(), &["-d", "Dataset501_Skin", "-tr", "MyTrainer", "-p", "nnUNetResEncUNetMPlans", "-c", "2d"]);
    assert!(text.contains(&want("MyTrainer", "nnUNetResEncUNetMPlans")), "-tr/-p: {text}");
    let text = predict_error(r.path(), &["-d", "502"]);
    assert!(text.contains("502") && text.contains(&r.path().display().to_string()), "unknown dataset: {text}");
    let text = predict_error(r.path(), &["-d", "501", "-c", "3d_fullres"]);
    assert!(text.contains("only the 2d configuration"), "{text}");
}

#[test]
fn predict_accepts_each_nnunet_flag_spelling() {
    let r = results_root();
    let folder = r.path().join("Dataset501_Skin").join("nnUNetTrainer__nnUNetPlans__2d").display().to_string();
    for extra in [
        &["-chk", "checkpoint_best.pth"][..],
        &["-device", "cpu"],
        &["--disable_tta"],
        &["--save_probabilities"],
        &["-step_size", "0.5"],
        &["-npp", "2"],
        &["-nps", "2"],
        &["-f", "0", "1"],
    ] {
        let mut args = vec!["-d", "501"];
        args.extend_from_slice(extra);
        let text = predict_error(r.path(), &args);
        assert!(text.contains(&folder), "{extra:?}: {text}");
    }
}

#[test]
fn plan_and_evaluate_accept_nnunet_spellings() {
    let nnunet = bin("nnunet");
    // -pl / -gpu_memory_target / -np parse: the error is about the missing dataset, not the flags
    let raw = tempfile::tempdir().unwrap();
    let (ok, text) = output(Command::new(&nnunet).env("nnUNet_raw", raw.path()).env("nnUNet_preprocessed", raw.path()).args([
        "plan",
        "777",
        "-pl",
        "ResEncM",
        "-gpu_memory_target",
        "24",
        "-np",
        "1",
    ]));
    assert!(!ok && text.contains("777") && !text.contains("unexpected argument"), "{text}");
    let (ok, text) = output(Command::new(&nnunet).args(["plan", "777", "-pl", "NoSuchPlanner"]));
    assert!(!ok && text.contains("NoSuchPlanner"), "-pl reaches --planner: {text}");
    // -djfile reaches evaluate's --djfile: the error names the file it tried to read
    let (ok, text) = output(Command::new(&nnunet).args(["evaluate", "gt", "pred", "-djfile", "/nonexistent/dataset.json"]));
    assert!(!ok && text.contains("/nonexistent/dataset.json"), "{text}");
    // the worker: --c / -pretrained_weights / -device are train's --continue / --pretrained-weights / --device
    let (ok, text) = output(Command::new(bin("nnunet-worker")).args([
        "train",
        "--dataset",
        "/nonexistent/Dataset1_X",
        "--c",
        "-pretrained_weights",
        "w.pth",
        "-device",
        "cpu",
    ]));
    assert!(!ok && !text.contains("unexpected argument") && text.contains("/nonexistent/Dataset1_X"), "{text}");
}

/// A reference case without a prediction is named in a warning (nnU-Net skips it silently) and
/// `--strict` refuses the evaluation; nothing is written then.
#[test]
fn evaluate_names_missing_predictions_and_strict_refuses() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/eval");
    let tmp = tempfile::tempdir().unwrap();
    let (gt, pred) = (tmp.path().join("gt"), tmp.path().join("pred"));
    std::fs::create_dir_all(&gt).unwrap();
    std::fs::create_dir_all(&pred).unwrap();
    for case in ["case_a", "case_b", "case_c"] {
        std::fs::copy(fixtures.join("gt_png").join(format!("{case}.png")), gt.join(format!("{case}.png"))).unwrap();
        if case != "case_b" {
            std::fs::copy(fixtures.join("pred_png").join(format!("{case}.png")), pred.join(format!("{case}.png"))).unwrap();
        }
    }
    let nnunet = bin("nnunet");
    let (ok, text) = output(Command::new(&nnunet).arg("evaluate").arg(&gt).arg(&pred).arg("--strict"));
    assert!(!ok && text.contains("1 reference case(s)") && text.contains("case_b") && text.contains("--strict"), "{text}");
    assert!(!pred.join("summary.json").exists(), "a refused evaluation writes no summary");
    let (ok, text) = output(Command::new(&nnunet).arg("evaluate").arg(&gt).arg(&pred));
    assert!(ok && text.contains("warning") && text.contains("case_b") && text.contains("2 case(s)"), "{text}");
    assert!(pred.join("summary.json").exists());
}
