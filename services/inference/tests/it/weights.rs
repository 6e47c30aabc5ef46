//! LoadModel serves only weights the caller vouches for by SHA-256 (the
//! registry's), and reads weights by path only inside the model folder.

use cbir_api::v1 as pb;
use tonic::Code;

use crate::harness::{read, sha256, weights, Server};

type Client =
    cbir_api::v1::inference_service_client::InferenceServiceClient<tonic::transport::Channel>;

fn imagenet() -> Option<pb::ModelRef> {
    Some(pb::ModelRef {
        name: "efficientnet-lite0".into(),
        version: "imagenet".into(),
    })
}

async fn served_sha(client: &mut Client) -> String {
    client
        .get_model_info(pb::GetModelInfoRequest::default())
        .await
        .expect("info")
        .into_inner()
        .info
        .expect("info")
        .weights_sha256
}

async fn tench_feature(client: &mut Client) -> Vec<f32> {
    client
        .embed_image(pb::EmbedImageRequest {
            image: Some(pb::ImageInput {
                id: "tench".into(),
                data: read("imagenet-sample-300/n01440764/n01440764_tench.JPEG"),
            }),
            ..Default::default()
        })
        .await
        .expect("embed")
        .into_inner()
        .embedding
        .expect("embedding")
        .feature
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_model_refuses_weights_whose_sha256_differs() {
    let server = Server::start(cbir_inference::Config::for_test()).await;
    let mut client = server.client.clone();
    let real = std::fs::read(weights()).expect("weights");
    let real_sha = sha256(&real);
    assert_eq!(
        served_sha(&mut client).await,
        real_sha,
        "GetModelInfo reports the hash"
    );
    let before = tench_feature(&mut client).await;
    // Tampered weights under the active model's name: one byte of the last
    // tensor changed, still a valid safetensors file of the same network.
    let mut tampered = real.clone();
    let n = tampered.len();
    tampered[n - 3] ^= 0x40;
    let tampered_sha = sha256(&tampered);
    for (claimed, why) in [
        (real_sha.clone(), "the real model's hash"),
        (String::new(), "no hash"),
        ("zz".repeat(32), "not hex"),
    ] {
        let err = client
            .load_model(pb::LoadModelRequest {
                model: imagenet(),
                weights: Some(pb::load_model_request::Weights::Data(tampered.clone())),
                weights_sha256: claimed,
                ..Default::default()
            })
            .await
            .expect_err(why);
        assert_eq!(err.code(), Code::InvalidArgument, "{why}: {err:?}");
        assert!(
            err.message().contains("SHA-256"),
            "{why}: {}",
            err.message()
        );
    }
    // Search keeps the real model.
    assert_eq!(served_sha(&mut client).await, real_sha);
    assert_eq!(tench_feature(&mut client).await, before);
    // The same bytes named by their own hash load: the hash alone refused
    // them above.
    let info = client
        .load_model(pb::LoadModelRequest {
            model: imagenet(),
            weights: Some(pb::load_model_request::Weights::Data(tampered)),
            weights_sha256: tampered_sha.to_uppercase(),
            ..Default::default()
        })
        .await
        .expect("weights with their own hash")
        .into_inner()
        .info
        .expect("info");
    assert_eq!(info.weights_sha256, tampered_sha);
    assert_eq!(served_sha(&mut client).await, tampered_sha);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_model_by_path_stays_inside_the_model_folder() {
    let dir = tempfile::tempdir().expect("tmp");
    let models = dir.path().join("models");
    let outside = dir.path().join("outside");
    std::fs::create_dir_all(&models).expect("mkdir");
    std::fs::create_dir_all(&outside).expect("mkdir");
    std::fs::copy(weights(), models.join("ok.safetensors")).expect("copy");
    std::fs::copy(weights(), outside.join("evil.safetensors")).expect("copy");
    std::os::unix::fs::symlink(
        outside.join("evil.safetensors"),
        models.join("link.safetensors"),
    )
    .expect("file link");
    std::os::unix::fs::symlink(&outside, models.join("sub")).expect("folder link");
    std::os::unix::fs::symlink(
        models.join("ok.safetensors"),
        models.join("inner.safetensors"),
    )
    .expect("inner link");
    let sha = sha256(&std::fs::read(weights()).expect("weights"));
    let mut cfg = cbir_inference::Config::for_test();
    cfg.model_dir = Some(models.clone());
    let server = Server::start(cfg).await;
    let mut client = server.client.clone();
    let load = |path: String| pb::LoadModelRequest {
        model: Some(pb::ModelRef {
            name: "efficientnet-lite0".into(),
            version: "by-path".into(),
        }),
        weights: Some(pb::load_model_request::Weights::Path(path)),
        weights_sha256: sha.clone(),
        ..Default::default()
    };
    let outside_abs = outside.join("evil.safetensors").display().to_string();
    for (path, code) in [
        (outside_abs.clone(), Code::PermissionDenied),
        (
            "../outside/evil.safetensors".to_string(),
            Code::PermissionDenied,
        ),
        ("link.safetensors".to_string(), Code::PermissionDenied),
        ("sub/evil.safetensors".to_string(), Code::PermissionDenied),
        ("/etc/passwd".to_string(), Code::PermissionDenied),
        ("missing.safetensors".to_string(), Code::InvalidArgument),
    ] {
        let err = client
            .load_model(load(path.clone()))
            .await
            .expect_err(&path);
        assert_eq!(err.code(), code, "{path}: {err:?}");
        // Neither the path sent nor where a link leads is echoed.
        let m = err.message();
        assert!(!m.contains('/') && !m.contains("evil"), "{path}: {m}");
        assert!(m.contains("model_dir"), "names the setting: {m}");
    }
    assert_eq!(served_sha(&mut client).await, sha);
    let info = client
        .get_model_info(pb::GetModelInfoRequest::default())
        .await
        .expect("info")
        .into_inner()
        .info
        .expect("info");
    assert_eq!(
        info.model.map(|m| m.version),
        Some("imagenet".into()),
        "nothing loaded"
    );
    // Inside the folder: relative, absolute, and through a link that stays in.
    for path in [
        "ok.safetensors".to_string(),
        models.join("ok.safetensors").display().to_string(),
        "inner.safetensors".to_string(),
    ] {
        let info = client
            .load_model(load(path.clone()))
            .await
            .unwrap_or_else(|e| panic!("{path}: {e:?}"))
            .into_inner()
            .info
            .expect("info");
        assert_eq!(info.model.map(|m| m.version), Some("by-path".into()));
    }
    server.stop().await;
}
