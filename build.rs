//! Compiles `proto/entitled/v1/*.proto` with protox (pure Rust, so no system
//! `protoc` is needed) and generates the tonic stubs from the descriptors.
//! `proto/bench/v1` (the load generator's baseline service) is compiled
//! only with the `bench` feature, and apart from the API so that reflection
//! does not advertise it; only `entitled-bench` includes its stubs.

use std::{env, error::Error, fs, path::PathBuf};

use prost::Message;

fn main() -> Result<(), Box<dyn Error>> {
    // tonic-prost-build does not emit this when compiling from descriptors.
    println!("cargo:rerun-if-changed=proto");

    let mut files: Vec<PathBuf> = fs::read_dir("proto/entitled/v1")?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.retain(|p| p.extension().is_some_and(|ext| ext == "proto"));
    files.sort();

    let fds = protox::compile(&files, ["proto"])?;

    // Server reflection serves this set; compiling from descriptors does not
    // write it for us.
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out_dir.join("entitled_descriptor.bin"), fds.encode_to_vec())?;

    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // Hand-written with shared strings, for the check's hot path.
        .extern_path(".entitled.v1.Report", "crate::proto::v1::Report")
        .compile_fds(fds)?;

    if env::var_os("CARGO_FEATURE_BENCH").is_some() {
        let bench = protox::compile(["proto/bench/v1/baseline.proto"], ["proto"])?;
        tonic_prost_build::configure()
            .build_server(true)
            .build_client(true)
            .compile_fds(bench)?;
    }
    Ok(())
}
