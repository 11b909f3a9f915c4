//! Link settings for every binary and test of the worker crate (SPEC-adjacent: ECOSYSTEM.md §3.2):
//! an rpath to torch's lib dir so the binary runs without LD_LIBRARY_PATH, and `--no-as-needed
//! -ltorch` (which pulls libtorch_cuda when it exists) so CUDA is found when a GPU is present.
fn main() {
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if os == "linux" {
        if let Some(lib) = std::env::var_os("DEP_TCH_LIBTORCH_LIB") {
            println!("cargo:rustc-link-arg=-Wl,-rpath={}", lib.to_string_lossy());
            let cuda = std::path::Path::new(&lib).join("libtorch_cuda.so");
            println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
            if cuda.exists() {
                println!("cargo:rustc-link-arg=-ltorch_cuda");
            }
            println!("cargo:rustc-link-arg=-ltorch");
            println!("cargo:rustc-link-arg=-Wl,--as-needed");
        }
    }
}
