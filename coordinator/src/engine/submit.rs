//! Submitting a run: validating the spec, creating the run directory, planning in the background.
use super::{ApplyError, Coordinator, RunView};
use crate::domain::{limits, RunId, RunSpec};
use crate::state::{Refusal, Run};
use anyhow::{bail, Result};
use nnunet_common::Fold;
use std::sync::Arc;

/// Checks a spec's bounds (name, path, folds) before anything touches the disk.
pub fn validate_spec(spec: &RunSpec) -> Result<(), Refusal> {
    let bad = |m: String| Err(Refusal::Invalid(m));
    if spec.name.len() > limits::SHORT {
        return bad(format!("run name is {} bytes; at most {} are allowed", spec.name.len(), limits::SHORT));
    }
    if spec.name.chars().any(|c| c.is_control()) {
        return bad("run name holds control characters".into());
    }
    let dir = spec.dataset_dir.as_os_str().len();
    if dir == 0 || dir > limits::PATH {
        return bad(format!("dataset folder path must be 1..={} bytes (got {dir})", limits::PATH));
    }
    for (what, p) in
        [("pretrained weights", &spec.pretrained_weights), ("results", &spec.results_dir), ("preprocessed", &spec.preprocessed_dir)]
    {
        if p.as_ref().is_some_and(|p| p.as_os_str().is_empty() || p.as_os_str().len() > limits::PATH) {
            return bad(format!("{what} path must be 1..={} bytes", limits::PATH));
        }
    }
    if spec.folds.len() > limits::FOLDS {
        return bad(format!("{} folds requested; at most {}", spec.folds.len(), limits::FOLDS));
    }
    Ok(())
}

impl Coordinator {
    /// Creates a run for a raw nnU-Net dataset folder and plans it in the background.
    pub async fn submit(self: &Arc<Self>, spec: RunSpec) -> Result<RunView, ApplyError> {
        validate_spec(&spec)?;
        let me = self.clone();
        let run = tokio::task::spawn_blocking(move || me.prepare_run(spec))
            .await
            .map_err(|e| ApplyError::Persist(e.to_string()))?
            .map_err(|e| ApplyError::Refused(Refusal::Invalid(format!("{e:#}"))))?;
        let id = run.id.clone();
        let r = run.clone();
        let mut notes = Vec::new();
        if let Some(p) = &run.options.pretrained {
            notes.push(format!("training starts from the pretrained weights {} (sha256 {}, copied into the run)", p.source, p.sha256));
        }
        for (what, dir) in [("model folder", &run.options.results_root), ("preprocessed data", &run.options.preprocessed_root)] {
            if let Some(d) = dir {
                notes.push(format!("the {what} is published under the submitter's {}", d.display()));
            }
        }
        let rid = id.clone();
        self.apply("submit", move |st, now| {
            let mut fx = st.add_run(r, now);
            for n in notes {
                st.emit(&mut fx, &rid, None, None, crate::state::EventBody::Log(n), now);
            }
            Ok(((), fx))
        })
        .await?;
        tracing::info!(run = %id, dataset = %run.dataset_name, folds = ?run.folds, "run submitted");
        let me = self.clone();
        let rid = id.clone();
        tokio::task::spawn_blocking(move || me.plan_run(&rid));
        Ok(self.run_view(id.as_str()).expect("just added"))
    }

    /// Canonicalizes the dataset folder and creates the run directory (blocking).
    fn prepare_run(&self, spec: RunSpec) -> Result<Run> {
        let raw = spec
            .dataset_dir
            .canonicalize()
            .map_err(|e| anyhow::anyhow!("dataset folder {} is not readable by the coordinator: {e}", spec.dataset_dir.display()))?;
        if !raw.join("dataset.json").is_file() {
            bail!("{} has no dataset.json: give an nnU-Net v2 raw dataset folder (DatasetXXX_Name), or convert images and masks first with `nnunet convert`", raw.display());
        }
        let dataset_name = raw.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let now = self.now_ms();
        let run_id = RunId(format!("run-{}-{}", crate::clock::utc_stamp(now), crate::domain::random_hex(8)));
        let run_dir = self.run_dir(&run_id);
        let mut folds: Vec<Fold> = if spec.folds.is_empty() { Fold::default_five() } else { spec.folds.clone() };
        let mut seen = std::collections::BTreeSet::new();
        folds.retain(|f| seen.insert(*f));
        crate::pipeline::prepare_run_dir(&run_dir, &run_id, &raw, &dataset_name)?;
        let options = match super::run_inputs::resolve(&spec, &run_dir, &self.cfg.user_dirs, &self.cfg.state_dir, self.cfg.max_upload_bytes)
        {
            Ok(o) => o,
            Err(e) => {
                // Nothing of a refused submit stays behind.
                if let Err(rm) = std::fs::remove_dir_all(&run_dir) {
                    tracing::warn!("removing {}: {rm}", run_dir.display());
                }
                return Err(e);
            }
        };
        if let Some(p) = &options.pretrained {
            tracing::info!(run = %run_id, source = %p.source, sha256 = %p.sha256, bytes = p.size, "pretrained weights copied into the run");
        }
        Ok(Run {
            name: if spec.name.is_empty() { dataset_name.clone() } else { spec.name },
            budget: spec.budget,
            predict_test: spec.predict_test,
            preprocess_shards: spec.preprocess_shards,
            plans_name: spec.planner.plans_name().to_string(),
            options,
            ..Run::new(run_id, &dataset_name, raw.to_string_lossy().into_owned(), run_dir.to_string_lossy().into_owned(), folds, now)
        })
    }

    /// Verify + fingerprint + plan + splits, written once by the coordinator; then the task graph
    /// (blocking).
    pub(crate) fn plan_run(self: &Arc<Self>, run_id: &RunId) {
        let Some(run) = self.read(|st| st.runs.get(run_id).cloned()) else { return };
        let res = crate::pipeline::plan(&run, self.cfg.threads, &self.cfg.user_dirs.for_run(&run.options));
        let rid = run_id.clone();
        let applied = match res {
            Ok(planned) => {
                let workers = self.read(|st| st.live_workers(self.now_ms()));
                let shards = if run.preprocess_shards > 0 { run.preprocess_shards as usize } else { workers.max(1) };
                tracing::info!(run = %run_id, cases = planned.cases.len(), shards, reused = ?planned.reused, "planned");
                let note = planned.reused.as_ref().map(|src| {
                    format!(
                        "reusing the plans and the {} preprocessed case(s) in {} (same raw data, plans match): no planning, no preprocessing",
                        planned.cases.len(),
                        src.display()
                    )
                });
                let cases = planned.to_preprocess().to_vec();
                let estimate = crate::placement::memory_estimate_mib(&run)
                    .map_err(|e| tracing::warn!(run = %run_id, "no device memory estimate (GPUs are not packed by memory): {e:#}"))
                    .ok();
                self.apply_blocking("create tasks", move |st, now| {
                    let mut fx = st.create_tasks(&rid, &cases, shards, now);
                    if let Some(mib) = estimate {
                        let more = st.set_memory_estimate(&rid, mib);
                        fx.runs.extend(more.runs);
                    }
                    if let Some(msg) = note {
                        st.emit(&mut fx, &rid, None, None, crate::state::EventBody::Log(msg), now);
                    }
                    Ok(((), fx))
                })
            }
            Err(e) => {
                tracing::warn!(run = %run_id, "planning failed: {e:#}");
                self.apply_blocking("planning failed", move |st, now| Ok(((), st.run_failed(&rid, format!("planning failed: {e:#}"), now))))
            }
        };
        if let Err(e) = applied {
            tracing::error!(run = %run_id, "recording the plan failed (it is planned again at the next start): {e}");
        }
    }
}
