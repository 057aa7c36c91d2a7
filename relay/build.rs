//! Compiles `proto/relay/v1/relay.proto` with protox (pure Rust: no `protoc` needed).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_dir = "../proto";
    let file = "../proto/relay/v1/relay.proto";
    println!("cargo:rerun-if-changed={file}");
    let fds = protox::compile([file], [proto_dir])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("relay_descriptor.bin"), prost::Message::encode_to_vec(&fds))?;
    // Small starting buffers per call (relay/src/rpc/codec.rs).
    tonic_prost_build::configure().codec_path("crate::rpc::codec::Codec").compile_fds(fds)?;
    Ok(())
}
