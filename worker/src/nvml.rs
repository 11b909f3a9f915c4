//! GPU readings through NVML (`libnvidia-ml.so`, loaded at run time by `nvml-wrapper`): device
//! name, memory used/total, utilisation. No NVML (CPU machines, containers without the driver
//! library, MIG without access) means no values: every reading is an `Option`, nothing panics.
//!
//! The worker's `cuda:N` is mapped to an NVML device through `CUDA_VISIBLE_DEVICES` (an index or a
//! `GPU-`/`MIG-` UUID); without it, N is taken as the NVML index (set `CUDA_DEVICE_ORDER=PCI_BUS_ID`
//! for CUDA and NVML to agree on the order).
use nvml_wrapper::Nvml;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

/// One sample of the worker's device.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reading {
    pub name: String,
    /// Memory in use on the whole device (all processes).
    pub memory_used_bytes: u64,
    pub memory_total_bytes: u64,
    /// Percent of the last sample period the GPU was busy.
    pub utilization_percent: Option<u32>,
}

/// Which NVML device, once the worker knows its own.
enum Target {
    Index(u32),
    Uuid(String),
}

static NVML: OnceLock<Option<Nvml>> = OnceLock::new();
static TARGET: Mutex<Option<Target>> = Mutex::new(None);
static PEAK_USED: AtomicU64 = AtomicU64::new(0);

fn nvml() -> Option<&'static Nvml> {
    NVML.get_or_init(|| match Nvml::init() {
        Ok(n) => Some(n),
        Err(e) => {
            tracing::info!("NVML not available ({e}); GPU utilisation and memory will not be reported");
            None
        }
    })
    .as_ref()
}

/// Chooses the device to read from the worker's `--device` (`cpu`: none).
pub fn select(device: &str) {
    let target = device.strip_prefix("cuda").map(|rest| {
        let n: usize = rest.strip_prefix(':').and_then(|n| n.parse().ok()).unwrap_or(0);
        match std::env::var("CUDA_VISIBLE_DEVICES").ok().and_then(|v| v.split(',').nth(n).map(|s| s.trim().to_string())) {
            Some(v) if v.parse::<u32>().is_ok() => Target::Index(v.parse().unwrap_or(0)),
            Some(v) if !v.is_empty() => Target::Uuid(v),
            _ => Target::Index(n as u32),
        }
    });
    *TARGET.lock().unwrap_or_else(|e| e.into_inner()) = target;
}

/// The selected NVML device; `None` on a CPU worker, without NVML or when the lookup fails.
fn selected() -> Option<nvml_wrapper::Device<'static>> {
    let target = TARGET.lock().unwrap_or_else(|e| e.into_inner());
    let target = target.as_ref()?;
    let nvml = nvml()?;
    let dev = match target {
        Target::Index(i) => nvml.device_by_index(*i),
        Target::Uuid(u) => nvml.device_by_uuid(u.as_str()),
    };
    dev.map_err(|e| tracing::debug!("NVML device lookup failed: {e}")).ok()
}

/// The selected device's UUID and its free memory in bytes now (what the worker registers with,
/// so that the coordinator packs tasks onto it by memory); `None` without NVML.
pub fn identity() -> Option<(String, u64)> {
    let dev = selected()?;
    Some((dev.uuid().ok()?, dev.memory_info().ok()?.free))
}

/// Reads the selected device; `None` on a CPU worker or without NVML. Blocking (an FFI call of
/// well under a millisecond); call it off the async runtime.
pub fn sample() -> Option<Reading> {
    let dev = selected()?;
    let mem = dev.memory_info().ok()?;
    PEAK_USED.fetch_max(mem.used, Ordering::Relaxed);
    Some(Reading {
        name: dev.name().unwrap_or_default(),
        memory_used_bytes: mem.used,
        memory_total_bytes: mem.total,
        utilization_percent: dev.utilization_rates().ok().map(|u| u.gpu),
    })
}

/// The most device memory in use seen by any sample of this process so far (0 when unknown);
/// reported per epoch as `device_memory_peak_bytes`, the `dev mem` column of `nnunet watch`.
pub fn peak_used_bytes() -> u64 {
    sample();
    PEAK_USED.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn cpu_workers_have_no_readings_and_never_panic() {
        select("cpu");
        assert_eq!(sample(), None);
        assert_eq!(peak_used_bytes(), 0);
        // A GPU worker on a machine without NVML (or with it): either a reading or None, no panic.
        select("cuda:0");
        if let Some(r) = sample() {
            assert!(r.memory_total_bytes >= r.memory_used_bytes, "{r:?}");
            println!("NVML: {r:?}");
        } else {
            println!("NVML absent: no readings");
        }
        select("cpu");
    }
}
