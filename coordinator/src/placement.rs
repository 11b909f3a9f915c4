//! Where `nnunet run`'s workers compute: every visible GPU by default (found without linking CUDA),
//! CPU workers when there is none, and several fold workers per GPU with `--folds-per-gpu`; plus a
//! run's per-task device memory estimate, from its plan, for the coordinator's packing
//! (`state/devices.rs`).
use crate::state::Run;
use anyhow::{bail, Result};
use std::path::Path;
use std::str::FromStr;

/// How many fold workers share one GPU (`--folds-per-gpu N|auto`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FoldsPerGpu {
    Fixed(u32),
    /// As many as the device's free memory holds at the plan's estimate (the coordinator decides;
    /// `nnunet run` starts one worker per fold).
    Auto,
}

impl FromStr for FoldsPerGpu {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "auto" => Ok(FoldsPerGpu::Auto),
            n => match n.parse::<u32>() {
                Ok(k) if (1..=64).contains(&k) => Ok(FoldsPerGpu::Fixed(k)),
                _ => Err(format!("--folds-per-gpu takes a number from 1 to 64 or `auto`, not {s:?}")),
            },
        }
    }
}

impl FoldsPerGpu {
    /// Worker processes per GPU for a run of `folds` folds.
    pub fn workers(self, folds: usize) -> usize {
        match self {
            FoldsPerGpu::Fixed(n) => (n as usize).min(folds.max(1)),
            FoldsPerGpu::Auto => folds.max(1),
        }
    }
}

/// The GPUs this process may use, as `CUDA_VISIBLE_DEVICES` entries (an index or a UUID), and how
/// they were found. `CUDA_VISIBLE_DEVICES` wins when set (empty or `-1`: none); else NVML
/// (`libnvidia-ml.so`, loaded at run time: the coordinator links no CUDA); else none.
pub fn visible_gpus() -> (Vec<String>, String) {
    if let Ok(v) = std::env::var("CUDA_VISIBLE_DEVICES") {
        let ids: Vec<String> = v.split(',').map(|s| s.trim().to_string()).take_while(|s| !s.is_empty() && s != "-1").collect();
        return (ids, format!("CUDA_VISIBLE_DEVICES={v:?}"));
    }
    match nvml_wrapper::Nvml::init() {
        Ok(nvml) => match nvml.device_count() {
            Ok(n) => ((0..n).map(|i| i.to_string()).collect(), format!("NVML reports {n} GPU(s)")),
            Err(e) => (vec![], format!("NVML could not count the GPUs ({e})")),
        },
        Err(e) => (vec![], format!("no NVIDIA driver library ({e})")),
    }
}

/// One worker process: its `--device` and extra environment.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerSlot {
    pub device: String,
    pub env: Vec<(String, String)>,
}

/// What `nnunet run` asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct Request<'a> {
    pub gpus: &'a [String],
    pub workers: Option<usize>,
    pub device: Option<&'a str>,
    pub folds_per_gpu: Option<FoldsPerGpu>,
    pub folds: usize,
}

/// The worker processes for `req` on a machine with `detected` GPUs and `ncpu` cores, and a line
/// that says what was chosen and why.
pub fn plan_workers(req: &Request, detected: &(Vec<String>, String), ncpu: usize) -> Result<(Vec<WorkerSlot>, String)> {
    let per_gpu = req.folds_per_gpu.map_or(1, |f| f.workers(req.folds));
    let gpu_slots = |ids: &[String]| -> Vec<WorkerSlot> {
        ids.iter()
            .flat_map(|g| {
                std::iter::repeat_n(
                    WorkerSlot { device: "cuda:0".into(), env: vec![("CUDA_VISIBLE_DEVICES".to_string(), g.clone())] },
                    per_gpu,
                )
            })
            .collect()
    };
    let packing =
        |n: usize| if per_gpu > 1 { format!(", {per_gpu} fold workers per GPU") } else { String::new() } + &format!(" ({n} GPU(s))");
    if !req.gpus.is_empty() {
        return Ok((gpu_slots(req.gpus), format!("using the GPUs given by --gpus{}", packing(req.gpus.len()))));
    }
    let explicit_cpu = req.device == Some("cpu") || (req.workers.is_some() && req.device.is_none());
    if let (Some(dev), Some(n)) = (req.device.filter(|d| *d != "cpu"), req.workers) {
        return Ok((
            (0..n).map(|_| WorkerSlot { device: dev.to_string(), env: vec![] }).collect(),
            format!("{n} worker(s) on --device {dev}"),
        ));
    }
    let (ids, why) = detected;
    if !explicit_cpu && !ids.is_empty() {
        return Ok((gpu_slots(ids), format!("using every visible GPU: {why}{}", packing(ids.len()))));
    }
    if let Some(dev) = req.device.filter(|d| *d != "cpu") {
        // Asked for a GPU that NVML does not show (no driver library in a container, say): one worker,
        // and the worker says whether libtorch sees it.
        let slot = WorkerSlot { device: dev.to_string(), env: vec![] };
        return Ok((vec![slot], format!("1 worker on --device {dev} (no GPU listed: {why})")));
    }
    if req.folds_per_gpu.is_some() && req.device != Some("cpu") && req.workers.is_none() {
        bail!("--folds-per-gpu needs a GPU, and none is visible ({why}); pass --gpus, or --workers N --device cpu");
    }
    let n = req.workers.unwrap_or(2.min(ncpu).max(1));
    let reason = if explicit_cpu { "as asked (--workers/--device cpu)".to_string() } else { format!("no GPU found: {why}") };
    Ok(((0..n).map(|_| WorkerSlot { device: "cpu".into(), env: vec![] }).collect(), format!("using {n} CPU worker(s), {reason}")))
}

/// The device memory one GPU task of `run` needs (MiB), from its plans file and dataset.json.
pub fn memory_estimate_mib(run: &Run) -> Result<u64> {
    let dirs = crate::pipeline::dirs_of(run);
    let plans = nnunet_common::plans::Plans::load(&dirs.plans_file())?;
    let classes = nnunet_common::dataset_json::DatasetJson::load(&Path::new(&run.raw_dir).join("dataset.json"))?.num_classes();
    Ok(nnunet_common::vram::training_estimate_mib(&plans, classes)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req<'a>(gpus: &'a [String], workers: Option<usize>, device: Option<&'a str>, fpg: Option<FoldsPerGpu>) -> Request<'a> {
        Request { gpus, workers, device, folds_per_gpu: fpg, folds: 5 }
    }

    #[test]
    fn no_flags_use_every_visible_gpu_or_cpu_workers_and_say_why() {
        let none = (vec![], "no NVIDIA driver library (x)".to_string());
        let (slots, why) = plan_workers(&req(&[], None, None, None), &none, 8).unwrap();
        assert_eq!(slots.len(), 2);
        assert!(slots.iter().all(|s| s.device == "cpu" && s.env.is_empty()));
        assert!(why.contains("CPU worker") && why.contains("no GPU found"), "{why}");
        let two = (vec!["0".to_string(), "1".to_string()], "NVML reports 2 GPU(s)".to_string());
        let (slots, why) = plan_workers(&req(&[], None, None, None), &two, 8).unwrap();
        assert_eq!(slots.len(), 2);
        assert_eq!(slots[1].env, vec![("CUDA_VISIBLE_DEVICES".to_string(), "1".to_string())]);
        assert!(why.contains("every visible GPU"), "{why}");
        // Asking for CPU workers keeps them even with GPUs.
        let (slots, why) = plan_workers(&req(&[], Some(3), Some("cpu"), None), &two, 8).unwrap();
        assert!(slots.len() == 3 && slots[0].device == "cpu" && why.contains("as asked"), "{why}");
        let (slots, _) = plan_workers(&req(&[], Some(3), None, None), &two, 8).unwrap();
        assert!(slots.iter().all(|s| s.device == "cpu"));
        // --device cuda without a listed GPU: one worker on it, not a silent CPU fallback.
        let (slots, why) = plan_workers(&req(&[], None, Some("cuda"), None), &none, 8).unwrap();
        assert!(slots.len() == 1 && slots[0].device == "cuda" && why.contains("no GPU listed"), "{why}");
    }

    #[test]
    fn folds_per_gpu_starts_several_workers_per_gpu() {
        let gpus = vec!["0".to_string()];
        let none = (vec![], String::new());
        let (slots, why) = plan_workers(&req(&gpus, None, None, Some(FoldsPerGpu::Fixed(3))), &none, 8).unwrap();
        assert_eq!(slots.len(), 3, "{why}");
        assert!(slots.iter().all(|s| s.env == vec![("CUDA_VISIBLE_DEVICES".to_string(), "0".to_string())]));
        let (slots, _) = plan_workers(&req(&gpus, None, None, Some(FoldsPerGpu::Auto)), &none, 8).unwrap();
        assert_eq!(slots.len(), 5, "auto: one worker per fold; the coordinator gates them by memory");
        let (slots, _) = plan_workers(&req(&gpus, None, None, Some(FoldsPerGpu::Fixed(9))), &none, 8).unwrap();
        assert_eq!(slots.len(), 5, "never more workers than folds");
        assert!(plan_workers(&req(&[], None, None, Some(FoldsPerGpu::Auto)), &none, 8).is_err(), "packing without a GPU");
        assert_eq!("auto".parse::<FoldsPerGpu>(), Ok(FoldsPerGpu::Auto));
        assert!("0".parse::<FoldsPerGpu>().is_err() && "x".parse::<FoldsPerGpu>().is_err());
    }

    #[test]
    fn cuda_visible_devices_decides_when_set() {
        // Only this test touches the variable in this process's tests.
        std::env::set_var("CUDA_VISIBLE_DEVICES", "");
        assert!(visible_gpus().0.is_empty());
        std::env::set_var("CUDA_VISIBLE_DEVICES", "2,GPU-abc");
        assert_eq!(visible_gpus().0, vec!["2".to_string(), "GPU-abc".to_string()]);
        std::env::remove_var("CUDA_VISIBLE_DEVICES");
        let (ids, why) = visible_gpus();
        println!("this machine: {ids:?} ({why})");
    }
}
