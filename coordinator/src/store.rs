//! Durable coordinator state in an embedded SQLite database (`<state-dir>/coordinator.db`, WAL).
//!
//! Rows are the serde form of [`crate::state`] types; every [`Effects`] is written in one
//! transaction, so a coordinator killed at any point restarts on a consistent state: runs, tasks
//! (with their fencing tokens and last checkpoints), workers and the event journal.
use crate::state::{Effects, Event, Run, State, Task, Worker};
use anyhow::{Context, Result};
use rusqlite::{params, Connection};
use std::path::Path;

pub struct Store {
    conn: Connection,
}

impl Store {
    pub fn open(path: &Path) -> Result<Self> {
        let conn = Connection::open(path).with_context(|| format!("opening coordinator database {}", path.display()))?;
        conn.execute_batch(
            "PRAGMA journal_mode=WAL;
             PRAGMA synchronous=FULL;
             CREATE TABLE IF NOT EXISTS runs (id TEXT PRIMARY KEY, json TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS tasks (id TEXT PRIMARY KEY, run_id TEXT NOT NULL, json TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS workers (id TEXT PRIMARY KEY, json TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS events (run_id TEXT NOT NULL, seq INTEGER NOT NULL, json TEXT NOT NULL, PRIMARY KEY (run_id, seq));
             CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);",
        )
        .context("creating the coordinator schema")?;
        Ok(Store { conn })
    }

    /// Loads the whole state (runs, tasks, workers, lease counter).
    pub fn load(&self, lease_ttl_ms: i64) -> Result<State> {
        let mut st = State::new(lease_ttl_ms);
        let mut q = self.conn.prepare("SELECT json FROM runs")?;
        for row in q.query_map([], |r| r.get::<_, String>(0))? {
            let run: Run = serde_json::from_str(&row?).context("decoding a stored run")?;
            st.runs.insert(run.id.clone(), run);
        }
        let mut q = self.conn.prepare("SELECT json FROM tasks")?;
        for row in q.query_map([], |r| r.get::<_, String>(0))? {
            let t: Task = serde_json::from_str(&row?).context("decoding a stored task")?;
            st.tasks.insert(t.id.clone(), t);
        }
        let mut q = self.conn.prepare("SELECT json FROM workers")?;
        for row in q.query_map([], |r| r.get::<_, String>(0))? {
            let w: Worker = serde_json::from_str(&row?).context("decoding a stored worker")?;
            st.workers.insert(w.id.clone(), w);
        }
        let next: Option<String> = self.conn.query_row("SELECT value FROM meta WHERE key='next_lease'", [], |r| r.get(0)).ok();
        st.next_lease = next.and_then(|v| v.parse().ok()).unwrap_or(1);
        Ok(st)
    }

    /// Persists what `fx` touched, in one transaction.
    pub fn persist(&mut self, st: &State, fx: &Effects) -> Result<()> {
        let tx = self.conn.transaction()?;
        let mut seen = std::collections::BTreeSet::new();
        for id in &fx.runs {
            if seen.insert(("r", id.as_str())) {
                if let Some(r) = st.runs.get(id) {
                    tx.execute("INSERT OR REPLACE INTO runs (id, json) VALUES (?1, ?2)", params![id, serde_json::to_string(r)?])?;
                }
            }
        }
        for id in &fx.tasks {
            if seen.insert(("t", id.as_str())) {
                if let Some(t) = st.tasks.get(id) {
                    tx.execute(
                        "INSERT OR REPLACE INTO tasks (id, run_id, json) VALUES (?1, ?2, ?3)",
                        params![id, t.run_id, serde_json::to_string(t)?],
                    )?;
                }
            }
        }
        for id in &fx.workers {
            if seen.insert(("w", id.as_str())) {
                if let Some(w) = st.workers.get(id) {
                    tx.execute("INSERT OR REPLACE INTO workers (id, json) VALUES (?1, ?2)", params![id, serde_json::to_string(w)?])?;
                }
            }
        }
        for e in &fx.events {
            tx.execute(
                "INSERT OR REPLACE INTO events (run_id, seq, json) VALUES (?1, ?2, ?3)",
                params![e.run_id, e.seq as i64, serde_json::to_string(e)?],
            )?;
        }
        tx.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('next_lease', ?1)", params![st.next_lease.to_string()])?;
        tx.commit()?;
        Ok(())
    }

    /// Events of a run with `seq >= from`, in order.
    pub fn events_since(&self, run_id: &str, from: u64, limit: usize) -> Result<Vec<Event>> {
        let mut q = self.conn.prepare("SELECT json FROM events WHERE run_id=?1 AND seq>=?2 ORDER BY seq LIMIT ?3")?;
        let rows = q.query_map(params![run_id, from as i64, limit as i64], |r| r.get::<_, String>(0))?;
        let mut out = Vec::new();
        for r in rows {
            out.push(serde_json::from_str(&r?)?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Budget, RunState};

    #[test]
    fn state_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("c.db");
        let mut store = Store::open(&db).unwrap();
        let mut st = State::new(1000);
        let run = Run {
            id: "r1".into(),
            name: "n".into(),
            dataset_name: "Dataset001_X".into(),
            raw_dir: "/raw".into(),
            run_dir: "/run".into(),
            state: RunState::Planning,
            budget: Budget::default(),
            folds: vec![0, 1],
            predict_test: false,
            preprocess_shards: 1,
            created_ms: 5,
            summary_json: None,
            error: None,
            next_seq: 0,
        };
        let fx = st.add_run(run);
        store.persist(&st, &fx).unwrap();
        let fx = st.create_tasks("r1", &["a".into(), "b".into()], 1);
        store.persist(&st, &fx).unwrap();
        let (t, fx) = st.lease("w", 0);
        store.persist(&st, &fx).unwrap();
        drop(store);
        let store = Store::open(&db).unwrap();
        let back = store.load(1000).unwrap();
        assert_eq!(back.tasks.len(), st.tasks.len());
        let t = t.unwrap();
        assert_eq!(back.tasks[&t.id].fencing_token, 1);
        assert_eq!(back.next_lease, st.next_lease);
        assert_eq!(back.runs["r1"].next_seq, st.runs["r1"].next_seq);
        let ev = store.events_since("r1", 0, 100).unwrap();
        assert_eq!(ev.len() as u64, st.runs["r1"].next_seq);
    }
}
