//! The four service processes of a soak run.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::Value;

use crate::Args;

pub const SERVICES: [&str; 4] = ["inference", "index", "training", "gateway"];

/// The service processes; killed when dropped.
pub struct Fleet {
    children: Vec<(&'static str, Child)>,
    pub dir: tempfile::TempDir,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for (_, c) in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Fleet {
    pub fn pid(&self, name: &str) -> u32 {
        self.children
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, c)| c.id())
            .unwrap_or(0)
    }

    /// Fails when a service has exited (a crash is an error of the soak).
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        for (name, c) in &mut self.children {
            if let Some(status) = c.try_wait()? {
                bail!(
                    "the {name} service exited ({status}); its log: {}",
                    self.dir.path().join(format!("{name}.log")).display()
                );
            }
        }
        Ok(())
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

pub fn start(args: &Args) -> anyhow::Result<(Fleet, String)> {
    let bin_dir = match &args.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("no folder for this executable")?
            .to_path_buf(),
    };
    let weights = std::fs::canonicalize(&args.weights).with_context(|| {
        format!(
            "the weights {} are missing: run scripts/setup.sh",
            args.weights.display()
        )
    })?;
    let dir = tempfile::tempdir()?;
    let ports: Vec<u16> = (0..4).map(|_| free_port()).collect::<anyhow::Result<_>>()?;
    let url = |i: usize| format!("http://127.0.0.1:{}", ports[i]);
    let token = format!("soak-{:016x}", rand::random::<u64>());
    let d = dir.path();
    let envs: [Vec<(String, String)>; 4] = [
        vec![
            ("INFERENCE_LISTEN".into(), format!("127.0.0.1:{}", ports[0])),
            (
                "INFERENCE_MODEL__WEIGHTS".into(),
                weights.display().to_string(),
            ),
        ],
        vec![
            ("INDEX_LISTEN".into(), format!("127.0.0.1:{}", ports[1])),
            (
                "INDEX_DATABASE_URL".into(),
                format!("sqlite://{}", d.join("index.db").display()),
            ),
            ("INDEX_INFERENCE_URL".into(), url(0)),
        ],
        vec![
            ("TRAINING_LISTEN".into(), format!("127.0.0.1:{}", ports[2])),
            (
                "TRAINING_DATABASE_URL".into(),
                format!("sqlite://{}", d.join("training.db").display()),
            ),
            (
                "TRAINING_DATA_DIR".into(),
                d.join("training").display().to_string(),
            ),
            (
                "TRAINING_BASE_WEIGHTS".into(),
                weights.display().to_string(),
            ),
            ("TRAINING_INFERENCE_URL".into(), url(0)),
            ("TRAINING_INDEX_URL".into(), url(1)),
        ],
        vec![
            ("GATEWAY_LISTEN".into(), format!("127.0.0.1:{}", ports[3])),
            ("GATEWAY_INFERENCE_URLS".into(), url(0)),
            ("GATEWAY_INDEX_URLS".into(), url(1)),
            ("GATEWAY_TRAINING_URLS".into(), url(2)),
        ],
    ];
    let mut children = Vec::new();
    for (name, env) in SERVICES.iter().zip(envs) {
        let bin = bin_dir.join(format!("cbir-{name}"));
        let log = std::fs::File::create(d.join(format!("{name}.log")))?;
        let prefix = name.to_uppercase();
        let child = Command::new(&bin)
            .envs(env)
            .env(format!("{prefix}_INTERNAL_TOKEN"), &token)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| {
                format!(
                    "cannot start {}: build the services first \
                     (cargo build --release --bins)",
                    bin.display()
                )
            })?;
        children.push((*name, child));
    }
    Ok((Fleet { children, dir }, url(3)))
}

pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

pub async fn wait_healthy(
    http: &reqwest::Client,
    base: &str,
    fleet: &mut Fleet,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        fleet.check_alive()?;
        if let Ok(r) = http.get(format!("{base}/api/health")).send().await {
            if let Ok(v) = r.json::<Value>().await {
                if v["status"] == "ok" {
                    return Ok(());
                }
            }
        }
        if Instant::now() > deadline {
            bail!("the system did not become healthy in 180 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
