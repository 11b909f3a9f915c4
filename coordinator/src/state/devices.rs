//! Fold packing: several workers may compute on one device (`nnunet run --folds-per-gpu`, or any
//! cluster that starts more than one worker per GPU). Workers register a device key (host + GPU)
//! and the device's free memory; the lease never starts more GPU tasks on a device than
//! - its free memory holds, at the run's plan estimate ([`memory_slots`]), and
//! - the device's limit learnt from an out-of-memory failure there ([`State::fail_out_of_memory`]).
//!
//! A task that ran out of device memory while sharing the device goes back to the queue without
//! counting as an attempt, and the device's limit drops below the number of tasks that shared it;
//! a task that runs out of memory alone fails like any other failure (counted, retried, bounded).
use super::*;

/// Share of a device's free memory that packed tasks may plan to use (the rest is headroom for
/// fragmentation and the estimate's error).
pub const MEMORY_SAFETY: f64 = 0.9;

/// How many tasks of `estimate_mib` fit in `free_mib` with the safety margin (at least 1: a task
/// that does not fit is still tried alone).
pub fn memory_slots(free_mib: u64, estimate_mib: u64) -> u32 {
    let slots = (free_mib as f64 * MEMORY_SAFETY / estimate_mib.max(1) as f64).floor();
    (slots as u32).max(1)
}

/// Tasks that occupy a device (preprocessing runs on the CPU).
fn uses_device(kind: TaskKind) -> bool {
    kind != TaskKind::Preprocess
}

impl State {
    /// The device key of a worker, `None` for CPU workers and unknown workers.
    pub fn device_key_of(&self, worker: &WorkerId) -> Option<&str> {
        self.workers.get(worker).map(|w| w.device_key.as_str()).filter(|k| !k.is_empty())
    }

    /// Running device tasks on the device `key`.
    pub fn device_tasks(&self, key: &str) -> u32 {
        self.tasks
            .values()
            .filter(|t| t.state == TaskState::Running && uses_device(t.kind))
            .filter(|t| t.worker_id.as_ref().and_then(|w| self.device_key_of(w)) == Some(key))
            .count() as u32
    }

    /// The device's free memory as its workers saw it at registration (the largest reading: later
    /// workers see the memory of the earlier ones' contexts), `None` when unknown.
    pub fn device_free_mib(&self, key: &str) -> Option<u64> {
        self.workers.values().filter(|w| w.device_key == key).map(|w| w.device_free_mib).max().filter(|&m| m > 0)
    }

    /// How many device tasks of `run` may run at once on device `key`; `None`: no limit known.
    pub fn device_slots(&self, key: &str, run: &Run) -> Option<u32> {
        let by_memory = run.memory_estimate_mib.zip(self.device_free_mib(key)).map(|(est, free)| memory_slots(free, est));
        match (by_memory, self.device_limits.get(key).copied()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether a device task of `run_id` must wait because `worker`'s device is full.
    pub(super) fn device_full(&self, worker: &WorkerId, kind: TaskKind, run_id: &RunId) -> bool {
        let (Some(key), Some(run)) = (self.device_key_of(worker), self.runs.get(run_id)) else { return false };
        uses_device(kind) && self.device_slots(key, run).is_some_and(|slots| self.device_tasks(key) >= slots)
    }

    /// Records a run's per-task memory estimate (from its plan).
    pub fn set_memory_estimate(&mut self, run_id: &RunId, mib: u64) -> Effects {
        let mut fx = Effects::default();
        if let Some(r) = self.runs.get_mut(run_id) {
            r.memory_estimate_mib = Some(mib);
            fx.runs.push(run_id.clone());
        }
        fx
    }

    /// A worker's task ran out of device memory. Sharing the device with other tasks, it goes back
    /// to the queue without counting as an attempt and the device takes one task fewer from now on;
    /// alone on its device (or on an unknown one) it is an ordinary retryable failure.
    pub fn fail_out_of_memory(&mut self, task_id: &str, token: u64, worker: &WorkerId, error: &str, now: i64) -> Result<Effects, Refusal> {
        let id = self.check_fence(task_id, token, Some(worker))?.id.clone();
        let key = self.device_key_of(worker).map(str::to_string);
        let sharing = key.as_deref().map_or(1, |k| self.device_tasks(k));
        let Some(key) = key.filter(|_| sharing > 1) else {
            return self.fail(
                task_id,
                token,
                worker,
                &format!("out of device memory with no other task on its device: {error}"),
                true,
                now,
            );
        };
        let limit = sharing - 1;
        let entry = self.device_limits.entry(key.clone()).or_insert(limit);
        *entry = (*entry).min(limit);
        let limit = *entry;
        let mut fx = Effects::default();
        let t = self.tasks.get_mut(&id).expect("checked");
        let attempt = t.attempt;
        t.state = TaskState::Pending;
        t.uncounted_attempts += 1;
        t.error = Some(error.to_string());
        t.not_before_ms = now + 1000;
        let (run_id, fold, kind) = (t.run_id.clone(), t.fold, t.kind);
        fx.tasks.push(id.clone());
        let detail = format!(
            "out of device memory with {sharing} tasks on {key}: retried with at most {limit} at a time there (not counted as a failure): {error}"
        );
        let body = EventBody::TaskState { state: TaskTransition::Retrying, worker_id: Some(worker.clone()), detail, kind, attempt };
        self.emit(&mut fx, &run_id, fold, Some(&id), body, now);
        Ok(fx)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::run;
    use super::*;

    fn gpu_worker(id: &str, key: &str, free_mib: u64) -> Worker {
        Worker {
            id: WorkerId(id.into()),
            host: "h".into(),
            device: "cuda:0".into(),
            device_name: "GPU".into(),
            registered_ms: 0,
            last_seen_ms: 0,
            device_key: key.into(),
            device_free_mib: free_mib,
        }
    }

    /// A planned run of `folds` folds whose preprocessing is done, `workers` workers on one device.
    fn packed(folds: u16, estimate: Option<u64>, free_mib: u64, workers: usize) -> State {
        let mut s = State::new(10_000);
        s.add_run(run("r", (0..folds).map(Fold::Index).collect()), 0);
        s.create_tasks(&"r".into(), &["c0".to_string()], 1, 0);
        if let Some(e) = estimate {
            s.set_memory_estimate(&"r".into(), e);
        }
        s.register_worker(gpu_worker("pre", "", 0));
        let t = s.lease(&WorkerId("pre".into()), 0).0.unwrap();
        s.complete(t.id.as_str(), t.fencing_token, &WorkerId("pre".into()), "{}".into(), 0).unwrap();
        for i in 0..workers {
            s.register_worker(gpu_worker(&format!("g{i}"), "h/GPU-0", free_mib));
        }
        s
    }

    fn lease_all(s: &mut State, workers: usize, now: i64) -> Vec<Task> {
        (0..workers).filter_map(|i| s.lease(&WorkerId(format!("g{i}")), now).0).collect()
    }

    #[test]
    fn memory_slots_floor_the_free_memory_with_a_margin_and_never_reach_zero() {
        assert_eq!(memory_slots(140_000, 8_000), 15);
        assert_eq!(memory_slots(10_000, 4_000), 2);
        assert_eq!(memory_slots(8_000, 8_000), 1, "0.9 x 8000 holds no 8000 task, yet one is tried");
        assert_eq!(memory_slots(0, 0), 1);
    }

    #[test]
    fn a_device_never_takes_more_tasks_than_its_memory_holds() {
        // 5 workers on one 24 GB device, 8 GB per fold: 2 at once (0.9 x 24000 / 8000 = 2.7).
        let mut s = packed(5, Some(8_000), 24_000, 5);
        let running = lease_all(&mut s, 5, 0);
        assert_eq!(running.len(), 2, "{running:?}");
        assert_eq!(s.device_slots("h/GPU-0", &s.runs["r"].clone()), Some(2));
        // A finished fold frees a slot.
        let t = &running[0];
        s.complete(t.id.as_str(), t.fencing_token, t.worker_id.as_ref().unwrap(), "{}".into(), 0).unwrap();
        assert!(s.lease(&WorkerId("g4".into()), 0).0.is_some());
        assert!(s.lease(&WorkerId("g3".into()), 0).0.is_none());
        // Without a plan estimate nothing limits the device.
        let mut s = packed(5, None, 24_000, 5);
        assert_eq!(lease_all(&mut s, 5, 0).len(), 5);
    }

    #[test]
    fn an_out_of_memory_fold_is_requeued_uncounted_and_the_device_takes_fewer() {
        let mut s = packed(5, Some(1_000), 100_000, 3);
        let running = lease_all(&mut s, 3, 0);
        assert_eq!(running.len(), 3);
        let t = &running[2];
        let (wid, attempt) = (t.worker_id.clone().unwrap(), t.attempt);
        let fx = s.fail_out_of_memory(t.id.as_str(), t.fencing_token, &wid, "CUDA out of memory", 10).unwrap();
        let after = &s.tasks[&t.id];
        assert_eq!((after.state, after.attempt, after.uncounted_attempts), (TaskState::Pending, attempt, 1), "requeued, not counted");
        assert_eq!(s.device_limits["h/GPU-0"], 2);
        assert!(fx.events.iter().any(|e| matches!(&e.body, EventBody::TaskState { detail, .. } if detail.contains("at most 2"))));
        assert_eq!(s.runs["r"].state, RunState::Training, "the run goes on");
        // Two still run: the device is full until one ends, then the requeued fold starts again.
        assert!(s.lease(&wid, 5_000).0.is_none());
        let done = &running[0];
        s.complete(done.id.as_str(), done.fencing_token, done.worker_id.as_ref().unwrap(), "{}".into(), 5_000).unwrap();
        let again = s.lease(&wid, 5_000).0.expect("a slot is free");
        assert_eq!(again.id, t.id, "the requeued fold goes first (same worker, lowest fold)");
        assert_eq!(again.attempt, attempt + 1);
        // Out of memory again with one neighbour: the device drops to one task at a time.
        s.fail_out_of_memory(again.id.as_str(), again.fencing_token, &wid, "CUDA out of memory", 6_000).unwrap();
        assert_eq!(s.device_limits["h/GPU-0"], 1);
        // Alone on the device it is an ordinary failure: counted, with the backoff.
        let other = &running[1];
        s.complete(other.id.as_str(), other.fencing_token, other.worker_id.as_ref().unwrap(), "{}".into(), 7_000).unwrap();
        let alone = s.lease(&wid, 7_000).0.expect("the only task on the device");
        s.fail_out_of_memory(alone.id.as_str(), alone.fencing_token, &wid, "CUDA out of memory", 8_000).unwrap();
        let t2 = &s.tasks[&alone.id];
        assert_eq!((t2.state, t2.attempt), (TaskState::Pending, alone.attempt));
        assert!(t2.error.as_deref().unwrap().contains("no other task on its device"));
        assert!(t2.not_before_ms > 8_000);
    }

    #[test]
    fn cpu_workers_and_stale_tokens_are_not_affected() {
        let mut s = packed(2, Some(1_000), 1_000, 0);
        s.register_worker(gpu_worker("c", "", 0));
        let t = s.lease(&WorkerId("c".into()), 0).0.unwrap();
        assert!(s.fail_out_of_memory(t.id.as_str(), t.fencing_token + 1, &WorkerId("c".into()), "oom", 1).is_err());
        s.fail_out_of_memory(t.id.as_str(), t.fencing_token, &WorkerId("c".into()), "oom", 1).unwrap();
        assert!(s.device_limits.is_empty(), "a CPU worker has no device to limit");
        assert_eq!(s.tasks[&t.id].state, TaskState::Pending);
    }
}
