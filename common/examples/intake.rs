//! Intake from the command line without the `nnunet` binary (used by the reference acceptance run
//! and `scripts/bench_intake.sh`):
//!
//! ```text
//! cargo run --release -p nnunet-common --example intake -- convert IMAGES MASKS OUT_ROOT ID NAME [THREADS]
//! cargo run --release -p nnunet-common --example intake -- convert-from NNUNET_DIR OUT_ROOT ID NAME [THREADS]
//! cargo run --release -p nnunet-common --example intake -- verify DATASET_DIR
//! cargo run --release -p nnunet-common --example intake -- synth OUT CASES SIZE SEED
//! ```
//! `convert` prints the summary and, last, one JSON line `{"cases":..,"seconds":..}` for scripts.
use nnunet_common::convert::{convert, ConvertInput, ConvertOptions};
use std::path::PathBuf;

fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let res = match a.first().map(String::as_str) {
        Some("convert") | Some("convert-from") => {
            let from = a[0] == "convert-from";
            let k = if from { 2 } else { 3 };
            let input = if from {
                ConvertInput::NnunetFolder(PathBuf::from(&a[1]))
            } else {
                ConvertInput::Folders { images: a[1].clone().into(), masks: a[2].clone().into(), test_images: None }
            };
            let mut o = ConvertOptions::new(input, a[k].clone().into(), a[k + 1].parse().unwrap(), &a[k + 2]);
            o.threads = a.get(k + 3).map(|t| t.parse().unwrap()).unwrap_or(0);
            o.overwrite = true;
            o.progress = true;
            convert(&o).map(|s| {
                println!("{s}");
                println!("{{\"cases\":{},\"seconds\":{}}}", s.n_train + s.n_test, s.seconds);
            })
        }
        Some("verify") => nnunet_common::verify::verify_dataset(&PathBuf::from(&a[1])).and_then(|r| {
            for w in &r.warnings {
                println!("warning: {w}");
            }
            println!("{} case(s), {} problem(s)", r.n_cases, r.problems.len());
            r.into_result()
        }),
        Some("synth") => {
            nnunet_common::synthetic::generate(&PathBuf::from(&a[1]), a[2].parse().unwrap(), a[3].parse().unwrap(), a[4].parse().unwrap())
        }
        _ => {
            eprintln!("usage: intake convert IMAGES MASKS OUT_ROOT ID NAME [THREADS] | convert-from DIR OUT_ROOT ID NAME [THREADS] | verify DIR | synth OUT CASES SIZE SEED");
            std::process::exit(2);
        }
    };
    if let Err(e) = res {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
