use nnunet_common::augment::intensity::gamma;
use std::time::Instant;
fn main() {
    let n = 512 * 512;
    let x0: Vec<f32> = (0..n).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
    for (g, inv) in [(1.1f32, true), (0.9, false), (1.1, false), (0.9, true)] {
        let mut x = x0.clone();
        let t = Instant::now();
        for _ in 0..50 { gamma(&mut x, g, inv, true); }
        println!("g {g} inv {inv}: {:.3} ms", t.elapsed().as_secs_f64() * 1e3 / 50.0);
    }
}
