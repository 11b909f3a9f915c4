use super::*;

pub(super) fn run(id: &str, folds: Vec<Fold>) -> Run {
    Run { preprocess_shards: 2, ..Run::new(id.into(), "Dataset001_X", "/raw".into(), "/runs/x".into(), folds, 1) }
}

fn folds(v: &[u16]) -> Vec<Fold> {
    v.iter().map(|&k| Fold::Index(k)).collect()
}

fn setup(f: Vec<Fold>) -> State {
    let mut s = State::new(10_000);
    s.add_run(run("r", f), 0);
    let cases: Vec<String> = (0..5).map(|i| format!("c{i}")).collect();
    s.create_tasks(&"r".into(), &cases, 2, 0);
    s
}

fn w(id: &str) -> WorkerId {
    WorkerId(id.into())
}

fn finish(s: &mut State, wid: &str) -> Task {
    let t = s.lease(&w(wid), 0).0.expect("a task");
    s.complete(t.id.as_str(), t.fencing_token, &w(wid), "{}".into(), 0).unwrap();
    t
}

#[test]
fn preprocessing_shards_come_before_training_and_cover_all_cases() {
    let mut s = setup(folds(&[0, 1]));
    let a = s.lease(&w("w1"), 0).0.unwrap();
    let b = s.lease(&w("w2"), 0).0.unwrap();
    assert_eq!((a.kind, b.kind), (TaskKind::Preprocess, TaskKind::Preprocess));
    let mut all: Vec<String> = a.cases.iter().chain(&b.cases).cloned().collect();
    all.sort();
    assert_eq!(all, vec!["c0", "c1", "c2", "c3", "c4"]);
    assert!(s.lease(&w("w3"), 0).0.is_none(), "training must wait for all preprocessing shards");
    s.complete(a.id.as_str(), a.fencing_token, &w("w1"), "{}".into(), 0).unwrap();
    s.complete(b.id.as_str(), b.fencing_token, &w("w2"), "{}".into(), 0).unwrap();
    assert_eq!(s.runs["r"].state, RunState::Training);
    let t = s.lease(&w("w3"), 0).0.unwrap();
    assert_eq!((t.kind, t.fold), (TaskKind::Train, Some(Fold::Index(0))));
}

#[test]
fn expired_lease_is_fenced_and_reassigned_with_its_checkpoint() {
    let mut s = setup(folds(&[0]));
    finish(&mut s, "w1");
    finish(&mut s, "w1");
    let t = s.lease(&w("w1"), 0).0.unwrap();
    assert_eq!(t.kind, TaskKind::Train);
    s.checkpoint_uploaded(t.id.as_str(), t.fencing_token, Some(&w("w1")), "results/ck.safetensors", Some(3), 0).unwrap();
    // w1 stops heartbeating
    let fx = s.expire_leases(20_000);
    assert!(fx.events.iter().any(|e| matches!(&e.body, EventBody::TaskState { state: TaskTransition::Retrying, .. })));
    let t2 = s.lease(&w("w2"), 20_000).0.unwrap();
    assert_eq!(t2.id, t.id);
    assert_eq!(t2.checkpoint.as_deref(), Some("results/ck.safetensors"));
    assert_eq!(t2.attempt, 2);
    assert!(t2.fencing_token > t.fencing_token);
    // the old worker is fenced off everywhere
    let m = EpochMetrics { epoch: 4, ..Default::default() };
    let id = t.id.as_str();
    assert!(matches!(s.report_metrics(id, t.fencing_token, &w("w1"), m, 0), Err(Refusal::Fenced { .. })));
    assert!(matches!(s.checkpoint_uploaded(id, t.fencing_token, None, "x", Some(4), 0), Err(Refusal::Fenced { .. })));
    assert!(matches!(s.complete(id, t.fencing_token, &w("w1"), "{}".into(), 0), Err(Refusal::Fenced { .. })));
    assert!(s.heartbeat(id, t.fencing_token, &w("w1"), 20_001).is_err());
    assert!(s.heartbeat(id, t2.fencing_token, &w("w2"), 20_001).is_ok());
    // ... and so is another worker that learned the current token.
    assert!(matches!(s.heartbeat(id, t2.fencing_token, &w("w1"), 20_001), Err(Refusal::NotHolder { .. })));
    assert!(matches!(s.complete(id, t2.fencing_token, &w(""), "{}".into(), 0), Err(Refusal::NotHolder { .. })));
}

#[test]
fn heartbeat_extends_the_lease() {
    let mut s = setup(folds(&[0]));
    let t = s.lease(&w("w1"), 0).0.unwrap();
    s.heartbeat(t.id.as_str(), t.fencing_token, &w("w1"), 9_000).unwrap();
    assert!(s.expire_leases(15_000).events.is_empty());
    assert!(!s.expire_leases(19_001).events.is_empty());
}

#[test]
fn run_finalizes_after_every_fold_is_validated() {
    let mut s = setup(folds(&[0, 1]));
    for _ in 0..6 {
        finish(&mut s, "w");
    }
    assert_eq!(s.runs["r"].state, RunState::Finalizing);
    assert_eq!(s.runs_to_finalize(), vec![RunId::from("r")]);
    s.finish_run(&"r".into(), Ok("{\"cv\":1}".into()), 5);
    assert_eq!(s.runs["r"].state, RunState::Done);
    assert_eq!(s.runs["r"].finished_ms, Some(5));
    assert!(!s.has_active_runs());
}

#[test]
fn fold_all_trains_without_a_validation_task() {
    let mut s = setup(vec![Fold::Index(0), Fold::All]);
    let all: Vec<&Task> = s.tasks.values().filter(|t| t.fold == Some(Fold::All)).collect();
    assert_eq!(all.iter().map(|t| t.kind).collect::<Vec<_>>(), vec![TaskKind::Train]);
    for _ in 0..5 {
        finish(&mut s, "w");
    }
    assert_eq!(s.runs["r"].state, RunState::Finalizing);
}

#[test]
fn non_retryable_failure_fails_the_run_and_retry_fold_requeues() {
    let mut s = setup(folds(&[0]));
    finish(&mut s, "w");
    finish(&mut s, "w");
    let t = s.lease(&w("w"), 0).0.unwrap();
    s.fail(t.id.as_str(), t.fencing_token, &w("w"), "NaN loss", false, 0).unwrap();
    assert_eq!(s.runs["r"].state, RunState::Failed);
    assert!(s.lease(&w("w"), 0).0.is_none());
    s.retry_fold("r", Fold::Index(0), 0).unwrap();
    assert_eq!(s.runs["r"].state, RunState::Training);
    assert_eq!(s.lease(&w("w"), 0).0.unwrap().id, t.id);
}

#[test]
fn a_failed_attempt_waits_a_growing_backoff_before_the_next_lease() {
    let mut s = setup(folds(&[0]));
    finish(&mut s, "w");
    finish(&mut s, "w");
    let t = s.lease(&w("w"), 0).0.unwrap();
    s.fail(t.id.as_str(), t.fencing_token, &w("w"), "checkpoint is corrupt", true, 0).unwrap();
    assert!(s.lease(&w("w"), 999).0.is_none(), "re-leased within the backoff");
    let t2 = s.lease(&w("w"), 1_000).0.expect("leased after the backoff");
    assert_eq!((t2.id.clone(), t2.attempt), (t.id.clone(), 2));
    s.fail(t2.id.as_str(), t2.fencing_token, &w("w"), "again", true, 1_000).unwrap();
    assert!(s.lease(&w("w"), 2_999).0.is_none(), "the second backoff is longer");
    assert!(s.lease(&w("w"), 3_000).0.is_some());
    assert_eq!(retry_backoff_ms(1), 1_000);
    assert_eq!(retry_backoff_ms(30), 30_000);
}

#[test]
fn writes_for_a_task_of_an_ended_run_are_refused() {
    let mut s = setup(folds(&[0, 1]));
    finish(&mut s, "a");
    finish(&mut s, "a");
    let t0 = s.lease(&w("a"), 0).0.unwrap();
    let t1 = s.lease(&w("b"), 0).0.unwrap();
    // Fold 1 fails for good: the run ends FAILED while fold 0 still runs.
    s.fail(t1.id.as_str(), t1.fencing_token, &w("b"), "NaN loss", false, 0).unwrap();
    assert_eq!(s.runs["r"].state, RunState::Failed);
    let last = s.runs["r"].next_seq;
    let id = t0.id.as_str();
    let m = EpochMetrics { epoch: 1, ..Default::default() };
    assert!(matches!(s.report_metrics(id, t0.fencing_token, &w("a"), m, 1), Err(Refusal::RunEnded { .. })));
    assert!(matches!(s.log(id, t0.fencing_token, &w("a"), &["late".into()], 1), Err(Refusal::RunEnded { .. })));
    assert!(matches!(s.checkpoint_uploaded(id, t0.fencing_token, None, "x", Some(1), 1), Err(Refusal::RunEnded { .. })));
    assert!(matches!(s.complete(id, t0.fencing_token, &w("a"), "{}".into(), 1), Err(Refusal::RunEnded { .. })));
    assert!(matches!(s.fail(id, t0.fencing_token, &w("a"), "x", true, 1), Err(Refusal::RunEnded { .. })));
    // The heartbeat still answers, telling the worker to stop.
    assert_eq!(s.heartbeat(id, t0.fencing_token, &w("a"), 1), Ok(true));
    assert_eq!(s.runs["r"].next_seq, last, "nothing was journaled after the terminal event");
}

#[test]
fn event_sequence_numbers_are_dense_per_run() {
    let mut s = setup(folds(&[0]));
    let mut seqs = vec![];
    for _ in 0..3 {
        let (t, fx) = s.lease(&w("w"), 0);
        seqs.extend(fx.events.iter().map(|e| e.seq));
        let t = t.unwrap();
        let fx = s.complete(t.id.as_str(), t.fencing_token, &w("w"), "{}".into(), 0).unwrap();
        seqs.extend(fx.events.iter().map(|e| e.seq));
    }
    let mut sorted = seqs.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted, seqs);
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1));
}

#[test]
fn retention_and_deletion_only_touch_finished_runs() {
    let mut s = setup(folds(&[0]));
    assert!(s.delete_run("r").is_err(), "an active run is not deleted");
    s.add_run(run("old", vec![]), 0);
    s.cancel_run("old", 100).unwrap();
    s.add_run(run("new", vec![]), 0);
    s.cancel_run("new", 200).unwrap();
    assert_eq!(s.runs_past_retention(Some(1), None, 300), vec![RunId::from("old")]);
    assert_eq!(s.runs_past_retention(None, Some(150), 300), vec![RunId::from("old")]);
    let (_, fx) = s.delete_run("old").unwrap();
    assert!(fx.runs.contains(&RunId::from("old")) && !s.runs.contains_key("old"));
}

#[test]
fn stale_workers_are_pruned_unless_they_hold_a_lease() {
    let mut s = setup(folds(&[0]));
    for id in ["a", "b"] {
        s.register_worker(Worker {
            id: w(id),
            host: "h".into(),
            device: "cpu".into(),
            device_name: String::new(),
            registered_ms: 0,
            last_seen_ms: 0,
            device_key: String::new(),
            device_free_mib: 0,
        });
    }
    s.lease(&w("a"), 0).0.unwrap();
    let fx = s.prune_workers(10_000, 5_000);
    assert_eq!(fx.workers, vec![w("b")]);
    assert!(s.workers.contains_key("a"));
}
