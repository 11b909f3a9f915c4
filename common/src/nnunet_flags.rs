//! nnU-Net v2's command-line spellings for our commands. nnU-Net's entry points (argparse in
//! `nnunetv2/inference/predict_from_raw_data.py::predict_entry_point`,
//! `nnunetv2/run/run_training.py::run_training_entry`,
//! `nnunetv2/experiment_planning/plan_and_preprocess_entrypoints.py::plan_and_preprocess_entry`,
//! `nnunetv2/evaluation/evaluate_predictions.py::evaluate_folder_entry_point`) use multi-letter
//! single-dash flags (`-device`, `-chk`, `-tr`) and underscores (`--disable_tta`), which clap cannot
//! parse. [`normalize_args`] rewrites exactly those known spellings to our long flags before clap
//! sees the command line; everything else passes through untouched, and nothing after `--`.
//! One-letter nnU-Net flags (`-i -o -d -c -f -p -m`) are clap short flags on the commands themselves.
use std::ffi::OsString;

/// (nnU-Net spelling, our long flag). Both `-x VALUE` and `-x=VALUE` forms are rewritten.
pub const ALIASES: &[(&str, &str)] = &[
    ("-device", "--device"),
    ("-djfile", "--djfile"),
    ("-chk", "--checkpoint"),
    ("-tr", "--trainer"),
    ("-pl", "--planner"),
    ("-npp", "--npp"),
    ("-nps", "--nps"),
    ("-np", "--np"),
    ("-npfp", "--np"),
    ("-step_size", "--step-size"),
    ("-plans_name", "--plans"),
    ("-gpu_memory_target", "--gpu-memory-target"),
    ("-pretrained_weights", "--pretrained-weights"),
    ("-pp_pkl_file", "--pp"),
    ("--disable_tta", "--disable-tta"),
    ("--save_probabilities", "--save-probabilities"),
    ("--continue_training", "--continue"),
    ("--c", "--continue"),
];

/// Our long flag for an nnU-Net spelling, if `token` is one (`-device` or `-device=cuda:0`).
pub fn alias_for(token: &str) -> Option<String> {
    let (flag, value) = match token.split_once('=') {
        Some((f, v)) => (f, Some(v)),
        None => (token, None),
    };
    let ours = ALIASES.iter().find(|(theirs, _)| *theirs == flag)?.1;
    Some(match value {
        Some(v) => format!("{ours}={v}"),
        None => ours.to_string(),
    })
}

/// Rewrites nnU-Net v2's flag spellings in a command line (the program name included) to ours.
pub fn normalize_args<I: IntoIterator<Item = OsString>>(args: I) -> Vec<OsString> {
    let mut out = Vec::new();
    let mut passthrough = false;
    for (i, a) in args.into_iter().enumerate() {
        if i == 0 || passthrough {
            out.push(a);
            continue;
        }
        if a == "--" {
            passthrough = true;
            out.push(a);
            continue;
        }
        match a.to_str().and_then(alias_for) {
            Some(ours) => out.push(ours.into()),
            None => out.push(a),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(args: &[&str]) -> Vec<String> {
        let v = std::iter::once("nnunet").chain(args.iter().copied()).map(OsString::from);
        normalize_args(v).into_iter().skip(1).map(|s| s.into_string().unwrap()).collect()
    }

    #[test]
    fn every_alias_maps_to_its_long_flag() {
        for (theirs, ours) in ALIASES {
            assert_eq!(norm(&[*theirs, "x"]), vec![ours.to_string(), "x".into()], "{theirs}");
            assert_eq!(norm(&[format!("{theirs}=v").as_str()]), vec![format!("{ours}=v")], "{theirs}=v");
        }
    }

    #[test]
    fn the_predict_spellings_of_nnunetv2_predict() {
        let got = norm(&[
            "-i",
            "in",
            "-o",
            "out",
            "-d",
            "501",
            "-c",
            "2d",
            "-f",
            "0",
            "1",
            "-tr",
            "T",
            "-p",
            "P",
            "-chk",
            "checkpoint_best.pth",
            "-device",
            "cuda",
            "--disable_tta",
            "--save_probabilities",
            "-step_size",
            "0.5",
            "-npp",
            "2",
            "-nps",
            "2",
        ]);
        let want = [
            "-i",
            "in",
            "-o",
            "out",
            "-d",
            "501",
            "-c",
            "2d",
            "-f",
            "0",
            "1",
            "--trainer",
            "T",
            "-p",
            "P",
            "--checkpoint",
            "checkpoint_best.pth",
            "--device",
            "cuda",
            "--disable-tta",
            "--save-probabilities",
            "--step-size",
            "0.5",
            "--npp",
            "2",
            "--nps",
            "2",
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn the_plan_and_evaluate_spellings() {
        assert_eq!(
            norm(&["501", "-pl", "ResEncM", "-gpu_memory_target", "24", "-np", "4"]),
            ["501", "--planner", "ResEncM", "--gpu-memory-target", "24", "--np", "4"]
        );
        assert_eq!(norm(&["gt", "pred", "-djfile", "dataset.json"]), ["gt", "pred", "--djfile", "dataset.json"]);
        assert_eq!(
            norm(&["--dataset", "501", "--c", "-pretrained_weights", "w.pth"]),
            ["--dataset", "501", "--continue", "--pretrained-weights", "w.pth"]
        );
    }

    #[test]
    fn leaves_everything_else_alone() {
        let same = ["-i", "--device", "cuda", "-f", "0", "--name", "-trx", "-d", "x", "--folds", "all", "--disable-tta"];
        assert_eq!(norm(&same), same);
        // nothing after `--`, and the program name is never rewritten
        assert_eq!(norm(&["--", "-device"]), ["--", "-device"]);
        let prog = normalize_args(["-tr"].map(OsString::from));
        assert_eq!(prog, [OsString::from("-tr")]);
    }
}
