//! Run-level changes: finishing, cancelling, retrying a fold, deleting, retention.
use super::*;

impl State {
    pub fn finish_run(&mut self, run_id: &RunId, summary: Result<String, String>, now: i64) -> Effects {
        let mut fx = Effects::default();
        if self.runs.get(run_id).is_none_or(|r| r.state != RunState::Finalizing) {
            return fx;
        }
        match summary {
            Ok(s) => {
                if let Some(r) = self.runs.get_mut(run_id) {
                    r.summary_json = Some(s.clone());
                }
                self.emit(&mut fx, run_id, None, None, EventBody::Summary(s), now);
                self.set_run_state(run_id, RunState::Done, &mut fx, now);
            }
            Err(e) => {
                if let Some(r) = self.runs.get_mut(run_id) {
                    r.error = Some(e.clone());
                }
                self.emit(&mut fx, run_id, None, None, EventBody::Log(format!("finalizing failed: {e}")), now);
                self.set_run_state(run_id, RunState::Failed, &mut fx, now);
            }
        }
        fx
    }

    pub fn run_failed(&mut self, run_id: &RunId, error: String, now: i64) -> Effects {
        let mut fx = Effects::default();
        if let Some(r) = self.runs.get_mut(run_id) {
            r.error = Some(error.clone());
        }
        self.emit(&mut fx, run_id, None, None, EventBody::Log(error), now);
        self.set_run_state(run_id, RunState::Failed, &mut fx, now);
        fx
    }

    pub fn cancel_run(&mut self, run_id: &str, now: i64) -> Result<Effects, Refusal> {
        let run_id = self.runs.get(run_id).map(|r| r.id.clone()).ok_or_else(|| Refusal::UnknownRun(run_id.into()))?;
        let mut fx = Effects::default();
        let ids: Vec<TaskId> = self
            .tasks
            .values()
            .filter(|t| t.run_id == run_id && matches!(t.state, TaskState::Pending | TaskState::Running))
            .map(|t| t.id.clone())
            .collect();
        for id in ids {
            let t = self.tasks.get_mut(&id).expect("listed");
            t.state = TaskState::Cancelled;
            t.fencing_token = next_fencing_token(t.fencing_token); // fence off whoever still runs it
            fx.tasks.push(id);
        }
        self.set_run_state(&run_id, RunState::Cancelled, &mut fx, now);
        Ok(fx)
    }

    /// Re-queues a fold (its train/validate/predict tasks) of a failed or finished run. Training
    /// resumes from the fold's last checkpoint.
    pub fn retry_fold(&mut self, run_id: &str, fold: Fold, now: i64) -> Result<Effects, Refusal> {
        let run_id = self.runs.get(run_id).map(|r| r.id.clone()).ok_or_else(|| Refusal::UnknownRun(run_id.into()))?;
        let mut fx = Effects::default();
        let ids: Vec<TaskId> = self.tasks.values().filter(|t| t.run_id == run_id && t.fold == Some(fold)).map(|t| t.id.clone()).collect();
        if ids.is_empty() {
            return Err(Refusal::Invalid(format!("run {run_id} has no fold {fold}")));
        }
        for id in &ids {
            let t = self.tasks.get_mut(id).expect("listed");
            if matches!(t.state, TaskState::Failed | TaskState::Cancelled) {
                t.state = TaskState::Pending;
                t.attempt = 0;
                t.uncounted_attempts = 0;
                t.not_before_ms = 0;
                t.fencing_token = next_fencing_token(t.fencing_token);
                fx.tasks.push(id.clone());
            }
        }
        let any_failed = self.tasks.values().any(|t| t.run_id == run_id && t.state == TaskState::Failed);
        let all_done = self.tasks.values().filter(|t| t.run_id == run_id).all(|t| t.state == TaskState::Done);
        if !any_failed && !all_done {
            let next = if self.preprocessing_done(&run_id) { RunState::Training } else { RunState::Preprocessing };
            self.set_run_state(&run_id, next, &mut fx, now);
        }
        Ok(fx)
    }

    /// Deletes a finished run, its tasks and (through the store) its journal. Refused while the
    /// run is active: cancel it first.
    pub fn delete_run(&mut self, run_id: &str) -> Result<(Run, Effects), Refusal> {
        let run = self.runs.get(run_id).cloned().ok_or_else(|| Refusal::UnknownRun(run_id.into()))?;
        if !run.state.is_terminal() {
            return Err(Refusal::Invalid(format!("run {run_id} is {}: cancel it before deleting it", run.state.name())));
        }
        let mut fx = Effects::default();
        self.runs.remove(run_id);
        fx.runs.push(run.id.clone());
        let ids: Vec<TaskId> = self.tasks.values().filter(|t| t.run_id == run.id).map(|t| t.id.clone()).collect();
        for id in ids {
            self.tasks.remove(&id);
            fx.tasks.push(id);
        }
        Ok((run, fx))
    }

    /// Finished runs that a retention policy drops: all but the newest `keep` finished runs, and
    /// those finished more than `max_age_ms` ago.
    pub fn runs_past_retention(&self, keep: Option<usize>, max_age_ms: Option<i64>, now: i64) -> Vec<RunId> {
        let mut finished: Vec<(i64, &RunId)> =
            self.runs.values().filter(|r| r.state.is_terminal()).map(|r| (r.finished_ms.unwrap_or(r.created_ms), &r.id)).collect();
        finished.sort_by(|a, b| b.cmp(a));
        let mut out = Vec::new();
        for (i, (at, id)) in finished.into_iter().enumerate() {
            let too_many = keep.is_some_and(|k| i >= k);
            let too_old = max_age_ms.is_some_and(|a| now - at > a);
            if too_many || too_old {
                out.push(id.clone());
            }
        }
        out
    }
}
