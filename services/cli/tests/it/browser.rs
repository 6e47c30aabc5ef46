//! The web UI in a real browser (Debian chromium driven by Playwright):
//! create a collection, upload a folder, search, open a result and search
//! with it; then the features of issue 15 (the viewer, the search in the
//! URL, labels, a filtered search with "load more", the gallery with
//! relabel and delete, the duplicates review, upload retry) with
//! screenshots at 1400 and 400 px; the Maintenance tab; then each service down in turn shows a
//! clear error in the page, and recovery.
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

/// Copies of three of `files` beside them, as a user's folder holds them:
/// shrunk to 75% and recompressed (JPEG quality 50). The duplicates review
/// must find them.
fn add_copies(files: &[PathBuf]) -> usize {
    let mut n = 0;
    for src in [&files[1], &files[10], &files[25]] {
        let img = image::open(src).expect("decode").to_rgb8();
        let (w, h) = img.dimensions();
        let small = image::imageops::resize(
            &img,
            w * 3 / 4,
            h * 3 / 4,
            image::imageops::FilterType::Triangle,
        );
        let stem = src.file_stem().expect("stem").to_string_lossy();
        let mut out = Vec::new();
        let enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 50);
        small.write_with_encoder(enc).expect("encode");
        std::fs::write(src.with_file_name(format!("{stem}-copy.jpg")), out).expect("write");
        n += 1;
    }
    n
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
    add_copies(&files);
    // A file named like an image that is not one: its upload fails and the
    // UI offers to retry it.
    let broken = sys.dir.path().join("broken");
    std::fs::create_dir_all(broken.join("rose")).expect("mkdir");
    std::fs::write(broken.join("rose/not-an-image.jpg"), b"hello, I am text").expect("write");
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
            ("CBIR_ARTIFACTS", shots.display().to_string()),
            ("CBIR_BROKEN_FOLDER", broken.display().to_string()),
        ]
    };
    let sys_ref = &sys;
    tokio::task::block_in_place(|| run_phase(sys_ref, "flow", &common("flow")));
    // The viewer and focus, the search in the address, partition mode's
    // note, the bands, a change of collection; labels with counts and a
    // filtered search with "load more"; the gallery with relabel and delete;
    // then the duplicates review and upload retry; each page shot at 1400
    // and 400 px.
    for phase in ["viewer", "filters", "gallery", "dupes"] {
        tokio::task::block_in_place(|| run_phase(sys_ref, phase, &common(phase)));
    }
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
    for page in [
        "search",
        "viewer",
        "index",
        "search-filtered",
        "browse",
        "dupes",
        "maintenance",
    ] {
        for width in [1400, 400] {
            assert!(
                shots.join(format!("{page}-{width}.png")).is_file(),
                "{page}-{width}.png"
            );
        }
    }
    sys.shutdown().await;
}
