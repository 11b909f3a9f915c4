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

/// Per-sample coin flips with probability `p`.
fn coin(r: &mut ChaCha8Rng, b: i64, p: f64) -> Vec<bool> {
    (0..b).map(|_| r.random::<f64>() < p).collect()
}

/// (B, 1, 1, 1) boolean device mask of the samples that drew `true`.
fn sample_mask(on: &[bool], dev: Device) -> Tensor {
    let v: Vec<f32> = on.iter().map(|&m| m as i32 as f32).collect();
    Tensor::from_slice(&v).view([on.len() as i64, 1, 1, 1]).to_device(dev).ne(0.0)
}

/// (B, C, 1, 1) per-channel factors from `bg_contrast(range)` for the samples that drew `true`, 1 elsewhere.
fn channel_factors(r: &mut ChaCha8Rng, on: &[bool], c: i64, range: (f64, f64), dev: Device) -> Tensor {
    let f: Vec<f32> =
        on.iter().flat_map(|&o| (0..c).map(|_| if o { bg_contrast(r, range) as f32 } else { 1.0 }).collect::<Vec<_>>()).collect();
    Tensor::from_slice(&f).view([on.len() as i64, c, 1, 1]).to_device(dev)
}

impl GpuAugmenter {
    pub fn new(cfg: &AugConfig, device: Device) -> Self {
        GpuAugmenter { cfg: cfg.clone(), device }
    }

    /// `x`: (B, C, S0, S1) float on the device; `seg`: (B, S0, S1) int64 with -1 = outside.
    /// Returns the augmented (B, C, P0, P1) image and the deep-supervision targets (int64, labels >= 0).
    /// The steps and their order are those of `nnUNetTrainer.get_training_transforms`; the random draws
    /// happen in this order, so a seed gives the same batch every time.
    pub fn augment(&self, x: &Tensor, seg: &Tensor, seed: u64, batch_index: u64) -> (Tensor, Vec<Tensor>) {
        let _guard = tch::no_grad_guard();
        let mut r = ChaCha8Rng::seed_from_u64(seed ^ 0x6A09_E667_F3BC_C908);
        r.set_stream(batch_index);
        let (img, sg) = self.spatial(&mut r, x, seg);
        let img = self.noise(&mut r, img);
        let img = self.blur(&mut r, img);
        let img = self.brightness_contrast(&mut r, img);
        let img = self.low_resolution(&mut r, img);
        let img = self.gamma(&mut r, img);
        let (img, sg) = self.mirror(&mut r, img, sg);
        let img = self.mask_outside(img, &sg);
        (img, self.targets(&sg.clamp_min(0)))
    }

    /// Step 1, rotation/scaling: theta per sample maps output normalized (x, y) to input normalized (x, y).
    /// The seg is resampled as one-hot of (seg + 1) over labels -1..K-1, bilinear, with the outside
    /// weight added to label -1; ties go to the lower label.
    fn spatial(&self, r: &mut ChaCha8Rng, x: &Tensor, seg: &Tensor) -> (Tensor, Tensor) {
        let dev = self.device;
        let sz = x.size();
        let (b, s0, s1) = (sz[0], sz[2] as f64, sz[3] as f64);
        let [p0, p1] = self.cfg.patch;
        let (p0f, p1f) = (p0 as f64, p1 as f64);
        let mut theta = Vec::with_capacity(b as usize * 6);
        for _ in 0..b {
            let rot = r.random::<f64>() < 0.2;
            let sc = r.random::<f64>() < 0.2;
            let a = if rot { uni(r, self.cfg.rotation.0, self.cfg.rotation.1) } else { 0.0 };
            let s = if sc { uni(r, 0.7, 1.4) } else { 1.0 };
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
        let img = x.to_kind(Kind::Float).grid_sampler(&grid, 0, 0, false);
        let k = seg.max().int64_value(&[]) + 2;
        let onehot = (seg + 1).one_hot(k).permute([0, 3, 1, 2]).to_kind(Kind::Float);
        let w = onehot.grid_sampler(&grid, 0, 0, false);
        let inside = Tensor::ones([b, 1, s0 as i64, s1 as i64], (Kind::Float, dev)).grid_sampler(&grid, 0, 0, false);
        let _ = w.narrow(1, 0, 1).g_add_(&(1.0 - inside));
        (img, w.argmax(1, false) - 1)
    }

    /// 2. Gaussian noise p 0.1: sigma ~ U(0, 0.1) per sample, its own field per channel.
    fn noise(&self, r: &mut ChaCha8Rng, img: Tensor) -> Tensor {
        let on = coin(r, img.size()[0], 0.1);
        let sig: Vec<f32> = on.iter().map(|&o| if o { uni(r, 0.0, 0.1) as f32 } else { 0.0 }).collect();
        if !on.iter().any(|&o| o) {
            return img;
        }
        let sig = Tensor::from_slice(&sig).view([on.len() as i64, 1, 1, 1]).to_device(self.device);
        &img + img.randn_like() * sig
    }

    /// Runs `f(r, plane)` on each (sample, channel) plane chosen with p `p_sample` per sample and 0.5
    /// per channel, writing the result back in place.
    fn per_plane(&self, r: &mut ChaCha8Rng, img: Tensor, p_sample: f64, f: impl Fn(&mut ChaCha8Rng, Tensor) -> Tensor) -> Tensor {
        let sz = img.size();
        let (c, h, w) = (sz[1], sz[2], sz[3]);
        let on = coin(r, sz[0], p_sample);
        for (bi, &o) in on.iter().enumerate() {
            if !o {
                continue;
            }
            for ci in 0..c {
                if r.random::<f64>() >= 0.5 {
                    continue;
                }
                let plane = img.get(bi as i64).get(ci).view([1, 1, h, w]);
                let out = f(r, plane);
                img.get(bi as i64).get(ci).copy_(&out.view([h, w]));
            }
        }
        img
    }

    /// 3. Gaussian blur p 0.2, per channel p 0.5, sigma per axis U(0.5, 1).
    fn blur(&self, r: &mut ChaCha8Rng, img: Tensor) -> Tensor {
        let dev = self.device;
        self.per_plane(r, img, 0.2, |r, mut plane| {
            let (sy, sx) = (uni(r, 0.5, 1.0), uni(r, 0.5, 1.0));
            for (axis, sigma) in [(0, sy), (1, sx)] {
                let kv = gaussian_kernel(sigma);
                let kl = kv.len() as i64;
                let half = kl / 2;
                let kern = Tensor::from_slice(&kv).to_device(dev);
                let (kern, pad) =
                    if axis == 0 { (kern.view([1, 1, kl, 1]), [0, 0, half, half]) } else { (kern.view([1, 1, 1, kl]), [half, half, 0, 0]) };
                plane = plane.reflection_pad2d(pad).conv2d(&kern, None::<&Tensor>, [1, 1], [0, 0], [1, 1], 1);
            }
            plane
        })
    }

    /// 4. Brightness p 0.15 and 5. contrast p 0.15 (per channel factors, range preserved).
    fn brightness_contrast(&self, r: &mut ChaCha8Rng, img: Tensor) -> Tensor {
        let (b, c) = (img.size()[0], img.size()[1]);
        let on = coin(r, b, 0.15);
        let m = channel_factors(r, &on, c, (0.75, 1.25), self.device);
        let img = if on.iter().any(|&o| o) { &img * m } else { img };
        let on = coin(r, b, 0.15);
        if !on.iter().any(|&o| o) {
            return img;
        }
        let f = channel_factors(r, &on, c, (0.75, 1.25), self.device);
        let mean = img.mean_dim(&[2i64, 3][..], true, Kind::Float);
        let mn = img.amin(&[2i64, 3][..], true);
        let mx = img.amax(&[2i64, 3][..], true);
        ((&img - &mean) * f + &mean).clamp_tensor(Some(&mn), Some(&mx))
    }

    /// 6. Simulated low resolution p 0.25, per channel p 0.5, s ~ U(0.5, 1): nearest-exact down, bilinear up.
    fn low_resolution(&self, r: &mut ChaCha8Rng, img: Tensor) -> Tensor {
        let [p0, p1] = self.cfg.patch;
        self.per_plane(r, img, 0.25, |r, plane| {
            let s = uni(r, 0.5, 1.0);
            let (dh, dw) = (round_half_even(p0 as f64 * s).max(1), round_half_even(p1 as f64 * s).max(1));
            nearest_exact(&plane, dh, dw).upsample_bilinear2d([p0 as i64, p1 as i64], false, None, None)
        })
    }

    /// 7./8. Gamma (inverted p 0.1, then plain p 0.3), per channel, mean and std retained.
    fn gamma(&self, r: &mut ChaCha8Rng, mut img: Tensor) -> Tensor {
        let (b, c) = (img.size()[0], img.size()[1]);
        for (p, invert) in [(0.1, true), (0.3, false)] {
            let on = coin(r, b, p);
            if !on.iter().any(|&o| o) {
                continue;
            }
            let g = channel_factors(r, &on, c, (0.7, 1.5), self.device);
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
            img = v.where_self(&sample_mask(&on, self.device).expand_as(&img), &img);
        }
        img
    }

    /// 9. Mirror each axis with p 0.5 (image and seg together).
    fn mirror(&self, r: &mut ChaCha8Rng, mut img: Tensor, mut sg: Tensor) -> (Tensor, Tensor) {
        let b = img.size()[0];
        for &axis in &self.cfg.mirror_axes {
            let on = coin(r, b, 0.5);
            if !on.iter().any(|&o| o) {
                continue;
            }
            let mi = sample_mask(&on, self.device);
            let dim = 2 + axis as i64;
            img = img.flip([dim]).where_self(&mi.expand_as(&img), &img);
            let ms = mi.view([b, 1, 1]).expand_as(&sg);
            sg = sg.flip([dim - 1]).where_self(&ms, &sg);
        }
        (img, sg)
    }

    /// 10. Channels normalized with the nonzero mask are zeroed outside it (seg -1).
    fn mask_outside(&self, img: Tensor, sg: &Tensor) -> Tensor {
        if !self.cfg.mask_channels.is_empty() {
            let outside = sg.lt(0).unsqueeze(1);
            for &ch in &self.cfg.mask_channels {
                let z = img.narrow(1, ch as i64, 1).masked_fill(&outside, 0.0);
                img.narrow(1, ch as i64, 1).copy_(&z);
            }
        }
        img
    }

    /// 12. Deep-supervision targets of the seg (after 11., `-1 -> 0`), nearest-exact per scale.
    fn targets(&self, sg: &Tensor) -> Vec<Tensor> {
        let [p0, p1] = self.cfg.patch;
        self.cfg
            .ds_scales
            .iter()
            .map(|s| {
                if s.iter().all(|&v| v == 1.0) {
                    sg.shallow_clone()
                } else {
                    nearest_exact(sg, round_half_even(p0 as f64 * s[0]), round_half_even(p1 as f64 * s[s.len() - 1]))
                }
            })
            .collect()
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
