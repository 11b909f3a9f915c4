//! Follows every task's fencing token while the chaos runs: a thread opens the coordinator's SQLite
//! database read-only every few hundred milliseconds (across coordinator kills and restarts) and
//! records, per task, the highest token seen. A token lower than one seen before is a violation:
//! a worker holding the older lease could write again.
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

#[derive(Debug, Default)]
pub struct FenceLog {
    /// Successful reads of the tasks table.
    pub samples: usize,
    /// Highest fencing token seen per task id.
    pub max_token: BTreeMap<String, u64>,
    pub violations: Vec<String>,
    /// The last read error (the database is briefly absent or locked around restarts).
    pub last_error: Option<String>,
}

pub struct FencePoller {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<FenceLog>,
}

/// `(task id, fencing token, state)` of every stored task.
fn read_tokens(db: &std::path::Path) -> Result<Vec<(String, u64, String)>, String> {
    use rusqlite::{Connection, OpenFlags};
    let conn = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        .map_err(|e| format!("opening {}: {e}", db.display()))?;
    conn.busy_timeout(Duration::from_millis(500)).map_err(|e| e.to_string())?;
    let mut q = conn.prepare("SELECT id, json FROM tasks").map_err(|e| format!("reading the tasks table: {e}"))?;
    let rows = q.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))).map_err(|e| e.to_string())?;
    let mut out = vec![];
    for row in rows {
        let (id, json) = row.map_err(|e| e.to_string())?;
        let v: serde_json::Value = serde_json::from_str(&json).map_err(|e| format!("task {id}: {e}"))?;
        let token = v["fencing_token"].as_u64().ok_or_else(|| format!("task {id} has no fencing_token in its stored row: {json}"))?;
        out.push((id, token, v["state"].as_str().unwrap_or("?").to_string()));
    }
    Ok(out)
}

impl FencePoller {
    pub fn start(db: PathBuf, every: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut log = FenceLog::default();
            loop {
                let last = s.load(Ordering::SeqCst);
                if db.exists() {
                    match read_tokens(&db) {
                        Ok(rows) => {
                            log.samples += 1;
                            for (id, token, state) in rows {
                                let max = log.max_token.entry(id.clone()).or_insert(0);
                                if token < *max {
                                    log.violations
                                        .push(format!("task {id}: fencing token went back from {} to {token} (state {state})", *max));
                                }
                                *max = (*max).max(token);
                            }
                        }
                        Err(e) => log.last_error = Some(e),
                    }
                }
                if last {
                    return log;
                }
                std::thread::sleep(every);
            }
        });
        FencePoller { stop, handle }
    }

    /// Stops after one last read and returns what was seen.
    pub fn finish(self) -> FenceLog {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.join().expect("fence poller panicked")
    }
}
