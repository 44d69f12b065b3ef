//! Generates the `switchyard.v1` Rust code with a protoc shipped as a crate, never the machine's.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    tonic_prost_build::configure().compile_protos(&["proto/switchyard/v1/switchyard.proto"], &["proto"])?;
    Ok(())
}
