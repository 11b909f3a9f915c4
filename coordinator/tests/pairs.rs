//! Checkpoint pairs over real gRPC (bug A of the chaos test) and the restart sweep of upload temps
//! (bug B): weights and sidecar are committed together, a worker killed between them leaves the
//! last consistent pair in place, and a torn pair on disk falls back to the newest consistent one.
mod common;
use common::*;
use nnunet_proto::v1 as pb;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tonic::Code;

const FOLD0: &str = "results/Dataset001_Fake/nnUNetTrainer__nnUNetPlans__2d/fold_0";

fn sidecar(epoch: u32, weights_file: &str, weights: &[u8]) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "epoch": epoch, "weights_file": weights_file, "sha256": nnunet_common::hash::sha256_bytes(weights)
    }))
    .unwrap()
}

/// Runs the preprocessing task of `fake_run` (writing its outputs in place) and leases fold 0's training.
async fn lease_training(api: &mut Api, dir: &Path, w: &str) -> pb::Task {
    let pre = lease(api, w).await.unwrap();
    let run_dir = dir.join("runs/r1");
    let data = run_dir.join(format!("preprocessed/{DS}/{}", nnunet_common::paths::data_identifier()));
    std::fs::create_dir_all(&data).unwrap();
    for f in ["a.npy", "a_seg.npy", "a.json"] {
        std::fs::write(data.join(f), f).unwrap();
    }
    let splits = r#"[{"train": ["a"], "val": ["a"]}, {"train": ["a"], "val": ["a"]}]"#;
    std::fs::write(run_dir.join(format!("preprocessed/{DS}/splits_final.json")), splits).unwrap();
    complete(api, w, &pre).await;
    let t = lease(api, w).await.unwrap();
    assert_eq!(t.kind, pb::TaskKind::Train as i32);
    t
}

async fn upload(api: &mut Api, t: &pb::Task, w: &str, name: &str, data: &[u8]) -> Result<(), tonic::Status> {
    let mut c = chunk(t, t.fencing_token, &format!("{FOLD0}/{name}"), data);
    c.worker_id = w.into();
    api.upload_artifact(tokio_stream::iter(vec![c])).await.map(drop)
}

async fn expire_and_relet(h: &Harness, api: &mut Api, w: &str) -> pb::Task {
    h.clock.advance(Duration::from_secs(31));
    h.coord.housekeep_once().await;
    lease(api, w).await.expect("the training task again")
}

fn read(p: PathBuf) -> Vec<u8> {
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[tokio::test]
async fn checkpoint_weights_and_sidecar_are_committed_together() {
    let dir = tempfile::tempdir().unwrap();
    let h = start(dir.path(), Start::default()).await;
    fake_run(&h.coord, dir.path(), "r1").await;
    let mut api = api(&h.url, TOKEN).await;
    let w = register(&mut api, "a").await;
    let t = lease_training(&mut api, dir.path(), &w).await;
    let fold = dir.path().join("runs/r1").join(FOLD0);
    let (w1, w2) = (b"weights of epoch 1".to_vec(), b"weights of epoch 2".to_vec());
    // A whole pair lands.
    upload(&mut api, &t, &w, "checkpoint_latest.safetensors", &w1).await.unwrap();
    assert!(!fold.join("checkpoint_latest.safetensors").exists(), "weights wait for their sidecar");
    upload(&mut api, &t, &w, "checkpoint_latest.json", &sidecar(1, "checkpoint_latest.safetensors", &w1)).await.unwrap();
    assert_eq!(read(fold.join("checkpoint_latest.safetensors")), w1);
    // The worker dies after the next weights: the pair on disk stays the consistent epoch-1 pair.
    upload(&mut api, &t, &w, "checkpoint_latest.safetensors", &w2).await.unwrap();
    assert_eq!(read(fold.join("checkpoint_latest.safetensors")), w1);
    assert_eq!(temp_files(dir.path()).len(), 1, "the held weights");
    // A sidecar whose weights never arrived is refused with DATA_LOSS (the worker sends the pair again).
    let s3 = sidecar(3, "checkpoint_latest.safetensors", b"weights of epoch 3");
    let e = upload(&mut api, &t, &w, "checkpoint_latest.json", &s3).await.unwrap_err();
    assert_eq!(e.code(), Code::DataLoss, "{e:?}");
    assert_eq!(read(fold.join("checkpoint_latest.safetensors")), w1);
    // The lease expires: the held weights go, and the next lease resumes from the epoch-1 pair.
    let w_b = register(&mut api, "b").await;
    let t2 = expire_and_relet(&h, &mut api, &w_b).await;
    assert!(temp_files(dir.path()).is_empty(), "{:?}", temp_files(dir.path()));
    assert_eq!(t2.checkpoint, format!("{FOLD0}/checkpoint_latest.safetensors"));
    let ck = t2.inputs.iter().find(|i| i.path == t2.checkpoint).expect("the checkpoint is an input");
    assert_eq!(ck.sha256, nnunet_common::hash::sha256_bytes(&w1));
    // A torn pair on disk (a coordinator killed between the two renames) falls back to the newest
    // consistent pair of the fold instead of failing every attempt.
    upload(&mut api, &t2, &w_b, "checkpoint_best.safetensors", b"best weights").await.unwrap();
    upload(&mut api, &t2, &w_b, "checkpoint_best.json", &sidecar(1, "checkpoint_best.safetensors", b"best weights")).await.unwrap();
    std::fs::write(fold.join("checkpoint_latest.safetensors"), &w2).unwrap();
    let t3 = expire_and_relet(&h, &mut api, &w).await;
    assert_eq!(t3.checkpoint, format!("{FOLD0}/checkpoint_best.safetensors"));
    assert!(t3.inputs.iter().any(|i| i.path == format!("{FOLD0}/checkpoint_best.json")));
}

#[tokio::test]
async fn a_restarted_coordinator_removes_cut_short_uploads() {
    let dir = tempfile::tempdir().unwrap();
    let h = start(dir.path(), Start::default()).await;
    fake_run(&h.coord, dir.path(), "r1").await;
    let fold = dir.path().join("runs/r1").join(FOLD0);
    std::fs::create_dir_all(&fold).unwrap();
    // What a coordinator killed mid-upload leaves: the upload's temp file.
    std::fs::write(fold.join(".checkpoint_latest.safetensors.upload-7-0badcafe"), vec![1u8; 1000]).unwrap();
    std::fs::write(fold.join("training_log.jsonl"), b"{}\n").unwrap();
    h.stop().await;
    let _h = start(dir.path(), Start::default()).await;
    assert!(temp_files(dir.path()).is_empty(), "{:?}", temp_files(dir.path()));
    assert!(fold.join("training_log.jsonl").is_file());
}

#[tokio::test]
async fn an_upload_cut_short_leaves_no_temp_file() {
    let dir = tempfile::tempdir().unwrap();
    let (_h, mut api, _w, t) = leased(dir.path()).await;
    let mut first = chunk(&t, t.fencing_token, &case_data("a"), b"first half");
    first.total_size = 100;
    first.last = false;
    // The stream ends after the first chunk, without `last` (the worker died).
    let e = api.upload_artifact(tokio_stream::iter(vec![first])).await.unwrap_err();
    assert_eq!(e.code(), Code::DataLoss, "{e:?}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(temp_files(dir.path()).is_empty(), "{:?}", temp_files(dir.path()));
}
