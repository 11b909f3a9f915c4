//! What workers report in heartbeats about their process and device (RSS, NVML device name,
//! memory, utilisation), kept in memory per worker for `/metrics` and the dashboard. Not
//! journaled: it is a gauge, stale after a restart until the next heartbeat. Filled by the worker
//! service (`service::convert::heartbeat_sample`), read by `/metrics` and the dashboard.
use std::collections::HashMap;
use std::sync::Mutex;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sample {
    pub ts_ms: i64,
    pub rss_bytes: Option<u64>,
    pub device_name: Option<String>,
    pub gpu_util_percent: Option<u32>,
    pub gpu_memory_used_bytes: Option<u64>,
    pub gpu_memory_total_bytes: Option<u64>,
}

#[derive(Debug, Default)]
pub struct Telemetry {
    by_worker: Mutex<HashMap<String, Sample>>,
}

impl Telemetry {
    /// Records a worker's latest readings (see `service::convert::heartbeat_sample`).
    pub fn record(&self, worker_id: &str, sample: Sample) {
        self.by_worker.lock().unwrap_or_else(|e| e.into_inner()).insert(worker_id.to_string(), sample);
    }

    /// Forgets a worker (pruned or gone).
    pub fn forget(&self, worker_id: &str) {
        self.by_worker.lock().unwrap_or_else(|e| e.into_inner()).remove(worker_id);
    }

    pub fn get(&self, worker_id: &str) -> Option<Sample> {
        self.by_worker.lock().unwrap_or_else(|e| e.into_inner()).get(worker_id).cloned()
    }

    pub fn all(&self) -> Vec<(String, Sample)> {
        let mut v: Vec<_> = self.by_worker.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|(k, s)| (k.clone(), s.clone())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn latest_sample_per_worker() {
        let t = Telemetry::default();
        t.record("w", Sample { ts_ms: 5, rss_bytes: Some(1), ..Default::default() });
        t.record("w", Sample { ts_ms: 6, rss_bytes: Some(2), ..Default::default() });
        t.record("v", Sample { ts_ms: 7, ..Default::default() });
        assert_eq!(t.get("w").unwrap().rss_bytes, Some(2));
        assert_eq!(t.all().iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(), vec!["v", "w"]);
        t.forget("v");
        assert!(t.get("v").is_none());
    }
}
