//! Per-epoch training metrics, the JSON-lines training log and the `progress.png` plot.
use serde::{Deserialize, Serialize};

/// What one finished epoch reports (mirrors `EpochMetrics` in the proto).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct EpochMetrics {
    /// 0-based index of the epoch that just finished.
    pub epoch: u32,
    /// Total number of epochs of the run.
    pub epochs: u32,
    pub train_loss: f64,
    pub val_loss: f64,
    /// Pseudo-Dice per foreground class, accumulated over the validation iterations.
    pub pseudo_dice: Vec<f64>,
    pub mean_fg_dice: f64,
    pub ema_fg_dice: f64,
    pub lr: f64,
    pub epoch_seconds: f64,
    /// Time the training loop waited for batches (data-pipeline starvation).
    pub dataloader_wait_seconds: f64,
    /// Mean forward + backward + optimizer step time per iteration.
    pub step_seconds: f64,
    pub device_memory_peak_bytes: u64,
    pub new_best: bool,
}

/// The JSON-lines training log (`training_log.jsonl`): one [`EpochMetrics`] per line, epochs in order.
/// The file is rewritten atomically from the full history after each epoch, so a run killed and
/// resumed from a checkpoint (whose history ends earlier) never shows an epoch twice.
pub fn write_jsonl(path: &std::path::Path, history: &[EpochMetrics]) -> crate::Result<()> {
    let mut out = Vec::with_capacity(history.len() * 300);
    for m in history {
        serde_json::to_writer(&mut out, m).map_err(|e| crate::Error::Json { path: path.to_path_buf(), source: e })?;
        out.push(b'\n');
    }
    crate::hash::write_atomic(path, &out)
}

/// Reads `training_log.jsonl`.
pub fn read_jsonl(path: &std::path::Path) -> crate::Result<Vec<EpochMetrics>> {
    let text = std::fs::read_to_string(path).map_err(|e| crate::Error::io(path, e))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).map_err(|e| crate::Error::Json { path: path.to_path_buf(), source: e }))
        .collect()
}

/// One human-readable line per epoch, in the spirit of nnU-Net's text log.
pub fn format_epoch_line(m: &EpochMetrics) -> String {
    let dice: Vec<String> = m.pseudo_dice.iter().map(|d| format!("{d:.4}")).collect();
    format!(
        "epoch {}/{}  lr {:.6}  train_loss {:.4}  val_loss {:.4}  pseudo_dice [{}]  ema {:.4}{}  epoch {:.1}s (data wait {:.1}s, step {:.3}s)",
        m.epoch + 1,
        m.epochs,
        m.lr,
        m.train_loss,
        m.val_loss,
        dice.join(", "),
        m.ema_fg_dice,
        if m.new_best { "  new best" } else { "" },
        m.epoch_seconds,
        m.dataloader_wait_seconds,
        m.step_seconds,
    )
}

/// DejaVu Sans Mono (Bitstream Vera license, see `common/assets/FONT-LICENSE.md`), so the plot needs no system fonts.
static FONT: &[u8] = include_bytes!("../assets/DejaVuSansMono.ttf");

fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        for style in [plotters::style::FontStyle::Normal, plotters::style::FontStyle::Bold] {
            // The font is embedded and valid; a failure would only make the plot's text fall back.
            if plotters::style::register_font("sans-serif", style, FONT).is_err() {
                tracing::warn!("could not register the embedded plot font; progress.png text may be missing");
            }
        }
    });
}

/// Draws `progress.png` like nnU-Net's
/// `nnunetv2/training/logging/nnunet_logger.py::nnUNetLogger.plot_progress_png`: (1) train/val loss and the
/// pseudo-Dice with its EMA (right axis), (2) epoch duration, (3) learning rate.
pub fn plot_progress(path: &std::path::Path, history: &[EpochMetrics]) -> crate::Result<()> {
    use plotters::prelude::*;
    register_font();
    let (w, h) = (1200u32, 1500u32);
    let mut buf = vec![0u8; (w * h * 3) as usize];
    let err = |e: String| crate::Error::Invalid(format!("drawing {}: {e}", path.display()));
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
        let panels = root.split_evenly((3, 1));
        let n = history.len().max(1) as f64;
        let x_max = (n - 1.0).max(1.0);
        let finite = |v: f64| if v.is_finite() { Some(v) } else { None };
        let range = |vals: &mut dyn Iterator<Item = f64>| {
            let v: Vec<f64> = vals.filter_map(finite).collect();
            let lo = v.iter().cloned().fold(f64::INFINITY, f64::min);
            let hi = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            if !lo.is_finite() {
                (0.0, 1.0)
            } else if hi - lo < 1e-9 {
                (lo - 0.5, hi + 0.5)
            } else {
                (lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo))
            }
        };
        let xs = |i: usize| i as f64;

        // Panel 1: losses (left axis) and pseudo-Dice + EMA (right axis, 0..1).
        let (lo, hi) = range(&mut history.iter().flat_map(|m| [m.train_loss, m.val_loss]));
        let mut c = ChartBuilder::on(&panels[0])
            .caption("loss / pseudo dice", ("sans-serif", 24))
            .margin(15)
            .x_label_area_size(35)
            .y_label_area_size(60)
            .right_y_label_area_size(60)
            .build_cartesian_2d(0f64..x_max, lo..hi)
            .map_err(|e| err(e.to_string()))?
            .set_secondary_coord(0f64..x_max, 0f64..1f64);
        c.configure_mesh().x_desc("epoch").y_desc("loss").draw().map_err(|e| err(e.to_string()))?;
        c.configure_secondary_axes().y_desc("pseudo dice").draw().map_err(|e| err(e.to_string()))?;
        let series = |f: fn(&EpochMetrics) -> f64| {
            history.iter().enumerate().filter_map(move |(i, m)| finite(f(m)).map(|v| (xs(i), v))).collect::<Vec<_>>()
        };
        c.draw_series(LineSeries::new(series(|m| m.train_loss), BLUE.stroke_width(2)))
            .map_err(|e| err(e.to_string()))?
            .label("loss_tr")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE.stroke_width(2)));
        c.draw_series(LineSeries::new(series(|m| m.val_loss), RED.stroke_width(2)))
            .map_err(|e| err(e.to_string()))?
            .label("loss_val")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED.stroke_width(2)));
        c.draw_secondary_series(LineSeries::new(series(|m| m.mean_fg_dice), GREEN.mix(0.6).stroke_width(1)))
            .map_err(|e| err(e.to_string()))?
            .label("pseudo dice")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], GREEN.mix(0.6).stroke_width(1)));
        c.draw_secondary_series(LineSeries::new(series(|m| m.ema_fg_dice), GREEN.stroke_width(3)))
            .map_err(|e| err(e.to_string()))?
            .label("pseudo dice (mov. avg.)")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], GREEN.stroke_width(3)));
        c.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw().map_err(|e| err(e.to_string()))?;

        // Panel 2: epoch duration.
        let (lo, hi) = range(&mut history.iter().map(|m| m.epoch_seconds));
        let mut c = ChartBuilder::on(&panels[1])
            .caption("epoch duration [s]", ("sans-serif", 24))
            .margin(15)
            .x_label_area_size(35)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..x_max, lo.min(0.0)..hi)
            .map_err(|e| err(e.to_string()))?;
        c.configure_mesh().x_desc("epoch").y_desc("time [s]").draw().map_err(|e| err(e.to_string()))?;
        c.draw_series(LineSeries::new(series(|m| m.epoch_seconds), BLUE.stroke_width(2))).map_err(|e| err(e.to_string()))?;

        // Panel 3: learning rate.
        let (_, hi) = range(&mut history.iter().map(|m| m.lr));
        let mut c = ChartBuilder::on(&panels[2])
            .caption("learning rate", ("sans-serif", 24))
            .margin(15)
            .x_label_area_size(35)
            .y_label_area_size(80)
            .build_cartesian_2d(0f64..x_max, 0f64..hi.max(1e-12))
            .map_err(|e| err(e.to_string()))?;
        c.configure_mesh()
            .x_desc("epoch")
            .y_desc("lr")
            .y_label_formatter(&|v| format!("{v:.1e}"))
            .draw()
            .map_err(|e| err(e.to_string()))?;
        c.draw_series(LineSeries::new(series(|m| m.lr), BLUE.stroke_width(2))).map_err(|e| err(e.to_string()))?;
        root.present().map_err(|e| err(e.to_string()))?;
    }
    let img = image::RgbImage::from_raw(w, h, buf).ok_or_else(|| err("bad buffer size".into()))?;
    let mut png = std::io::Cursor::new(Vec::new());
    img.write_to(&mut png, image::ImageFormat::Png).map_err(|e| err(e.to_string()))?;
    crate::hash::write_atomic(path, png.get_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn history(n: u32) -> Vec<EpochMetrics> {
        (0..n)
            .map(|e| EpochMetrics {
                epoch: e,
                epochs: n,
                train_loss: 1.0 - e as f64 * 0.1,
                val_loss: 1.1 - e as f64 * 0.1,
                pseudo_dice: vec![0.5 + e as f64 * 0.01],
                mean_fg_dice: 0.5 + e as f64 * 0.01,
                ema_fg_dice: 0.5,
                lr: 0.01 * (1.0 - e as f64 / n as f64).powf(0.9),
                epoch_seconds: 2.0,
                ..Default::default()
            })
            .collect()
    }

    #[test]
    fn jsonl_round_trip_and_rewrite() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("training_log.jsonl");
        write_jsonl(&p, &history(5)).unwrap();
        write_jsonl(&p, &history(3)).unwrap();
        let back = read_jsonl(&p).unwrap();
        assert_eq!(back, history(3));
        assert!(format_epoch_line(&back[0]).contains("epoch 1/3"));
    }

    #[test]
    fn progress_png_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("progress.png");
        let mut h = history(4);
        h[1].mean_fg_dice = f64::NAN; // NaN pseudo-Dice (no foreground) must not break the plot
        plot_progress(&p, &h).unwrap();
        let img = image::open(&p).unwrap();
        assert_eq!((img.width(), img.height()), (1200, 1500));
        plot_progress(&p, &[]).unwrap();
        plot_progress(&p, &h[..1]).unwrap();
    }
}
