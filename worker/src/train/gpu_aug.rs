//! Optional batched augmentation on the GPU (`TrainingConfig::gpu_augmentation`, CUDA only).
//!
//! Why: nnU-Net's CPU augmentation starves fast GPUs (MIC-DKFZ/nnUNet issue #3063). With this option
//! the loader threads only crop the enlarged initial patch (I/O + memcpy) and the training thread runs
//! the same transforms as [`nnunet_common::augment`] on the whole batch: rotation/scaling with
//! `affine_grid` + `grid_sampler` (image bilinear with zero padding; seg by bilinear resampling of the
//! one-hot labels with "outside" counted as label -1), Gaussian noise, blur, brightness, contrast,
//! low resolution, inverted gamma, gamma, mirroring, masking, `-1 -> 0` and the deep-supervision
//! targets (nearest-exact by index selection). Probabilities and ranges are those of `nnUNetTrainer.get_training_transforms`; the
//! per-sample parameters come from an RNG seeded by the batch index, so runs are reproducible, though
//! not bit-identical to the CPU path (different sampling order and floating-point summation).
use super::loader::{Batch, BatchLoader, CaseData, LoaderConfig};
use nnunet_common::augment::{bg_contrast, intensity::gaussian_kernel, resize::round_half_even, AugConfig};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::sync::Arc;
use tch::{Device, Kind, Tensor};

/// The loader for GPU augmentation: crops at the initial patch size, no CPU augmentation; the batch
/// carries one target (the raw seg with -1) at the crop size.
pub fn start_crop_loader(cases: Vec<Arc<CaseData>>, mut cfg: LoaderConfig, start: u64, threads: usize) -> BatchLoader {
    cfg.crop_only = true;
    BatchLoader::start(cases, cfg, start, threads, (2 * threads).max(6))
}

pub struct GpuAugmenter {
    cfg: AugConfig,
    device: Device,
}

fn uni<R: Rng>(r: &mut R, lo: f64, hi: f64) -> f64 {
    lo + (hi - lo) * r.random::<f64>()
}

/// Index vector of `nearest-exact` from `n_in` to `n_out`.
fn nearest_exact_idx(n_in: usize, n_out: usize, device: Device) -> Tensor {
    let scale = n_in as f64 / n_out as f64;
    let v: Vec<i64> = (0..n_out).map(|d| ((((d as f64 + 0.5) * scale).floor()) as i64).min(n_in as i64 - 1)).collect();
    Tensor::from_slice(&v).to_device(device)
}

fn nearest_exact(x: &Tensor, oh: usize, ow: usize) -> Tensor {
    let s = x.size();
    let (h, w) = (s[s.len() - 2] as usize, s[s.len() - 1] as usize);
    let d = x.device();
    x.index_select(-2, &nearest_exact_idx(h, oh, d)).index_select(-1, &nearest_exact_idx(w, ow, d))
}

impl GpuAugmenter {
    pub fn new(cfg: &AugConfig, device: Device) -> Self {
        GpuAugmenter { cfg: cfg.clone(), device }
    }

    /// `x`: (B, C, S0, S1) float on the device; `seg`: (B, S0, S1) int64 with -1 = outside.
    /// Returns the augmented (B, C, P0, P1) image and the deep-supervision targets (int64, labels >= 0).
    pub fn augment(&self, x: &Tensor, seg: &Tensor, seed: u64, batch_index: u64) -> (Tensor, Vec<Tensor>) {
        let _guard = tch::no_grad_guard();
        let mut r = ChaCha8Rng::seed_from_u64(seed ^ 0x6A09_E667_F3BC_C908);
        r.set_stream(batch_index);
        let dev = self.device;
        let sz = x.size();
        let (b, c, s0, s1) = (sz[0], sz[1], sz[2] as f64, sz[3] as f64);
        let [p0, p1] = self.cfg.patch;
        let (p0f, p1f) = (p0 as f64, p1 as f64);

        // 1. Spatial: theta per sample maps output normalized (x, y) to input normalized (x, y).
        let mut theta = Vec::with_capacity(b as usize * 6);
        for _ in 0..b {
            let rot = r.random::<f64>() < 0.2;
            let sc = r.random::<f64>() < 0.2;
            let a = if rot { uni(&mut r, self.cfg.rotation.0, self.cfg.rotation.1) } else { 0.0 };
            let s = if sc { uni(&mut r, 0.7, 1.4) } else { 1.0 };
            let (ca, sa) = (a.cos(), a.sin());
            let (a00, a01, a10, a11) = (s * ca, -s * sa, s * sa, s * ca);
            theta.extend_from_slice(&[
                (p1f / s1 * a11) as f32,
                (p0f / s1 * a01) as f32,
                0.0,
                (p1f / s0 * a10) as f32,
                (p0f / s0 * a00) as f32,
                0.0,
            ]);
        }
        let theta = Tensor::from_slice(&theta).view([b, 2, 3]).to_device(dev);
        let grid = Tensor::affine_grid_generator(&theta, [b, 1, p0 as i64, p1 as i64], false);
        let mut img = x.to_kind(Kind::Float).grid_sampler(&grid, 0, 0, false);
        // Seg: one-hot of (seg + 1) over labels -1..K-1, bilinear, outside weight added to label -1.
        let k = seg.max().int64_value(&[]) + 2;
        let onehot = (seg + 1).one_hot(k).permute([0, 3, 1, 2]).to_kind(Kind::Float);
        let w = onehot.grid_sampler(&grid, 0, 0, false);
        let inside = Tensor::ones([b, 1, s0 as i64, s1 as i64], (Kind::Float, dev)).grid_sampler(&grid, 0, 0, false);
        let _ = w.narrow(1, 0, 1).g_add_(&(1.0 - inside));
        let mut sg = w.argmax(1, false) - 1; // (B, P0, P1); ties go to the lower label

        let apply = |r: &mut ChaCha8Rng, p: f64| -> Vec<bool> { (0..b).map(|_| r.random::<f64>() < p).collect() };
        let mask_of =
            |v: &[bool]| Tensor::from_slice(&v.iter().map(|&m| m as i32 as f32).collect::<Vec<_>>()).view([b, 1, 1, 1]).to_device(dev);

        // 2. Noise p 0.1: sigma ~ U(0, 0.1) per sample, own field per channel.
        let on = apply(&mut r, 0.1);
        let sig: Vec<f32> = on.iter().map(|&o| if o { uni(&mut r, 0.0, 0.1) as f32 } else { 0.0 }).collect();
        if on.iter().any(|&o| o) {
            let sig = Tensor::from_slice(&sig).view([b, 1, 1, 1]).to_device(dev);
            img = &img + img.randn_like() * sig;
        }
        // 3. Blur p 0.2, per channel p 0.5, sigma per axis U(0.5, 1): per selected (sample, channel).
        let on = apply(&mut r, 0.2);
        for (bi, &o) in on.iter().enumerate() {
            if !o {
                continue;
            }
            for ci in 0..c {
                if r.random::<f64>() >= 0.5 {
                    continue;
                }
                let (sy, sx) = (uni(&mut r, 0.5, 1.0), uni(&mut r, 0.5, 1.0));
                let mut plane = img.get(bi as i64).get(ci).view([1, 1, p0 as i64, p1 as i64]);
                for (axis, sigma) in [(0, sy), (1, sx)] {
                    let kv = gaussian_kernel(sigma);
                    let kl = kv.len() as i64;
                    let half = kl / 2;
                    let kern = Tensor::from_slice(&kv).to_device(dev);
                    let (kern, pad) = if axis == 0 {
                        (kern.view([1, 1, kl, 1]), [0, 0, half, half])
                    } else {
                        (kern.view([1, 1, 1, kl]), [half, half, 0, 0])
                    };
                    plane = plane.reflection_pad2d(pad).conv2d(&kern, None::<&Tensor>, [1, 1], [0, 0], [1, 1], 1);
                }
                img.get(bi as i64).get(ci).copy_(&plane.view([p0 as i64, p1 as i64]));
            }
        }
        // 4. Brightness p 0.15 and 5. contrast p 0.15 (per channel factors, range preserved).
        let on = apply(&mut r, 0.15);
        let m: Vec<f32> = (0..b as usize)
            .flat_map(|i| (0..c).map(|_| if on[i] { bg_contrast(&mut r, (0.75, 1.25)) as f32 } else { 1.0 }).collect::<Vec<_>>())
            .collect();
        if on.iter().any(|&o| o) {
            img = &img * Tensor::from_slice(&m).view([b, c, 1, 1]).to_device(dev);
        }
        let on = apply(&mut r, 0.15);
        if on.iter().any(|&o| o) {
            let f: Vec<f32> = (0..b as usize)
                .flat_map(|i| (0..c).map(|_| if on[i] { bg_contrast(&mut r, (0.75, 1.25)) as f32 } else { 1.0 }).collect::<Vec<_>>())
                .collect();
            let f = Tensor::from_slice(&f).view([b, c, 1, 1]).to_device(dev);
            let mean = img.mean_dim(&[2i64, 3][..], true, Kind::Float);
            let mn = img.amin(&[2i64, 3][..], true);
            let mx = img.amax(&[2i64, 3][..], true);
            img = ((&img - &mean) * f + &mean).clamp_tensor(Some(&mn), Some(&mx));
        }
        // 6. Low resolution p 0.25, per channel p 0.5, s ~ U(0.5, 1).
        let on = apply(&mut r, 0.25);
        for (bi, &o) in on.iter().enumerate() {
            if !o {
                continue;
            }
            for ci in 0..c {
                if r.random::<f64>() >= 0.5 {
                    continue;
                }
                let s = uni(&mut r, 0.5, 1.0);
                let (dh, dw) = (round_half_even(p0f * s).max(1), round_half_even(p1f * s).max(1));
                let plane = img.get(bi as i64).get(ci).view([1, 1, p0 as i64, p1 as i64]);
                let small = nearest_exact(&plane, dh, dw);
                let up = small.upsample_bilinear2d([p0 as i64, p1 as i64], false, None, None);
                img.get(bi as i64).get(ci).copy_(&up.view([p0 as i64, p1 as i64]));
            }
        }
        // 7./8. Gamma (inverted p 0.1, plain p 0.3), per channel, stats retained.
        for (p, invert) in [(0.1, true), (0.3, false)] {
            let on = apply(&mut r, p);
            if !on.iter().any(|&o| o) {
                continue;
            }
            let g: Vec<f32> = (0..b as usize)
                .flat_map(|i| (0..c).map(|_| if on[i] { bg_contrast(&mut r, (0.7, 1.5)) as f32 } else { 1.0 }).collect::<Vec<_>>())
                .collect();
            let g = Tensor::from_slice(&g).view([b, c, 1, 1]).to_device(dev);
            let mut v = if invert { -&img } else { img.shallow_clone() };
            let dims = &[2i64, 3][..];
            let mean = v.mean_dim(dims, true, Kind::Float);
            let std = v.std_dim(dims, true, true);
            let mn = v.amin(dims, true);
            let rng_ = v.amax(dims, true) - &mn;
            v = ((&v - &mn) / rng_.clamp_min(1e-7)).pow(&g) * &rng_ + &mn;
            let m2 = v.mean_dim(dims, true, Kind::Float);
            let s2 = v.std_dim(dims, true, true);
            v = (&v - m2) * (std / s2.clamp_min(1e-7)) + mean;
            if invert {
                v = -v;
            }
            img = v.where_self(&mask_of(&on).ne(0.0).expand_as(&img), &img);
        }
        // 9. Mirror each axis with p 0.5 (image and seg together).
        for &axis in &self.cfg.mirror_axes {
            let on = apply(&mut r, 0.5);
            if !on.iter().any(|&o| o) {
                continue;
            }
            let mi = mask_of(&on).ne(0.0);
            let dim = 2 + axis as i64;
            img = img.flip([dim]).where_self(&mi.expand_as(&img), &img);
            let ms = mi.view([b, 1, 1]).expand_as(&sg);
            sg = sg.flip([dim - 1]).where_self(&ms, &sg);
        }
        // 10. Mask channels normalized with the mask, 11. -1 -> 0.
        if !self.cfg.mask_channels.is_empty() {
            let outside = sg.lt(0).unsqueeze(1);
            for &ch in &self.cfg.mask_channels {
                let plane = img.narrow(1, ch as i64, 1);
                let z = plane.masked_fill(&outside, 0.0);
                img.narrow(1, ch as i64, 1).copy_(&z);
            }
        }
        let sg = sg.clamp_min(0);
        // 12. Deep-supervision targets.
        let targets = self
            .cfg
            .ds_scales
            .iter()
            .map(|s| {
                if s.iter().all(|&v| v == 1.0) {
                    sg.shallow_clone()
                } else {
                    nearest_exact(&sg, round_half_even(p0f * s[0]), round_half_even(p1f * s[s.len() - 1]))
                }
            })
            .collect();
        (img, targets)
    }
}

/// Host batch of the crop-only loader -> device tensors.
pub fn crop_batch_to_device(b: &Batch, device: Device) -> (Tensor, Tensor) {
    let crop = b.target_shapes[0];
    let x = Tensor::from_slice(&b.image).view([b.batch_size as i64, b.channels as i64, crop[0] as i64, crop[1] as i64]).to_device(device);
    let s = Tensor::from_slice(&b.targets[0])
        .view([b.batch_size as i64, crop[0] as i64, crop[1] as i64])
        .to_device(device)
        .to_kind(Kind::Int64);
    (x, s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(patch: [usize; 2]) -> AugConfig {
        AugConfig {
            patch,
            rotation: AugConfig::rotation_for_patch(patch),
            mirror_axes: vec![0, 1],
            mask_channels: vec![0],
            ds_scales: vec![vec![1.0, 1.0], vec![0.5, 0.5]],
        }
    }

    #[test]
    fn batched_augmentation_shapes_labels_and_identity_geometry() {
        // Runs the same tensor code as on CUDA, on the CPU.
        let g = GpuAugmenter::new(&cfg([16, 16]), Device::Cpu);
        let (b, s) = (8i64, 20i64);
        let x = Tensor::arange(b * 2 * s * s, (Kind::Float, Device::Cpu)).view([b, 2, s, s]) / 100.0;
        let seg = (Tensor::arange(s * s, (Kind::Int64, Device::Cpu)).view([1, s, s]).remainder(3) - 1).repeat([b, 1, 1]);
        for k in 0..5u64 {
            let (img, t) = g.augment(&x, &seg, 3, k);
            assert_eq!(img.size(), vec![b, 2, 16, 16]);
            assert_eq!(t[0].size(), vec![b, 16, 16]);
            assert_eq!(t[1].size(), vec![b, 8, 8]);
            assert!(i64::try_from(t[0].min()).unwrap() >= 0 && i64::try_from(t[0].max()).unwrap() <= 1, "labels 0..=1 after -1 -> 0");
            assert!(bool::try_from(img.isfinite().all()).unwrap());
        }
        // Identity theta = centre crop (offset 2): check the geometry mapping on a sample without augmentation.
        let theta = Tensor::from_slice(&[16.0f32 / 20.0, 0.0, 0.0, 0.0, 16.0 / 20.0, 0.0]).view([1, 2, 3]);
        let grid = Tensor::affine_grid_generator(&theta, [1, 1, 16, 16], false);
        let crop = x.narrow(0, 0, 1).grid_sampler(&grid, 0, 0, false);
        let want = x.narrow(0, 0, 1).narrow(2, 2, 16).narrow(3, 2, 16);
        assert!(f64::try_from((crop - want).abs().max()).unwrap() < 1e-4);
    }
}
