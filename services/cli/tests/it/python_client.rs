//! The Python client (`clients/python`, issue 15 item 7) against a real
//! running system: the package is installed from its source into a fresh
//! virtual environment, as a user would, and its own tests
//! (`clients/python/tests`, pytest) run against this system with a key
//! of each role and a folder of shared images, and against a second one
//! serving TLS only (`https://` with a private CA).
//!
//! Needs `python3` with `venv` and PyPI (or a pip cache holding grpcio,
//! protobuf, grpcio-tools and pytest); `CBIR_TEST_PYTHON` names another
//! interpreter.

use std::path::{Path, PathBuf};
use std::process::Output;

use cbir_gateway::auth::{hash_key, ApiKey, Role};
use tokio::process::Command;

use crate::system::{flowers_subset, System};

fn key(name: &str, role: Role) -> ApiKey {
    ApiKey {
        name: name.into(),
        sha256: hash_key(&format!("secret-{name}")),
        role,
    }
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs `cmd`, failing the test with its whole output when it fails.
async fn run(what: &str, cmd: &mut Command) -> Output {
    let out = cmd
        .kill_on_drop(true)
        .output()
        .await
        .unwrap_or_else(|e| panic!("{what}: cannot start ({e}); is python3 installed?"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A fresh virtual environment in `dir` with the client (from a copy of
/// its source, so that the build leaves nothing in the work tree) and
/// what its tests need; its python.
async fn venv_with_client(dir: &Path) -> PathBuf {
    let python = std::env::var("CBIR_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let venv = dir.join("venv");
    run(
        "python3 -m venv",
        Command::new(&python).arg("-m").arg("venv").arg(&venv),
    )
    .await;
    let src = dir.join("cbir-client-src");
    run(
        "copying clients/python",
        Command::new("cp")
            .arg("-r")
            .arg(repo_root().join("clients/python"))
            .arg(&src),
    )
    .await;
    let py = venv.join("bin/python");
    run(
        "pip install clients/python[test]",
        Command::new(&py)
            .args([
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "--quiet",
            ])
            .arg(format!("{}[test]", src.display())),
    )
    .await;
    py
}

/// Runs pytest on `tests` (under clients/python/tests) with `env`; fails
/// unless every test passed (a skip would hide an untested feature).
async fn pytest(py: &Path, cwd: &Path, url: String, args: &[&str], env: &[(&str, String)]) {
    let tests = repo_root().join("clients/python/tests");
    let mut cmd = Command::new(py);
    cmd.args(["-m", "pytest", "-p", "no:cacheprovider", "-v", "-rA"])
        .args(
            args.iter()
                .map(|a| a.replace("{tests}", &tests.display().to_string())),
        )
        // Outside the work tree, so that only the installed package can be
        // imported.
        .current_dir(cwd)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("CBIR_TEST_URL", url);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = run("pytest clients/python/tests", &mut cmd).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    let summary = stdout.lines().last().unwrap_or_default();
    assert!(
        summary.contains(" passed") && !summary.contains("skipped"),
        "pytest ended with {summary:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_from_a_fresh_venv_against_a_running_system() {
    // Outlives both systems (each removes its own folder when it stops).
    let work = tempfile::tempdir().expect("tempdir");
    let images = work.path().join("flowers");
    flowers_subset(&images, &["daisy", "rose", "tulip"], 4);
    let images = images.display().to_string();
    let py = venv_with_client(work.path()).await;

    // The client's https:// against a system with TLS on every port. It
    // starts first: the services' client TLS settings are installed once
    // per process (cbir_common::tls), and the plain system needs none.
    let tls = System::start_with_tls(|_| {}).await;
    let ca = tls.tls.as_ref().expect("tls").ca.display().to_string();
    let env = [
        ("CBIR_TEST_TLS_URL", tls.url()),
        ("CBIR_TEST_TLS_CA", ca),
        ("CBIR_TEST_IMAGES", images.clone()),
    ];
    pytest(&py, work.path(), tls.url(), &["{tests}/test_tls.py"], &env).await;
    tls.shutdown().await;

    let sys = System::start(|c| {
        c.auth.keys = vec![
            key("reader", Role::Search),
            key("indexer", Role::Index),
            key("root", Role::Admin),
        ];
    })
    .await;
    let keys = [
        ("CBIR_TEST_SEARCH_KEY", "secret-reader".to_string()),
        ("CBIR_TEST_INDEX_KEY", "secret-indexer".to_string()),
        ("CBIR_TEST_ADMIN_KEY", "secret-root".to_string()),
        ("CBIR_TEST_IMAGES", images),
        ("CBIR_TEST_CLI", env!("CARGO_BIN_EXE_cbir").to_string()),
    ];
    let ignore_tls = "--ignore={tests}/test_tls.py";
    pytest(&py, work.path(), sys.url(), &["{tests}", ignore_tls], &keys).await;
    sys.shutdown().await;
}
