//! `Monitor`: submit, list (paged), get, watch, cancel, retry, delete. Reading needs a viewer
//! token; changing runs an operator token.
use super::auth::require_operator;
use super::convert::{apply_status, bounded, event_to_proto, fold_from_wire, refusal_status, run_info, spec_from_proto};
use crate::domain::limits;
use crate::engine::Coordinator;
use crate::state::{Event, EventBody};
use nnunet_proto::v1 as pb;
use nnunet_proto::v1::monitor_server::Monitor;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

pub struct MonitorService(pub Arc<Coordinator>);

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::Event, Status>> + Send>>;
type Tx = mpsc::Sender<Result<pb::Event, Status>>;

impl MonitorService {
    fn info(&self, id: &str) -> Result<pb::RunInfo, Status> {
        self.0.run_view(id).map(|v| run_info(&v)).ok_or_else(|| Status::not_found(format!("unknown run {id}")))
    }
}

#[tonic::async_trait]
impl Monitor for MonitorService {
    async fn submit_run(&self, req: Request<pb::SubmitRunRequest>) -> Result<Response<pb::RunInfo>, Status> {
        require_operator(&req)?;
        let spec = spec_from_proto(req.into_inner())?;
        let view = self.0.submit(spec).await.map_err(apply_status)?;
        Ok(Response::new(run_info(&view)))
    }

    async fn list_runs(&self, req: Request<pb::ListRunsRequest>) -> Result<Response<pb::ListRunsReply>, Status> {
        let r = req.into_inner();
        let size = match r.page_size {
            0 => 100,
            n => (n as usize).min(1000),
        };
        bounded("page_token", &r.page_token, limits::SHORT * 2)?;
        let (page, next) = self.0.list_runs(size, Some(&r.page_token)).map_err(refusal_status)?;
        Ok(Response::new(pb::ListRunsReply { runs: page.iter().map(run_info).collect(), next_page_token: next.unwrap_or_default() }))
    }

    async fn get_run(&self, req: Request<pb::GetRunRequest>) -> Result<Response<pb::RunInfo>, Status> {
        Ok(Response::new(self.info(&req.into_inner().run_id)?))
    }

    type WatchRunStream = EventStream;

    async fn watch_run(&self, req: Request<pb::WatchRunRequest>) -> Result<Response<EventStream>, Status> {
        let r = req.into_inner();
        self.info(&r.run_id)?;
        let (tx, rx) = mpsc::channel(256);
        let coord = self.0.clone();
        tokio::spawn(async move { watch(coord, r, tx).await });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn cancel_run(&self, req: Request<pb::CancelRunRequest>) -> Result<Response<pb::RunInfo>, Status> {
        require_operator(&req)?;
        let id = req.into_inner().run_id;
        let id2 = id.clone();
        self.0.apply("cancel", move |st, now| Ok(((), st.cancel_run(&id2, now)?))).await.map_err(apply_status)?;
        tracing::info!(run = %id, "run cancelled");
        Ok(Response::new(self.info(&id)?))
    }

    async fn retry_fold(&self, req: Request<pb::RetryFoldRequest>) -> Result<Response<pb::RunInfo>, Status> {
        require_operator(&req)?;
        let r = req.into_inner();
        let fold = fold_from_wire(r.fold)?;
        let id = r.run_id.clone();
        self.0.apply("retry", move |st, now| Ok(((), st.retry_fold(&id, fold, now)?))).await.map_err(apply_status)?;
        tracing::info!(run = %r.run_id, %fold, "fold re-queued");
        Ok(Response::new(self.info(&r.run_id)?))
    }

    async fn delete_run(&self, req: Request<pb::DeleteRunRequest>) -> Result<Response<pb::DeleteRunReply>, Status> {
        require_operator(&req)?;
        let id = req.into_inner().run_id;
        self.0.delete_run(&id).await.map_err(apply_status)?;
        tracing::info!(run = %id, "run deleted");
        Ok(Response::new(pb::DeleteRunReply { run_id: id }))
    }
}

/// Replays the journal from `since_seq`, then follows the live feed; a gap (or a lagging
/// receiver) is filled from the journal, so no event is lost.
async fn watch(coord: Arc<Coordinator>, r: pb::WatchRunRequest, tx: Tx) {
    // Subscribe before replaying so nothing falls between the journal and the live feed.
    let mut live = coord.subscribe();
    let mut next = r.since_seq;
    if !replay(&coord, &r.run_id, &mut next, &tx).await {
        return;
    }
    if !r.follow || coord.run_finished(&r.run_id) {
        return;
    }
    loop {
        match tokio::time::timeout(Duration::from_secs(2), live.recv()).await {
            Ok(Ok(e)) => {
                if e.run_id.as_str() != r.run_id || e.seq < next {
                    continue;
                }
                if e.seq > next {
                    if !replay(&coord, &r.run_id, &mut next, &tx).await {
                        return;
                    }
                    continue;
                }
                next = e.seq + 1;
                let done = matches!(&e.body, EventBody::RunState(s) if s.is_terminal());
                if tx.send(Ok(event_to_proto(&e))).await.is_err() || done {
                    return;
                }
            }
            Ok(Err(broadcast::error::RecvError::Lagged(_))) | Err(_) => {
                if !replay(&coord, &r.run_id, &mut next, &tx).await || coord.run_finished(&r.run_id) {
                    return;
                }
            }
            Ok(Err(broadcast::error::RecvError::Closed)) => return,
        }
    }
}

/// Sends journal events from `*next` on; false when the watcher is gone or the journal failed.
async fn replay(coord: &Arc<Coordinator>, run_id: &str, next: &mut u64, tx: &Tx) -> bool {
    loop {
        let (c, id, from) = (coord.clone(), run_id.to_string(), *next);
        let batch: Result<Vec<Event>, String> = match tokio::task::spawn_blocking(move || c.events_since(&id, from, 1000)).await {
            Ok(r) => r.map_err(|e| format!("{e:#}")),
            Err(e) => Err(e.to_string()),
        };
        let batch = match batch {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(run = run_id, "reading the journal: {e}");
                if tx.send(Err(Status::internal(format!("reading the journal: {e}")))).await.is_err() {
                    tracing::debug!("watcher gone");
                }
                return false;
            }
        };
        if batch.is_empty() {
            return true;
        }
        for e in batch {
            *next = e.seq + 1;
            if tx.send(Ok(event_to_proto(&e))).await.is_err() {
                return false;
            }
        }
    }
}
