//! Housekeeping: lease expiry, finalization, pruning stale workers, retention of finished runs,
//! and deleting a run with its directory.
use super::{ApplyError, Coordinator};
use std::sync::Arc;
use std::time::Duration;

impl Coordinator {
    /// One round of housekeeping (the background loop runs it every 500 ms; tests call it after
    /// moving their clock).
    pub async fn housekeep_once(self: &Arc<Self>) {
        let expired = self
            .apply("expire leases", |st, now| {
                let fx = st.expire_leases(now);
                let n = fx.tasks.len();
                Ok((n, fx))
            })
            .await;
        match expired {
            Ok(0) => {}
            Ok(n) => tracing::warn!(tasks = n, "leases expired; the tasks go back to the queue"),
            Err(e) => tracing::error!("expiring leases: {e}"),
        }
        let orphans = self.drop_orphaned_weights();
        if orphans > 0 {
            tracing::info!("dropped {orphans} checkpoint upload(s) whose lease ended before their sidecar arrived");
        }
        let idle = self.cfg.worker_idle_prune.as_millis() as i64;
        match self.apply("prune workers", move |st, now| Ok(((), st.prune_workers(now, idle)))).await {
            Ok(()) => {}
            Err(e) => tracing::error!("pruning workers: {e}"),
        }
        if !self.read(|st| st.runs_to_finalize().is_empty()) {
            let me = self.clone();
            if let Err(e) = tokio::task::spawn_blocking(move || me.finalize_ready_runs()).await {
                tracing::error!("finalizing: {e}");
            }
        }
        self.apply_retention().await;
    }

    /// Writes the CV summary (and the test-set ensemble) of runs whose tasks are all done (blocking).
    fn finalize_ready_runs(self: &Arc<Self>) {
        for id in self.read(|st| st.runs_to_finalize()) {
            let Some(run) = self.read(|st| st.runs.get(&id).cloned()) else { continue };
            // Published preprocessed data that other active runs read is not replaced under them.
            let in_use: Vec<std::path::PathBuf> = self
                .read(|st| st.runs.values().filter(|r| r.id != id && !r.state.is_terminal()).cloned().collect::<Vec<_>>())
                .iter()
                .filter_map(crate::pipeline::preprocessed_reference)
                .collect();
            let res = crate::pipeline::finalize(&run)
                .and_then(|summary| crate::pipeline::publish(&run, &self.cfg.user_dirs.for_run(&run.options), &in_use, summary))
                .map_err(|e| format!("{e:#}"));
            match &res {
                Ok(_) => tracing::info!(run = %id, "run finished"),
                Err(e) => tracing::warn!(run = %id, "finalizing failed: {e}"),
            }
            let rid = id.clone();
            if let Err(e) = self.apply_blocking("finish run", move |st, now| Ok(((), st.finish_run(&rid, res, now)))) {
                tracing::error!(run = %id, "recording the end of the run failed (retried at the next round): {e}");
            }
        }
    }

    async fn apply_retention(self: &Arc<Self>) {
        let r = &self.cfg.retention;
        if r.keep_finished.is_none() && r.max_age.is_none() {
            return;
        }
        let (keep, age) = (r.keep_finished, r.max_age.map(|d| d.as_millis() as i64));
        let doomed = self.read(|st| st.runs_past_retention(keep, age, self.now_ms()));
        for id in doomed {
            match self.delete_run(id.as_str()).await {
                Ok(()) => tracing::info!(run = %id, "deleted by the retention policy"),
                Err(e) => tracing::error!(run = %id, "retention could not delete the run: {e}"),
            }
        }
    }

    /// Deletes a finished run: its rows, its journal and its run directory.
    pub async fn delete_run(self: &Arc<Self>, run_id: &str) -> Result<(), ApplyError> {
        let id = run_id.to_string();
        let run = self.apply("delete run", move |st, _| st.delete_run(&id)).await?;
        let dir = std::path::PathBuf::from(&run.run_dir);
        let res = tokio::task::spawn_blocking(move || {
            if dir.exists() {
                std::fs::remove_dir_all(&dir).map_err(|e| format!("removing {}: {e}", dir.display()))
            } else {
                Ok(())
            }
        })
        .await;
        match res {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                tracing::error!(run = %run.id, "{e}");
                Err(ApplyError::Persist(e))
            }
            Err(e) => Err(ApplyError::Persist(e.to_string())),
        }
    }

    /// Background housekeeping every 500 ms; plans runs a previous coordinator left in PLANNING.
    pub fn spawn_housekeeping(self: &Arc<Self>) {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tick.tick().await;
                me.housekeep_once().await;
            }
        });
        // Only runs loaded at open: a run submitted meanwhile is planned by its submit.
        let planning = self.take_replan();
        for id in planning {
            let me = self.clone();
            tokio::task::spawn_blocking(move || me.plan_run(&id));
        }
    }
}
