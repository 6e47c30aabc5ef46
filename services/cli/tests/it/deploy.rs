//! The Helm chart renders configuration the services accept: each TOML of
//! its ConfigMap loads into the service's own `Config` (which refuses
//! unknown keys), with the addresses the manifests use.

use std::path::PathBuf;
use std::process::Command;

fn helm() -> PathBuf {
    if let Some(p) = std::env::var_os("CBIR_HELM") {
        return PathBuf::from(p);
    }
    let venv = std::env::var_os("CBIR_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/cbir/venv")
        });
    let p = venv.join("bin/helm");
    assert!(
        p.is_file(),
        "no helm at {}: pip install -r scripts/requirements-deploy.txt (scripts/test.sh does) or set CBIR_HELM",
        p.display()
    );
    p
}

/// The block of `key: |` in the rendered ConfigMap, unindented.
fn config_block(rendered: &str, key: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    for line in rendered.lines() {
        if inside {
            let indent = line.len() - line.trim_start().len();
            if !line.trim().is_empty() && indent <= 2 {
                break;
            }
            out.push_str(line.get(4..).unwrap_or(""));
            out.push('\n');
        } else if line.trim() == format!("{key}: |") {
            inside = true;
        }
    }
    assert!(inside, "no {key} in the rendered chart");
    out
}

fn render(args: &[&str]) -> String {
    let chart = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../helm/cbir");
    let out = Command::new(helm())
        .arg("template")
        .arg("rel")
        .arg(&chart)
        .args(args)
        .output()
        .expect("helm runs");
    assert!(
        out.status.success(),
        "helm template failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf8")
}

#[test]
fn chart_config_loads_in_every_service() {
    let rendered = render(&[
        "--set",
        "gateway.images.existingClaim=photos",
        "--set",
        "inference.batcher.maxBatchSize=48",
        "--set",
        "gateway.config.limits.max_top_k=500",
        "--set",
        "index.replicas=3",
        "--set",
        "training.config.defaults.epochs=10",
        "--set",
        "training.nice=15",
    ]);
    let dir = tempfile::tempdir().expect("tmp");
    let write = |name: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, config_block(&rendered, name)).expect("write");
        p
    };
    let gw = cbir_gateway::Config::load(Some(&write("gateway.toml"))).expect("gateway config");
    assert_eq!(gw.listen, "0.0.0.0:8080");
    assert_eq!(gw.inference_urls, ["http://rel-cbir-inference:50051"]);
    assert_eq!(gw.index_urls, ["http://rel-cbir-index:50052"]);
    assert_eq!(gw.allowed_roots, [PathBuf::from("/images")]);
    assert_eq!(gw.limits.max_top_k, 500);
    assert_eq!(gw.training_urls, ["http://rel-cbir-training:50053"]);
    let inf =
        cbir_inference::Config::load(Some(&write("inference.toml"))).expect("inference config");
    assert_eq!(inf.listen, "0.0.0.0:50051");
    assert_eq!(inf.batcher.max_batch_size, 48);
    assert_eq!(inf.device.device, "cuda");
    assert_eq!(inf.metrics_listen.as_deref(), Some("0.0.0.0:9091"));
    let idx = cbir_index::Config::load(Some(&write("index.toml"))).expect("index config");
    assert_eq!(idx.listen, "0.0.0.0:50052");
    assert_eq!(
        idx.inference_url.as_deref(),
        Some("http://rel-cbir-inference:50051")
    );
    assert_eq!(idx.metrics_listen.as_deref(), Some("0.0.0.0:9092"));
    assert_eq!(idx.follow_ms, 1000, "replicas follow each other");
    let tr = cbir_training::Config::load(Some(&write("training.toml"))).expect("training config");
    assert_eq!(tr.listen, "0.0.0.0:50053");
    assert_eq!(tr.inference_url, "http://rel-cbir-inference:50051");
    assert_eq!(tr.index_url.as_deref(), Some("http://rel-cbir-index:50052"));
    assert_eq!(tr.metrics_listen.as_deref(), Some("0.0.0.0:9093"));
    assert_eq!(tr.device, "cuda");
    assert_eq!(tr.nice, 15);
    assert_eq!(tr.defaults.epochs, 10);
    assert_eq!(tr.data_dir, PathBuf::from("/var/lib/cbir/training"));
    // The gateway's folders, mounted at the same path.
    assert_eq!(tr.allowed_roots, [PathBuf::from("/images")]);
    // The database URL comes from a Secret, not the ConfigMap; training
    // shares the index's. The internal token too, in all four.
    assert_eq!(rendered.matches("secretKeyRef").count(), 6);
    assert!(rendered.contains("nvidia.com/gpu: 1"));
    assert!(rendered.contains("image: \"cbir/training:0.1.0-cuda\""));
    let cpu = render(&[
        "--set",
        "inference.device=cpu",
        "--set",
        "training.device=cpu",
    ]);
    assert!(!cpu.contains("nvidia.com/gpu: 1"));
    assert!(cpu.contains("image: \"cbir/inference:0.1.0\""), "CPU image");
    assert!(cpu.contains("image: \"cbir/training:0.1.0\""), "CPU image");
    let tr = cbir_training::Config::load(Some(&{
        let p = dir.path().join("training-cpu.toml");
        std::fs::write(&p, config_block(&cpu, "training.toml")).expect("write");
        p
    }))
    .expect("training config");
    assert_eq!(tr.device, "cpu");
    assert!(tr.allowed_roots.is_empty(), "no folders mounted");
    // Without training the gateway keeps its default and nothing of the
    // service is rendered.
    let off = render(&["--set", "training.enabled=false"]);
    assert!(!off.contains("training.toml"));
    assert!(!off.contains("rel-cbir-training"));
}

#[test]
fn chart_with_tls_and_an_internal_token() {
    let rendered = render(&[
        "--set",
        "security.tls.enabled=true",
        "--set",
        "security.tls.secretName=cbir-tls",
        "--set",
        "security.internalToken.existingSecret=cbir-token",
    ]);
    let dir = tempfile::tempdir().expect("tmp");
    let write = |name: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, config_block(&rendered, name)).expect("write");
        p
    };
    let cert = Some(PathBuf::from("/etc/cbir/tls/tls.crt"));
    let ca = Some(PathBuf::from("/etc/cbir/tls/ca.crt"));
    let gw = cbir_gateway::Config::load(Some(&write("gateway.toml"))).expect("gateway config");
    assert_eq!(gw.inference_urls, ["https://rel-cbir-inference:50051"]);
    assert_eq!(gw.tls.cert, cert);
    assert_eq!(
        gw.tls.client_cert, cert,
        "a client certificate for mutual TLS"
    );
    assert_eq!(gw.tls.client_ca, None, "browsers need no certificate");
    let idx = cbir_index::Config::load(Some(&write("index.toml"))).expect("index config");
    assert_eq!(
        idx.tls.client_ca, ca,
        "internal services demand client certificates"
    );
    assert_eq!(
        idx.inference_url.as_deref(),
        Some("https://rel-cbir-inference:50051")
    );
    let inf =
        cbir_inference::Config::load(Some(&write("inference.toml"))).expect("inference config");
    assert_eq!(inf.tls.client_ca, ca);
    let tr = cbir_training::Config::load(Some(&write("training.toml"))).expect("training config");
    assert_eq!(tr.tls.key, Some(PathBuf::from("/etc/cbir/tls/tls.key")));
    assert_eq!(
        tr.index_url.as_deref(),
        Some("https://rel-cbir-index:50052")
    );
    // Every pod mounts the Secret, reads the token from its Secret, and
    // probes with the binary's own TLS health check.
    assert_eq!(rendered.matches("secretName: cbir-tls").count(), 4);
    assert_eq!(rendered.matches("_INTERNAL_TOKEN").count(), 4);
    assert!(
        !rendered.contains("grpc: {port"),
        "gRPC probes speak no TLS"
    );
    assert!(rendered.contains("command: [\"cbir-index\", \"--probe\"]"));
    assert!(rendered.contains("scheme: HTTPS"));
}

/// Standard base64 (Secret data), without a crate for it.
fn base64_decode(s: &str) -> Vec<u8> {
    const ABC: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = Vec::new();
    for c in s.bytes().filter(|&c| c != b'=') {
        let v = ABC.iter().position(|&a| a == c).expect("base64 digit") as u32;
        bits = (bits << 6) | v;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
            bits &= (1 << n) - 1;
        }
    }
    out
}

/// The Secret of `name` in the rendered chart, if any: its `data` entries.
fn secret_data(rendered: &str, name: &str) -> Option<Vec<(String, String)>> {
    let doc = rendered
        .split("\n---")
        .find(|d| d.contains("kind: Secret") && d.contains(&format!("name: {name}\n")))?;
    let mut out = Vec::new();
    let mut inside = false;
    for line in doc.lines() {
        if line.starts_with("data:") {
            inside = true;
        } else if inside && line.starts_with("  ") {
            let (k, v) = line.trim().split_once(": ").expect("key: value");
            out.push((k.to_string(), v.trim_matches('"').to_string()));
        } else if inside {
            break;
        }
    }
    Some(out)
}

#[test]
fn chart_generates_the_internal_token_secret_or_uses_an_existing_one() {
    // Default: a Secret with a random token, given to every service.
    let a = render(&[]);
    let data = secret_data(&a, "rel-cbir-internal-token").expect("a generated Secret");
    assert_eq!(data.len(), 1, "{data:?}");
    assert_eq!(data[0].0, "internal-token");
    let token = base64_decode(&data[0].1);
    assert_eq!(token.len(), 64, "a long random token");
    assert!(token.iter().all(u8::is_ascii_alphanumeric));
    assert!(a.contains("helm.sh/resource-policy: keep"));
    for prefix in ["GATEWAY", "INDEX", "INFERENCE", "TRAINING"] {
        let env = format!(
            "- name: {prefix}_INTERNAL_TOKEN\n  valueFrom:\n    secretKeyRef:\n      name: rel-cbir-internal-token\n      key: internal-token"
        );
        let compact: String = a
            .lines()
            .map(str::trim_start)
            .collect::<Vec<_>>()
            .join("\n");
        let want: String = env
            .lines()
            .map(str::trim_start)
            .collect::<Vec<_>>()
            .join("\n");
        assert!(compact.contains(&want), "{prefix} gets the generated token");
    }
    // Another render makes another token (helm template has no cluster to
    // look the installed one up in; an upgrade keeps it through lookup).
    let b = render(&[]);
    assert_ne!(
        secret_data(&b, "rel-cbir-internal-token"),
        Some(data),
        "tokens are random"
    );
    // An existing Secret: none generated, every service reads that one.
    let e = render(&[
        "--set",
        "security.internalToken.existingSecret=cbir-token",
        "--set",
        "security.internalToken.secretKey=token",
    ]);
    assert!(secret_data(&e, "rel-cbir-internal-token").is_none());
    assert_eq!(
        e.matches("name: cbir-token").count(),
        4,
        "all four services"
    );
    assert_eq!(e.matches("key: token").count(), 4);
    // Without training: the other three still get it.
    let off = render(&["--set", "training.enabled=false"]);
    assert_eq!(off.matches("_INTERNAL_TOKEN").count(), 3);
}

#[test]
fn compose_requires_the_internal_token_for_every_service() {
    let compose = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docker-compose.yml"),
    )
    .expect("docker-compose.yml");
    // Interpolation with :? fails `docker compose up` when it is unset
    // (scripts/test.sh checks that with docker-compose config).
    let anchor = compose
        .lines()
        .find(|l| l.starts_with("x-internal-token: &internal-token"))
        .expect("the token anchor");
    assert!(anchor.contains("${CBIR_INTERNAL_TOKEN:?"), "{anchor}");
    for prefix in ["INFERENCE", "INDEX", "TRAINING", "GATEWAY"] {
        assert!(
            compose.contains(&format!("{prefix}_INTERNAL_TOKEN: *internal-token")),
            "{prefix} gets the token"
        );
    }
}

/// The chart tells the gateway its names (the ingress host, the service,
/// loopback for the probes) and the proxies whose X-Forwarded-For counts.
#[test]
fn chart_names_the_gateway_hosts_and_proxies() {
    let rendered = render(&[
        "--set",
        "gateway.ingress.enabled=true",
        "--set",
        "gateway.ingress.host=cbir.example.org",
        "--set",
        "gateway.trustedProxies={10.0.0.0/8}",
    ]);
    let dir = tempfile::tempdir().expect("tmp");
    let p = dir.path().join("gateway.toml");
    std::fs::write(&p, config_block(&rendered, "gateway.toml")).expect("write");
    let gw = cbir_gateway::Config::load(Some(&p)).expect("gateway config");
    for host in ["cbir.example.org", "rel-cbir-gateway", "localhost"] {
        assert!(
            gw.allowed_hosts.iter().any(|h| h == host),
            "{host} not in {:?}",
            gw.allowed_hosts
        );
    }
    assert_eq!(gw.auth.trusted_proxies, ["10.0.0.0/8"]);
    cbir_gateway::guard::Guard::new(&gw, None).expect("the names parse");
    assert!(
        rendered.contains("httpHeaders: [{name: Host, value: localhost}]"),
        "the readiness probe names a host the gateway answers to"
    );
}

/// `index.shards` renders one StatefulSet per shard (with its replicas),
/// tells each pod its shard, and gives the gateway one URL list per shard.
#[test]
fn chart_shards_the_index() {
    let rendered = render(&["--set", "index.shards=3", "--set", "index.replicas=2"]);
    let dir = tempfile::tempdir().expect("tmp");
    let write = |name: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, config_block(&rendered, name)).expect("write");
        p
    };
    let gw = cbir_gateway::Config::load(Some(&write("gateway.toml"))).expect("gateway config");
    assert_eq!(
        gw.index_shard_urls(),
        (0..3)
            .map(|i| vec![format!("http://rel-cbir-index-{i}:50052")])
            .collect::<Vec<_>>()
    );
    let idx = cbir_index::Config::load(Some(&write("index.toml"))).expect("index config");
    assert_eq!(idx.follow_ms, 1000, "shards follow each other's imports");
    // Each shard's peers: every replica of every shard, by pod name under
    // the shard's headless Service.
    assert_eq!(
        idx.peers,
        (0..3)
            .map(|i| (0..2)
                .map(|r| format!("http://rel-cbir-index-{i}-{r}.rel-cbir-index-{i}:50052"))
                .collect::<Vec<_>>())
            .collect::<Vec<_>>()
    );
    assert_eq!(rendered.matches("kind: StatefulSet").count(), 3);
    for i in 0..3 {
        assert!(rendered.contains(&format!("serviceName: rel-cbir-index-{i}\n  replicas: 2\n")));
        assert!(rendered.contains(&format!(
            "- name: INDEX_SHARD__ID\n              value: \"{i}\""
        )));
    }
    assert_eq!(
        rendered
            .matches("- name: INDEX_SHARD__COUNT\n              value: \"3\"")
            .count(),
        3
    );
    // One shard keeps the unsharded names and configuration.
    let one = render(&[]);
    assert_eq!(one.matches("kind: StatefulSet").count(), 1);
    assert!(one.contains("serviceName: rel-cbir-index\n"));
    let p = dir.path().join("gateway-one.toml");
    std::fs::write(&p, config_block(&one, "gateway.toml")).expect("write");
    let gw = cbir_gateway::Config::load(Some(&p)).expect("gateway config");
    assert!(gw.index_shards.is_empty());
    let p = dir.path().join("index-one.toml");
    std::fs::write(&p, config_block(&one, "index.toml")).expect("write");
    let idx = cbir_index::Config::load(Some(&p)).expect("index config");
    assert!(idx.peers.is_empty(), "one shard has no peers");
    assert_eq!(gw.index_shard_urls(), [["http://rel-cbir-index:50052"]]);
}

/// Compose runs the index as two shards and the gateway knows both.
#[test]
fn compose_runs_two_index_shards() {
    let compose = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docker-compose.yml"),
    )
    .expect("docker-compose.yml");
    let shards = compose
        .lines()
        .find_map(|l| l.trim().strip_prefix("GATEWAY_INDEX_SHARDS: "))
        .expect("the gateway's shard list");
    let shards: Vec<Vec<String>> =
        serde_json::from_str(shards.trim_matches('\'')).expect("a JSON list of lists");
    assert_eq!(
        shards,
        [["http://index:50052"], ["http://index-1:50052"]],
        "shard 0 is `index`, shard 1 `index-1`"
    );
    // Both shards name both as peers, in the same order.
    let peers = compose
        .lines()
        .find_map(|l| l.trim().strip_prefix("INDEX_PEERS: "))
        .expect("the shards' peer list");
    let peers: Vec<Vec<String>> =
        serde_json::from_str(peers.trim_matches('\'')).expect("a JSON list of lists");
    assert_eq!(peers, shards, "peers list the shards as the gateway does");
    assert!(compose.contains("INDEX_SHARD__COUNT: \"2\""));
    assert!(compose.contains("  index-1:\n    <<: *index\n"));
    assert!(compose.contains("INDEX_SHARD__ID: \"1\""));
}
