//! nnunet-coordinator: the control plane of nnunet-rs (no CUDA, no libtorch).
//!
//! - [`domain`]: typed ids, run/task states and kinds, budget, run spec, roles, input limits.
//! - [`state`]: the pure state machine of runs, tasks, leases and fencing tokens (no wire types, no clock).
//! - [`store`]: its SQLite persistence, the event journal and role-token hashes.
//! - [`engine`]: the [`engine::Coordinator`]: persist-first mutations, submit/plan/finalize, housekeeping,
//!   retention, artifact policy.
//! - [`service`]: the gRPC edge (WorkerApi, Monitor, auth and roles, TLS, health, reflection) and the
//!   only conversions to and from wire types.
//! - [`access`]: credentials (legacy admin token, role tokens, secret files).
//! - [`clock`]: system and manual clocks.
//! - [`pipeline`]: planning and finalizing on the run directory (calls `nnunet-common`); [`user_dirs`]:
//!   reusing and publishing to `$nnUNet_preprocessed` / `$nnUNet_results`.
//! - [`local`]: `nnunet run`, an embedded coordinator with local worker processes; [`placement`]: which
//!   devices its workers use (every visible GPU by default, `--folds-per-gpu`) and a plan's memory estimate.
//! - [`client`]: the CLI side of the Monitor API; `cli_*`: the CLI commands.
//! - [`metrics_http`]: Prometheus `/metrics`; [`web`]: the dashboard on the same listener.
pub mod access;
pub mod cli_admin;
pub mod cli_eval;
pub mod cli_intake;
pub mod cli_model;
pub mod cli_monitor;
pub mod cli_plan;
pub mod cli_serve;
pub mod client;
pub mod clock;
pub mod domain;
pub mod engine;
pub mod local;
pub mod metrics_http;
pub mod pipeline;
pub mod placement;
pub mod service;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod user_dirs;
pub mod web;
