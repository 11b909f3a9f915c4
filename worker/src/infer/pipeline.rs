//! Overlapping reading, the network and writing across cases (as nnU-Net's predictor overlaps
//! preprocessing and export with the GPU in `nnunetv2/inference/predict_from_raw_data.py::predict_from_data_iterator`):
//! a reader thread prepares the next cases and a writer thread exports the previous ones while the
//! network runs on the calling thread (the one that holds the model). Bounded channels of two cases
//! each keep memory bounded; results come back in case order; the first error stops all three.
use super::progress::CaseProgress;
use anyhow::Result;
use std::sync::mpsc::sync_channel;
use tch::Tensor;

/// Runs `read -> net -> write` over cases `0..n`, showing progress (`name(i)` names case `i`).
pub(crate) fn run<M: Send, R: Send>(
    n: usize,
    label: &'static str,
    name: impl Fn(usize) -> String + Sync,
    read: impl Fn(usize) -> Result<(Tensor, M)> + Sync,
    net: impl Fn(&Tensor) -> Tensor,
    write: impl Fn(usize, M, Tensor) -> Result<R> + Sync,
) -> Result<Vec<R>> {
    let (to_net, from_reader) = sync_channel::<Result<(usize, Tensor, M)>>(2);
    let (to_writer, from_net) = sync_channel::<(usize, M, Tensor)>(2);
    let (read, write, name) = (&read, &write, &name);
    std::thread::scope(|s| {
        s.spawn(move || {
            for i in 0..n {
                if to_net.send(read(i).map(|(x, m)| (i, x, m))).is_err() {
                    break; // the network side stopped on an error: nothing more to read
                }
            }
        });
        let writer = s.spawn(move || -> Result<Vec<R>> {
            let mut progress = CaseProgress::new(n, label);
            let mut out = Vec::with_capacity(n);
            for (i, meta, logits) in from_net {
                out.push(write(i, meta, logits)?);
                progress.inc(&name(i));
            }
            Ok(out)
        });
        let fed = (|| -> Result<()> {
            for item in from_reader {
                let (i, x, meta) = item?;
                let logits = net(&x);
                if to_writer.send((i, meta, logits)).is_err() {
                    break; // the writer failed: its error is returned below
                }
            }
            Ok(())
        })();
        drop(to_writer);
        let written = writer.join().map_err(|_| anyhow::anyhow!("the writer thread panicked"))?;
        fed?;
        written
    })
}
