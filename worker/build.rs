//! Link settings for every binary and test of the worker crate (torch from the project venv, `scripts/setup.sh`):
//! an rpath to torch's lib dir so the binary runs without LD_LIBRARY_PATH, and `--no-as-needed
//! -ltorch` (which pulls libtorch_cuda when it exists) so CUDA is found when a GPU is present.
fn main() {
    compile_autocast_shim();
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

/// Builds `src/autocast_shim.cpp` against the same libtorch headers (see the file for why).
fn compile_autocast_shim() {
    println!("cargo:rerun-if-changed=src/autocast_shim.cpp");
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    let Some(lib) = std::env::var_os("DEP_TCH_LIBTORCH_LIB") else { return };
    let include = std::path::Path::new(&lib).join("..").join("include");
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into());
    cc::Build::new()
        .cpp(true)
        .file("src/autocast_shim.cpp")
        .include(&include)
        .include(include.join("torch").join("csrc").join("api").join("include"))
        .flag("-std=c++17")
        .flag_if_supported("-w")
        .define("_GLIBCXX_USE_CXX11_ABI", abi.as_str())
        .compile("nnunet_autocast_shim");
}
