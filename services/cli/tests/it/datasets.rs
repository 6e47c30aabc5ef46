//! Uploaded training datasets: listed with the jobs that use them, deleted
//! when their last job ends (cancelled, queued or running), expired when no
//! job used them, deleted by an admin unless a job needs them.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::system::{flowers_subset, System};

fn cbir(sys: &System, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cbir"))
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

fn tar_of(dir: &Path) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    b.append_dir_all("set", dir).expect("tar");
    b.into_inner().expect("tar")
}

async fn json_of(r: reqwest::Response, status: u16) -> Value {
    let s = r.status();
    let v: Value = r.json().await.expect("json");
    assert_eq!(s.as_u16(), status, "{v}");
    v
}

async fn upload(http: &reqwest::Client, base: &str, dir: &Path) -> String {
    let r = http
        .post(format!("{base}/api/training/datasets?file_name=set.tar"))
        .body(tar_of(dir))
        .send()
        .await
        .expect("upload");
    json_of(r, 200).await["dataset_id"]
        .as_str()
        .expect("id")
        .to_string()
}

async fn list(http: &reqwest::Client, base: &str) -> Value {
    let r = http
        .get(format!("{base}/api/training/datasets"))
        .send()
        .await
        .expect("list");
    json_of(r, 200).await
}

fn find<'a>(list: &'a Value, id: &str) -> Option<&'a Value> {
    list["datasets"]
        .as_array()
        .expect("datasets")
        .iter()
        .find(|d| d["id"] == id)
}

async fn submit(http: &reqwest::Client, base: &str, id: &str, name: &str) -> String {
    let r = http
        .post(format!("{base}/api/training/jobs"))
        .json(&json!({"name": name, "dataset_id": id,
            "params": {"epochs": 50, "early_stopping_patience": 50, "min_images_per_class": 5}}))
        .send()
        .await
        .expect("submit");
    json_of(r, 200).await["id"]
        .as_str()
        .expect("id")
        .to_string()
}

async fn job_state(http: &reqwest::Client, base: &str, id: &str) -> String {
    let r = http
        .get(format!("{base}/api/training/jobs/{id}"))
        .send()
        .await
        .expect("job");
    json_of(r, 200).await["state"]
        .as_str()
        .expect("state")
        .to_string()
}

async fn cancel(http: &reqwest::Client, base: &str, id: &str) -> Value {
    let r = http
        .post(format!("{base}/api/training/jobs/{id}/cancel"))
        .send()
        .await
        .expect("cancel");
    json_of(r, 200).await
}

/// Waits until `check` holds, up to `secs`.
async fn eventually(secs: u64, what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !check().await {
        assert!(Instant::now() < deadline, "{what} within {secs} s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datasets_go_with_their_jobs_expire_unused_and_are_deleted_by_an_admin() {
    let mut sys = System::start(|_| {}).await;
    sys.stop_training().await;
    sys.training_cfg.dataset_ttl_s = 6;
    sys.start_training().await;
    let base = sys.url();
    let http = reqwest::Client::new();
    let datasets = sys.training_cfg.data_dir.join("datasets");
    eventually(60, "the training service answers", async || {
        http.get(format!("{base}/api/training/datasets"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    let set = sys.dir.path().join("set");
    flowers_subset(&set, &["daisy", "rose", "tulip"], 6);

    // The CLI: list, delete.
    let x = upload(&http, &base, &set).await;
    tokio::task::block_in_place(|| {
        let (ok, out, err) = cbir(&sys, &["dataset", "list", "--json"]);
        assert!(ok, "{err}");
        let d: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
        assert_eq!(d["id"], x);
        let (ok, out, err) = cbir(&sys, &["dataset", "list"]);
        assert!(ok, "{err}");
        assert!(
            out.contains(&x) && out.contains("unused, deleted in"),
            "{out}"
        );
        assert!(err.contains("(max_datasets_bytes) in use"), "{err}");
        let (ok, _, err) = cbir(&sys, &["dataset", "rm", &x]);
        assert!(ok && err.contains(&format!("deleted {x}")), "{err}");
        let (ok, _, err) = cbir(&sys, &["dataset", "rm", &x]);
        assert!(!ok && err.contains("no uploaded dataset"), "{err}");
    });

    // Listed, unused, with its expiry; an admin deletes it.
    let a = upload(&http, &base, &set).await;
    let l = list(&http, &base).await;
    let d = find(&l, &a).expect("listed");
    assert!(d["bytes"].as_u64().expect("bytes") > 0, "{d}");
    assert_eq!(d["job_ids"], json!([]));
    assert!(d["expires_at_ms"].as_i64().expect("expiry") > d["created_at_ms"].as_i64().expect("c"));
    assert!(l["used_bytes"].as_u64() >= d["bytes"].as_u64(), "{l}");
    assert_eq!(l["quota_bytes"], 16u64 << 30);
    let r = http
        .delete(format!("{base}/api/training/datasets/{a}"))
        .send()
        .await
        .expect("delete");
    assert!(
        json_of(r, 200).await["freed_bytes"]
            .as_u64()
            .expect("freed")
            > 0
    );
    assert!(!datasets.join(&a).exists());
    let r = http
        .delete(format!("{base}/api/training/datasets/{a}"))
        .send()
        .await
        .expect("delete again");
    json_of(r, 404).await;

    // Used by a running job: kept, not deletable; gone once the job ends.
    let b = upload(&http, &base, &set).await;
    let jb = submit(&http, &base, &b, "running").await;
    let l = list(&http, &base).await;
    let d = find(&l, &b).expect("listed");
    assert_eq!(d["job_ids"], json!([jb]));
    assert_eq!(d["expires_at_ms"], 0);
    let r = http
        .delete(format!("{base}/api/training/datasets/{b}"))
        .send()
        .await
        .expect("delete used");
    let e = json_of(r, 409).await;
    assert!(e.to_string().contains(&jb), "{e}");
    // A second job, queued behind the first: cancelled before it starts,
    // its dataset goes at once.
    let c = upload(&http, &base, &set).await;
    let jc = submit(&http, &base, &c, "queued").await;
    assert_eq!(job_state(&http, &base, &jc).await, "queued");
    assert_eq!(cancel(&http, &base, &jc).await["state"], "cancelled");
    assert!(
        !datasets.join(&c).exists(),
        "the queued job's dataset is deleted"
    );
    eventually(60, "the first job runs", async || {
        job_state(&http, &base, &jb).await == "running"
    })
    .await;
    cancel(&http, &base, &jb).await;
    eventually(
        120,
        "the running job ends and its dataset goes",
        async || job_state(&http, &base, &jb).await == "cancelled" && !datasets.join(&b).exists(),
    )
    .await;
    assert!(find(&list(&http, &base).await, &b).is_none());

    // Never used: expires after dataset_ttl_s.
    let e = upload(&http, &base, &set).await;
    assert!(datasets.join(&e).is_dir());
    eventually(30, "the unused dataset expires", async || {
        !datasets.join(&e).exists()
    })
    .await;
    assert!(find(&list(&http, &base).await, &e).is_none());
    sys.shutdown().await;
}
