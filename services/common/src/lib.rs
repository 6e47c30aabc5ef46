//! What every cbir service shares: layered configuration, telemetry, gRPC
//! health and reflection, graceful shutdown and the error-to-status map.

pub mod config;
pub mod conn;
#[cfg(feature = "db")]
pub mod db;
pub mod error;
pub mod fs;
pub mod grpc;
pub mod images;
pub mod metrics;
pub mod records;
pub mod service;
pub mod shard;
pub mod shutdown;
pub mod telemetry;
pub mod time;
pub mod tls;
pub mod token;

pub use error::{Code, Error, Result};
