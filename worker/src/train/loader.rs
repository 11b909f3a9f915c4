//! The batch loader over preprocessed cases (`nnunetv2/training/dataloading/data_loader.py::nnUNetDataLoader`).
//!
//! Sampling per batch: `B` cases uniformly with replacement; sample `j` is forced to contain foreground
//! iff `j >= round(B * (1 - oversample))` (Python's round). A training sample is cropped at the enlarged
//! initial patch size (602² for 512²) around a random or foreground-centred position using nnU-Net's
//! bbox rules (`lb = -need_to_pad // 2` with floor division, `ub = shape + need_to_pad // 2 +
//! need_to_pad % 2 - patch`; padding: data 0, seg -1), then augmented ([`nnunet_common::augment`]) down to
//! the final patch. Validation samples are cropped at the final patch size and only get `-1 -> 0` and
//! the deep-supervision targets. For 3D volumes a random slice is used (the slice of the chosen voxel
//! when foreground is forced).
//!
//! Threads: a pool of `threads` std threads produces whole batches (plain `Vec<f32>` / `Vec<i16>`) into a
//! bounded crossbeam channel; only the training thread creates tensors. Batch `k` of a stream is drawn
//! from an RNG seeded by `(seed, stream, k)`, and the consumer reorders batches by `k`, so the sequence of
//! batches is identical whatever the thread count and scheduling, and a resumed run draws exactly the
//! batches the uninterrupted run would have drawn.
use anyhow::{bail, Context};
use nnunet_common::augment::{self, AugConfig, Image, Seg};
use nnunet_common::case::{CaseFiles, CaseProperties};
use nnunet_common::npy::MappedArray;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// One preprocessed case, memory-mapped.
pub struct CaseData {
    pub id: String,
    data: MappedArray<f32>,
    seg: MappedArray<i8>,
    /// (C, Z, X, Y).
    pub shape: [usize; 4],
    /// Foreground classes (labels, or regions with region-based training) with at least one stored
    /// location: (key, voxels (c, z, x, y)).
    fg: Vec<(String, Vec<[i64; 4]>)>,
    /// With an ignore label: locations of annotated pixels (any label but the ignore label; the
    /// preprocessor's `(-1, 0, 1, ...)` key), where every patch that is not forced to foreground is
    /// centred (`nnUNetDataLoader.get_bbox` with `has_ignore`). `None` without an ignore label.
    annotated: Option<Vec<[i64; 4]>>,
}

impl CaseData {
    pub fn open(data_dir: &Path, id: &str) -> anyhow::Result<Self> {
        let files = CaseFiles::new(data_dir, id);
        let props: CaseProperties = files.load_props().with_context(|| format!("case {id}: reading properties"))?;
        let data = files.map_data().with_context(|| format!("case {id}: mapping data"))?;
        let seg = files.map_seg().with_context(|| format!("case {id}: mapping seg"))?;
        if data.shape.len() != 4 || seg.shape.len() != 4 || seg.shape[0] != 1 || data.shape[1..] != seg.shape[1..] {
            bail!(
                "case {id}: data shape {:?} and seg shape {:?} must be (C, Z, X, Y) and (1, Z, X, Y) with equal spatial sizes; re-run preprocessing",
                data.shape,
                seg.shape
            );
        }
        let shape = [data.shape[0], data.shape[1], data.shape[2], data.shape[3]];
        // The annotated pixels' key is `(-1, 0, 1, ...)`; the others are labels ("1") or regions ("(1, 2)").
        let (union, labels): (Vec<_>, Vec<_>) = props.class_locations.into_iter().partition(|(k, _)| k.starts_with("(-1,"));
        let annotated = union.into_iter().next().map(|(_, v)| v);
        let fg = labels.into_iter().filter(|(_, v)| !v.is_empty()).collect();
        Ok(CaseData { id: id.to_string(), data, seg, shape, fg, annotated })
    }

    /// Crops `[lo, lo + size)` in (X, Y) of slice `z` with padding (data 0, seg -1).
    fn crop(&self, z: usize, lo: [i64; 2], size: [usize; 2]) -> (Image, Seg) {
        let [c, nz, nx, ny] = self.shape;
        let data = self.data.as_slice();
        let seg = self.seg.as_slice();
        let mut img = Image::zeros(c, size[0], size[1]);
        let mut sg = Seg { h: size[0], w: size[1], data: vec![-1; size[0] * size[1]] };
        let y0 = (-lo[1]).clamp(0, size[1] as i64) as usize;
        let y1 = (ny as i64 - lo[1]).clamp(0, size[1] as i64) as usize;
        if y0 >= y1 {
            return (img, sg);
        }
        let sy0 = (lo[1] + y0 as i64) as usize;
        let len = y1 - y0;
        for i in 0..size[0] {
            let sx = lo[0] + i as i64;
            if sx < 0 || sx >= nx as i64 {
                continue;
            }
            let row = (z * nx + sx as usize) * ny + sy0;
            for ch in 0..c {
                let src = &data[ch * nz * nx * ny + row..][..len];
                img.channel_mut(ch)[i * size[1] + y0..i * size[1] + y1].copy_from_slice(src);
            }
            for (d, &s) in sg.data[i * size[1] + y0..i * size[1] + y1].iter_mut().zip(&seg[row..row + len]) {
                *d = s as i16;
            }
        }
        (img, sg)
    }
}

/// Python's `round` (half to even) of a non-negative value.
fn py_round(x: f64) -> usize {
    nnunet_common::augment::resize::round_half_even(x)
}

/// Whether sample `j` of a batch of `b` is forced to contain foreground (`_oversample_last_XX_percent`).
pub fn force_foreground(j: usize, b: usize, oversample: f64) -> bool {
    j >= py_round(b as f64 * (1.0 - oversample))
}

/// nnU-Net's `get_bbox` lower bound for one sample (in X, Y), and the slice.
/// `patch` is the size cropped (initial patch for training), `need_to_pad` = initial - final.
fn sample_location<R: Rng>(case: &CaseData, patch: [usize; 2], need_to_pad: [usize; 2], force_fg: bool, rng: &mut R) -> (usize, [i64; 2]) {
    let dims = [case.shape[2], case.shape[3]];
    let mut lbs = [0i64; 2];
    let mut ubs = [0i64; 2];
    for d in 0..2 {
        let mut ntp = need_to_pad[d] as i64;
        if ntp + (dims[d] as i64) < patch[d] as i64 {
            ntp = patch[d] as i64 - dims[d] as i64;
        }
        // Python: `- need_to_pad[i] // 2` is `(-need_to_pad) // 2` (floor division of the negated value).
        lbs[d] = (-ntp).div_euclid(2);
        ubs[d] = dims[d] as i64 + ntp / 2 + ntp % 2 - patch[d] as i64;
    }
    // The class to centre on: a random foreground class when forced (the annotated pixels only when
    // the case has no foreground), else the annotated pixels when there is an ignore label.
    let annotated = case.annotated.as_ref().filter(|v| !v.is_empty());
    let voxels = if force_fg {
        if case.fg.is_empty() {
            annotated
        } else {
            Some(&case.fg[rng.random_range(0..case.fg.len())].1)
        }
    } else {
        annotated
    };
    if let Some(voxels) = voxels {
        let v = voxels[rng.random_range(0..voxels.len())];
        let lo = [lbs[0].max(v[2] - (patch[0] / 2) as i64), lbs[1].max(v[3] - (patch[1] / 2) as i64)];
        return ((v[1].max(0) as usize).min(case.shape[1] - 1), lo);
    }
    let z = if case.shape[1] > 1 { rng.random_range(0..case.shape[1]) } else { 0 };
    let lo = [rng.random_range(lbs[0]..=ubs[0].max(lbs[0])), rng.random_range(lbs[1]..=ubs[1].max(lbs[1]))];
    (z, lo)
}

/// A batch in plain host memory.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Index of the batch in its stream.
    pub index: u64,
    pub batch_size: usize,
    pub channels: usize,
    pub patch: [usize; 2],
    /// (B, C, H, W) row-major.
    pub image: Vec<f32>,
    /// One (B, h_i, w_i) label map per deep-supervision scale.
    pub targets: Vec<Vec<i16>>,
    pub target_shapes: Vec<[usize; 2]>,
}

/// What a loader produces.
#[derive(Debug, Clone)]
pub struct LoaderConfig {
    pub batch_size: usize,
    pub aug: AugConfig,
    /// Training (enlarged crop + full augmentation) or validation.
    pub train: bool,
    pub oversample: f64,
    pub seed: u64,
    /// Stream id mixed into the seed (train and val differ).
    pub stream: u64,
    /// Only crop (initial patch size for training), no augmentation: the batch's single target is the
    /// raw seg (with -1) at the crop size. Used with the GPU augmentation.
    pub crop_only: bool,
}

impl LoaderConfig {
    /// The crop size: the initial patch for training, the final one for validation.
    pub fn crop_size(&self) -> [usize; 2] {
        if self.train {
            AugConfig::initial_patch_size(self.aug.patch, self.aug.rotation)
        } else {
            self.aug.patch
        }
    }
}

/// The RNG of sample `j` of batch `k` of a stream.
fn sample_rng(cfg: &LoaderConfig, k: u64, j: usize) -> ChaCha8Rng {
    let mut r = ChaCha8Rng::seed_from_u64(cfg.seed ^ cfg.stream.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    r.set_stream(k.wrapping_mul(4096) + j as u64);
    r
}

/// Builds batch `k` (deterministic in `(cfg.seed, cfg.stream, k)`).
pub fn make_batch(cases: &[Arc<CaseData>], cfg: &LoaderConfig, k: u64) -> Batch {
    let b = cfg.batch_size;
    let crop = cfg.crop_size();
    let need_to_pad = [crop[0] - cfg.aug.patch[0], crop[1] - cfg.aug.patch[1]];
    let channels = cases[0].shape[0];
    let [ph, pw] = if cfg.crop_only { crop } else { cfg.aug.patch };
    let mut image = Vec::with_capacity(b * channels * ph * pw);
    let mut targets: Vec<Vec<i16>> = Vec::new();
    let mut target_shapes = Vec::new();
    // Case choice for the whole batch first (np.random.choice(ids, B, replace=True)).
    let mut brng = sample_rng(cfg, k, 4095);
    let picks: Vec<usize> = (0..b).map(|_| brng.random_range(0..cases.len())).collect();
    for (j, &ci) in picks.iter().enumerate() {
        let mut rng = sample_rng(cfg, k, j);
        let case = &cases[ci];
        let (z, lo) = sample_location(case, crop, need_to_pad, force_foreground(j, b, cfg.oversample), &mut rng);
        let (img, seg) = case.crop(z, lo, crop);
        if cfg.crop_only {
            image.extend_from_slice(&img.data);
            if targets.is_empty() {
                targets = vec![Vec::with_capacity(b * seg.data.len())];
                target_shapes = vec![[seg.h, seg.w]];
            }
            targets[0].extend_from_slice(&seg.data);
            continue;
        }
        let out =
            if cfg.train { augment::augment_train(&img, &seg, &cfg.aug, &mut rng) } else { augment::augment_val(&img, &seg, &cfg.aug) };
        image.extend_from_slice(&out.image.data);
        if targets.is_empty() {
            targets = out.targets.iter().map(|t| Vec::with_capacity(b * t.data.len())).collect();
            target_shapes = out.targets.iter().map(|t| [t.h, t.w]).collect();
        }
        for (dst, t) in targets.iter_mut().zip(&out.targets) {
            dst.extend_from_slice(&t.data);
        }
    }
    Batch { index: k, batch_size: b, channels, patch: [ph, pw], image, targets, target_shapes }
}

/// A stream of batches `start, start+1, ...` produced by a thread pool, delivered in order.
pub struct BatchLoader {
    rx: crossbeam_channel::Receiver<Batch>,
    pending: BTreeMap<u64, Batch>,
    next: u64,
    stop: Arc<AtomicBool>,
    handles: Vec<std::thread::JoinHandle<()>>,
}

impl BatchLoader {
    /// Starts `threads` workers producing batches from index `start`, prefetching up to `prefetch` batches.
    pub fn start(cases: Vec<Arc<CaseData>>, cfg: LoaderConfig, start: u64, threads: usize, prefetch: usize) -> Self {
        assert!(!cases.is_empty(), "the loader needs at least one case");
        let (tx, rx) = crossbeam_channel::bounded(prefetch.max(1));
        let stop = Arc::new(AtomicBool::new(false));
        let counter = Arc::new(AtomicU64::new(start));
        let cases = Arc::new(cases);
        let handles = (0..threads.max(1))
            .map(|t| {
                let (tx, stop, counter, cases, cfg) = (tx.clone(), stop.clone(), counter.clone(), cases.clone(), cfg.clone());
                std::thread::Builder::new()
                    .name(format!("loader-{}-{t}", if cfg.train { "train" } else { "val" }))
                    .spawn(move || {
                        while !stop.load(Ordering::Relaxed) {
                            let k = counter.fetch_add(1, Ordering::Relaxed);
                            let batch = make_batch(&cases, &cfg, k);
                            if tx.send(batch).is_err() {
                                break;
                            }
                        }
                    })
                    .expect("spawning a loader thread")
            })
            .collect();
        BatchLoader { rx, pending: BTreeMap::new(), next: start, stop, handles }
    }

    /// The next batch in index order (blocks until it is ready).
    pub fn next_batch(&mut self) -> anyhow::Result<Batch> {
        loop {
            if let Some(b) = self.pending.remove(&self.next) {
                self.next += 1;
                return Ok(b);
            }
            let b = self.rx.recv().context("all loader threads stopped (a loader thread panicked?)")?;
            self.pending.insert(b.index, b);
        }
    }
}

impl Drop for BatchLoader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Unblock senders: drain until every worker has exited.
        let handles = std::mem::take(&mut self.handles);
        while handles.iter().any(|h| !h.is_finished()) {
            while self.rx.try_recv().is_ok() {}
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        for h in handles {
            if h.join().is_err() {
                tracing::warn!("a batch loader thread panicked");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversampling_positions_match_nnunet() {
        let forced = |b: usize| (0..b).filter(|&j| force_foreground(j, b, 0.33)).count();
        // nnUNetDataLoader._oversample_last_XX_percent: B=12 forces the last 4, B=2 the last 1, B=5 the last 2.
        assert_eq!(forced(12), 4);
        assert_eq!(forced(2), 1);
        assert_eq!(forced(5), 2);
        assert!(force_foreground(11, 12, 0.33) && !force_foreground(7, 12, 0.33));
    }
}
