//! Durable coordinator state in an embedded SQLite database (`<state-dir>/coordinator.db`, WAL).
//!
//! Rows are the serde form of [`crate::state`] types; every [`Effects`] is written in one
//! transaction, so a coordinator killed at any point restarts on a consistent state: runs, tasks
//! (with their fencing tokens and last checkpoints), workers and the event journal. A row listed in
//! the effects but gone from the state is deleted (a deleted run takes its tasks and journal along).
//! Role tokens live here too, as sha256 hashes.
use crate::domain::Role;
use crate::state::{Effects, Event, Run, State, Task, Worker};
use anyhow::{Context, Result};
use rusqlite::{params, Connection, OptionalExtension};
use std::path::Path;

pub struct Store {
    conn: Connection,
}

/// A role token as stored (never the token itself).
#[derive(Debug, Clone, PartialEq)]
pub struct TokenRow {
    pub id: String,
    pub role: Role,
    pub name: String,
    pub created_ms: i64,
    pub revoked: bool,
}

impl Store {
    pub fn open(path: &Path) -> Result<Self> {
        let conn = Connection::open(path).with_context(|| format!("opening coordinator database {}", path.display()))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(
            "PRAGMA journal_mode=WAL;
             PRAGMA synchronous=FULL;
             CREATE TABLE IF NOT EXISTS runs (id TEXT PRIMARY KEY, json TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS tasks (id TEXT PRIMARY KEY, run_id TEXT NOT NULL, json TEXT NOT NULL);
             CREATE INDEX IF NOT EXISTS tasks_by_run ON tasks (run_id);
             CREATE TABLE IF NOT EXISTS workers (id TEXT PRIMARY KEY, json TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS events (run_id TEXT NOT NULL, seq INTEGER NOT NULL, json TEXT NOT NULL, PRIMARY KEY (run_id, seq));
             CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS tokens (id TEXT PRIMARY KEY, hash TEXT NOT NULL UNIQUE, role TEXT NOT NULL, name TEXT NOT NULL,
                                                created_ms INTEGER NOT NULL, revoked INTEGER NOT NULL DEFAULT 0);",
        )
        .context("creating the coordinator schema")?;
        Ok(Store { conn })
    }

    /// Caps the database file at about `bytes` (SQLite `max_page_count`): a write beyond it fails
    /// like a full disk does.
    pub fn limit_size(&self, bytes: u64) -> Result<()> {
        let page: i64 = self.conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
        let pages = (bytes as i64 / page).max(1);
        self.conn.query_row(&format!("PRAGMA max_page_count = {pages}"), [], |_| Ok(()))?;
        Ok(())
    }

    /// Loads the whole state (runs, tasks, workers, lease counter).
    pub fn load(&self, lease_ttl_ms: i64) -> Result<State> {
        let mut st = State::new(lease_ttl_ms);
        for run in self.rows::<Run>("SELECT json FROM runs", "run")? {
            st.runs.insert(run.id.clone(), run);
        }
        for t in self.rows::<Task>("SELECT json FROM tasks", "task")? {
            st.tasks.insert(t.id.clone(), t);
        }
        for w in self.rows::<Worker>("SELECT json FROM workers", "worker")? {
            st.workers.insert(w.id.clone(), w);
        }
        st.next_lease = self.next_lease()?;
        Ok(st)
    }

    fn rows<T: serde::de::DeserializeOwned>(&self, sql: &str, what: &str) -> Result<Vec<T>> {
        let mut q = self.conn.prepare(sql)?;
        let mut out = Vec::new();
        for row in q.query_map([], |r| r.get::<_, String>(0))? {
            out.push(serde_json::from_str(&row?).with_context(|| format!("decoding a stored {what}"))?);
        }
        Ok(out)
    }

    fn next_lease(&self) -> Result<u64> {
        let next: Option<String> = self.conn.query_row("SELECT value FROM meta WHERE key='next_lease'", [], |r| r.get(0)).optional()?;
        Ok(next.and_then(|v| v.parse().ok()).unwrap_or(1))
    }

    fn one<T: serde::de::DeserializeOwned>(&self, sql: &str, id: &str) -> Result<Option<T>> {
        let json: Option<String> = self.conn.query_row(sql, params![id], |r| r.get(0)).optional()?;
        json.map(|j| serde_json::from_str(&j).context("decoding a stored row")).transpose()
    }

    /// Puts back, from the database, every row `fx` touched: the undo of a mutation whose
    /// persisting failed.
    pub fn reload_touched(&self, st: &mut State, fx: &Effects) -> Result<()> {
        for id in &fx.runs {
            match self.one::<Run>("SELECT json FROM runs WHERE id=?1", id.as_str())? {
                Some(r) => st.runs.insert(id.clone(), r),
                None => st.runs.remove(id),
            };
        }
        for id in &fx.tasks {
            match self.one::<Task>("SELECT json FROM tasks WHERE id=?1", id.as_str())? {
                Some(t) => st.tasks.insert(id.clone(), t),
                None => st.tasks.remove(id),
            };
        }
        for id in &fx.workers {
            match self.one::<Worker>("SELECT json FROM workers WHERE id=?1", id.as_str())? {
                Some(w) => st.workers.insert(id.clone(), w),
                None => st.workers.remove(id),
            };
        }
        st.next_lease = self.next_lease()?;
        Ok(())
    }

    /// Persists what `fx` touched, in one transaction.
    pub fn persist(&mut self, st: &State, fx: &Effects) -> Result<()> {
        let tx = self.conn.transaction()?;
        let mut seen = std::collections::BTreeSet::new();
        for id in &fx.runs {
            if seen.insert(("r", id.as_str())) {
                match st.runs.get(id) {
                    Some(r) => tx.execute(
                        "INSERT OR REPLACE INTO runs (id, json) VALUES (?1, ?2)",
                        params![id.as_str(), serde_json::to_string(r)?],
                    )?,
                    None => {
                        tx.execute("DELETE FROM events WHERE run_id=?1", params![id.as_str()])?;
                        tx.execute("DELETE FROM tasks WHERE run_id=?1", params![id.as_str()])?;
                        tx.execute("DELETE FROM runs WHERE id=?1", params![id.as_str()])?
                    }
                };
            }
        }
        for id in &fx.tasks {
            if seen.insert(("t", id.as_str())) {
                match st.tasks.get(id) {
                    Some(t) => tx.execute(
                        "INSERT OR REPLACE INTO tasks (id, run_id, json) VALUES (?1, ?2, ?3)",
                        params![id.as_str(), t.run_id.as_str(), serde_json::to_string(t)?],
                    )?,
                    None => tx.execute("DELETE FROM tasks WHERE id=?1", params![id.as_str()])?,
                };
            }
        }
        for id in &fx.workers {
            if seen.insert(("w", id.as_str())) {
                match st.workers.get(id) {
                    Some(w) => tx.execute(
                        "INSERT OR REPLACE INTO workers (id, json) VALUES (?1, ?2)",
                        params![id.as_str(), serde_json::to_string(w)?],
                    )?,
                    None => tx.execute("DELETE FROM workers WHERE id=?1", params![id.as_str()])?,
                };
            }
        }
        for e in &fx.events {
            if st.runs.contains_key(&e.run_id) {
                tx.execute(
                    "INSERT OR REPLACE INTO events (run_id, seq, json) VALUES (?1, ?2, ?3)",
                    params![e.run_id.as_str(), e.seq as i64, serde_json::to_string(e)?],
                )?;
            }
        }
        tx.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('next_lease', ?1)", params![st.next_lease.to_string()])?;
        tx.commit()?;
        Ok(())
    }

    /// Events of a run with `seq >= from`, in order.
    pub fn events_since(&self, run_id: &str, from: u64, limit: usize) -> Result<Vec<Event>> {
        let mut q = self.conn.prepare_cached("SELECT json FROM events WHERE run_id=?1 AND seq>=?2 ORDER BY seq LIMIT ?3")?;
        let rows = q.query_map(params![run_id, from as i64, limit as i64], |r| r.get::<_, String>(0))?;
        let mut out = Vec::new();
        for r in rows {
            out.push(serde_json::from_str(&r?).context("decoding a stored event")?);
        }
        Ok(out)
    }

    /// Stores a new role token's hash; returns its id.
    pub fn add_token(&self, hash: &str, role: Role, name: &str, now: i64) -> Result<String> {
        let id = format!("tok-{}", crate::domain::random_hex(6));
        self.conn.execute(
            "INSERT INTO tokens (id, hash, role, name, created_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![id, hash, role.name(), name, now],
        )?;
        Ok(id)
    }

    pub fn list_tokens(&self) -> Result<Vec<TokenRow>> {
        let mut q = self.conn.prepare("SELECT id, role, name, created_ms, revoked FROM tokens ORDER BY created_ms, id")?;
        let rows = q.query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?, r.get::<_, i64>(3)?, r.get::<_, i64>(4)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, role, name, created_ms, revoked) = row?;
            let role = Role::from_name(&role).with_context(|| format!("token {id} has an unknown role {role:?}"))?;
            out.push(TokenRow { id, role, name, created_ms, revoked: revoked != 0 });
        }
        Ok(out)
    }

    /// Revokes a token by id or name; returns how many were revoked.
    pub fn revoke_token(&self, id_or_name: &str) -> Result<usize> {
        Ok(self.conn.execute("UPDATE tokens SET revoked=1 WHERE (id=?1 OR name=?1) AND revoked=0", params![id_or_name])?)
    }

    /// The roles of live tokens by hash.
    pub fn token_roles(&self) -> Result<std::collections::HashMap<String, Role>> {
        let mut q = self.conn.prepare("SELECT hash, role FROM tokens WHERE revoked=0")?;
        let rows = q.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        let mut out = std::collections::HashMap::new();
        for row in rows {
            let (h, role) = row?;
            if let Some(role) = Role::from_name(&role) {
                out.insert(h, role);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nnunet_common::train_log::EpochMetrics;
    use nnunet_common::Fold;

    fn run(id: &str) -> Run {
        Run { name: "n".into(), ..Run::new(id.into(), "Dataset001_X", "/raw".into(), "/run".into(), vec![Fold::Index(0), Fold::All], 5) }
    }

    #[test]
    fn state_survives_a_reopen_even_with_non_finite_metrics() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("c.db");
        let mut store = Store::open(&db).unwrap();
        let mut st = State::new(1000);
        let fx = st.add_run(run("r1"), 0);
        store.persist(&st, &fx).unwrap();
        let fx = st.create_tasks(&"r1".into(), &["a".into(), "b".into()], 1, 0);
        store.persist(&st, &fx).unwrap();
        let w = crate::domain::WorkerId::from("w");
        let (t, fx) = st.lease(&w, 0);
        store.persist(&st, &fx).unwrap();
        let t = t.unwrap();
        let nan = EpochMetrics { mean_fg_dice: f64::NAN, pseudo_dice: vec![f64::NAN, f64::INFINITY], ..Default::default() };
        let fx = st.report_metrics(t.id.as_str(), t.fencing_token, &w, nan, 1).unwrap();
        store.persist(&st, &fx).unwrap();
        drop(store);
        let store = Store::open(&db).unwrap();
        let back = store.load(1000).unwrap();
        assert_eq!(back.tasks.len(), st.tasks.len());
        assert_eq!(back.tasks[&t.id].fencing_token, t.fencing_token);
        assert!(back.tasks[&t.id].last_metrics.as_ref().unwrap().mean_fg_dice.is_nan());
        assert_eq!(back.next_lease, st.next_lease);
        assert_eq!(back.runs["r1"].next_seq, st.runs["r1"].next_seq);
        let ev = store.events_since("r1", 0, 100).unwrap();
        assert_eq!(ev.len() as u64, st.runs["r1"].next_seq);
    }

    #[test]
    fn a_failed_write_is_undone_from_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("c.db")).unwrap();
        let mut st = State::new(1000);
        let fx = st.add_run(run("r1"), 0);
        store.persist(&st, &fx).unwrap();
        let fx = st.create_tasks(&"r1".into(), &["a".into()], 1, 0);
        store.persist(&st, &fx).unwrap();
        let saved = st.clone();
        let (_, fx) = st.lease(&"w".into(), 0);
        assert_ne!(st, saved);
        store.reload_touched(&mut st, &fx).unwrap();
        assert_eq!(st, saved, "reloading the touched rows restores the state before the mutation");
        // Deleting a run deletes its tasks and journal.
        st.cancel_run("r1", 1).map(|fx| store.persist(&st, &fx)).unwrap().unwrap();
        let (_, fx) = st.delete_run("r1").unwrap();
        store.persist(&st, &fx).unwrap();
        let back = store.load(1000).unwrap();
        assert!(back.runs.is_empty() && back.tasks.is_empty());
        assert!(store.events_since("r1", 0, 10).unwrap().is_empty());
    }
}
