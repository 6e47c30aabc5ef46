//! Integration tests of the inference service with the real network and
//! real images. They need libtorch, the converted weights and the shared
//! image sets: `scripts/test.sh` prepares all three.

mod failover;
mod harness;
mod onnx;
mod parity;
mod service;
mod weights;
