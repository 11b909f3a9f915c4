//! One cross-validation fold: an index into `splits_final.json`, or `all` (train on every training
//! case, nnU-Net's `fold all`, see `nnunetv2/training/nnUNetTrainer/nnUNetTrainer.py::do_split`).
//!
//! On the wire and in the coordinator's database a fold is an `i32` with [`Fold::ALL_WIRE`] (-1)
//! for `all`; everywhere else it is this type.
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// A fold: `Index(k)` is the k-th split (0-based), `All` trains on every case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Fold {
    Index(u16),
    All,
}

impl Fold {
    /// The wire and database encoding of [`Fold::All`].
    pub const ALL_WIRE: i32 = -1;

    /// nnU-Net's default five folds, 0..=4.
    pub fn default_five() -> Vec<Fold> {
        (0..5).map(Fold::Index).collect()
    }

    /// The index of a numbered fold, `None` for `all`.
    pub fn index(self) -> Option<usize> {
        match self {
            Fold::Index(k) => Some(k as usize),
            Fold::All => None,
        }
    }

    /// The folder name nnU-Net uses: `fold_0`, ..., `fold_all`.
    pub fn dir_name(self) -> String {
        format!("fold_{self}")
    }

    /// The wire encoding (`-1` for `all`).
    pub fn to_wire(self) -> i32 {
        match self {
            Fold::Index(k) => k as i32,
            Fold::All => Self::ALL_WIRE,
        }
    }

    /// Decodes the wire encoding; anything negative other than -1, or above `u16::MAX`, is refused.
    pub fn from_wire(v: i32) -> Result<Fold, FoldError> {
        match v {
            Self::ALL_WIRE => Ok(Fold::All),
            k if (0..=u16::MAX as i32).contains(&k) => Ok(Fold::Index(k as u16)),
            k => Err(FoldError(k.to_string())),
        }
    }
}

impl fmt::Display for Fold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fold::Index(k) => write!(f, "{k}"),
            Fold::All => f.write_str("all"),
        }
    }
}

/// A fold that is neither a non-negative number nor `all`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoldError(pub String);

impl fmt::Display for FoldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bad fold {:?}: expected a fold number (0, 1, ...) or 'all'", self.0)
    }
}

impl std::error::Error for FoldError {}

impl FromStr for Fold {
    type Err = FoldError;
    fn from_str(s: &str) -> Result<Fold, FoldError> {
        let t = s.trim();
        if t.eq_ignore_ascii_case("all") {
            return Ok(Fold::All);
        }
        t.parse::<u16>().map(Fold::Index).map_err(|_| FoldError(s.to_string()))
    }
}

impl Serialize for Fold {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Fold::Index(k) => s.serialize_u16(*k),
            Fold::All => s.serialize_str("all"),
        }
    }
}

impl<'de> Deserialize<'de> for Fold {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Fold, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(i64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => i32::try_from(n)
                .ok()
                .and_then(|n| Fold::from_wire(n).ok())
                .ok_or_else(|| serde::de::Error::custom(FoldError(n.to_string()))),
            Raw::S(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Fold;

    #[test]
    fn parse_display_wire_and_serde_round_trip() {
        for (s, f) in [("0", Fold::Index(0)), ("4", Fold::Index(4)), ("all", Fold::All), ("ALL", Fold::All)] {
            assert_eq!(s.parse::<Fold>().unwrap(), f);
            assert_eq!(Fold::from_wire(f.to_wire()).unwrap(), f);
            let j = serde_json::to_string(&f).unwrap();
            assert_eq!(serde_json::from_str::<Fold>(&j).unwrap(), f);
        }
        assert_eq!(Fold::All.dir_name(), "fold_all");
        assert_eq!(Fold::Index(3).dir_name(), "fold_3");
        assert_eq!(serde_json::from_str::<Fold>("-1").unwrap(), Fold::All);
        for bad in ["-2", "x", "", "1.5", "70000"] {
            assert!(bad.parse::<Fold>().is_err(), "{bad}");
        }
        assert!(Fold::from_wire(-2).is_err());
    }
}
