//! Sliding-window prediction of one preprocessed case (`nnUNetPredictor.predict_sliding_window_return_logits`;
//! `nnunetv2/inference/sliding_window_prediction.py`, `predict_from_raw_data.py`).
//!
//! - [`compute_gaussian`]: the importance map, σ = patch/8, scaled so its maximum is 10, rounded to
//!   fp16 as the reference stores it, zeros replaced by the smallest nonzero value.
//! - [`compute_steps`]: tile origins per axis for a step of `step_size · patch`.
//! - [`pad_amounts`]: centred padding to at least the patch size, odd remainder on the high side.
//! - [`predict_case_logits`]: every z slice of a (C, Z, X, Y) case through the 2D network, tile by
//!   tile, with test-time mirroring over every non-empty subset of the allowed axes (4 passes in 2D,
//!   logits averaged), Gaussian-weighted accumulation, and logits averaged over the folds.
//!
//! Precision: the reference accumulates logits and weights in fp16 buffers. We accumulate in f32
//! (on the CPU fp16 arithmetic is slow, and f32 only removes rounding); the Gaussian weights
//! themselves are rounded to fp16 exactly as the reference's are, so the weighting is identical.
//! On CUDA the forward pass runs under fp16 autocast like the reference's.
//!
//! Batching: the four mirrored copies of a tile go through the network as one batch, and several
//! tiles (e.g. the slices of a small 3-D volume) are batched up to a voxel budget. InstanceNorm
//! normalizes each sample on its own, so batching does not change the result beyond float rounding.
use crate::net::PlainConvUNet;
use tch::{Device, Kind, Tensor};

/// `compute_gaussian(tile_size, sigma_scale=1/8, value_scaling_factor=10)` for a 2D tile, as
/// (X, Y) row-major f32 values that are exactly representable in fp16.
///
/// scipy's `gaussian_filter` of a delta at `patch // 2` (mode constant, truncate 4) is, per axis,
/// the normalized kernel `exp(-d²/(2σ²)) / Σ` for `|d| <= int(4σ + 0.5)` and 0 beyond; dividing
/// by the maximum cancels the normalization, leaving `10 · Π exp(-d²/(2σ²))`.
pub fn compute_gaussian(patch: [usize; 2]) -> Vec<f32> {
    let axis = |p: usize| -> Vec<f64> {
        let sigma = p as f64 / 8.0;
        let radius = (4.0 * sigma + 0.5) as i64;
        let c = (p / 2) as i64;
        (0..p as i64)
            .map(|i| {
                let d = i - c;
                if d.abs() > radius {
                    0.0
                } else {
                    (-(d * d) as f64 / (2.0 * sigma * sigma)).exp()
                }
            })
            .collect()
    };
    let (ax, ay) = (axis(patch[0]), axis(patch[1]));
    let max = ax.iter().cloned().fold(0.0, f64::max) * ay.iter().cloned().fold(0.0, f64::max);
    let mut g64: Vec<f64> = Vec::with_capacity(patch[0] * patch[1]);
    for &x in &ax {
        for &y in &ay {
            g64.push(x * y / (max / 10.0));
        }
    }
    // numpy divides the float64 map by (max / 10), then torch casts float64 -> fp16 directly.
    let mut g: Vec<f32> = Vec::<f32>::try_from(Tensor::from_slice(&g64).to_kind(Kind::Half).to_kind(Kind::Float)).expect("f32 tensor");
    let min_nonzero = g.iter().cloned().filter(|&v| v > 0.0).fold(f32::INFINITY, f32::min);
    for v in &mut g {
        if *v == 0.0 {
            *v = min_nonzero;
        }
    }
    g
}

/// Rounds an f64 to the nearest fp16 value (round half to even, subnormals kept, overflow to inf),
/// returned as f32. Same as `torch.tensor(x).half().float()`.
pub fn round_to_f16(x: f64) -> f32 {
    Tensor::from_slice(&[x]).to_kind(Kind::Half).to_kind(Kind::Float).double_value(&[0]) as f32
}

/// `compute_steps_for_sliding_window` for one axis: `n = ceil((size - patch) / (patch · step)) + 1`
/// tiles, origins `round(i · (size - patch) / (n - 1))` (numpy rounds half to even), or `[0]`.
/// `size` must be at least `patch` (the image is padded first).
pub fn compute_steps(size: usize, patch: usize, step_size: f64) -> Vec<usize> {
    assert!(size >= patch, "image size {size} must be at least the patch size {patch} (pad first)");
    assert!(step_size > 0.0 && step_size <= 1.0, "step_size must be in (0, 1]");
    let target = patch as f64 * step_size;
    let n = ((size - patch) as f64 / target).ceil() as usize + 1;
    if n <= 1 {
        return vec![0];
    }
    let actual = (size - patch) as f64 / (n - 1) as f64;
    (0..n).map(|i| (actual * i as f64).round_ties_even() as usize).collect()
}

/// acvl's `pad_nd_image` to at least `patch` per axis: `(below, above)` with `below = d // 2`,
/// `above = d // 2 + d % 2` for `d = max(patch - size, 0)`.
pub fn pad_amounts(size: usize, patch: usize) -> (usize, usize) {
    let d = patch.saturating_sub(size);
    (d / 2, d / 2 + d % 2)
}

/// All non-empty subsets of `axes` in `itertools.combinations` order: by size, then
/// lexicographically. `[0, 1]` gives `[[0], [1], [0, 1]]`.
pub fn mirror_combinations(axes: &[usize]) -> Vec<Vec<usize>> {
    let mut out = Vec::new();
    for k in 1..=axes.len() {
        let mut idx: Vec<usize> = (0..k).collect();
        loop {
            out.push(idx.iter().map(|&i| axes[i]).collect());
            // next combination
            let mut i = k;
            while i > 0 && idx[i - 1] == axes.len() - k + i - 1 {
                i -= 1;
            }
            if i == 0 {
                break;
            }
            idx[i - 1] += 1;
            for j in i..k {
                idx[j] = idx[j - 1] + 1;
            }
        }
    }
    out
}

/// How the sliding window runs.
#[derive(Debug, Clone)]
pub struct WindowParams {
    /// In-plane patch size (X, Y) from the plans.
    pub patch: [usize; 2],
    pub step_size: f64,
    /// Spatial mirroring axes (0 = X, 1 = Y) when TTA is on; empty for no mirroring.
    pub mirror_axes: Vec<usize>,
    pub device: Device,
    /// Voxel budget of one forward batch (tiles × mirrored copies × patch voxels).
    pub max_batch_voxels: usize,
}

impl WindowParams {
    pub fn new(patch: [usize; 2], step_size: f64, mirror_axes: Vec<usize>, device: Device) -> Self {
        // On the GPU, batch up to 16 mirrored 512² tiles; on the CPU batching gains little, so
        // one tile with its mirrored copies (or many tiny slices) per forward pass.
        let max_batch_voxels = if device.is_cuda() { 16 * 512 * 512 } else { 4 * 512 * 512 };
        WindowParams { patch, step_size, mirror_axes, device, max_batch_voxels }
    }
}

/// Runs the network on a batch of tiles (B, C, px, py) with test-time mirroring; returns the
/// averaged logits (B, K, px, py) in f32. The mirrored copies share one forward pass.
pub fn predict_with_mirroring(net: &PlainConvUNet, x: &Tensor, mirror_axes: &[usize], device: Device) -> Tensor {
    let forward = |inp: &Tensor| -> Tensor {
        if device.is_cuda() {
            crate::train::amp::autocast(true, || net.forward(inp)).to_kind(Kind::Float)
        } else {
            net.forward(inp)
        }
    };
    let combos = mirror_combinations(mirror_axes);
    if combos.is_empty() {
        return forward(x);
    }
    let b = x.size()[0];
    let dims: Vec<Vec<i64>> = combos.iter().map(|c| c.iter().map(|&a| a as i64 + 2).collect()).collect();
    let mut inputs = vec![x.shallow_clone()];
    inputs.extend(dims.iter().map(|d| x.flip(d.as_slice())));
    let out = forward(&Tensor::cat(&inputs, 0)); // ((1 + n_combos) · B, K, px, py)
                                                 // Same summation order as the reference: f(x), then each flipped-back mirrored prediction.
    let mut pred = out.narrow(0, 0, b);
    // Not `+=`: for tch that is an in-place add into `out`, which `pred` is a view of.
    #[allow(clippy::assign_op_pattern)]
    for (i, d) in dims.iter().enumerate() {
        pred = pred + out.narrow(0, (i as i64 + 1) * b, b).flip(d.as_slice());
    }
    pred / (combos.len() as f64 + 1.0)
}

/// Predicts the logits of a preprocessed case `data` (C, Z, X, Y) with every network in `nets`
/// (the folds), averaging the folds' logits. Returns (K, Z, X, Y) f32 on the CPU.
pub fn predict_case_logits(nets: &[&PlainConvUNet], data: &Tensor, p: &WindowParams) -> Tensor {
    let _guard = tch::no_grad_guard();
    let size = data.size();
    assert_eq!(size.len(), 4, "data must be (C, Z, X, Y)");
    let (nz, nx, ny) = (size[1] as usize, size[2] as usize, size[3] as usize);
    let [px, py] = p.patch;
    let (xl, xh) = pad_amounts(nx, px);
    let (yl, yh) = pad_amounts(ny, py);
    // constant_pad_nd pads the last axis first: [y_lo, y_hi, x_lo, x_hi].
    let padded = data.to_device(p.device).to_kind(Kind::Float).constant_pad_nd([yl as i64, yh as i64, xl as i64, xh as i64]);
    let (pnx, pny) = (nx + xl + xh, ny + yl + yh);
    let steps_x = compute_steps(pnx, px, p.step_size);
    let steps_y = compute_steps(pny, py, p.step_size);
    let gaussian = Tensor::from_slice(&compute_gaussian(p.patch)).reshape([px as i64, py as i64]).to_device(p.device);
    let mut tiles: Vec<(usize, usize, usize)> = Vec::new();
    for z in 0..nz {
        for &sx in &steps_x {
            for &sy in &steps_y {
                tiles.push((z, sx, sy));
            }
        }
    }
    let copies = mirror_combinations(&p.mirror_axes).len() + 1;
    let batch = (p.max_batch_voxels / (copies * px * py)).clamp(1, 64);

    let mut sum: Option<Tensor> = None;
    for net in nets {
        let k = net.num_classes;
        let acc = Tensor::zeros([k, nz as i64, pnx as i64, pny as i64], (Kind::Float, p.device));
        let norm = Tensor::zeros([nz as i64, pnx as i64, pny as i64], (Kind::Float, p.device));
        for chunk in tiles.chunks(batch) {
            let xs: Vec<Tensor> = chunk
                .iter()
                .map(|&(z, sx, sy)| padded.select(1, z as i64).narrow(1, sx as i64, px as i64).narrow(2, sy as i64, py as i64))
                .collect();
            let x = Tensor::stack(&xs, 0); // (B, C, px, py)
            let pred = predict_with_mirroring(net, &x, &p.mirror_axes, p.device); // (B, K, px, py)
            for (i, &(z, sx, sy)) in chunk.iter().enumerate() {
                let mut a = acc.select(1, z as i64).narrow(1, sx as i64, px as i64).narrow(2, sy as i64, py as i64);
                let _ = a.g_add_(&(pred.get(i as i64) * &gaussian));
                let mut n = norm.select(0, z as i64).narrow(0, sx as i64, px as i64).narrow(1, sy as i64, py as i64);
                let _ = n.g_add_(&gaussian);
            }
        }
        let logits = (acc / norm.unsqueeze(0)).narrow(2, xl as i64, nx as i64).narrow(3, yl as i64, ny as i64).to_device(Device::Cpu);
        sum = Some(match sum {
            None => logits,
            Some(s) => s + logits,
        });
    }
    let logits = sum.expect("at least one network");
    if nets.len() > 1 {
        logits / nets.len() as f64
    } else {
        logits
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_match_the_spec_examples() {
        assert_eq!(compute_steps(512, 512, 0.5), vec![0]);
        assert_eq!(compute_steps(1500, 1024, 0.5), vec![0, 476]);
        // nnU-Net's own comment: image 110, patch 64 -> 3 steps 0, 23, 46
        assert_eq!(compute_steps(110, 64, 0.5), vec![0, 23, 46]);
        // n = ceil(5/4)+1 = 3, actual 2.5 -> round-half-even: 0, 2 (2.5), 5
        assert_eq!(compute_steps(13, 8, 0.5), vec![0, 2, 5]);
        assert_eq!(compute_steps(8, 8, 1.0), vec![0]);
    }

    #[test]
    fn padding_is_centred_with_the_odd_pixel_high() {
        assert_eq!(pad_amounts(5, 8), (1, 2));
        assert_eq!(pad_amounts(4, 8), (2, 2));
        assert_eq!(pad_amounts(10, 8), (0, 0));
    }

    #[test]
    fn gaussian_matches_the_closed_form_and_scipy() {
        // ~/.cache/nnunet-peer-venv/bin/python -c "from nnunetv2.inference.sliding_window_prediction import
        //   compute_gaussian; import torch; g = compute_gaussian((8, 6), 1/8, 10, torch.float16, 'cpu');
        //   print(g[4].tolist(), g[0, 0].item())"
        // -> [0.0033550262451171875, 0.28564453125, 4.109375, 10.0, 4.109375, 0.28564453125] 1.1324882507324219e-06
        let reference_row = [0.0033550262451171875f32, 0.28564453125, 4.109375, 10.0, 4.109375, 0.28564453125];
        assert_eq!(&compute_gaussian([8, 6])[4 * 6..5 * 6], &reference_row);
        assert_eq!(compute_gaussian([8, 6])[0], 1.1324882507324219e-06);
        let g = compute_gaussian([8, 6]);
        assert_eq!(g.len(), 48);
        // centre (4, 3) is exactly 10
        assert_eq!(g[4 * 6 + 3], 10.0);
        // one step along y from the centre: 10 · exp(-1/(2·0.75²)) rounded to fp16
        assert_eq!(g[4 * 6 + 2], round_to_f16(10.0 * (-1.0f64 / (2.0 * 0.5625)).exp()));
        // corner (0, 0): d = (-4, -3): 10 · exp(-16/2) · exp(-9/(2·0.5625))
        let corner = 10.0 * (-8.0f64).exp() * (-9.0f64 / 1.125).exp();
        assert_eq!(g[0], round_to_f16(corner));
        assert!(g.iter().all(|&v| v > 0.0));
        // symmetric around the centre along x: rows 3 and 5
        assert_eq!(&g[3 * 6..4 * 6], &g[5 * 6..6 * 6]);
    }

    #[test]
    fn mirror_subsets_in_itertools_order() {
        assert_eq!(mirror_combinations(&[0, 1]), vec![vec![0], vec![1], vec![0, 1]]);
        assert_eq!(mirror_combinations(&[1]), vec![vec![1]]);
        assert!(mirror_combinations(&[]).is_empty());
        assert_eq!(mirror_combinations(&[0, 1, 2]).len(), 7);
    }
}
