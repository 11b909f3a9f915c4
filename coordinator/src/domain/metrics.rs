//! Storing per-epoch metrics safely. JSON has no NaN or infinity (serde_json writes `null`, which
//! it then refuses to read back as `f64`), yet the trainer's pseudo-Dice is NaN for a class absent
//! from the validation batches. Stored metrics therefore write non-finite numbers as the strings
//! `"NaN"`, `"inf"`, `"-inf"`, and read `null` (rows written before this fix) back as NaN.
use nnunet_common::train_log::EpochMetrics;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An `f64` that survives JSON whatever its value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Num(pub f64);

impl Serialize for Num {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let v = self.0;
        if v.is_finite() {
            s.serialize_f64(v)
        } else if v.is_nan() {
            s.serialize_str("NaN")
        } else if v > 0.0 {
            s.serialize_str("inf")
        } else {
            s.serialize_str("-inf")
        }
    }
}

impl<'de> Deserialize<'de> for Num {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Num, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            F(f64),
            S(String),
            Null(()),
        }
        Ok(Num(match Option::<Raw>::deserialize(d)? {
            Some(Raw::F(v)) => v,
            Some(Raw::S(s)) => match s.as_str() {
                "inf" | "Infinity" => f64::INFINITY,
                "-inf" | "-Infinity" => f64::NEG_INFINITY,
                _ => f64::NAN,
            },
            Some(Raw::Null(())) | None => f64::NAN,
        }))
    }
}

/// The stored form of [`EpochMetrics`].
#[derive(Serialize, Deserialize)]
struct Stored {
    epoch: u32,
    epochs: u32,
    train_loss: Num,
    val_loss: Num,
    pseudo_dice: Vec<Num>,
    mean_fg_dice: Num,
    ema_fg_dice: Num,
    lr: Num,
    epoch_seconds: Num,
    #[serde(default = "nan")]
    dataloader_wait_seconds: Num,
    #[serde(default = "nan")]
    step_seconds: Num,
    #[serde(default)]
    device_memory_peak_bytes: u64,
    #[serde(default)]
    new_best: bool,
}

fn nan() -> Num {
    Num(f64::NAN)
}

impl From<&EpochMetrics> for Stored {
    fn from(m: &EpochMetrics) -> Self {
        Stored {
            epoch: m.epoch,
            epochs: m.epochs,
            train_loss: Num(m.train_loss),
            val_loss: Num(m.val_loss),
            pseudo_dice: m.pseudo_dice.iter().map(|&v| Num(v)).collect(),
            mean_fg_dice: Num(m.mean_fg_dice),
            ema_fg_dice: Num(m.ema_fg_dice),
            lr: Num(m.lr),
            epoch_seconds: Num(m.epoch_seconds),
            dataloader_wait_seconds: Num(m.dataloader_wait_seconds),
            step_seconds: Num(m.step_seconds),
            device_memory_peak_bytes: m.device_memory_peak_bytes,
            new_best: m.new_best,
        }
    }
}

impl From<Stored> for EpochMetrics {
    fn from(s: Stored) -> Self {
        EpochMetrics {
            epoch: s.epoch,
            epochs: s.epochs,
            train_loss: s.train_loss.0,
            val_loss: s.val_loss.0,
            pseudo_dice: s.pseudo_dice.into_iter().map(|v| v.0).collect(),
            mean_fg_dice: s.mean_fg_dice.0,
            ema_fg_dice: s.ema_fg_dice.0,
            lr: s.lr.0,
            epoch_seconds: s.epoch_seconds.0,
            dataloader_wait_seconds: s.dataloader_wait_seconds.0,
            step_seconds: s.step_seconds.0,
            device_memory_peak_bytes: s.device_memory_peak_bytes,
            new_best: s.new_best,
        }
    }
}

/// `#[serde(with = "crate::domain::metrics::stored")]` for an `EpochMetrics` field.
pub mod stored {
    use super::*;
    pub fn serialize<S: Serializer>(m: &EpochMetrics, s: S) -> Result<S::Ok, S::Error> {
        Stored::from(m).serialize(s)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<EpochMetrics, D::Error> {
        Ok(Stored::deserialize(d)?.into())
    }
}

/// The same for an `Option<EpochMetrics>` field.
pub mod stored_opt {
    use super::*;
    pub fn serialize<S: Serializer>(m: &Option<EpochMetrics>, s: S) -> Result<S::Ok, S::Error> {
        m.as_ref().map(Stored::from).serialize(s)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<EpochMetrics>, D::Error> {
        Ok(Option::<Stored>::deserialize(d)?.map(Into::into))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[derive(Serialize, Deserialize)]
    struct Row {
        #[serde(with = "stored_opt")]
        m: Option<EpochMetrics>,
    }

    #[test]
    fn non_finite_values_round_trip_and_old_null_rows_load() {
        let m = EpochMetrics {
            train_loss: f64::INFINITY,
            val_loss: f64::NEG_INFINITY,
            pseudo_dice: vec![f64::NAN, 0.5],
            mean_fg_dice: f64::NAN,
            ..Default::default()
        };
        let j = serde_json::to_string(&Row { m: Some(m) }).unwrap();
        let back: Row = serde_json::from_str(&j).unwrap();
        let b = back.m.unwrap();
        assert_eq!(b.train_loss, f64::INFINITY);
        assert_eq!(b.val_loss, f64::NEG_INFINITY);
        assert!(b.pseudo_dice[0].is_nan() && b.pseudo_dice[1] == 0.5 && b.mean_fg_dice.is_nan());
        // What serde_json wrote for NaN before: null.
        let old = r#"{"m":{"epoch":1,"epochs":2,"train_loss":null,"val_loss":0.1,"pseudo_dice":[null],"mean_fg_dice":null,
            "ema_fg_dice":0.0,"lr":0.01,"epoch_seconds":1.0,"dataloader_wait_seconds":0.0,"step_seconds":0.0,
            "device_memory_peak_bytes":0,"new_best":false}}"#;
        let r: Row = serde_json::from_str(old).unwrap();
        assert!(r.m.unwrap().train_loss.is_nan());
    }
}
