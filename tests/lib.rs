//! Helpers shared by the end-to-end tests: locating the built binaries, the shared datasets, and
//! temporary work folders.
use std::path::PathBuf;

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
