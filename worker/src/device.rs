//! Device parsing and reporting. One process per GPU: the launcher sets CUDA_VISIBLE_DEVICES or
//! passes `--device cuda:N`; the training loop stays on one OS thread (libtorch's autocast and
//! grad mode are thread-local).
use anyhow::{bail, Result};
use tch::Device;

/// The device `auto` (the default of `--device`) stands for: `cuda` when libtorch sees a GPU, as
/// nnU-Net's `-device cuda` default (`nnunetv2/run/run_training.py::run_training_entry`), else `cpu`
/// with a message.
pub fn auto_device() -> &'static str {
    if tch::Cuda::is_available() {
        "cuda:0"
    } else {
        eprintln!("no CUDA device visible to libtorch: using the CPU (pass --device cpu to silence this)");
        "cpu"
    }
}

/// `--device` with `auto` resolved ([`auto_device`]).
pub fn resolve(s: &str) -> String {
    if s.trim() == "auto" {
        auto_device().to_string()
    } else {
        s.trim().to_string()
    }
}

/// Parses "auto", "cpu", "cuda", "cuda:N".
pub fn parse_device(s: &str) -> Result<Device> {
    let s = s.trim();
    if s == "auto" {
        return parse_device(auto_device());
    }
    if s == "cpu" {
        return Ok(Device::Cpu);
    }
    let idx = if s == "cuda" {
        0
    } else if let Some(n) = s.strip_prefix("cuda:") {
        n.parse::<usize>().map_err(|_| anyhow::anyhow!("bad device {s:?}: expected auto, cpu, cuda or cuda:N"))?
    } else {
        bail!("bad device {s:?}: expected auto, cpu, cuda or cuda:N");
    };
    if !tch::Cuda::is_available() {
        bail!("device {s} requested but CUDA is not available to libtorch (no GPU, or the worker was built without libtorch_cuda); use --device cpu");
    }
    let n = tch::Cuda::device_count() as usize;
    if idx >= n {
        bail!(
            "device {s} requested but only {n} CUDA device(s) are visible (CUDA_VISIBLE_DEVICES={:?})",
            std::env::var("CUDA_VISIBLE_DEVICES").ok()
        );
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

/// `nnunet-worker smoke`: one real forward/backward/SGD step of a small conv net on CPU (and on
/// CUDA when available), printing what libtorch sees.
pub fn smoke() -> Result<()> {
    use tch::nn::{Module, OptimizerConfig};
    println!(
        "libtorch: cuda available = {}, devices = {}, cudnn = {}",
        tch::Cuda::is_available(),
        tch::Cuda::device_count(),
        tch::Cuda::cudnn_is_available()
    );
    let mut devices = vec![Device::Cpu];
    if tch::Cuda::is_available() {
        devices.push(Device::Cuda(0));
    }
    for d in devices {
        let vs = tch::nn::VarStore::new(d);
        let net = tch::nn::seq()
            .add(tch::nn::conv2d(vs.root() / "c1", 1, 8, 3, tch::nn::ConvConfig { padding: 1, ..Default::default() }))
            .add_fn(|x| x.leaky_relu())
            .add(tch::nn::conv2d(vs.root() / "c2", 8, 2, 1, Default::default()));
        let mut opt = tch::nn::Sgd { momentum: 0.99, nesterov: true, ..Default::default() }.build(&vs, 0.01)?;
        let x = tch::Tensor::randn([2, 1, 32, 32], (tch::Kind::Float, d));
        let y = x.gt(0.0).to_kind(tch::Kind::Int64).squeeze_dim(1);
        let loss0 = net.forward(&x).cross_entropy_loss::<tch::Tensor>(&y, None, tch::Reduction::Mean, -100, 0.0);
        opt.backward_step(&loss0);
        let loss1 = net.forward(&x).cross_entropy_loss::<tch::Tensor>(&y, None, tch::Reduction::Mean, -100, 0.0);
        println!("{}: forward/backward/SGD step ok, loss {:.4} -> {:.4}", device_string(d), f64::try_from(&loss0)?, f64::try_from(&loss1)?);
    }
    Ok(())
}
