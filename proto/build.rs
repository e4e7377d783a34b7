//! Generates the tonic code from `proto/logstream.proto` with `protox`, a pure-Rust
//! protobuf compiler, so no `protoc` has to be installed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/logstream.proto");
    let fds = protox::compile(["proto/logstream.proto"], ["proto"])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
