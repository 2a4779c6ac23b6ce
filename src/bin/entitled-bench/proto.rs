//! The baseline service's generated code (`proto/bench/v1/baseline.proto`,
//! package `bench.v1`): one unary RPC answered from an in-memory map, the
//! floor of what a gRPC call costs. `build.rs` generates it only with the
//! `bench` feature; the library neither includes nor serves it, so
//! reflection does not list it.

#![allow(clippy::all, clippy::pedantic, missing_docs, reason = "generated code")]

tonic::include_proto!("bench.v1");
