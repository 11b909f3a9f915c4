//! The nnU-Net v2 (≥ 2.5, batchgeneratorsv2) training augmentation pipeline for 2D patches, on CPU
//! `f32` arrays in pure Rust (`nnunetv2/training/nnUNetTrainer/nnUNetTrainer.py::
//! nnUNetTrainer.get_training_transforms`).
//!
//! Order and probabilities (per sample): spatial rotation/scaling (p 0.2 / 0.2) to the final patch,
//! Gaussian noise (0.1), Gaussian blur (0.2), multiplicative brightness (0.15), contrast (0.15),
//! low-resolution simulation (0.25), inverted gamma (0.1), gamma (0.3), mirroring (0.5 per axis),
//! masking (only when a channel uses the mask for normalization), seg `-1 -> 0`, deep-supervision
//! targets (nearest-exact). Validation: seg `-1 -> 0` and the deep-supervision targets only.
//!
//! Arrays: an image is `C x H x W` row-major (`Vec<f32>`), a segmentation `H x W` (`Vec<i16>`, -1 =
//! outside the nonzero mask / padding). All randomness comes from the caller's RNG so a batch can be
//! reproduced from its seed (the loader seeds one RNG per sample).
//!
//! - [`spatial`]: rotation/scaling with bilinear image and per-label seg resampling, or the plain crop.
//! - [`intensity`]: noise, blur, brightness, contrast, low resolution, gamma.
//! - [`resize`]: torch-compatible `nearest-exact` and `bilinear` (align_corners=False) resizing.

pub mod fastmath;
pub mod intensity;
pub mod resize;
pub mod spatial;

use rand::Rng;

/// A 2D multi-channel image, `data.len() == channels * h * w`.
#[derive(Debug, Clone, PartialEq)]
pub struct Image {
    pub channels: usize,
    pub h: usize,
    pub w: usize,
    pub data: Vec<f32>,
}

impl Image {
    pub fn zeros(channels: usize, h: usize, w: usize) -> Self {
        Image { channels, h, w, data: vec![0.0; channels * h * w] }
    }
    pub fn channel(&self, c: usize) -> &[f32] {
        &self.data[c * self.h * self.w..(c + 1) * self.h * self.w]
    }
    pub fn channel_mut(&mut self, c: usize) -> &mut [f32] {
        let n = self.h * self.w;
        &mut self.data[c * n..(c + 1) * n]
    }
}

/// A 2D label map, `data.len() == h * w`.
#[derive(Debug, Clone, PartialEq)]
pub struct Seg {
    pub h: usize,
    pub w: usize,
    pub data: Vec<i16>,
}

/// What the pipeline needs to know about the configuration.
#[derive(Debug, Clone)]
pub struct AugConfig {
    /// Final patch size (H, W).
    pub patch: [usize; 2],
    /// Rotation range in radians (`nnUNetTrainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size`:
    /// ±π, or ±15° when the patch aspect ratio is > 1.5).
    pub rotation: (f64, f64),
    /// Mirrored axes (0 = H, 1 = W); nnU-Net 2D: both.
    pub mirror_axes: Vec<usize>,
    /// Channels whose normalization used the mask (`use_mask_for_norm`): zeroed where seg < 0.
    pub mask_channels: Vec<usize>,
    /// Deep-supervision scales per output, highest resolution first (from `ArchKwargs::deep_supervision_scales`).
    pub ds_scales: Vec<Vec<f64>>,
}

impl AugConfig {
    /// nnU-Net's 2D rotation range for a patch (`configure_rotation_dummyDA_mirroring_and_inital_patch_size`).
    pub fn rotation_for_patch(patch: [usize; 2]) -> (f64, f64) {
        let (mx, mn) = (patch[0].max(patch[1]) as f64, patch[0].min(patch[1]) as f64);
        let a = if mx / mn > 1.5 { 15.0f64.to_radians() } else { std::f64::consts::PI };
        (-a, a)
    }

    /// The enlarged patch the loader crops for training (`nnunetv2/training/data_augmentation/compute_initial_patch_size.py`
    /// with scale range (0.85, 1.25)): rotate the patch corner vector by `min(max|rot|, 90°)`, take the
    /// per-axis max of |rotated| and the original, divide by 0.85, truncate. 512² -> 602².
    pub fn initial_patch_size(patch: [usize; 2], rotation: (f64, f64)) -> [usize; 2] {
        let angle = rotation.0.abs().max(rotation.1.abs()).min(std::f64::consts::FRAC_PI_2);
        let (p0, p1) = (patch[0] as f64, patch[1] as f64);
        let (c, s) = (angle.cos(), angle.sin());
        // bg1 rotate_coords_2d(coords, angle) = coords @ [[c, -s], [s, c]] (row vector times R).
        let r0 = (p0 * c + p1 * s).abs();
        let r1 = (-p0 * s + p1 * c).abs();
        let f0 = r0.max(p0) / 0.85;
        let f1 = r1.max(p1) / 0.85;
        [f0 as usize, f1 as usize]
    }
}

/// An augmented sample: the image at the final patch size and one target per deep-supervision scale.
#[derive(Debug, Clone)]
pub struct Augmented {
    pub image: Image,
    /// Targets (highest resolution first), labels >= 0.
    pub targets: Vec<Seg>,
}

/// Samples a uniform value in [lo, hi).
pub(crate) fn uniform<R: Rng + ?Sized>(rng: &mut R, lo: f64, hi: f64) -> f64 {
    if hi <= lo {
        lo
    } else {
        lo + (hi - lo) * rng.random::<f64>()
    }
}

/// batchgeneratorsv2 `BGContrast(range)`: with probability 0.5 (and lo < 1) `U(lo, 1)`, else `U(max(lo, 1), hi)`.
pub fn bg_contrast<R: Rng + ?Sized>(rng: &mut R, range: (f64, f64)) -> f64 {
    if rng.random::<f64>() < 0.5 && range.0 < 1.0 {
        uniform(rng, range.0, 1.0)
    } else {
        uniform(rng, range.0.max(1.0), range.1)
    }
}

/// Every random decision of one training sample (`get_training_transforms`), drawn by [`plan_sample`] in the
/// pipeline's order; [`apply_plan`] is then deterministic. `None` = the transform did not fire;
/// per-channel entries are `None` where the channel's own coin said no.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplePlan {
    /// Rotation angle (radians), when rotation fired (p 0.2).
    pub rotation: Option<f64>,
    /// Isotropic scale factor, when scaling fired (p 0.2).
    pub scaling: Option<f64>,
    /// Noise sigma (shared) and each channel's noise-field key (p 0.1).
    pub noise: Option<(f32, Vec<[u32; 2]>)>,
    /// Per-channel blur sigmas (p 0.2, then 0.5 per channel).
    pub blur: Option<Vec<Option<[f64; 2]>>>,
    /// Per-channel brightness factors (p 0.15).
    pub brightness: Option<Vec<f32>>,
    /// Per-channel contrast factors (p 0.15).
    pub contrast: Option<Vec<f32>>,
    /// Per-channel low-resolution scales (p 0.25, then 0.5 per channel).
    pub low_res: Option<Vec<Option<f64>>>,
    /// Per-channel gammas of the inverted gamma transform (p 0.1).
    pub inverted_gamma: Option<Vec<f32>>,
    /// Per-channel gammas (p 0.3).
    pub gamma: Option<Vec<f32>>,
    /// The axes mirrored (each allowed axis p 0.5).
    pub mirror: Vec<usize>,
}

/// Draws the random decisions of one training sample with `channels` channels.
pub fn plan_sample<R: Rng + ?Sized>(rng: &mut R, cfg: &AugConfig, channels: usize) -> SamplePlan {
    let fires = |rng: &mut R, p: f64| rng.random::<f64>() < p;
    // 1. Spatial: rotation p 0.2, scaling p 0.2 (one factor for both axes).
    let (do_rot, do_scale) = (fires(rng, 0.2), fires(rng, 0.2));
    let rotation = do_rot.then(|| uniform(rng, cfg.rotation.0, cfg.rotation.1));
    let scaling = do_scale.then(|| uniform(rng, 0.7, 1.4));
    // 2. Gaussian noise p 0.1: one sigma ~ U(0, 0.1) shared by the channels, an own field per channel.
    let noise = fires(rng, 0.1).then(|| {
        let sigma = uniform(rng, 0.0, 0.1) as f32;
        (sigma, (0..channels).map(|_| [rng.next_u32(), rng.next_u32()]).collect())
    });
    // 3. Gaussian blur p 0.2: per channel p 0.5, sigma ~ U(0.5, 1) per channel and axis.
    let blur =
        fires(rng, 0.2).then(|| (0..channels).map(|_| fires(rng, 0.5).then(|| [uniform(rng, 0.5, 1.0), uniform(rng, 0.5, 1.0)])).collect());
    // 4. Multiplicative brightness p 0.15, 5. contrast p 0.15: every channel, BGContrast(0.75, 1.25).
    let brightness = fires(rng, 0.15).then(|| (0..channels).map(|_| bg_contrast(rng, (0.75, 1.25)) as f32).collect());
    let contrast = fires(rng, 0.15).then(|| (0..channels).map(|_| bg_contrast(rng, (0.75, 1.25)) as f32).collect());
    // 6. Low resolution p 0.25: per channel p 0.5, s ~ U(0.5, 1) for both axes.
    let low_res = fires(rng, 0.25).then(|| (0..channels).map(|_| fires(rng, 0.5).then(|| uniform(rng, 0.5, 1.0))).collect());
    // 7. Inverted gamma p 0.1, 8. gamma p 0.3: every channel, BGContrast(0.7, 1.5).
    let inverted_gamma = fires(rng, 0.1).then(|| (0..channels).map(|_| bg_contrast(rng, (0.7, 1.5)) as f32).collect());
    let gamma = fires(rng, 0.3).then(|| (0..channels).map(|_| bg_contrast(rng, (0.7, 1.5)) as f32).collect());
    // 9. Mirror: each allowed axis with p 0.5.
    let mirror = cfg.mirror_axes.iter().copied().filter(|_| fires(rng, 0.5)).collect();
    SamplePlan { rotation, scaling, noise, blur, brightness, contrast, low_res, inverted_gamma, gamma, mirror }
}

/// Applies a plan to one sample of the initial (enlarged) patch size: the transforms in the
/// pipeline's order, then masking, seg `-1 -> 0` and the deep-supervision targets.
pub fn apply_plan(image: &Image, seg: &Seg, cfg: &AugConfig, plan: &SamplePlan) -> Augmented {
    let (mut img, mut sg) = if plan.rotation.is_some() || plan.scaling.is_some() {
        spatial::rotate_scale(image, seg, cfg.patch, plan.rotation.unwrap_or(0.0), plan.scaling.unwrap_or(1.0))
    } else {
        spatial::center_crop(image, seg, cfg.patch)
    };
    if let Some((sigma, keys)) = &plan.noise {
        intensity::gaussian_noise(&mut img, *sigma, keys);
    }
    for (c, s) in plan.blur.iter().flatten().enumerate() {
        if let Some(s) = s {
            intensity::gaussian_blur_channel(&mut img, c, *s);
        }
    }
    for (c, &m) in plan.brightness.iter().flatten().enumerate() {
        intensity::brightness(img.channel_mut(c), m);
    }
    for (c, &f) in plan.contrast.iter().flatten().enumerate() {
        intensity::contrast(img.channel_mut(c), f);
    }
    for (c, s) in plan.low_res.iter().flatten().enumerate() {
        if let Some(s) = s {
            intensity::simulate_low_resolution(&mut img, c, *s);
        }
    }
    for (gammas, invert) in [(&plan.inverted_gamma, true), (&plan.gamma, false)] {
        for (c, &g) in gammas.iter().flatten().enumerate() {
            intensity::gamma(img.channel_mut(c), g, invert, true);
        }
    }
    for &axis in &plan.mirror {
        spatial::flip(&mut img, &mut sg, axis);
    }
    finish(img, sg, cfg)
}

/// The full training pipeline (`get_training_transforms`) applied to one sample of the initial (enlarged) patch size:
/// [`plan_sample`] then [`apply_plan`].
pub fn augment_train<R: Rng + ?Sized>(image: &Image, seg: &Seg, cfg: &AugConfig, rng: &mut R) -> Augmented {
    let plan = plan_sample(rng, cfg, image.channels);
    apply_plan(image, seg, cfg, &plan)
}

/// The validation pipeline: the (final-size) crop as is, seg `-1 -> 0`, deep-supervision targets.
pub fn augment_val(image: &Image, seg: &Seg, cfg: &AugConfig) -> Augmented {
    let (img, sg) = spatial::center_crop(image, seg, cfg.patch);
    let cfg_nomask = AugConfig { mask_channels: Vec::new(), ..cfg.clone() };
    finish(img, sg, &cfg_nomask)
}

/// Steps 10-12: mask, remove label -1, deep-supervision targets.
fn finish(mut img: Image, mut sg: Seg, cfg: &AugConfig) -> Augmented {
    for &c in &cfg.mask_channels {
        if c < img.channels {
            let ch = img.channel_mut(c);
            for (x, &s) in ch.iter_mut().zip(&sg.data) {
                if s < 0 {
                    *x = 0.0;
                }
            }
        }
    }
    sg.data.iter_mut().for_each(|s| {
        if *s < 0 {
            *s = 0
        }
    });
    let targets = resize::deep_supervision_targets(sg, &cfg.ds_scales);
    Augmented { image: img, targets }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn initial_patch_sizes_match_spec() {
        for (p, want) in [([512, 512], [602, 602]), ([256, 256], [301, 301]), ([1024, 1536], [1807, 1807]), ([320, 512], [519, 602])] {
            let rot = AugConfig::rotation_for_patch(p);
            assert_eq!(AugConfig::initial_patch_size(p, rot), want, "patch {p:?}");
        }
    }

    #[test]
    fn bg_contrast_ranges() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let v: Vec<f64> = (0..2000).map(|_| bg_contrast(&mut rng, (0.75, 1.25))).collect();
        assert!(v.iter().all(|&x| (0.75..=1.25).contains(&x)));
        let below = v.iter().filter(|&&x| x < 1.0).count();
        assert!((800..1200).contains(&below), "about half below 1: {below}");
    }

    fn cfg(patch: [usize; 2]) -> AugConfig {
        AugConfig {
            patch,
            rotation: AugConfig::rotation_for_patch(patch),
            mirror_axes: vec![0, 1],
            mask_channels: vec![],
            ds_scales: vec![vec![1.0, 1.0], vec![0.5, 0.5], vec![0.25, 0.25]],
        }
    }

    #[test]
    fn pipeline_shapes_and_valid_labels() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let (h, w) = (40, 36);
        let mut img = Image::zeros(2, h, w);
        for (i, x) in img.data.iter_mut().enumerate() {
            *x = ((i * 7919) % 97) as f32 / 97.0;
        }
        let seg = Seg { h, w, data: (0..h * w).map(|i| [-1i16, 0, 1, 2][(i / 5) % 4]).collect() };
        for _ in 0..50 {
            let a = augment_train(&img, &seg, &cfg([32, 32]), &mut rng);
            assert_eq!((a.image.channels, a.image.h, a.image.w), (2, 32, 32));
            let sizes: Vec<(usize, usize)> = a.targets.iter().map(|t| (t.h, t.w)).collect();
            assert_eq!(sizes, vec![(32, 32), (16, 16), (8, 8)]);
            for t in &a.targets {
                assert!(t.data.iter().all(|&l| (0..=2).contains(&l)), "labels must be 0..=2 after -1 -> 0");
            }
            assert!(a.image.data.iter().all(|x| x.is_finite()));
        }
        let v = augment_val(&img, &seg, &cfg([32, 32]));
        assert_eq!(v.targets[0].data.len(), 32 * 32);
    }

    #[test]
    fn plans_fire_with_the_spec_probabilities_and_ranges() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let c = cfg([32, 32]);
        let n = 40_000usize;
        let plans: Vec<SamplePlan> = (0..n).map(|_| plan_sample(&mut rng, &c, 2)).collect();
        let frac = |f: &dyn Fn(&SamplePlan) -> bool| plans.iter().filter(|p| f(p)).count() as f64 / n as f64;
        let near = |got: f64, want: f64, what: &str| assert!((got - want).abs() < 0.01, "{what}: {got:.4} vs {want}");
        near(frac(&|p| p.rotation.is_some()), 0.2, "rotation");
        near(frac(&|p| p.scaling.is_some()), 0.2, "scaling");
        near(frac(&|p| p.rotation.is_some() && p.scaling.is_some()), 0.04, "rotation and scaling independent");
        near(frac(&|p| p.noise.is_some()), 0.1, "noise");
        near(frac(&|p| p.blur.is_some()), 0.2, "blur");
        near(frac(&|p| p.brightness.is_some()), 0.15, "brightness");
        near(frac(&|p| p.contrast.is_some()), 0.15, "contrast");
        near(frac(&|p| p.low_res.is_some()), 0.25, "low resolution");
        near(frac(&|p| p.inverted_gamma.is_some()), 0.1, "inverted gamma");
        near(frac(&|p| p.gamma.is_some()), 0.3, "gamma");
        near(frac(&|p| p.mirror.contains(&0)), 0.5, "mirror axis 0");
        near(frac(&|p| p.mirror.contains(&1)), 0.5, "mirror axis 1");
        // per-channel coins of blur and low resolution, given the transform fired
        let per_channel = |sel: &dyn Fn(&SamplePlan) -> Option<Vec<bool>>| {
            let v: Vec<bool> = plans.iter().filter_map(sel).flatten().collect();
            v.iter().filter(|&&b| b).count() as f64 / v.len() as f64
        };
        near(per_channel(&|p| p.blur.as_ref().map(|b| b.iter().map(Option::is_some).collect())), 0.5, "blur per channel");
        near(per_channel(&|p| p.low_res.as_ref().map(|b| b.iter().map(Option::is_some).collect())), 0.5, "low resolution per channel");
        // parameter ranges
        for p in &plans {
            assert!(p.rotation.is_none_or(|a| (c.rotation.0..=c.rotation.1).contains(&a)));
            assert!(p.scaling.is_none_or(|s| (0.7..1.4).contains(&s)));
            assert!(p.noise.as_ref().is_none_or(|(s, k)| (0.0..0.1).contains(s) && k.len() == 2));
            assert!(p.blur.iter().flatten().flatten().all(|s| s.iter().all(|v| (0.5..1.0).contains(v))));
            for v in [&p.brightness, &p.contrast].into_iter().flatten() {
                assert!(v.len() == 2 && v.iter().all(|m| (0.75..=1.25).contains(m)));
            }
            assert!(p.low_res.iter().flatten().flatten().all(|s| (0.5..1.0).contains(s)));
            for v in [&p.inverted_gamma, &p.gamma].into_iter().flatten() {
                assert!(v.len() == 2 && v.iter().all(|g| (0.7..=1.5).contains(g)));
            }
        }
    }

    #[test]
    fn an_empty_plan_is_the_center_crop_and_mirroring_follows_the_plan() {
        let (h, w) = (12, 10);
        let img = Image { channels: 1, h, w, data: (0..h * w).map(|i| i as f32).collect() };
        let seg = Seg { h, w, data: (0..h * w).map(|i| (i % 3) as i16).collect() };
        let c = AugConfig { ds_scales: vec![vec![1.0, 1.0]], ..cfg([8, 8]) };
        let none = SamplePlan {
            rotation: None,
            scaling: None,
            noise: None,
            blur: None,
            brightness: None,
            contrast: None,
            low_res: None,
            inverted_gamma: None,
            gamma: None,
            mirror: vec![],
        };
        let a = apply_plan(&img, &seg, &c, &none);
        let (crop, scrop) = spatial::center_crop(&img, &seg, [8, 8]);
        assert_eq!(a.image, crop);
        assert_eq!(a.targets[0], scrop);
        let b = apply_plan(&img, &seg, &c, &SamplePlan { mirror: vec![1], ..none });
        assert_eq!(&b.image.data[..8], &crop.data[..8].iter().rev().copied().collect::<Vec<_>>()[..]);
    }

    #[test]
    fn masking_zeroes_outside_the_mask() {
        let mut c = cfg([4, 4]);
        c.mask_channels = vec![0];
        let img = Image { channels: 1, h: 4, w: 4, data: vec![5.0; 16] };
        let seg = Seg { h: 4, w: 4, data: (0..16).map(|i| if i < 8 { -1 } else { 1 }).collect() };
        let out = finish(img, seg, &c);
        assert!(out.image.data[..8].iter().all(|&x| x == 0.0));
        assert!(out.image.data[8..].iter().all(|&x| x == 5.0));
        assert!(out.targets[0].data[..8].iter().all(|&l| l == 0));
    }
}
