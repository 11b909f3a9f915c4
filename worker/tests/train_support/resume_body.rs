// Shared body of the kill -9 / --continue test (included by worker/tests/train_resume.rs, which
// defines WORKER_EXE). It trains a tiny 3-stage network on a synthetic 64x64 dataset as a real
// `nnunet-worker train` process, kills it with SIGKILL right after the first checkpoint_latest
// appears, continues with --continue, and compares everything with an uninterrupted run.
use nnunet_common::train_log::{read_jsonl, EpochMetrics};
use nnunet_worker::train::schedule::poly_lr;
use nnunet_worker::train::synth::{arch_kwargs_with_base, write_preprocessed, SynthSpec};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const EPOCHS: usize = 12;

fn train_cmd(dataset: &Path, out: &Path, resume: bool) -> Command {
    let mut c = Command::new(WORKER_EXE);
    c.args(["train", "--dataset"]).arg(dataset);
    c.args(["--fold", "0", "--epochs", &EPOCHS.to_string(), "--iters", "4", "--val-iters", "2", "--save-every", "3"]);
    c.args(["--device", "cpu", "--seed", "7", "--threads", "1", "--loader-threads", "2", "--skip-validation", "--out"]).arg(out);
    if resume {
        c.arg("--continue");
    }
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    c
}

fn run_ok(mut c: Command) -> String {
    let out = c.output().expect("starting nnunet-worker");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "nnunet-worker failed:\n{text}");
    text
}

fn check_complete_log(log: &[EpochMetrics]) {
    let epochs: Vec<u32> = log.iter().map(|m| m.epoch).collect();
    assert_eq!(epochs, (0..EPOCHS as u32).collect::<Vec<_>>(), "every epoch exactly once, in order");
    for m in log {
        assert_eq!(m.epochs as usize, EPOCHS);
        let want = poly_lr(0.01, m.epoch as usize, EPOCHS, 0.9);
        assert!((m.lr - want).abs() < 1e-12, "epoch {}: lr {} but the poly schedule says {want} (LR reset?)", m.epoch, m.lr);
        assert!(m.train_loss.is_finite() && m.val_loss.is_finite());
    }
}

#[test]
fn kill_9_then_continue_finishes_the_same_run() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = tmp.path().join("Dataset999_Synth");
    let spec = SynthSpec { cases: 6, size: 64, channels: 1, patch: 64, batch_size: 2, arch: arch_kwargs_with_base(3, 8), seed: 1 };
    write_preprocessed(&ds, &spec).unwrap();

    // Uninterrupted reference run.
    let ref_dir = tmp.path().join("ref/fold_0");
    run_ok(train_cmd(&ds, &ref_dir, false));
    let reference = read_jsonl(&ref_dir.join("training_log.jsonl")).unwrap();
    check_complete_log(&reference);

    // Run, kill -9 after the first checkpoint_latest, continue.
    let fold = tmp.path().join("res/fold_0");
    let mut child = train_cmd(&ds, &fold, false).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let latest = fold.join("checkpoint_latest.json");
    let t0 = Instant::now();
    while !latest.is_file() {
        if let Some(st) = child.try_wait().unwrap() {
            panic!("nnunet-worker exited ({st}) before writing checkpoint_latest");
        }
        assert!(t0.elapsed() < Duration::from_secs(120), "no checkpoint_latest after 120 s");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(!fold.join("checkpoint_final.json").exists(), "the run finished before it could be killed; the test did not test resume");
    let before = read_jsonl(&fold.join("training_log.jsonl")).unwrap();
    assert!(before.len() >= 3 && before.len() < EPOCHS, "killed after {} epochs", before.len());

    let text = run_ok(train_cmd(&ds, &fold, true));
    assert!(text.contains("resuming fold 0"), "the second run must resume, output:\n{text}");
    let log = read_jsonl(&fold.join("training_log.jsonl")).unwrap();
    check_complete_log(&log);
    assert!(fold.join("checkpoint_final.safetensors").is_file() && fold.join("checkpoint_final.json").is_file());
    assert!(!latest.exists(), "checkpoint_latest is removed after the final checkpoint");
    assert!(fold.join("progress.png").is_file() && fold.join("training_log.txt").is_file());
    let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(fold.join("checkpoint_final.json")).unwrap()).unwrap();
    assert_eq!(meta["epoch"], EPOCHS);
    assert_eq!(meta["logging"].as_array().unwrap().len(), EPOCHS);

    // Exact resume: the same batches, weights, momentum and LR give the same losses as the uninterrupted run.
    for (a, b) in log.iter().zip(&reference) {
        assert!((a.train_loss - b.train_loss).abs() < 1e-4 * b.train_loss.abs().max(1.0), "epoch {}: train loss {} vs uninterrupted {}", a.epoch, a.train_loss, b.train_loss);
        assert!((a.val_loss - b.val_loss).abs() < 1e-4 * b.val_loss.abs().max(1.0), "epoch {}: val loss {} vs {}", a.epoch, a.val_loss, b.val_loss);
    }

    // A finished fold reports done.
    let text = run_ok(train_cmd(&ds, &fold, true));
    assert!(text.contains("already finished"), "{text}");
}

#[test]
fn load_network_verifies_the_hash() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = tmp.path().join("Dataset998_Synth");
    let spec = SynthSpec { cases: 3, size: 32, channels: 2, patch: 32, batch_size: 2, arch: arch_kwargs_with_base(3, 4), seed: 2 };
    write_preprocessed(&ds, &spec).unwrap();
    let fold = tmp.path().join("fold_0");
    let mut c = Command::new(WORKER_EXE);
    c.args(["train", "--dataset"]).arg(&ds).args(["--epochs", "1", "--iters", "1", "--val-iters", "1", "--threads", "1", "--skip-validation", "--out"]).arg(&fold);
    run_ok(c);
    let ck = fold.join("checkpoint_final");
    let (_vs, net, meta) = nnunet_worker::train::load_network(&ck, tch::Device::Cpu).unwrap();
    assert_eq!((meta.init_args.num_input_channels, meta.init_args.num_classes), (2, 2));
    let y = tch::no_grad(|| net.forward(&tch::Tensor::zeros([1, 2, 32, 32], (tch::Kind::Float, tch::Device::Cpu))));
    assert_eq!(y.size(), vec![1, 2, 32, 32]);
    // Corrupt one byte: loading must fail with a message naming the problem.
    let w = fold.join("checkpoint_final.safetensors");
    let mut bytes = std::fs::read(&w).unwrap();
    let n = bytes.len();
    bytes[n - 1] ^= 0xff;
    std::fs::write(&w, bytes).unwrap();
    let err = format!("{:#}", nnunet_worker::train::load_network(&ck, tch::Device::Cpu).unwrap_err());
    assert!(err.contains("corrupt") && err.contains("sha256"), "{err}");
    std::fs::remove_file(fold.join("checkpoint_final.json")).unwrap();
    let err = format!("{:#}", nnunet_worker::train::load_network(&ck, tch::Device::Cpu).unwrap_err());
    assert!(err.contains("missing"), "{err}");
}
