#![doc = include_str!("../README.md")]

pub mod bulk_file;
pub mod catalogue;
pub mod client;
pub mod console;
pub mod domain;
pub mod grpc;
pub mod metrics;
pub mod proto;
pub mod server;
pub mod service;
pub mod store;
