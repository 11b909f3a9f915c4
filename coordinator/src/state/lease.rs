//! Leases: choosing the next task for a worker, fencing every write, heartbeats, completion,
//! failure, expiry.
use super::*;

impl State {
    fn deps_done(&self, t: &Task) -> bool {
        t.deps.iter().all(|d| self.tasks.get(d).is_some_and(|d| d.state == TaskState::Done))
    }

    /// Picks the next runnable task for `worker_id` and leases it. Runs are served oldest first;
    /// within a run, preprocessing before training before validation; a task whose previous
    /// attempt ran on this worker is preferred (its cache is warm). A device task waits while the
    /// worker's device is full (`devices.rs`).
    pub fn lease(&mut self, worker_id: &WorkerId, now: i64) -> (Option<Task>, Effects) {
        let mut fx = Effects::default();
        let mut best: Option<(bool, i64, TaskKind, Option<Fold>, TaskId)> = None;
        for t in self.tasks.values() {
            if t.state != TaskState::Pending || t.not_before_ms > now {
                continue;
            }
            let Some(run) = self.runs.get(&t.run_id) else { continue };
            if run.state.is_terminal() || run.state == RunState::Planning || !self.deps_done(t) {
                continue;
            }
            if self.device_full(worker_id, t.kind, &t.run_id) {
                continue;
            }
            let affinity = t.worker_id.as_ref() != Some(worker_id);
            let key = (affinity, run.created_ms, t.kind, t.fold, t.id.clone());
            if best.as_ref().is_none_or(|b| key < *b) {
                best = Some(key);
            }
        }
        let Some((_, _, _, _, task_id)) = best else { return (None, fx) };
        let lease_id = self.next_lease;
        self.next_lease += 1;
        let ttl = self.lease_ttl_ms;
        let t = self.tasks.get_mut(&task_id).expect("task exists");
        t.state = TaskState::Running;
        t.worker_id = Some(worker_id.clone());
        t.lease_id = lease_id;
        t.fencing_token = next_fencing_token(t.fencing_token);
        t.attempt += 1;
        t.lease_expires_ms = now + ttl;
        let (run_id, fold, kind, attempt) = (t.run_id.clone(), t.fold, t.kind, t.attempt);
        let detail = match (&t.checkpoint, t.checkpoint_epoch) {
            (Some(_), Some(e)) if kind == TaskKind::Train => format!("resumes from the checkpoint of epoch {e}"),
            _ => String::new(),
        };
        let leased = t.clone();
        fx.tasks.push(task_id.clone());
        let body = EventBody::TaskState { state: TaskTransition::Running, worker_id: Some(worker_id.clone()), detail, kind, attempt };
        self.emit(&mut fx, &run_id, fold, Some(&task_id), body, now);
        if kind == TaskKind::Train && self.preprocessing_done(&run_id) {
            self.set_run_state(&run_id, RunState::Training, &mut fx, now);
        }
        (Some(leased), fx)
    }

    pub(super) fn preprocessing_done(&self, run_id: &RunId) -> bool {
        self.tasks.values().filter(|t| &t.run_id == run_id && t.kind == TaskKind::Preprocess).all(|t| t.state == TaskState::Done)
    }

    /// Checks that `token` is the current fencing token of a running task held by `worker`
    /// (`None`: the caller proved nothing about the worker; the unguessable token must do), and
    /// that the task's run has not ended: once a run is DONE, FAILED or CANCELLED its journal is
    /// closed (watchers stop at the terminal event), so late writes are refused, not journaled.
    pub fn check_fence(&self, task_id: &str, token: u64, worker: Option<&WorkerId>) -> Result<&Task, Refusal> {
        let t = self.check_holder(task_id, token, worker)?;
        match self.runs.get(&t.run_id) {
            Some(r) if r.state.is_terminal() => Err(Refusal::RunEnded { task: t.id.clone(), run: r.id.clone(), state: r.state.name() }),
            Some(_) => Ok(t),
            None => Err(Refusal::UnknownRun(t.run_id.clone())),
        }
    }

    /// [`State::check_fence`] without the run check (a heartbeat learns that the run ended).
    fn check_holder(&self, task_id: &str, token: u64, worker: Option<&WorkerId>) -> Result<&Task, Refusal> {
        let t = self.tasks.get(task_id).ok_or_else(|| Refusal::UnknownTask(task_id.into()))?;
        if t.fencing_token != token {
            return Err(Refusal::Fenced { task: t.id.clone() });
        }
        if t.state != TaskState::Running {
            return Err(Refusal::NotRunning(t.id.clone(), t.state.name()));
        }
        if let Some(w) = worker {
            if t.worker_id.as_ref() != Some(w) {
                return Err(Refusal::NotHolder { task: t.id.clone(), worker: w.clone() });
            }
        }
        Ok(t)
    }

    /// Extends the lease; returns whether the task's run was cancelled or has ended.
    pub fn heartbeat(&mut self, task_id: &str, token: u64, worker: &WorkerId, now: i64) -> Result<bool, Refusal> {
        let ttl = self.lease_ttl_ms;
        let cancelled = {
            let t = self.check_holder(task_id, token, Some(worker))?;
            self.runs.get(&t.run_id).is_none_or(|r| r.state.is_terminal())
        };
        let t = self.tasks.get_mut(task_id).expect("checked");
        t.lease_expires_ms = now + ttl;
        Ok(cancelled)
    }

    pub fn report_metrics(&mut self, task_id: &str, token: u64, worker: &WorkerId, m: EpochMetrics, now: i64) -> Result<Effects, Refusal> {
        self.check_fence(task_id, token, Some(worker))?;
        let mut fx = Effects::default();
        let t = self.tasks.get_mut(task_id).expect("checked");
        t.last_metrics = Some(m.clone());
        let (run_id, fold, id) = (t.run_id.clone(), t.fold, t.id.clone());
        fx.tasks.push(id.clone());
        self.emit(&mut fx, &run_id, fold, Some(&id), EventBody::Metrics(m), now);
        Ok(fx)
    }

    pub fn log(&mut self, task_id: &str, token: u64, worker: &WorkerId, lines: &[String], now: i64) -> Result<Effects, Refusal> {
        let t = self.check_fence(task_id, token, Some(worker))?;
        let mut fx = Effects::default();
        let (run_id, fold, id) = (t.run_id.clone(), t.fold, t.id.clone());
        for l in lines {
            self.emit(&mut fx, &run_id, fold, Some(&id), EventBody::Log(l.clone()), now);
        }
        Ok(fx)
    }

    /// Records an uploaded checkpoint (the sidecar JSON lands after the weights).
    pub fn checkpoint_uploaded(
        &mut self,
        task_id: &str,
        token: u64,
        worker: Option<&WorkerId>,
        path: &str,
        epoch: Option<u32>,
        now: i64,
    ) -> Result<Effects, Refusal> {
        self.check_fence(task_id, token, worker)?;
        let mut fx = Effects::default();
        let t = self.tasks.get_mut(task_id).expect("checked");
        t.checkpoint = Some(path.to_string());
        t.checkpoint_epoch = epoch;
        let (run_id, fold, id) = (t.run_id.clone(), t.fold, t.id.clone());
        fx.tasks.push(id.clone());
        let msg = match epoch {
            Some(e) => format!("checkpoint {path} (epoch {e}) stored"),
            None => format!("checkpoint {path} stored"),
        };
        self.emit(&mut fx, &run_id, fold, Some(&id), EventBody::Log(msg), now);
        Ok(fx)
    }

    pub fn complete(&mut self, task_id: &str, token: u64, worker: &WorkerId, result_json: String, now: i64) -> Result<Effects, Refusal> {
        self.check_fence(task_id, token, Some(worker))?;
        let mut fx = Effects::default();
        let t = self.tasks.get_mut(task_id).expect("checked");
        t.state = TaskState::Done;
        t.result_json = Some(result_json.clone());
        t.error = None;
        let (run_id, fold, kind, attempt, worker, id) = (t.run_id.clone(), t.fold, t.kind, t.attempt, t.worker_id.clone(), t.id.clone());
        fx.tasks.push(id.clone());
        let body = EventBody::TaskState { state: TaskTransition::Done, worker_id: worker, detail: result_json, kind, attempt };
        self.emit(&mut fx, &run_id, fold, Some(&id), body, now);
        self.advance_run(&run_id, &mut fx, now);
        Ok(fx)
    }

    pub fn fail(
        &mut self,
        task_id: &str,
        token: u64,
        worker: &WorkerId,
        error: &str,
        retryable: bool,
        now: i64,
    ) -> Result<Effects, Refusal> {
        let id = self.check_fence(task_id, token, Some(worker))?.id.clone();
        let mut fx = Effects::default();
        self.fail_task(&id, error, retryable, &mut fx, now);
        // A task that failed on a worker waits before its next attempt (an expired lease already
        // waited a TTL), so a fast-failing task does not use up its attempts within seconds.
        let t = self.tasks.get_mut(&id).expect("task exists");
        if t.state == TaskState::Pending {
            t.not_before_ms = now + retry_backoff_ms(t.attempt);
        }
        Ok(fx)
    }

    pub(crate) fn fail_task(&mut self, task_id: &TaskId, error: &str, retryable: bool, fx: &mut Effects, now: i64) {
        let t = self.tasks.get_mut(task_id).expect("task exists");
        let give_up = !retryable || t.attempt.saturating_sub(t.uncounted_attempts) >= MAX_ATTEMPTS;
        t.state = if give_up { TaskState::Failed } else { TaskState::Pending };
        t.error = Some(error.to_string());
        let (run_id, fold, kind, attempt, worker) = (t.run_id.clone(), t.fold, t.kind, t.attempt, t.worker_id.clone());
        let st = if give_up { TaskTransition::Failed } else { TaskTransition::Retrying };
        fx.tasks.push(task_id.clone());
        let body = EventBody::TaskState { state: st, worker_id: worker, detail: error.into(), kind, attempt };
        self.emit(fx, &run_id, fold, Some(task_id), body, now);
        if give_up {
            if let Some(r) = self.runs.get_mut(&run_id) {
                let fold = fold.map(|f| format!(" fold {f}")).unwrap_or_default();
                r.error = Some(format!("{}{fold} failed after {attempt} attempt(s): {error}", kind.name()));
            }
            self.set_run_state(&run_id, RunState::Failed, fx, now);
        }
    }

    /// Returns leases whose deadline passed to the pending pool.
    pub fn expire_leases(&mut self, now: i64) -> Effects {
        let mut fx = Effects::default();
        let expired: Vec<TaskId> =
            self.tasks.values().filter(|t| t.state == TaskState::Running && t.lease_expires_ms < now).map(|t| t.id.clone()).collect();
        for id in expired {
            let worker = self.tasks[&id].worker_id.clone().unwrap_or_default();
            let msg = format!("lease expired: worker {worker} stopped heartbeating; the task goes back to the queue");
            self.fail_task(&id, &msg, true, &mut fx, now);
        }
        fx
    }

    /// Returns every running lease of `run_id` to the queue (its workers are known to be gone,
    /// e.g. `nnunet run` restarted after an interruption). Training resumes from checkpoints.
    pub fn release_leases(&mut self, run_id: &RunId, why: &str, now: i64) -> Effects {
        let mut fx = Effects::default();
        let ids: Vec<TaskId> =
            self.tasks.values().filter(|t| &t.run_id == run_id && t.state == TaskState::Running).map(|t| t.id.clone()).collect();
        for id in ids {
            self.fail_task(&id, why, true, &mut fx, now);
        }
        fx
    }

    /// Moves a run forward when a stage completes.
    fn advance_run(&mut self, run_id: &RunId, fx: &mut Effects, now: i64) {
        let finished = self.tasks.values().filter(|t| &t.run_id == run_id).all(|t| t.state == TaskState::Done);
        if self.runs.get(run_id).is_some_and(|r| r.state.is_terminal()) {
            return;
        }
        if finished {
            self.set_run_state(run_id, RunState::Finalizing, fx, now);
        } else if self.preprocessing_done(run_id) && self.runs.get(run_id).is_some_and(|r| r.state == RunState::Preprocessing) {
            self.set_run_state(run_id, RunState::Training, fx, now);
        }
    }
}
