//! The generated protobuf and tonic code. Nothing else includes it.

mod answer;
mod report;

pub use answer::{BatchAnswer, CheckAnswer, EncodedReports, EncodedScope};

#[allow(clippy::all, clippy::pedantic, missing_docs, reason = "generated code")]
pub mod v1 {
    tonic::include_proto!("entitled.v1");

    /// Hand-written (see `proto/report.rs`); the generated messages use it.
    pub use super::report::Report;
}

/// The encoded file descriptor set, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("entitled_descriptor");
