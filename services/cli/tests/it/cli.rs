//! The `cbir` command line against a running system: index add, search,
//! stats, clear and eval.

use std::process::Command;

use serde_json::Value;

use crate::system::{flowers_subset, System};

fn cbir(sys: &System, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cbir"))
        .args(args)
        .env("CBIR_GATEWAY_URL", sys.url())
        .output()
        .expect("cbir runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_indexes_searches_and_evaluates() {
    let sys = System::start(|_| {}).await;
    let set = sys.dir.path().join("set");
    let files = flowers_subset(&set, &["daisy", "dandelion", "sunflower", "tulip"], 8);
    std::fs::write(set.join("tulip/broken.png"), b"\x89PNG\r\n\x1a\nbroken").expect("write");
    let set_s = set.display().to_string();

    tokio::task::block_in_place(|| {
        let (ok, out, err) = cbir(&sys, &["index", "add", &set_s, "-c", "cli", "--json"]);
        assert!(!ok, "a failed image makes the exit status non-zero");
        let v: Value =
            serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out} {err}"));
        assert_eq!(v["added"], 32, "{v}");
        assert_eq!(v["failed"], 1);
        assert!(v["failures"][0]["path"]
            .as_str()
            .expect("p")
            .ends_with("broken.png"));

        let q = files[3].display().to_string();
        let (ok, out, err) = cbir(&sys, &["search", &q, "-c", "cli", "-k", "7", "--json"]);
        assert!(ok, "{err}");
        let v: Value = serde_json::from_str(out.trim()).expect("json");
        let results = v["results"].as_array().expect("results");
        assert_eq!(results.len(), 7);
        assert_eq!(results[0]["similarity"], 1.0);
        assert_eq!(results[0]["label"], "daisy");
        let (ok, out, _) = cbir(&sys, &["search", &q, "-c", "cli", "-k", "3"]);
        assert!(ok);
        assert!(out.contains("100.0%"), "{out}");

        let (ok, out, err) = cbir(&sys, &["index", "stats", "-c", "cli", "--json"]);
        assert!(ok, "{err}");
        let v: Value = serde_json::from_str(out.trim()).expect("json");
        assert_eq!(v["count"], 32);
        assert_eq!(v["dims"], 1280);

        let (ok, out, err) = cbir(&sys, &["index", "clear", "-c", "cli"]);
        assert!(ok, "{err}");
        assert!(out.contains("32 images removed"), "{out}");

        // Leave-one-out evaluation in two modes, one JSON object per mode.
        let (ok, out, err) = cbir(
            &sys,
            &[
                "eval",
                &set_s,
                "--mode",
                "exact,partition",
                "-k",
                "1,5,10",
                "--json",
            ],
        );
        assert!(ok, "{err}");
        let reports: Vec<Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).expect("json line"))
            .collect();
        assert_eq!(reports.len(), 2);
        for r in &reports {
            for key in ["P@1", "P@5", "P@10", "mAP", "mAP@100", "queries"] {
                assert!(r.get(key).is_some(), "{key} missing in {r}");
            }
            assert_eq!(r["queries"], 32, "{r}");
            for key in ["P@1", "P@5", "P@10", "mAP", "mAP@100"] {
                let v = r[key].as_f64().expect("number");
                assert!((0.0..=1.0).contains(&v), "{key} = {v}");
            }
            assert_eq!(r["per_class"].as_object().expect("per class").len(), 4);
        }
        let (exact, partition) = (&reports[0], &reports[1]);
        assert_eq!(exact["mode"], "exact");
        assert_eq!(exact["read_fraction"], 1.0);
        // Flowers are told apart far better than chance (0.25) by exact search.
        assert!(exact["P@1"].as_f64().expect("p") > 0.6, "{exact}");
        // Partition mode skips partitions and is charged for what it misses.
        assert!(partition["mAP"].as_f64().expect("m") < exact["mAP"].as_f64().expect("m"));
        assert!(
            partition["read_fraction"].as_f64().expect("r") < 0.5,
            "{partition}"
        );
    });
    // The temporary evaluation collection is gone.
    let http = reqwest::Client::new();
    let v: Value = http
        .get(format!("{}/api/collections", sys.url()))
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    let names: Vec<&str> = v["collections"]
        .as_array()
        .expect("c")
        .iter()
        .map(|c| c["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["cli"]);
    sys.shutdown().await;
}

/// `cbir bench-ingest` measures every stage, runs the files through the
/// running system as `cbir index add` does, and removes its collection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_ingest_reports_each_stage_and_the_whole_path() {
    let sys = System::start(|_| {}).await;
    let set = sys.dir.path().join("set");
    flowers_subset(&set, &["daisy", "tulip"], 6);
    let set_s = set.display().to_string();
    let weights = cbir_inference::test_weights_path().display().to_string();
    let out = tokio::task::block_in_place(|| {
        let (ok, out, err) = cbir(
            &sys,
            &[
                "bench-ingest",
                &set_s,
                "--sample",
                "8",
                "--weights",
                &weights,
            ],
        );
        assert!(ok, "{out}\n{err}");
        out
    });
    for stage in [
        "read the files",
        "content hash",
        "decode + crop to 224",
        "thumbnail + rendition",
        "network, onnxruntime",
        "index upsert",
    ] {
        let row = out
            .lines()
            .find(|l| l.contains(stage))
            .unwrap_or_else(|| panic!("no {stage} row in\n{out}"));
        let cols: Vec<&str> = row.split('|').map(str::trim).collect();
        assert_eq!(cols[2], "8", "{row}");
        let rate: f64 = cols[3].parse().expect("a rate");
        assert!(rate > 0.0, "{row}");
    }
    let bound = out
        .lines()
        .find(|l| l.starts_with("CPU per image, all stages"))
        .unwrap_or_else(|| panic!("no CPU bound line in\n{out}"));
    assert!(bound.contains("images/s if nothing waits"), "{bound}");
    let e2e = out
        .lines()
        .find(|l| l.starts_with("end to end"))
        .unwrap_or_else(|| panic!("no end-to-end line in\n{out}"));
    assert!(e2e.contains("12 of 12 images"), "{e2e}");
    assert!(e2e.contains("(0 failed)"), "{e2e}");
    // The benchmark's collection is gone.
    let collections: Value = sys
        .http()
        .get(format!("{}/api/collections", sys.url()))
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert!(
        !collections.to_string().contains("bench-ingest-"),
        "{collections}"
    );
}
