//! The nnU-Net v2 (≥ 2.5, batchgeneratorsv2) training augmentation pipeline for 2D patches, on CPU
//! `f32` arrays in pure Rust (SPEC §8.1; `nnUNetTrainer.get_training_transforms`).
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
    /// Rotation range in radians (SPEC §7.3: ±π, or ±15° when the patch aspect ratio is > 1.5).
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

    /// The enlarged patch the loader crops for training (SPEC §7.3, `compute_initial_patch_size.py`
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
    if hi <= lo { lo } else { lo + (hi - lo) * rng.random::<f64>() }
}

/// batchgeneratorsv2 `BGContrast(range)`: with probability 0.5 (and lo < 1) `U(lo, 1)`, else `U(max(lo, 1), hi)`.
pub fn bg_contrast<R: Rng + ?Sized>(rng: &mut R, range: (f64, f64)) -> f64 {
    if rng.random::<f64>() < 0.5 && range.0 < 1.0 {
        uniform(rng, range.0, 1.0)
    } else {
        uniform(rng, range.0.max(1.0), range.1)
    }
}

/// The full training pipeline (SPEC §8.1) applied to one sample of the initial (enlarged) patch size.
pub fn augment_train<R: Rng + ?Sized>(image: &Image, seg: &Seg, cfg: &AugConfig, rng: &mut R) -> Augmented {
    // 1. Spatial: rotation p 0.2, scaling p 0.2 (one factor for both axes), output = final patch.
    let do_rot = rng.random::<f64>() < 0.2;
    let do_scale = rng.random::<f64>() < 0.2;
    let angle = if do_rot { uniform(rng, cfg.rotation.0, cfg.rotation.1) } else { 0.0 };
    let scale = if do_scale { uniform(rng, 0.7, 1.4) } else { 1.0 };
    let (mut img, mut sg) = if do_rot || do_scale {
        spatial::rotate_scale(image, seg, cfg.patch, angle, scale)
    } else {
        spatial::center_crop(image, seg, cfg.patch)
    };
    // 2. Gaussian noise p 0.1: one sigma ~ U(0, 0.1) shared by the channels, an own field per channel.
    if rng.random::<f64>() < 0.1 {
        let sigma = uniform(rng, 0.0, 0.1) as f32;
        intensity::gaussian_noise(&mut img, sigma, rng);
    }
    // 3. Gaussian blur p 0.2: per channel p 0.5, sigma ~ U(0.5, 1) per channel and axis.
    if rng.random::<f64>() < 0.2 {
        for c in 0..img.channels {
            if rng.random::<f64>() < 0.5 {
                let s0 = uniform(rng, 0.5, 1.0);
                let s1 = uniform(rng, 0.5, 1.0);
                intensity::gaussian_blur_channel(&mut img, c, [s0, s1]);
            }
        }
    }
    // 4. Multiplicative brightness p 0.15: every channel, BGContrast(0.75, 1.25).
    if rng.random::<f64>() < 0.15 {
        for c in 0..img.channels {
            let m = bg_contrast(rng, (0.75, 1.25)) as f32;
            intensity::brightness(img.channel_mut(c), m);
        }
    }
    // 5. Contrast p 0.15: every channel, BGContrast(0.75, 1.25), range preserved.
    if rng.random::<f64>() < 0.15 {
        for c in 0..img.channels {
            let f = bg_contrast(rng, (0.75, 1.25)) as f32;
            intensity::contrast(img.channel_mut(c), f);
        }
    }
    // 6. Low resolution p 0.25: per channel p 0.5, s ~ U(0.5, 1) for both axes.
    if rng.random::<f64>() < 0.25 {
        for c in 0..img.channels {
            if rng.random::<f64>() < 0.5 {
                let s = uniform(rng, 0.5, 1.0);
                intensity::simulate_low_resolution(&mut img, c, s);
            }
        }
    }
    // 7. Inverted gamma p 0.1, 8. gamma p 0.3: every channel, BGContrast(0.7, 1.5), stats retained.
    for (p, invert) in [(0.1, true), (0.3, false)] {
        if rng.random::<f64>() < p {
            for c in 0..img.channels {
                let g = bg_contrast(rng, (0.7, 1.5)) as f32;
                intensity::gamma(img.channel_mut(c), g, invert, true);
            }
        }
    }
    // 9. Mirror: each allowed axis with p 0.5, image and seg together.
    for &axis in &cfg.mirror_axes {
        if rng.random::<f64>() < 0.5 {
            spatial::flip(&mut img, &mut sg, axis);
        }
    }
    finish(img, sg, cfg)
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
