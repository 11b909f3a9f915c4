//! The worker's one error type, [`WorkerError`], and the process exit code it maps to.
//!
//! Task bodies and commands return `anyhow::Result`; a [`WorkerError`] somewhere in the chain says
//! how the failure is classified. `main` maps it to the exit code once, at the edge:
//! - 1: retryable (the default for anything unclassified: a network error, a full disk, ...);
//! - 3: bad input that retrying cannot fix (a bad device, token, certificate or address); the
//!   Kubernetes pod failure policy (deploy/k8s) turns it into a failed index instead of restarts;
//! - 143: stopped by SIGTERM/SIGUSR1/SIGINT (eviction, preemption): the task resumes elsewhere;
//! - 75 (`nnunet_proto::wire::EXIT_OUT_OF_DEVICE_MEMORY`): a GPU task ran out of device memory; the
//!   task went back to the coordinator and the process exits to free the memory its allocator holds.

/// Exit code of a retryable failure.
pub const EXIT_RETRYABLE: i32 = 1;
/// Exit code of a failure retrying cannot fix.
pub const EXIT_BAD_INPUT: i32 = 3;
/// Exit code after a stop signal (128 + SIGTERM).
pub const EXIT_STOPPED: i32 = 143;

/// How a worker failure is classified (see the module docs).
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// Retrying cannot fix it: exit 3.
    #[error("{0}")]
    BadInput(String),
    /// A stop signal arrived: exit 143, the task goes back to the coordinator.
    #[error("stopped by a signal (exit 143); the work resumes from its last checkpoint")]
    Stopped,
    /// The task's lease is gone (expired, fenced or cancelled): the task stops without reporting.
    #[error("lease lost: {0}")]
    LeaseLost(String),
    /// The coordinator sent a task this worker refuses (a path or id that would reach outside its
    /// cache, a fold it cannot decode): failed back as not retryable, the worker keeps serving.
    #[error("refused task: {0}")]
    Refused(String),
    /// The task ran out of device memory (libtorch's "CUDA out of memory", or the simulated device
    /// of `sim_memory`): reported as such, so the coordinator retries it with fewer neighbours.
    #[error("out of device memory: {0}")]
    OutOfMemory(String),
}

impl WorkerError {
    /// The process exit code of this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            WorkerError::BadInput(_) => EXIT_BAD_INPUT,
            WorkerError::Stopped => EXIT_STOPPED,
            WorkerError::LeaseLost(_) | WorkerError::Refused(_) => EXIT_RETRYABLE,
            WorkerError::OutOfMemory(_) => nnunet_proto::wire::EXIT_OUT_OF_DEVICE_MEMORY,
        }
    }
}

/// The first [`WorkerError`] in `e`'s chain.
pub fn classify(e: &anyhow::Error) -> Option<&WorkerError> {
    e.chain().find_map(|c| c.downcast_ref::<WorkerError>())
}

/// The exit code for `e`: its [`WorkerError`]'s, else retryable.
pub fn exit_code(e: &anyhow::Error) -> i32 {
    classify(e).map(WorkerError::exit_code).unwrap_or(EXIT_RETRYABLE)
}

/// Marks `e` as not retryable (exit 3), keeping its message.
pub fn bad_input(e: anyhow::Error) -> anyhow::Error {
    anyhow::Error::new(WorkerError::BadInput(format!("{e:#}")))
}

/// Whether a message is libtorch's out-of-memory error (`c10::OutOfMemoryError`, raised by the CUDA
/// caching allocator as "CUDA out of memory. Tried to allocate ..."; Python shows it as
/// `torch.OutOfMemoryError`).
pub fn is_out_of_memory_message(msg: &str) -> bool {
    msg.contains("CUDA out of memory") || msg.contains("OutOfMemoryError")
}

/// Whether `e` is an out-of-device-memory failure: classified so, or libtorch's message anywhere in
/// its chain (tch panics with it; the task thread turns the panic into an error).
pub fn is_out_of_memory(e: &anyhow::Error) -> bool {
    matches!(classify(e), Some(WorkerError::OutOfMemory(_))) || e.chain().any(|c| is_out_of_memory_message(&c.to_string()))
}

/// Whether `e` says the task's lease is gone.
pub fn is_lease_lost(e: &anyhow::Error) -> bool {
    matches!(classify(e), Some(WorkerError::LeaseLost(_)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_classification_anywhere_in_the_chain() {
        let e = anyhow::anyhow!("plain");
        assert_eq!(exit_code(&e), 1);
        let e = bad_input(anyhow::anyhow!("bad token")).context("registering");
        assert_eq!(exit_code(&e), 3);
        assert!(format!("{e:#}").contains("bad token"));
        assert_eq!(exit_code(&anyhow::Error::new(WorkerError::Stopped).context("training")), 143);
        let lost = anyhow::Error::new(WorkerError::LeaseLost("fenced".into())).context("upload");
        assert!(is_lease_lost(&lost));
        assert_eq!(exit_code(&lost), 1);
        assert!(!is_lease_lost(&anyhow::Error::new(WorkerError::Refused("x".into()))));
    }

    #[test]
    fn out_of_memory_is_recognised_from_libtorch_messages_and_the_variant() {
        // What tch panics with when the CUDA caching allocator fails (torch 2.x wording).
        let torch = "Torch(\"CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 139.81 GiB of which \
                     1.02 GiB is free. Including non-PyTorch memory, this process has 40.1 GiB memory in use.\")";
        let e = anyhow::anyhow!("the task panicked: {torch}").context("training fold 2");
        assert!(is_out_of_memory(&e));
        assert!(is_out_of_memory(&anyhow::anyhow!("torch.OutOfMemoryError: CUDA error")));
        let sim = anyhow::Error::new(WorkerError::OutOfMemory("3 folds".into()));
        assert!(is_out_of_memory(&sim) && exit_code(&sim) == nnunet_proto::wire::EXIT_OUT_OF_DEVICE_MEMORY);
        assert!(!is_out_of_memory(&anyhow::anyhow!("No space left on device")));
    }
}
