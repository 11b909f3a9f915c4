//! Per-transform cost of the CPU training augmentation at nnU-Net's 512² plan (602² crop), one thread.
//! `cargo bench -p nnunet-common --bench augment_ops` prints a table: milliseconds per call when the
//! transform fires (over all channels), its firing probability (`nnUNetTrainer.get_training_transforms`) and the expected cost per
//! sample. `AUG_CHANNELS=3` for an RGB image (default 1). The end-to-end number (and the comparison
//! with the reference pipeline) is `scripts/bench_train.sh`.
use nnunet_common::augment::{augment_train, intensity, resize, spatial, AugConfig, Image, Seg};
use rand::{Rng, RngCore, SeedableRng};
use std::hint::black_box;
use std::time::Instant;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn time<F: FnMut()>(mut f: F) -> f64 {
    for _ in 0..3 {
        f();
    }
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let t = Instant::now();
        let n = 20;
        for _ in 0..n {
            f();
        }
        best = best.min(t.elapsed().as_secs_f64() / n as f64);
    }
    best * 1e3
}

fn main() {
    let patch = [512usize, 512];
    let rotation = AugConfig::rotation_for_patch(patch);
    let crop = AugConfig::initial_patch_size(patch, rotation);
    let ds: Vec<Vec<f64>> = (0..7).map(|i| vec![1.0 / (1u32 << i) as f64; 2]).collect();
    let cfg = AugConfig { patch, rotation, mirror_axes: vec![0, 1], mask_channels: vec![], ds_scales: ds.clone() };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let channels: usize = std::env::var("AUG_CHANNELS").ok().and_then(|v| v.parse().ok()).unwrap_or(1);
    let n = crop[0] * crop[1];
    let img = Image { channels, h: crop[0], w: crop[1], data: (0..channels * n).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect() };
    let seg = Seg { h: crop[0], w: crop[1], data: (0..n).map(|i| if (i / crop[1]) % 50 < 20 { 1 } else { 0 }).collect() };
    let (small, small_seg) = spatial::center_crop(&img, &seg, patch);

    let mut rows: Vec<(&str, f64, f64)> = Vec::new();
    rows.push(("center crop", time(|| drop(black_box(spatial::center_crop(&img, &seg, patch)))), 0.8 * 0.8));
    rows.push(("rotate+scale", time(|| drop(black_box(spatial::rotate_scale(&img, &seg, patch, 0.7, 1.1)))), 1.0 - 0.8 * 0.8));
    let mut work = small.clone();
    let keys: Vec<[u32; 2]> = (0..work.channels).map(|_| [rng.next_u32(), rng.next_u32()]).collect();
    rows.push(("gaussian noise", time(|| intensity::gaussian_noise(black_box(&mut work), 0.05, &keys)), 0.1));
    let nc = work.channels;
    rows.push((
        "gaussian blur (each channel p 0.5)",
        time(|| (0..nc).for_each(|c| intensity::gaussian_blur_channel(black_box(&mut work), c, [0.8, 0.9]))),
        0.2 * 0.5,
    ));
    rows.push((
        "brightness",
        time(|| {
            let m = black_box(1.0001f32);
            black_box(&mut work).data.iter_mut().for_each(|x| *x *= m)
        }),
        0.15,
    ));
    rows.push(("contrast", time(|| (0..nc).for_each(|c| intensity::contrast(black_box(work.channel_mut(c)), 1.0001))), 0.15));
    rows.push((
        "low resolution (each channel p 0.5)",
        time(|| (0..nc).for_each(|c| intensity::simulate_low_resolution(black_box(&mut work), c, 0.7))),
        0.25 * 0.5,
    ));
    rows.push(("inverted gamma", time(|| (0..nc).for_each(|c| intensity::gamma(black_box(work.channel_mut(c)), 1.1, true, true))), 0.1));
    rows.push(("gamma", time(|| (0..nc).for_each(|c| intensity::gamma(black_box(work.channel_mut(c)), 0.9, false, true))), 0.3));
    let (mut wi, mut ws) = (small.clone(), small_seg.clone());
    rows.push(("mirror axis 0", time(|| spatial::flip(black_box(&mut wi), &mut ws, 0)), 0.5));
    rows.push(("mirror axis 1", time(|| spatial::flip(black_box(&mut wi), &mut ws, 1)), 0.5));
    rows.push((
        "deep-supervision targets (incl. a seg copy)",
        time(|| drop(black_box(resize::deep_supervision_targets(small_seg.clone(), &ds)))),
        1.0,
    ));
    let whole = time(|| drop(black_box(augment_train(&img, &seg, &cfg, &mut rng))));

    println!("| transform (512² from 602², {channels} channel(s)) | ms when applied | p | expected ms/sample |");
    println!("|---|---|---|---|");
    let mut sum = 0.0;
    for (name, ms, p) in &rows {
        println!("| {name} | {ms:.3} | {p:.3} | {:.3} |", ms * p);
        sum += ms * p;
    }
    println!("| sum of expected costs | | | {sum:.3} |");
    println!("| whole pipeline (measured, mean of 20) | | | {whole:.3} ({:.0} patches/s) |", 1e3 / whole);
}
