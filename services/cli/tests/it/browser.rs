//! The web UI in a real browser (Debian chromium driven by Playwright):
//! create a collection, upload a folder, search, click a result; then each
//! service down in turn shows a clear error in the page, and recovery.
//!
//! Needs `node`, `services/gateway/ui-tests/node_modules` (npm ci) and
//! /usr/bin/chromium (or CHROMIUM): the test command installs them.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::system::{flowers_subset, System};

fn ui_tests_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../gateway/ui-tests")
}

/// Where screenshots go: CBIR_E2E_ARTIFACTS or target/e2e.
fn artifacts() -> PathBuf {
    let dir = std::env::var_os("CBIR_E2E_ARTIFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/e2e"));
    std::fs::create_dir_all(&dir).expect("artifacts dir");
    dir
}

fn run_phase(sys: &System, phase: &str, envs: &[(&str, String)]) {
    let dir = ui_tests_dir();
    assert!(
        dir.join("node_modules/playwright-core").is_dir(),
        "playwright-core is not installed: run `npm ci` in {} (scripts/test.sh does)",
        dir.display()
    );
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "no browser at {chromium}: apt-get install chromium chromium-driver (scripts/test.sh does)"
    );
    let out = Command::new("node")
        .arg("e2e.mjs")
        .current_dir(&dir)
        .env("CBIR_URL", sys.url())
        .env("CBIR_PHASE", phase)
        .env("CHROMIUM", &chromium)
        .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "browser phase {phase} failed:\nstdout: {stdout}\nstderr: {stderr}"
    );
    eprintln!("browser phase {phase}: {stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_indexes_a_folder_searches_and_shows_outages() {
    let mut sys = System::start(|_| {}).await;
    let folder = sys.dir.path().join("flowers-upload");
    let files = flowers_subset(
        &folder,
        &["daisy", "dandelion", "rose", "sunflower", "tulip"],
        8,
    );
    let query = files[17].clone();
    let shots = artifacts();
    let common = |phase: &str| {
        vec![
            ("CBIR_COLLECTION", "flowers-e2e".to_string()),
            ("CBIR_QUERY", query.display().to_string()),
            ("CBIR_TOP_K", "12".to_string()),
            ("CBIR_FOLDER", folder.display().to_string()),
            (
                "CBIR_SCREENSHOT",
                shots.join(format!("{phase}.png")).display().to_string(),
            ),
        ]
    };
    let sys_ref = &sys;
    tokio::task::block_in_place(|| run_phase(sys_ref, "flow", &common("flow")));
    // The Maintenance tab: the registry lists the pretrained model as
    // active, deleting it is refused with the reason, the collection shows.
    tokio::task::block_in_place(|| run_phase(sys_ref, "maintenance", &common("maintenance")));

    for service in ["inference", "index"] {
        if service == "inference" {
            sys.stop_inference().await;
        } else {
            sys.stop_index().await;
        }
        let mut envs = common(&format!("{service}-down"));
        envs.push((
            "CBIR_EXPECT_ERROR",
            format!("the {service} service is unavailable"),
        ));
        let sys_ref = &sys;
        tokio::task::block_in_place(|| run_phase(sys_ref, "error", &envs));
        if service == "inference" {
            sys.start_inference().await;
        } else {
            sys.start_index().await;
        }
        sys.wait_healthy().await;
        let sys_ref = &sys;
        let envs = common(&format!("{service}-recovered"));
        tokio::task::block_in_place(|| run_phase(sys_ref, "recover", &envs));
    }
    assert!(shots.join("flow.png").is_file());
    assert!(shots.join("maintenance.png").is_file());
    sys.shutdown().await;
}
