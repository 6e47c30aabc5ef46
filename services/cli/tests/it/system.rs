//! The whole system in one process on fixed loopback ports, with each
//! service stoppable and restartable on its port (to test outages).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub fn shared_data() -> PathBuf {
    let dir = std::env::var_os("CBIR_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data"));
    assert!(
        dir.join("flowers5").is_dir(),
        "no flowers5 under {}: set CBIR_SHARED_DATA",
        dir.display()
    );
    dir
}

/// The first `per_class` images (sorted) of each of `classes` of flowers5,
/// copied into `dest/<class>/`.
pub fn flowers_subset(dest: &Path, classes: &[&str], per_class: usize) -> Vec<PathBuf> {
    subset("flowers5", dest, classes, per_class)
}

/// `flowers_subset` of another shared set (`caltech101`, say).
pub fn subset(set: &str, dest: &Path, classes: &[&str], per_class: usize) -> Vec<PathBuf> {
    let root = shared_data().join(set);
    let mut out = Vec::new();
    for class in classes {
        let mut names: Vec<PathBuf> = std::fs::read_dir(root.join(class))
            .expect("class dir")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        names.sort();
        std::fs::create_dir_all(dest.join(class)).expect("mkdir");
        for p in names.into_iter().take(per_class) {
            let to = dest.join(class).join(p.file_name().expect("name"));
            std::fs::copy(&p, &to).expect("copy");
            out.push(to);
        }
    }
    out
}

struct Running {
    stop: oneshot::Sender<()>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    async fn stop(self) {
        let _ = self.stop.send(());
        let mut task = self.task;
        if tokio::time::timeout(Duration::from_secs(10), &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
    }
}

/// A loopback port held open until its service first starts, so that no
/// other process (the tests run in parallel) can take it in between.
fn reserve() -> std::net::TcpListener {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.set_nonblocking(true).expect("nonblocking");
    l
}

/// The reserved listener on its first use; afterwards the same port again
/// (a restart after an outage).
async fn bind(
    addr: SocketAddr,
    reserved: &mut Option<std::net::TcpListener>,
) -> tokio::net::TcpListener {
    if let Some(l) = reserved.take() {
        return tokio::net::TcpListener::from_std(l).expect("listener");
    }
    // The port was just released by a stopped service; it may take a moment.
    for _ in 0..100 {
        if let Ok(l) = tokio::net::TcpListener::bind(addr).await {
            return l;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("cannot bind {addr} again");
}

fn stop_future() -> (
    oneshot::Sender<()>,
    impl std::future::Future<Output = ()> + Send,
) {
    let (tx, rx) = oneshot::channel::<()>();
    (tx, async move {
        let _ = rx.await;
    })
}

pub struct System {
    pub dir: tempfile::TempDir,
    pub inference_addr: SocketAddr,
    pub index_addr: SocketAddr,
    pub gateway_addr: SocketAddr,
    pub training_addr: SocketAddr,
    pub inference_metrics_addr: SocketAddr,
    pub index_metrics_addr: SocketAddr,
    inference: Option<Running>,
    index: Option<Running>,
    gateway: Option<Running>,
    training: Option<Running>,
    reserved: [Option<std::net::TcpListener>; 4],
    pub training_cfg: cbir_training::Config,
    pub gateway_cfg: cbir_gateway::Config,
    /// The index's limits at its next start.
    pub index_limits: cbir_index::Limits,
    pub tls: Option<TestTls>,
    /// The index's database: a SQLite file in `dir` unless a test gave one.
    pub index_database_url: String,
}

/// A private CA, a server certificate for localhost / 127.0.0.1 and a
/// client certificate, as PEM files.
pub struct TestTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl TestTls {
    pub fn generate(dir: &Path) -> Self {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
        let ca_key = KeyPair::generate().expect("key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // Not rcgen's default name, which the leaves carry too: OpenSSL
        // clients (Python's grpc, curl) take a leaf whose issuer is its
        // own subject for self-signed and refuse it.
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "cbir test CA");
        let ca = ca_params.self_signed(&ca_key).expect("ca");
        let issue = |names: Vec<String>| {
            let key = KeyPair::generate().expect("key");
            let cert = CertificateParams::new(names)
                .expect("params")
                .signed_by(&key, &ca, &ca_key)
                .expect("sign");
            (cert.pem(), key.serialize_pem())
        };
        let (server_pem, server_key) = issue(vec!["localhost".into(), "127.0.0.1".into()]);
        let (client_pem, client_key) = issue(vec!["cbir-gateway".into()]);
        let write = |name: &str, pem: &str| {
            let p = dir.join(name);
            std::fs::write(&p, pem).expect("write pem");
            p
        };
        Self {
            ca: write("ca.pem", &ca.pem()),
            cert: write("server.pem", &server_pem),
            key: write("server.key", &server_key),
            client_cert: write("client.pem", &client_pem),
            client_key: write("client.key", &client_key),
        }
    }

    /// An internal service: TLS with client certificates required, and a
    /// client certificate on its own calls.
    pub fn internal(&self) -> cbir_common::tls::TlsConfig {
        cbir_common::tls::TlsConfig {
            client_ca: Some(self.ca.clone()),
            ..self.gateway()
        }
    }

    /// The gateway: TLS for browsers and clients (no client certificate
    /// asked), a client certificate towards the internal services.
    pub fn gateway(&self) -> cbir_common::tls::TlsConfig {
        cbir_common::tls::TlsConfig {
            cert: Some(self.cert.clone()),
            key: Some(self.key.clone()),
            client_ca: None,
            ca: Some(self.ca.clone()),
            client_cert: Some(self.client_cert.clone()),
            client_key: Some(self.client_key.clone()),
        }
    }

    pub fn http(&self) -> reqwest::Client {
        let pem = std::fs::read(&self.ca).expect("ca");
        reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("pem"))
            .build()
            .expect("client")
    }
}

impl System {
    pub async fn start(tweak: impl FnOnce(&mut cbir_gateway::Config)) -> Self {
        Self::start_with_token(None, tweak).await
    }

    /// The system with `internal_token` set in every service.
    pub async fn start_with_token(
        internal_token: Option<&str>,
        tweak: impl FnOnce(&mut cbir_gateway::Config),
    ) -> Self {
        Self::start_with(internal_token, false, tweak).await
    }

    /// The system with the index on `index_database_url` (a fresh MariaDB
    /// database, say) instead of its own SQLite file.
    pub async fn start_on_index_database(
        index_database_url: String,
        tweak: impl FnOnce(&mut cbir_gateway::Config),
    ) -> Self {
        Self::start_full(None, false, Some(index_database_url), tweak).await
    }

    /// The system with TLS on every port: mutual TLS between the
    /// services, https:// and TLS gRPC at the gateway.
    pub async fn start_with_tls(tweak: impl FnOnce(&mut cbir_gateway::Config)) -> Self {
        Self::start_with(None, true, tweak).await
    }

    async fn start_with(
        internal_token: Option<&str>,
        tls: bool,
        tweak: impl FnOnce(&mut cbir_gateway::Config),
    ) -> Self {
        Self::start_full(internal_token, tls, None, tweak).await
    }

    async fn start_full(
        internal_token: Option<&str>,
        tls: bool,
        index_database_url: Option<String>,
        tweak: impl FnOnce(&mut cbir_gateway::Config),
    ) -> Self {
        cbir_common::telemetry::init_for_tests();
        let dir = tempfile::tempdir().expect("tempdir");
        let index_database_url = index_database_url
            .unwrap_or_else(|| format!("sqlite://{}", dir.path().join("index.db").display()));
        let tls = tls.then(|| TestTls::generate(dir.path()));
        let scheme = if tls.is_some() { "https" } else { "http" };
        let reserved = [reserve(), reserve(), reserve(), reserve()];
        let [inference_addr, index_addr, gateway_addr, training_addr] =
            reserved.each_ref().map(|l| l.local_addr().expect("addr"));
        // The metrics endpoints bind their own ports; a clash there is
        // logged by the service and only the metrics assertions would fail.
        let (inference_metrics_addr, index_metrics_addr) = {
            let (a, b) = (reserve(), reserve());
            (a.local_addr().expect("addr"), b.local_addr().expect("addr"))
        };
        let mut gateway_cfg = cbir_gateway::Config {
            inference_urls: vec![format!("{scheme}://{inference_addr}")],
            index_urls: vec![format!("{scheme}://{index_addr}")],
            training_urls: vec![format!("{scheme}://{training_addr}")],
            tls: tls.as_ref().map(TestTls::gateway).unwrap_or_default(),
            ..Default::default()
        };
        gateway_cfg.timeouts.connect_ms = 500;
        gateway_cfg.internal_token = internal_token.map(String::from);
        tweak(&mut gateway_cfg);
        let training_cfg = cbir_training::Config {
            database_url: format!("sqlite://{}", dir.path().join("training.db").display()),
            data_dir: dir.path().join("training"),
            base_weights: cbir_inference::test_weights_path(),
            allowed_roots: vec![dir.path().to_path_buf()],
            inference_url: format!("{scheme}://{inference_addr}"),
            index_url: Some(format!("{scheme}://{index_addr}")),
            reconcile_ms: 1_000,
            internal_token: internal_token.map(String::from),
            tls: tls.as_ref().map(TestTls::internal).unwrap_or_default(),
            ..Default::default()
        };
        let mut sys = Self {
            dir,
            inference_addr,
            index_addr,
            gateway_addr,
            training_addr,
            inference_metrics_addr,
            index_metrics_addr,
            inference: None,
            index: None,
            gateway: None,
            training: None,
            reserved: reserved.map(Some),
            gateway_cfg,
            training_cfg,
            index_limits: cbir_index::Limits::default(),
            tls,
            index_database_url,
        };
        sys.start_inference().await;
        sys.start_index().await;
        sys.start_training().await;
        sys.start_gateway().await;
        sys.wait_healthy().await;
        sys
    }

    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme(), self.gateway_addr)
    }

    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// An HTTP client that trusts the system's certificates.
    pub fn http(&self) -> reqwest::Client {
        match &self.tls {
            Some(t) => t.http(),
            None => reqwest::Client::new(),
        }
    }

    fn internal_tls(&self) -> cbir_common::tls::TlsConfig {
        self.tls.as_ref().map(TestTls::internal).unwrap_or_default()
    }

    pub async fn start_inference(&mut self) {
        let mut cfg = cbir_inference::Config::for_test();
        cfg.batcher.max_queue_delay_us = 2_000;
        // One process, one decode budget (as in `cbir up`): the gateway's
        // settings, so that tests set it through `tweak`.
        let g = &self.gateway_cfg.limits;
        cfg.limits.decode_memory_bytes = g.decode_memory_bytes;
        cfg.limits.max_decodes = g.max_decodes;
        cfg.limits.decode_wait_ms = g.decode_wait_ms;
        cfg.internal_token = self.gateway_cfg.internal_token.clone();
        cfg.metrics_listen = Some(self.inference_metrics_addr.to_string());
        cfg.tls = self.internal_tls();
        let l = bind(self.inference_addr, &mut self.reserved[0]).await;
        let (stop, fut) = stop_future();
        let task = tokio::spawn(cbir_inference::serve(cfg, l, fut));
        self.inference = Some(Running { stop, task });
    }

    pub async fn stop_inference(&mut self) {
        if let Some(r) = self.inference.take() {
            r.stop().await;
        }
    }

    pub async fn start_index(&mut self) {
        let cfg = cbir_index::Config {
            database_url: self.index_database_url.clone(),
            inference_url: Some(format!("{}://{}", self.scheme(), self.inference_addr)),
            metrics_listen: Some(self.index_metrics_addr.to_string()),
            limits: self.index_limits,
            internal_token: self.gateway_cfg.internal_token.clone(),
            tls: self.internal_tls(),
            ..Default::default()
        };
        let l = bind(self.index_addr, &mut self.reserved[1]).await;
        let (stop, fut) = stop_future();
        let task = tokio::spawn(cbir_index::serve(cfg, l, fut));
        self.index = Some(Running { stop, task });
    }

    pub async fn stop_index(&mut self) {
        if let Some(r) = self.index.take() {
            r.stop().await;
        }
    }

    pub async fn start_training(&mut self) {
        let l = bind(self.training_addr, &mut self.reserved[3]).await;
        let (stop, fut) = stop_future();
        let task = tokio::spawn(cbir_training::serve(self.training_cfg.clone(), l, fut));
        self.training = Some(Running { stop, task });
    }

    pub async fn stop_training(&mut self) {
        if let Some(r) = self.training.take() {
            r.stop().await;
        }
    }

    pub async fn start_gateway(&mut self) {
        let l = bind(self.gateway_addr, &mut self.reserved[2]).await;
        let (stop, fut) = stop_future();
        let task = tokio::spawn(cbir_gateway::serve(self.gateway_cfg.clone(), l, fut));
        self.gateway = Some(Running { stop, task });
    }

    /// Stops the gateway gracefully: it finishes the requests in flight.
    pub async fn stop_gateway(&mut self) {
        if let Some(r) = self.gateway.take() {
            r.stop().await;
        }
    }

    /// Waits until the gateway reports every service up.
    pub async fn wait_healthy(&self) {
        let http = self.http();
        for _ in 0..600 {
            if let Ok(r) = http.get(format!("{}/api/health", self.url())).send().await {
                if let Ok(v) = r.json::<serde_json::Value>().await {
                    if v["status"] == "ok" {
                        return;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the system did not become healthy in 60 s");
    }

    pub async fn shutdown(mut self) {
        if let Some(r) = self.gateway.take() {
            r.stop().await;
        }
        self.stop_training().await;
        self.stop_index().await;
        self.stop_inference().await;
    }
}
