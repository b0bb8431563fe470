//! Generates the xDS, workload, authorization, waypoint and CA types from `proto/` with protox (a pure-
//! Rust protobuf compiler), so a fresh machine needs no `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/workload.proto",
        "proto/authorization.proto",
        "proto/xds.proto",
        "proto/citadel.proto",
        "proto/waypoint.proto",
    ];
    let descriptors = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // Ordered maps: nothing derived from a message depends on hash order.
        .btree_map(".")
        .compile_fds(descriptors)?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
