//! The `nnunet-worker` command line: where `train` looks for a dataset, `--fold`/`--folds all`, and
//! that a failed `predict` creates no output folder.
use std::process::Command;

const WORKER_EXE: &str = env!("CARGO_BIN_EXE_nnunet-worker");

fn run(c: &mut Command) -> (Option<i32>, String) {
    let out = c.output().expect("starting nnunet-worker");
    (out.status.code(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn train_without_nnunet_preprocessed_names_the_variable_instead_of_searching_the_working_directory() {
    let tmp = tempfile::tempdir().unwrap();
    // A dataset folder in the working directory that a search of `.` would find by its id.
    std::fs::create_dir_all(tmp.path().join("Dataset001_Here")).unwrap();
    let (code, text) = run(Command::new(WORKER_EXE)
        .current_dir(tmp.path())
        .env_remove("nnUNet_preprocessed")
        .args(["train", "--dataset", "1", "--fold", "all", "--out"])
        .arg(tmp.path().join("out")));
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("nnUNet_preprocessed") && !text.contains("Dataset001_Here"), "{text}");
    assert!(!tmp.path().join("out").exists());
}

#[test]
fn fold_arguments_accept_all_and_refuse_garbage() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    std::fs::create_dir_all(&input).unwrap();
    let out = tmp.path().join("out");
    // `all` parses (the failure is the missing model folder, not the arguments).
    let (code, text) = run(Command::new(WORKER_EXE)
        .args(["predict", "--folds", "0", "1", "all", "-i"])
        .arg(&input)
        .arg("-o")
        .arg(&out)
        .arg("-m")
        .arg(tmp.path().join("no-model")));
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("not a model folder"), "{text}");
    assert!(!out.exists(), "a failed prediction creates no output folder");
    let (code, text) = run(Command::new(WORKER_EXE).args(["predict", "--folds", "-3", "-i", "a", "-o", "b", "-m", "c"]));
    assert_eq!(code, Some(2), "{text}");
    let (code, text) = run(Command::new(WORKER_EXE).args(["train", "--dataset", "x", "--fold", "alll"]));
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("'all'"), "{text}");
}
