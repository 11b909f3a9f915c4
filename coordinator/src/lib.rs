//! nnunet-coordinator: the control plane of nnunet-rs (no CUDA, no libtorch).
//!
//! - [`state`]: the pure state machine of runs, tasks, leases and fencing tokens.
//! - [`store`]: its SQLite persistence and the event journal.
//! - [`server`]: the tonic services (WorkerApi, Monitor), auth, TLS, health, reflection.
//! - [`pipeline`]: planning and finalizing on the run directory (calls `nnunet-common`).
//! - [`local`]: `nnunet run`, an embedded coordinator with local worker processes.
//! - [`client`]: the CLI side of the Monitor API (`submit`, `status`, `watch`, `logs`).
//! - [`metrics_http`]: Prometheus `/metrics`; [`web`]: the dashboard on the same listener.
//! - `cli_*`: the pipeline commands (`convert`, `verify`, `plan`, `preprocess`, `evaluate`, ...).
pub mod cli_eval;
pub mod cli_intake;
pub mod cli_model;
pub mod cli_plan;
pub mod client;
pub mod local;
pub mod metrics_http;
pub mod pipeline;
pub mod server;
pub mod state;
pub mod store;
pub mod web;
