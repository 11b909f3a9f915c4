//! TensorBoard event files, written without TensorFlow: TFRecord framing (little-endian length,
//! masked CRC-32C of the length, the record, masked CRC-32C of the record) around `Event` protocol
//! buffers (`tensorflow/core/util/event.proto`: `wall_time` = 1, `step` = 2, `file_version` = 3,
//! `summary` = 5; `Summary.value` = 1 with `tag` = 1, `simple_value` = 2), encoded by hand.
//!
//! A fold writes its per-epoch scalars into `fold_K/events.out.tfevents.<unix secs>.<host>.<pid>`
//! next to `training_log.txt`, so `tensorboard --logdir <results folder>` shows every fold as a run.
//! Files are only appended to, one whole record per write; a resumed fold starts a new file that
//! repeats the checkpointed epochs (TensorBoard keeps the newest value of a step).
use crate::train_log::EpochMetrics;
use crate::{Error, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Marks TensorBoard event files (TensorBoard lists files whose name contains it).
pub const FILE_MARKER: &str = "tfevents";

const CRC32C_POLY: u32 = 0x82F6_3B78;

const fn crc_table() -> [u32; 256] {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { (c >> 1) ^ CRC32C_POLY } else { c >> 1 };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
}
static CRC_TABLE: [u32; 256] = crc_table();

/// CRC-32C (Castagnoli), as TFRecord uses.
pub fn crc32c(data: &[u8]) -> u32 {
    !data.iter().fold(!0u32, |c, &b| CRC_TABLE[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8))
}

/// TFRecord's masked CRC (`tensorflow/core/lib/hash/crc32c.h::Mask`).
pub fn masked_crc(data: &[u8]) -> u32 {
    let c = crc32c(data);
    c.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// One TFRecord frame around `data`.
pub fn frame(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc(data).to_le_bytes());
    out
}

/// The records of a TFRecord byte string, checking both CRCs of each.
pub fn unframe(mut b: &[u8]) -> Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    let bad = |what: &str| Error::Invalid(format!("TFRecord: {what}"));
    while !b.is_empty() {
        if b.len() < 12 {
            return Err(bad("truncated header"));
        }
        let (lenb, rest) = b.split_at(8);
        let len = u64::from_le_bytes(lenb.try_into().expect("8 bytes")) as usize;
        if u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")) != masked_crc(lenb) {
            return Err(bad("length CRC mismatch"));
        }
        let rest = &rest[4..];
        if rest.len() < len + 4 {
            return Err(bad("truncated record"));
        }
        let (data, rest) = rest.split_at(len);
        if u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")) != masked_crc(data) {
            return Err(bad("record CRC mismatch"));
        }
        out.push(data.to_vec());
        b = &rest[4..];
    }
    Ok(out)
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn key(out: &mut Vec<u8>, field: u32, wire: u8) {
    varint(out, ((field as u64) << 3) | wire as u64);
}

fn bytes_field(out: &mut Vec<u8>, field: u32, b: &[u8]) {
    key(out, field, 2);
    varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

/// An `Event` with `wall_time`, `step` and either `file_version` or a `Summary` of scalars.
pub fn encode_event(wall_time: f64, step: i64, file_version: Option<&str>, scalars: &[(String, f32)]) -> Vec<u8> {
    let mut ev = Vec::with_capacity(32 + scalars.len() * 48);
    key(&mut ev, 1, 1);
    ev.extend_from_slice(&wall_time.to_le_bytes());
    key(&mut ev, 2, 0);
    varint(&mut ev, step as u64);
    if let Some(v) = file_version {
        bytes_field(&mut ev, 3, v.as_bytes());
    }
    if !scalars.is_empty() {
        let mut summary = Vec::new();
        for (tag, v) in scalars {
            let mut value = Vec::with_capacity(tag.len() + 8);
            bytes_field(&mut value, 1, tag.as_bytes());
            key(&mut value, 2, 5);
            value.extend_from_slice(&v.to_le_bytes());
            bytes_field(&mut summary, 1, &value);
        }
        bytes_field(&mut ev, 5, &summary);
    }
    ev
}

/// The scalars of one epoch, under the tags TensorBoard shows (grouped by the part before `/`).
pub fn epoch_scalars(m: &EpochMetrics) -> Vec<(String, f32)> {
    let mut v = vec![
        ("loss/train".to_string(), m.train_loss as f32),
        ("loss/val".to_string(), m.val_loss as f32),
        ("dice/pseudo_dice_mean".to_string(), m.mean_fg_dice as f32),
        ("dice/pseudo_dice_ema".to_string(), m.ema_fg_dice as f32),
        ("lr".to_string(), m.lr as f32),
        ("time/epoch_seconds".to_string(), m.epoch_seconds as f32),
        ("time/dataloader_wait_seconds".to_string(), m.dataloader_wait_seconds as f32),
        ("time/step_seconds".to_string(), m.step_seconds as f32),
    ];
    for (i, d) in m.pseudo_dice.iter().enumerate() {
        v.push((format!("dice/pseudo_dice_class_{}", i + 1), *d as f32));
    }
    v
}

/// An append-only event file.
pub struct EventWriter {
    file: std::fs::File,
    path: PathBuf,
}

impl EventWriter {
    /// Creates `dir/events.out.tfevents.<secs>.<host>.<pid>` and writes its version record.
    pub fn create(dir: &Path) -> Result<Self> {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_else(|_| "host".into());
        let host: String = host.trim().chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-').take(40).collect();
        let path = dir.join(format!("events.out.{FILE_MARKER}.{}.{host}.{}", now.as_secs(), std::process::id()));
        let file = std::fs::OpenOptions::new().create_new(true).append(true).open(&path).map_err(|e| Error::io(&path, e))?;
        let mut w = EventWriter { file, path };
        w.write(&encode_event(now.as_secs_f64(), 0, Some("brain.Event:2"), &[]))?;
        Ok(w)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write(&mut self, event: &[u8]) -> Result<()> {
        self.file.write_all(&frame(event)).and_then(|_| self.file.sync_data()).map_err(|e| Error::io(&self.path, e))
    }

    pub fn scalars(&mut self, wall_time: f64, step: i64, scalars: &[(String, f32)]) -> Result<()> {
        self.write(&encode_event(wall_time, step, None, scalars))
    }
}

/// A fold's scalar log: call [`ScalarLog::sync`] with the full history after every epoch; the
/// first call of a process writes the checkpointed epochs too, later calls only the new ones.
pub struct ScalarLog {
    dir: PathBuf,
    writer: Option<EventWriter>,
    written: usize,
}

impl ScalarLog {
    pub fn new(fold_dir: &Path) -> Self {
        ScalarLog { dir: fold_dir.to_path_buf(), writer: None, written: 0 }
    }

    pub fn sync(&mut self, history: &[EpochMetrics]) -> Result<()> {
        if history.len() < self.written {
            self.writer = None; // the history went back (a reload): start a new file
        }
        let w = match &mut self.writer {
            Some(w) => w,
            None => {
                self.written = 0;
                self.writer.insert(EventWriter::create(&self.dir)?)
            }
        };
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs_f64();
        for m in &history[self.written..] {
            w.scalars(now, m.epoch as i64, &epoch_scalars(m))?;
        }
        self.written = history.len();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_check_value() {
        // The CRC-32C check value (RFC 3720, B.4): "123456789" -> 0xE3069283.
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
    }

    #[test]
    fn frames_round_trip_and_corruption_is_detected() {
        let mut b = frame(b"hello");
        b.extend(frame(&[]));
        assert_eq!(unframe(&b).unwrap(), vec![b"hello".to_vec(), vec![]]);
        b[13] ^= 1;
        assert!(unframe(&b).is_err());
        assert!(unframe(&frame(b"x")[..10]).is_err());
    }

    #[test]
    fn event_encoding_by_hand() {
        let e = encode_event(1.5, 3, None, &[("a".into(), 2.0)]);
        let mut want = vec![0x09];
        want.extend_from_slice(&1.5f64.to_le_bytes());
        want.extend_from_slice(&[0x10, 3, 0x2a, 10, 0x0a, 8, 0x0a, 1, b'a', 0x15]);
        want.extend_from_slice(&2.0f32.to_le_bytes());
        assert_eq!(e, want);
    }

    #[test]
    fn scalar_log_appends_new_epochs_only() {
        let dir = tempfile::tempdir().unwrap();
        let m = |e: u32| EpochMetrics { epoch: e, epochs: 3, train_loss: 1.0, pseudo_dice: vec![0.5, 0.25], ..Default::default() };
        let mut log = ScalarLog::new(dir.path());
        log.sync(&[m(0)]).unwrap();
        log.sync(&[m(0), m(1)]).unwrap();
        let files: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().map(|e| e.path()).collect();
        assert_eq!(files.len(), 1);
        assert!(files[0].file_name().unwrap().to_string_lossy().contains(FILE_MARKER));
        let recs = unframe(&std::fs::read(&files[0]).unwrap()).unwrap();
        assert_eq!(recs.len(), 3, "version record + one per epoch");
        assert_eq!(recs[2][9..11], [0x10, 1], "step of the second epoch");
        assert_eq!(epoch_scalars(&m(0)).len(), 10);
    }
}
