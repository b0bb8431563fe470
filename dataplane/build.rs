//! Generates the xDS, workload, authorization, waypoint and CA types from `proto/` with protox (a pure-
//! Rust protobuf compiler), so a fresh machine needs no `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/workload.proto",
        "proto/authorization.proto",
        "proto/xds.proto",
        "proto/citadel.proto",
        "proto/waypoint.proto",
        "proto/zds.proto",
    ];
    let descriptors = protox::compile(files, ["proto"])?;
    // `Any` is generated here rather than taken from prost-types, so that its `value` is
    // `bytes::Bytes`: istiod encodes a resource once per publish and every stream's responses
    // share those bytes (a clone is a reference count, not a copy), and a client decodes
    // resources as slices of the received buffer. Every other well-known type is mapped as
    // prost-build maps it by default.
    let well_known = [
        ("Duration", "::prost_types::Duration"),
        ("Struct", "::prost_types::Struct"),
        ("Value", "::prost_types::Value"),
        ("ListValue", "::prost_types::ListValue"),
        ("NullValue", "::prost_types::NullValue"),
        ("Empty", "()"),
        ("BoolValue", "bool"),
        ("BytesValue", "::prost::alloc::vec::Vec<u8>"),
        ("DoubleValue", "f64"),
        ("FloatValue", "f32"),
        ("Int32Value", "i32"),
        ("Int64Value", "i64"),
        ("StringValue", "::prost::alloc::string::String"),
        ("UInt32Value", "u32"),
        ("UInt64Value", "u64"),
    ];
    let mut config = tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // Ordered maps: nothing derived from a message depends on hash order.
        .btree_map(".")
        .compile_well_known_types(true)
        .bytes(".google.protobuf.Any.value");
    for (name, rust) in well_known {
        config = config.extern_path(format!(".google.protobuf.{name}"), rust);
    }
    config.compile_fds(descriptors)?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
