//! Compiles the wire contract in `proto/` with protox, a pure-Rust protobuf compiler, so building
//! needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/argocd_gateway/v1/registration.proto",
        "proto/argocd_gateway/v1/tunnel.proto",
        "proto/argocd_gateway/v1/hub_peer.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
