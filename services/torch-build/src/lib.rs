//! Called from the build scripts of crates whose binaries load libtorch.
//!
//! `torch-sys` links libtorch but leaves finding it at run time to
//! `LD_LIBRARY_PATH`; binaries built here carry an rpath to the libtorch they
//! were linked against instead, so they start without any environment.

use std::path::PathBuf;
use std::process::Command;

/// The directory holding `libtorch_cpu.so`: `$LIBTORCH/lib`, or the `lib`
/// folder of the Python `torch` package when `LIBTORCH_USE_PYTORCH` is set.
pub fn libtorch_lib_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("LIBTORCH_LIB") {
        return Some(PathBuf::from(dir).join("lib"));
    }
    if let Some(dir) = std::env::var_os("LIBTORCH") {
        return Some(PathBuf::from(dir).join("lib"));
    }
    let python = std::env::var("PYTHON_SYS_EXECUTABLE").unwrap_or_else(|_| "python3".into());
    let out = Command::new(python)
        .args([
            "-c",
            "import os, torch; print(os.path.join(os.path.dirname(torch.__file__), 'lib'))",
        ])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let dir = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!dir.is_empty()).then(|| PathBuf::from(dir))
}

/// Emits the rpath (and, with the `cuda` feature of the calling crate, a
/// forced link of `libtorch_cuda`, which the linker would otherwise drop as
/// unused because nothing references its symbols directly).
pub fn link_libtorch() {
    for var in [
        "LIBTORCH",
        "LIBTORCH_LIB",
        "LIBTORCH_USE_PYTORCH",
        "PYTHON_SYS_EXECUTABLE",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let Some(dir) = libtorch_lib_dir() else {
        println!(
            "cargo:warning=libtorch not found: set LIBTORCH_USE_PYTORCH=1 with torch==2.11.0 \
             installed for python3 (see README), or LIBTORCH"
        );
        return;
    };
    println!("cargo:rustc-link-search=native={}", dir.display());
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", dir.display());
    if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,-lc10_cuda,--as-needed");
    }
}
