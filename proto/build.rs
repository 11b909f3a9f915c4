//! Compiles `nnunet/v1/*.proto` with a vendored `protoc`, so no system protobuf compiler is needed.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; prost-build reads PROTOC.
    unsafe { std::env::set_var("PROTOC", protoc) };
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("nnunet_descriptor.bin"))
        .compile_protos(&["nnunet/v1/nnunet.proto"], &["."])?;
    println!("cargo:rerun-if-changed=nnunet/v1/nnunet.proto");
    Ok(())
}
