//! What a conversion did, printed at the end of `nnunet convert`.
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

/// Per-label statistics of the converted masks.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LabelCount {
    pub name: String,
    pub voxels: u64,
    pub cases: usize,
}

/// What [`convert`] did; `Display` prints the end-of-run summary.
#[derive(Debug, Clone)]
pub struct ConvertSummary {
    pub dataset_dir: PathBuf,
    pub n_train: usize,
    pub n_test: usize,
    pub channel_names: Vec<String>,
    /// Smallest and largest case shape (Z, Y, X), per axis.
    pub min_shape: [usize; 3],
    pub max_shape: [usize; 3],
    /// Original mask value (as text) -> label.
    pub mapping: BTreeMap<String, i64>,
    /// label -> counts
    pub label_counts: BTreeMap<i64, LabelCount>,
    pub image_format: String,
    pub mask_format: String,
    pub seconds: f64,
    pub warnings: Vec<String>,
    /// With regions: "name (labels) -> label painted", in output order.
    pub regions: Vec<String>,
}

impl fmt::Display for ConvertSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "converted {} training + {} test case(s) into {}", self.n_train, self.n_test, self.dataset_dir.display())?;
        writeln!(f, "  input: images {} / masks {}", self.image_format, self.mask_format)?;
        writeln!(f, "  channels ({}): {}", self.channel_names.len(), self.channel_names.join(", "))?;
        let z = |s: &[usize; 3]| if s[0] == 1 { format!("{}x{}", s[1], s[2]) } else { format!("{}x{}x{}", s[0], s[1], s[2]) };
        writeln!(f, "  sizes (Z,Y,X or H x W): min {}, max {}", z(&self.min_shape), z(&self.max_shape))?;
        let m: Vec<String> = self.mapping.iter().map(|(k, v)| format!("{k}->{v}")).collect();
        writeln!(f, "  mask values -> labels: {}", m.join(", "))?;
        let total: u64 = self.label_counts.values().map(|c| c.voxels).sum::<u64>().max(1);
        writeln!(f, "  {:>5}  {:<16} {:>14} {:>7} {:>6}", "label", "name", "voxels", "%", "cases")?;
        for (l, c) in &self.label_counts {
            writeln!(f, "  {:>5}  {:<16} {:>14} {:>6.2}% {:>6}", l, c.name, c.voxels, 100.0 * c.voxels as f64 / total as f64, c.cases)?;
        }
        if !self.regions.is_empty() {
            writeln!(f, "  regions (network outputs, in order; where predicted, paint): {}", self.regions.join(", "))?;
        }
        for w in &self.warnings {
            writeln!(f, "  warning: {w}")?;
        }
        write!(f, "  took {:.1} s ({:.1} cases/s)", self.seconds, (self.n_train + self.n_test) as f64 / self.seconds.max(1e-9))
    }
}
