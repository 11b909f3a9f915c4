//! Helpers shared by the end-to-end tests: locating the built binaries, the shared datasets, and
//! temporary work folders.
use std::path::{Path, PathBuf};
use std::process::Command;

/// `target/<profile>/` of the binaries under test (this test executable lives in `deps/` below it).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let deps = exe.parent().expect("deps dir");
    deps.parent().expect("profile dir").to_path_buf()
}

pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(p.exists(), "{} is not built: run `cargo build --workspace --bins` first (scripts/test does)", p.display());
    p
}

/// `../shared/datasets/<name>` next to the checkout, if present.
pub fn shared_dataset(name: &str) -> Option<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join("..").join("shared").join("datasets").join(name);
    let root = std::env::var_os("NNUNET_SHARED").map(|s| PathBuf::from(s).join("datasets").join(name)).unwrap_or(root);
    if root.is_dir() {
        Some(root)
    } else {
        eprintln!("SKIP: {} not found (../shared is absent); this test needs the shared datasets", root.display());
        None
    }
}

/// Runs `cmd`, fails the test with its output unless it succeeds; returns its stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().expect("spawn");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `nnunet convert` of `data/{images,masks}` (plus `extra` arguments) into `raw/Dataset{id:03}_{name}`,
/// which is returned.
pub fn convert(data: &Path, raw: &Path, id: u32, name: &str, extra: &[&std::ffi::OsStr]) -> PathBuf {
    run_ok(
        Command::new(bin("nnunet"))
            .arg("convert")
            .arg("--images")
            .arg(data.join("images"))
            .arg("--masks")
            .arg(data.join("masks"))
            .arg("--out")
            .arg(raw)
            .args(["--id", &id.to_string(), "--name", name])
            .args(extra),
    );
    raw.join(format!("Dataset{id:03}_{name}"))
}

/// A tiny dataset: the built-in synthetic images (`nnunet synth`, `cases` of `size` px under `work/data`)
/// converted with `nnunet convert` into `work/raw/Dataset{id:03}_{name}`, which is returned.
pub fn synthetic_dataset(work: &Path, cases: usize, size: usize, id: u32, name: &str) -> PathBuf {
    let data = work.join("data");
    run_ok(Command::new(bin("nnunet")).args(["synth", "--cases", &cases.to_string(), "--size", &size.to_string()]).arg("--out").arg(&data));
    convert(&data, &work.join("raw"), id, name, &[])
}
