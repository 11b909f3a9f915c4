//! The one place where coordinator types meet the wire types: specs, views, events, leased tasks,
//! metrics and refusals.
use crate::domain::{limits, Budget, RunSpec, TaskKind};
use crate::engine::{ApplyError, RunView, TaskOrder, UploadError};
use crate::state::{Event, EventBody, Refusal};
use nnunet_common::train_log::EpochMetrics;
use nnunet_common::Fold;
use nnunet_proto::v1 as pb;
use tonic::Status;

pub use nnunet_proto::convert::{metrics_from_proto, metrics_to_proto};

pub fn kind_to_proto(k: TaskKind) -> i32 {
    (match k {
        TaskKind::Preprocess => pb::TaskKind::Preprocess,
        TaskKind::Train => pb::TaskKind::Train,
        TaskKind::Validate => pb::TaskKind::Validate,
        TaskKind::Predict => pb::TaskKind::Predict,
    }) as i32
}

/// Zeros on the wire mean "the default".
pub fn budget_from_proto(b: Option<&pb::Budget>) -> Budget {
    let d = Budget::default();
    let or = |v: u32, dv: u32| if v == 0 { dv } else { v };
    match b {
        None => d,
        Some(b) => Budget {
            epochs: or(b.epochs, d.epochs),
            iterations_per_epoch: or(b.iterations_per_epoch, d.iterations_per_epoch),
            val_iterations_per_epoch: or(b.val_iterations_per_epoch, d.val_iterations_per_epoch),
            save_every: or(b.save_every, d.save_every),
            seed: b.seed,
            disable_tta: b.disable_tta,
            num_threads: b.num_threads,
        },
    }
}

pub fn budget_to_proto(b: &Budget) -> pb::Budget {
    pb::Budget {
        epochs: b.epochs,
        iterations_per_epoch: b.iterations_per_epoch,
        val_iterations_per_epoch: b.val_iterations_per_epoch,
        save_every: b.save_every,
        seed: b.seed,
        disable_tta: b.disable_tta,
        num_threads: b.num_threads,
    }
}

pub fn fold_from_wire(v: i32) -> Result<Fold, Status> {
    Fold::from_wire(v).map_err(|e| Status::invalid_argument(e.to_string()))
}

fn fold_to_wire(f: Option<Fold>) -> i32 {
    f.map(Fold::to_wire).unwrap_or(-1)
}

fn fold_name(f: Option<Fold>) -> String {
    f.map(|f| f.to_string()).unwrap_or_default()
}

pub fn spec_from_proto(r: pb::SubmitRunRequest) -> Result<RunSpec, Status> {
    if r.folds.len() > limits::FOLDS {
        return Err(Status::invalid_argument(format!("{} folds requested; at most {}", r.folds.len(), limits::FOLDS)));
    }
    let folds = r.folds.iter().map(|&f| fold_from_wire(f)).collect::<Result<Vec<_>, _>>()?;
    if r.planner.len() > limits::SHORT {
        return Err(Status::invalid_argument(format!("planner name is {} bytes; at most {}", r.planner.len(), limits::SHORT)));
    }
    let planner = if r.planner.is_empty() {
        nnunet_common::planners::Planner::Default
    } else {
        r.planner.parse().map_err(|e: nnunet_common::Error| Status::invalid_argument(e.to_string()))?
    };
    let path = |field: &str, v: String| -> Result<Option<std::path::PathBuf>, Status> {
        bounded(field, &v, limits::PATH)?;
        Ok((!v.is_empty()).then(|| v.into()))
    };
    let pretrained_weights = path("pretrained_weights", r.pretrained_weights)?;
    let results_dir = path("results_dir", r.results_dir)?;
    let preprocessed_dir = path("preprocessed_dir", r.preprocessed_dir)?;
    Ok(RunSpec {
        dataset_dir: r.dataset_dir.into(),
        budget: budget_from_proto(r.budget.as_ref()),
        folds,
        name: r.name,
        preprocess_shards: r.preprocess_shards,
        predict_test: r.predict_test,
        planner,
        pretrained_weights,
        results_dir,
        preprocessed_dir,
    })
}

pub fn spec_to_proto(s: &RunSpec) -> pb::SubmitRunRequest {
    pb::SubmitRunRequest {
        dataset_dir: s.dataset_dir.to_string_lossy().into_owned(),
        budget: Some(budget_to_proto(&s.budget)),
        folds: s.folds.iter().map(|f| f.to_wire()).collect(),
        name: s.name.clone(),
        preprocess_shards: s.preprocess_shards,
        predict_test: s.predict_test,
        planner: s.planner.to_string(),
        pretrained_weights: path_string(&s.pretrained_weights),
        results_dir: path_string(&s.results_dir),
        preprocessed_dir: path_string(&s.preprocessed_dir),
    }
}

fn path_string(p: &Option<std::path::PathBuf>) -> String {
    p.as_ref().map(|p| p.to_string_lossy().into_owned()).unwrap_or_default()
}

pub fn run_info(v: &RunView) -> pb::RunInfo {
    let run = &v.run;
    pb::RunInfo {
        run_id: run.id.to_string(),
        name: run.name.clone(),
        dataset_name: run.dataset_name.clone(),
        state: run.state.name().into(),
        run_dir: run.run_dir.clone(),
        tasks: v
            .tasks
            .iter()
            .map(|t| pb::TaskInfo {
                task_id: t.id.to_string(),
                kind: kind_to_proto(t.kind),
                fold: fold_to_wire(t.fold),
                fold_name: fold_name(t.fold),
                state: t.state.name().into(),
                worker_id: t.worker_id.as_ref().map(|w| w.to_string()).unwrap_or_default(),
                attempt: t.attempt,
                last_metrics: t.last_metrics.as_ref().map(metrics_to_proto),
                error: t.error.clone().unwrap_or_default(),
                result_json: t.result_json.clone().unwrap_or_default(),
            })
            .collect(),
        summary_json: run
            .summary_json
            .clone()
            .or_else(|| run.error.clone().map(|e| serde_json::json!({ "error": e }).to_string()))
            .unwrap_or_default(),
        created_ms: run.created_ms,
        budget: Some(budget_to_proto(&run.budget)),
    }
}

pub fn event_to_proto(e: &Event) -> pb::Event {
    use pb::event::Body;
    let body = match &e.body {
        EventBody::RunState(s) => Body::RunState(s.name().into()),
        EventBody::TaskState { state, worker_id, detail, kind, attempt } => Body::TaskState(pb::TaskStateChange {
            state: state.name().into(),
            worker_id: worker_id.as_ref().map(|w| w.to_string()).unwrap_or_default(),
            detail: detail.clone(),
            kind: kind_to_proto(*kind),
            attempt: *attempt,
        }),
        EventBody::Metrics(m) => Body::Metrics(metrics_to_proto(m)),
        EventBody::Log(l) => Body::Log(l.clone()),
        EventBody::Summary(s) => Body::SummaryJson(s.clone()),
    };
    pb::Event {
        seq: e.seq,
        ts_ms: e.ts_ms,
        run_id: e.run_id.to_string(),
        fold: fold_to_wire(e.fold),
        fold_name: fold_name(e.fold),
        task_id: e.task_id.as_ref().map(|t| t.to_string()).unwrap_or_default(),
        body: Some(body),
    }
}

pub fn order_to_proto(o: &TaskOrder) -> pb::Task {
    let (t, run) = (&o.task, &o.run);
    pb::Task {
        task_id: t.id.to_string(),
        run_id: t.run_id.to_string(),
        kind: kind_to_proto(t.kind),
        fold: fold_to_wire(t.fold),
        lease_id: t.lease_id,
        fencing_token: t.fencing_token,
        case_ids: t.cases.clone(),
        budget: Some(budget_to_proto(&run.budget)),
        dataset_name: run.dataset_name.clone(),
        inputs: o.inputs.iter().map(|i| pb::ArtifactRef { path: i.path.clone(), sha256: i.sha256.clone(), size: i.size }).collect(),
        run_dir: run.run_dir.clone(),
        checkpoint: o.checkpoint.clone().unwrap_or_default(),
        attempt: t.attempt,
        plans_name: run.plans_name.clone(),
        pretrained_weights: o.pretrained.clone().unwrap_or_default(),
    }
}

/// Metrics from a worker, bounded (class count).
pub fn metrics_in(m: Option<&pb::EpochMetrics>) -> Result<EpochMetrics, Status> {
    let m = m.map(metrics_from_proto).unwrap_or_default();
    if m.pseudo_dice.len() > limits::CLASSES {
        return Err(Status::invalid_argument(format!("{} classes in one report; at most {}", m.pseudo_dice.len(), limits::CLASSES)));
    }
    Ok(m)
}

/// A string field from a client, bounded.
pub fn bounded<'a>(field: &str, s: &'a str, max: usize) -> Result<&'a str, Status> {
    if s.len() > max {
        return Err(Status::invalid_argument(format!("{field} is {} bytes; at most {max} are allowed", s.len())));
    }
    Ok(s)
}

pub fn refusal_status(r: Refusal) -> Status {
    match r {
        Refusal::UnknownTask(_) | Refusal::UnknownRun(_) | Refusal::UnknownWorker(_) => Status::not_found(r.to_string()),
        Refusal::Fenced { .. } | Refusal::NotRunning(..) | Refusal::NotHolder { .. } | Refusal::RunEnded { .. } => {
            Status::failed_precondition(r.to_string())
        }
        Refusal::Invalid(_) => Status::invalid_argument(r.to_string()),
    }
}

pub fn apply_status(e: ApplyError) -> Status {
    match e {
        ApplyError::Refused(r) => refusal_status(r),
        ApplyError::Persist(_) => Status::unavailable(e.to_string()),
        ApplyError::Prepare(m) => Status::internal(m),
    }
}

pub fn upload_status(e: UploadError) -> Status {
    match e {
        UploadError::Invalid(m) => Status::invalid_argument(m),
        UploadError::TooLarge(m) => Status::resource_exhausted(m),
        UploadError::Corrupt(m) => Status::data_loss(m),
        UploadError::Io(m) => {
            tracing::error!("upload: {m}");
            Status::internal(m)
        }
    }
}

/// A heartbeat's process and device readings. Values the worker could not read stay absent; device
/// memory counts only when the worker also knows the total (NVML answered).
pub fn heartbeat_sample(r: &pb::HeartbeatRequest, now_ms: i64) -> crate::telemetry::Sample {
    let total = r.device_memory_total_bytes.filter(|&t| t > 0);
    crate::telemetry::Sample {
        ts_ms: now_ms,
        rss_bytes: (r.rss_bytes > 0).then_some(r.rss_bytes),
        device_name: (!r.device_name.is_empty()).then(|| r.device_name.chars().take(256).collect()),
        gpu_util_percent: r.gpu_utilization_percent.map(|u| u.min(100)),
        gpu_memory_used_bytes: total.map(|t| r.device_memory_used_bytes.min(t)),
        gpu_memory_total_bytes: total,
    }
}

#[cfg(test)]
mod telemetry_tests {
    use super::*;
    #[test]
    fn absent_nvml_stays_absent() {
        let hb = pb::HeartbeatRequest { worker_id: "w".into(), rss_bytes: 123, ..Default::default() };
        let s = heartbeat_sample(&hb, 5);
        assert_eq!(s.rss_bytes, Some(123));
        assert_eq!((s.gpu_util_percent, s.gpu_memory_used_bytes, s.gpu_memory_total_bytes, s.device_name), (None, None, None, None));
        let hb = pb::HeartbeatRequest {
            worker_id: "w".into(),
            device_name: "GPU".into(),
            device_memory_used_bytes: 7,
            device_memory_total_bytes: Some(10),
            gpu_utilization_percent: Some(250),
            ..Default::default()
        };
        let s = heartbeat_sample(&hb, 6);
        assert_eq!((s.gpu_util_percent, s.gpu_memory_used_bytes, s.gpu_memory_total_bytes), (Some(100), Some(7), Some(10)));
        assert_eq!(s.rss_bytes, None);
    }
}

#[cfg(test)]
mod spec_tests {
    use super::*;
    use nnunet_common::planners::Planner;

    #[test]
    fn the_planner_travels_in_the_submit_request() {
        let req = |planner: &str| pb::SubmitRunRequest { dataset_dir: "/d".into(), planner: planner.into(), ..Default::default() };
        assert_eq!(spec_from_proto(req("")).unwrap().planner, Planner::Default);
        for p in [Planner::Default, Planner::ResEncM, Planner::ResEncL, Planner::ResEncXL] {
            let spec = spec_from_proto(req(&p.to_string())).unwrap();
            assert_eq!(spec.planner, p);
            assert_eq!(spec_from_proto(spec_to_proto(&spec)).unwrap(), spec);
        }
        let e = spec_from_proto(req("ResEncXXL")).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains("unknown planner \"ResEncXXL\""), "{}", e.message());
    }
}
