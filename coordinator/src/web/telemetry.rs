//! What workers report in heartbeats about their process and device (RSS, NVML device name,
//! memory, utilisation), kept in memory per worker for `/metrics` and the dashboard. Not
//! journaled: it is a gauge, stale after a restart until the next heartbeat.
use nnunet_proto::v1 as pb;
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
    /// Records a heartbeat's readings. Values the worker could not read stay absent; device
    /// memory counts only when the worker also knows the total (NVML answered).
    pub fn record(&self, r: &pb::HeartbeatRequest, now_ms: i64) {
        let total = r.device_memory_total_bytes.filter(|&t| t > 0);
        let s = Sample {
            ts_ms: now_ms,
            rss_bytes: (r.rss_bytes > 0).then_some(r.rss_bytes),
            device_name: (!r.device_name.is_empty()).then(|| r.device_name.clone()),
            gpu_util_percent: r.gpu_utilization_percent.map(|u| u.min(100)),
            gpu_memory_used_bytes: total.map(|t| r.device_memory_used_bytes.min(t)),
            gpu_memory_total_bytes: total,
        };
        self.by_worker.lock().unwrap().insert(r.worker_id.clone(), s);
    }

    pub fn get(&self, worker_id: &str) -> Option<Sample> {
        self.by_worker.lock().unwrap().get(worker_id).cloned()
    }

    pub fn all(&self) -> Vec<(String, Sample)> {
        let mut v: Vec<_> = self.by_worker.lock().unwrap().iter().map(|(k, s)| (k.clone(), s.clone())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn absent_nvml_stays_absent() {
        let t = Telemetry::default();
        let hb = pb::HeartbeatRequest { worker_id: "w".into(), rss_bytes: 123, ..Default::default() };
        t.record(&hb, 5);
        let s = t.get("w").unwrap();
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
        t.record(&hb, 6);
        let s = t.get("w").unwrap();
        assert_eq!((s.gpu_util_percent, s.gpu_memory_used_bytes, s.gpu_memory_total_bytes), (Some(100), Some(7), Some(10)));
        assert_eq!(s.rss_bytes, None);
    }
}
