//! Server-folder indexing jobs with several gateway replicas on one index
//! (issue 13, item 6): a job started on one gateway is answered by every
//! replica with the same progress, and a gateway that dies mid-job leaves
//! the job failed once its lease runs out, not running forever.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::system::{flowers_subset, System};

/// Job lease of the gateways here: a crashed gateway's job fails this long
/// after its last save.
const LEASE_MS: u64 = 3_000;

fn with_root(root: PathBuf) -> impl FnOnce(&mut cbir_gateway::Config) {
    move |c| {
        c.allowed_roots = vec![root];
        c.timeouts.job_lease_ms = LEASE_MS;
    }
}

/// A second gateway of the same system in this runtime.
async fn second_gateway(cfg: cbir_gateway::Config) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(cbir_gateway::serve(cfg, l, std::future::pending()));
    addr
}

/// A gateway on a runtime of its own: shutting that runtime down stops
/// every task of the gateway at once, its job runner included, as a
/// killed process would (no last save).
fn crashable_gateway(cfg: cbir_gateway::Config) -> (SocketAddr, tokio::runtime::Runtime) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.set_nonblocking(true).expect("nonblocking");
    let addr = l.local_addr().expect("addr");
    rt.spawn(async move {
        let l = tokio::net::TcpListener::from_std(l).expect("listener");
        cbir_gateway::serve(cfg, l, std::future::pending()).await
    });
    (addr, rt)
}

async fn wait_up(http: &reqwest::Client, base: &str) {
    for _ in 0..300 {
        if let Ok(r) = http.get(format!("{base}/api/health")).send().await {
            if r.status() == 200 {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("gateway {base} did not come up");
}

async fn start_job(http: &reqwest::Client, base: &str, coll: &str, dir: &Path) -> String {
    let r = http
        .post(format!("{base}/api/collections/{coll}/index-jobs"))
        .json(&json!({"path": dir.display().to_string(), "create_collection": true}))
        .send()
        .await
        .expect("start job");
    assert_eq!(r.status(), 202);
    let v: Value = r.json().await.expect("json");
    v["id"].as_str().expect("job id").to_string()
}

/// The job as gateway `base` answers; never a 404.
async fn job(http: &reqwest::Client, base: &str, id: &str) -> Value {
    let r = http
        .get(format!("{base}/api/jobs/{id}"))
        .send()
        .await
        .expect("get job");
    let status = r.status();
    let v: Value = r.json().await.expect("json");
    assert_eq!(status, 200, "gateway {base} does not know job {id}: {v}");
    v
}

async fn listed(http: &reqwest::Client, base: &str, id: &str) -> bool {
    let v: Value = http
        .get(format!("{base}/api/jobs"))
        .send()
        .await
        .expect("list jobs")
        .json()
        .await
        .expect("json");
    v["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .any(|j| j["id"] == id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jobs_are_shared_by_gateway_replicas_and_fail_when_theirs_dies() {
    let images = tempfile::tempdir().expect("tmp");
    let small = images.path().join("small");
    flowers_subset(&small, &["daisy", "rose", "tulip"], 8);
    let big = images.path().join("big");
    flowers_subset(
        &big,
        &["daisy", "dandelion", "rose", "sunflower", "tulip"],
        40,
    );
    let sys = System::start(with_root(images.path().to_path_buf())).await;
    let http = reqwest::Client::new();
    let a = sys.url();
    let b = format!("http://{}", second_gateway(sys.gateway_cfg.clone()).await);
    wait_up(&http, &b).await;

    // Started on A, polled on B and A in turn: both always know it, with
    // the same progress, which only grows.
    let id = start_job(&http, &a, "jobs", &small).await;
    let started = Instant::now();
    let mut last_done = [0u64; 2];
    let finals = loop {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "the job did not finish in 300 s"
        );
        let mut states = Vec::new();
        for (k, base) in [&b, &a].into_iter().enumerate() {
            let j = job(&http, base, &id).await;
            let done = j["done"].as_u64().expect("done");
            assert!(done >= last_done[k], "progress went back: {j}");
            last_done[k] = done;
            states.push(j);
        }
        if states
            .iter()
            .all(|j| j["state"] != "running" && j["state"] != "pending")
        {
            break states;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(finals[0], finals[1], "the replicas disagree");
    assert_eq!(finals[0]["state"], "succeeded", "{}", finals[0]);
    assert_eq!(finals[0]["done"], 24, "{}", finals[0]);
    assert!(listed(&http, &a, &id).await && listed(&http, &b, &id).await);

    // A gateway dies while its job runs: the others answer it running
    // until the lease passes, then failed, saying why.
    let (c_addr, c_rt) = crashable_gateway(sys.gateway_cfg.clone());
    let c = format!("http://{c_addr}");
    wait_up(&http, &c).await;
    let id2 = start_job(&http, &c, "jobs2", &big).await;
    let seen_running = Instant::now();
    loop {
        let j = job(&http, &b, &id2).await;
        assert_eq!(j["state"], "running", "{j}");
        if j["done"].as_u64().unwrap_or(0) > 0 {
            break;
        }
        assert!(
            seen_running.elapsed() < Duration::from_secs(120),
            "no progress in 120 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    c_rt.shutdown_background();
    let crashed = Instant::now();
    let failed = loop {
        let j = job(&http, &b, &id2).await;
        if j["state"] != "running" {
            break j;
        }
        assert!(
            crashed.elapsed() < Duration::from_millis(LEASE_MS + 5_000),
            "the dead gateway's job still runs {} s later: {j}",
            crashed.elapsed().as_secs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(failed["state"], "failed", "{failed}");
    let msg = failed["message"].as_str().expect("message");
    assert!(msg.contains("gateway running this job stopped"), "{msg}");
    assert!((failed["done"].as_u64().expect("done")) < 200, "{failed}");
    assert_eq!(job(&http, &a, &id2).await["state"], "failed");
    assert!(listed(&http, &a, &id2).await);
    sys.shutdown().await;
}
