//! Device parsing and reporting. One process per GPU: the launcher sets CUDA_VISIBLE_DEVICES or
//! passes `--device cuda:N`; the training loop stays on one OS thread (libtorch's autocast and
//! grad mode are thread-local).
use anyhow::{bail, Result};
use tch::Device;

/// Parses "cpu", "cuda", "cuda:N".
pub fn parse_device(s: &str) -> Result<Device> {
    let s = s.trim();
    if s == "cpu" {
        return Ok(Device::Cpu);
    }
    let idx = if s == "cuda" {
        0
    } else if let Some(n) = s.strip_prefix("cuda:") {
        n.parse::<usize>().map_err(|_| anyhow::anyhow!("bad device {s:?}: expected cpu, cuda or cuda:N"))?
    } else {
        bail!("bad device {s:?}: expected cpu, cuda or cuda:N");
    };
    if !tch::Cuda::is_available() {
        bail!("device {s} requested but CUDA is not available to libtorch (no GPU, or the worker was built without libtorch_cuda); use --device cpu");
    }
    let n = tch::Cuda::device_count() as usize;
    if idx >= n {
        bail!("device {s} requested but only {n} CUDA device(s) are visible (CUDA_VISIBLE_DEVICES={:?})", std::env::var("CUDA_VISIBLE_DEVICES").ok());
    }
    Ok(Device::Cuda(idx))
}

pub fn device_string(d: Device) -> String {
    match d {
        Device::Cpu => "cpu".into(),
        Device::Cuda(i) => format!("cuda:{i}"),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// Resident set size of this process in bytes (Linux), for heartbeats.
pub fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()))
        .map(|pages| pages * 4096)
        .unwrap_or(0)
}
