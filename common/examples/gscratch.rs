use nnunet_common::augment::{fastmath::stats, intensity::gamma};
use std::hint::black_box;
use std::time::Instant;
fn t<F: FnMut()>(name: &str, mut f: F) {
    f();
    let s = Instant::now();
    for _ in 0..50 { f(); }
    println!("{name}: {:.3} ms", s.elapsed().as_secs_f64() * 1e3 / 50.0);
}
fn main() {
    let n = 512 * 512;
    let mut x: Vec<f32> = (0..n).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
    t("stats", || { black_box(stats(black_box(&x), 1.0)); });
    t("gamma no-retain", || gamma(black_box(&mut x), 0.9, false, false));
    t("gamma retain", || gamma(black_box(&mut x), 0.9, false, true));
    t("gamma inv retain", || gamma(black_box(&mut x), 0.9, true, true));
}
