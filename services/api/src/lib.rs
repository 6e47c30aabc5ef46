//! The `cbir.v1` gRPC contract, generated once for every crate of the workspace.

pub use prost;
pub use prost_types;
pub use tonic;

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v1 {
    tonic::include_proto!("cbir.v1");
}

/// The encoded file descriptor set of `cbir.v1`, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("cbir_descriptor");

pub use v1::*;

/// The ONNX IR messages (a subset of `onnx/onnx.proto`) the inference
/// service writes its serving graphs with.
pub mod onnx {
    #![allow(clippy::all)]
    tonic::include_proto!("onnx");
}

pub mod export_file;
pub mod names;

/// ImageNet-1k class names in index order (sorted-wnid order).
pub fn imagenet_class_names() -> &'static [&'static str] {
    static NAMES: std::sync::LazyLock<Vec<&'static str>> =
        std::sync::LazyLock::new(|| include_str!("imagenet_classes.txt").lines().collect());
    &NAMES
}

#[cfg(test)]
mod tests {
    #[test]
    fn imagenet_names_are_complete() {
        let names = super::imagenet_class_names();
        assert_eq!(names.len(), 1000);
        assert_eq!(names[0], "tench");
        assert_eq!(names[999], "toilet tissue");
    }
}
