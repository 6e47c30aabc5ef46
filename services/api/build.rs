use std::path::PathBuf;

fn main() {
    // No protoc on our machines: use the vendored one unless the user set one.
    if std::env::var_os("PROTOC").is_none() {
        let protoc = protoc_bin_vendored::protoc_bin_path().expect("vendored protoc is available");
        // SAFETY-free: build scripts are single threaded.
        std::env::set_var("PROTOC", protoc);
    }
    // Read at run time, not baked in with env!: a build script binary can be
    // reused for a checkout at another path (worktrees sharing a target dir).
    let manifest = std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR is set by cargo");
    let root = PathBuf::from(manifest).join("../../proto");
    let files = ["common", "inference", "index", "training", "search"]
        .map(|f| root.join(format!("cbir/v1/{f}.proto")));
    for f in &files {
        // tonic-prost-build 0.14 does not emit these itself.
        println!("cargo:rerun-if-changed={}", f.display());
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR is set by cargo"));
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("cbir_descriptor.bin"))
        .compile_protos(&files, std::slice::from_ref(&root))
        .expect("compiling proto/cbir/v1");
    // ONNX's IR, for the graphs the inference service writes: messages
    // only, kept out of the reflection descriptor of the cbir services.
    let onnx = root.join("onnx/onnx.proto");
    println!("cargo:rerun-if-changed={}", onnx.display());
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(false)
        .compile_protos(&[onnx], &[root])
        .expect("compiling proto/onnx");
}
