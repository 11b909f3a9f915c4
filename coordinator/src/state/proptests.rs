//! Random sequences of register/lease/heartbeat/report/upload/complete/fail/out-of-memory/expire/cancel against
//! the state machine keep its invariants. `PROPTEST_CASES=10000 cargo test -p nnunet-coordinator
//! state::proptests` for a long run (the default is a short one).
use super::tests::run;
use super::*;
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Register(u8),
    Lease(u8),
    Heartbeat(usize),
    Report(usize),
    Upload(usize),
    Complete(usize),
    Fail(usize, bool),
    OutOfMemory(usize),
    Expire(u16),
    Cancel,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..4).prop_map(Op::Register),
        (0u8..4).prop_map(Op::Lease),
        any::<usize>().prop_map(Op::Heartbeat),
        any::<usize>().prop_map(Op::Report),
        any::<usize>().prop_map(Op::Upload),
        any::<usize>().prop_map(Op::Complete),
        (any::<usize>(), any::<bool>()).prop_map(|(i, r)| Op::Fail(i, r)),
        any::<usize>().prop_map(Op::OutOfMemory),
        (0u16..20_000).prop_map(Op::Expire),
        Just(Op::Cancel).prop_map(|c| c),
    ]
}

/// Every lease ever handed out: (task, token, worker).
type Grant = (TaskId, u64, WorkerId);

fn apply(s: &mut State, grants: &mut Vec<Grant>, now: &mut i64, op: &Op) {
    let pick = |i: usize, g: &Vec<Grant>| -> Option<Grant> { (!g.is_empty()).then(|| g[i % g.len()].clone()) };
    let holds = |s: &State, g: &Grant| {
        s.tasks.get(&g.0).is_some_and(|t| t.state == TaskState::Running && t.fencing_token == g.1 && t.worker_id.as_ref() == Some(&g.2))
    };
    match op {
        Op::Register(w) => {
            let id = WorkerId(format!("w{w}"));
            // Even workers share one GPU (fold packing), odd ones are CPU workers.
            let gpu = w % 2 == 0;
            s.register_worker(Worker {
                id,
                host: "h".into(),
                device: if gpu { "cuda:0" } else { "cpu" }.into(),
                device_name: String::new(),
                registered_ms: *now,
                last_seen_ms: *now,
                device_key: if gpu { "h/GPU-0" } else { "" }.into(),
                device_free_mib: if gpu { 3_000 } else { 0 },
            });
        }
        Op::Lease(w) => {
            let wid = WorkerId(format!("w{w}"));
            if let (Some(t), _) = s.lease(&wid, *now) {
                // A lease never puts more device tasks on a device than it takes.
                if let (Some(key), true) = (s.device_key_of(&wid), t.kind != TaskKind::Preprocess) {
                    if let Some(slots) = s.device_slots(key, &s.runs[&t.run_id]) {
                        assert!(s.device_tasks(key) <= slots, "{} device tasks on {key}, {slots} slots", s.device_tasks(key));
                    }
                }
                grants.push((t.id.clone(), t.fencing_token, wid));
            }
        }
        Op::Heartbeat(i) | Op::Report(i) | Op::Upload(i) | Op::Complete(i) | Op::Fail(i, _) | Op::OutOfMemory(i) => {
            let Some(g) = pick(*i, grants) else { return };
            // A heartbeat only needs the lease (it is how a worker learns that the run ended); every
            // other call also needs the run to be live (`State::check_fence`).
            let run_live = s.tasks.get(&g.0).and_then(|t| s.runs.get(&t.run_id)).is_some_and(|r| !r.state.is_terminal());
            let valid = holds(s, &g) && (matches!(op, Op::Heartbeat(_)) || run_live);
            let id = g.0.as_str();
            let ok = match op {
                Op::Heartbeat(_) => s.heartbeat(id, g.1, &g.2, *now).is_ok(),
                Op::Report(_) => s.report_metrics(id, g.1, &g.2, EpochMetrics::default(), *now).is_ok(),
                Op::Upload(_) => s.checkpoint_uploaded(id, g.1, Some(&g.2), "ck", Some(1), *now).is_ok(),
                Op::Complete(_) => s.complete(id, g.1, &g.2, "{}".into(), *now).is_ok(),
                Op::Fail(_, r) => s.fail(id, g.1, &g.2, "boom", *r, *now).is_ok(),
                Op::OutOfMemory(_) => s.fail_out_of_memory(id, g.1, &g.2, "CUDA out of memory", *now).is_ok(),
                _ => unreachable!(),
            };
            assert_eq!(ok, valid, "{op:?} with grant {g:?}: accepted only from the current holder with the current token");
        }
        Op::Expire(dt) => {
            *now += *dt as i64;
            s.expire_leases(*now);
        }
        Op::Cancel => {
            s.cancel_run("r", *now).unwrap();
        }
    }
}

fn check(before: &State, after: &State) {
    for (id, t) in &after.tasks {
        let b = &before.tasks[id];
        assert!(t.fencing_token >= b.fencing_token, "fencing token of {id} went backwards");
        assert!(t.attempt >= b.attempt, "attempt of {id} decreased");
        assert!(t.uncounted_attempts <= t.attempt, "{id}: more uncounted attempts than attempts");
        assert!(t.uncounted_attempts >= b.uncounted_attempts);
        if t.fencing_token != b.fencing_token {
            assert!(t.fencing_token > b.fencing_token);
        }
        assert_eq!(t.state == TaskState::Running, t.worker_id.is_some() && t.state == TaskState::Running);
        if t.state == TaskState::Running {
            assert!(t.worker_id.is_some(), "a running task has its one holder");
        }
    }
    for (id, r) in &after.runs {
        let b = &before.runs[id];
        if b.state.is_terminal() {
            assert!(r.state.is_terminal(), "finished run {id} went from {:?} back to {:?}", b.state, r.state);
        }
        assert!(r.next_seq >= b.next_seq);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64), ..ProptestConfig::default() })]
    #[test]
    fn random_call_sequences_keep_the_invariants(ops in proptest::collection::vec(op(), 1..120), predict in any::<bool>()) {
        let mut s = State::new(5_000);
        let mut r = run("r", vec![Fold::Index(0), Fold::Index(1), Fold::All]);
        r.predict_test = predict;
        s.add_run(r, 0);
        let cases: Vec<String> = (0..4).map(|i| format!("c{i}")).collect();
        s.create_tasks(&"r".into(), &cases, 2, 0);
        s.set_memory_estimate(&"r".into(), 1_000);
        let mut grants = Vec::new();
        let mut now = 0i64;
        let mut events = s.runs["r"].next_seq;
        for op in &ops {
            let before = s.clone();
            apply(&mut s, &mut grants, &mut now, op);
            check(&before, &s);
            prop_assert!(s.runs["r"].next_seq >= events);
            events = s.runs["r"].next_seq;
        }
    }
}
