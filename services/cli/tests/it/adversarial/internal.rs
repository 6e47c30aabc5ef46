//! Item 2 of issue 13: the internal services are never open. Each attack
//! goes straight to an internal service's port of a system started as
//! `cbir up` starts it (a random token made in its data folder), without
//! the token or with a guessed one; then the system is checked unharmed.

use std::time::Duration;

use cbir_api::v1 as pb;
use cbir_api::v1::index_service_client::IndexServiceClient;
use cbir_api::v1::inference_service_client::InferenceServiceClient;
use cbir_api::v1::training_service_client::TrainingServiceClient;
use serde_json::{json, Value};
use tonic::transport::Channel;

use crate::system::{flowers_subset, shared_data, System};

struct Target {
    sys: System,
    token: String,
    _data: tempfile::TempDir,
}

/// A system with the token `cbir up` would make, and collection `c` of
/// four flowers uploaded through the gateway.
async fn target(tweak: impl FnOnce(&mut cbir_gateway::Config)) -> Target {
    let data = tempfile::tempdir().expect("tmp");
    let token = cbir_common::token::load_or_create(data.path()).expect("token");
    let sys = System::start_with_token(Some(&token), tweak).await;
    let files = flowers_subset(&sys.dir.path().join("up"), &["rose", "tulip"], 2);
    let mut form = reqwest::multipart::Form::new();
    for f in &files {
        let class = f.parent().and_then(|p| p.file_name()).expect("class");
        let name = f.file_name().expect("name");
        form =
            form.part(
                "files",
                reqwest::multipart::Part::bytes(std::fs::read(f).expect("read")).file_name(
                    format!("{}/{}", class.to_string_lossy(), name.to_string_lossy()),
                ),
            );
    }
    let r = sys
        .http()
        .post(format!(
            "{}/api/collections/c/images?create=true",
            sys.url()
        ))
        .multipart(form)
        .send()
        .await
        .expect("upload");
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    Target {
        sys,
        token,
        _data: data,
    }
}

fn channel(addr: std::net::SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect_lazy()
}

/// The attacker's two tries: no token, and a guessed one.
fn tries<T: Clone>(msg: &T) -> [tonic::Request<T>; 2] {
    let mut guessed = tonic::Request::new(msg.clone());
    guessed
        .metadata_mut()
        .insert("x-internal-token", "0".repeat(64).parse().expect("ascii"));
    [tonic::Request::new(msg.clone()), guessed]
}

fn with_token<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("x-internal-token", token.parse().expect("ascii"));
    r
}

fn unauthenticated(r: Result<impl std::fmt::Debug, tonic::Status>, what: &str) {
    let s = r.expect_err(what);
    assert_eq!(s.code(), tonic::Code::Unauthenticated, "{what}: {s:?}");
}

/// Images of `c`, read through the gateway.
async fn count(t: &Target) -> u64 {
    let v: Value = t
        .sys
        .http()
        .get(format!("{}/api/collections/c", t.sys.url()))
        .send()
        .await
        .expect("collection")
        .json()
        .await
        .expect("json");
    v["count"]
        .as_u64()
        .or_else(|| v["collection"]["count"].as_u64())
        .unwrap_or_else(|| panic!("no count in {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_index_clear_without_the_token() {
    let t = target(|_| {}).await;
    assert_eq!(count(&t).await, 4);
    let mut idx = IndexServiceClient::new(channel(t.sys.index_addr));
    for req in tries(&pb::ClearRequest {
        collection: "c".into(),
    }) {
        unauthenticated(idx.clear(req).await, "clear");
    }
    assert_eq!(count(&t).await, 4, "nothing removed");
    super::report(
        "raw gRPC Clear to the index port (no token / guessed token)",
        "UNAUTHENTICATED; collection intact",
    );
    t.sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_index_delete_collection_without_the_token() {
    let t = target(|_| {}).await;
    let mut idx = IndexServiceClient::new(channel(t.sys.index_addr));
    for req in tries(&pb::DeleteCollectionRequest { name: "c".into() }) {
        unauthenticated(idx.delete_collection(req).await, "delete collection");
    }
    assert_eq!(count(&t).await, 4, "the collection is still there");
    super::report(
        "raw gRPC DeleteCollection to the index port",
        "UNAUTHENTICATED; collection intact",
    );
    t.sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_index_upsert_of_a_forged_record_without_the_token() {
    let t = target(|_| {}).await;
    let mut idx = IndexServiceClient::new(channel(t.sys.index_addr));
    let forged = pb::UpsertRequest {
        collection: "c".into(),
        records: vec![pb::ImageRecord {
            content_hash: "f".repeat(64),
            file_name: "forged.jpg".into(),
            label: "rose".into(),
            predicted_class: 1,
            feature: vec![1.0 / (1280f32).sqrt(); 1280],
            ..Default::default()
        }],
        replace: false,
    };
    for req in tries(&forged) {
        unauthenticated(idx.upsert(req).await, "upsert");
    }
    assert_eq!(count(&t).await, 4, "no record added");
    super::report(
        "raw gRPC Upsert of a forged record to the index port",
        "UNAUTHENTICATED; nothing stored",
    );
    t.sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_index_get_image_of_an_original_without_the_token() {
    let t = target(|_| {}).await;
    let mut idx = IndexServiceClient::new(channel(t.sys.index_addr));
    let ask = pb::GetImageRequest {
        collection: "c".into(),
        id: 1,
        include_source: true,
        include_feature: true,
        include_thumbnail: true,
    };
    for req in tries(&ask) {
        unauthenticated(idx.get_image(req).await, "get image");
    }
    // The same call with the token reaches the original: the refusal above
    // is the token's doing.
    let img = idx
        .get_image(with_token(ask, &t.token))
        .await
        .expect("with the token")
        .into_inner()
        .image
        .expect("image");
    assert!(!img.feature.is_empty());
    super::report(
        "raw gRPC GetImage of an original from the index port",
        "UNAUTHENTICATED",
    );
    t.sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_training_weights_download_without_the_token() {
    let t = target(|_| {}).await;
    let mut trn = TrainingServiceClient::new(channel(t.sys.training_addr));
    let ask = pb::DownloadModelRequest {
        model: Some(pb::ModelRef {
            name: "efficientnet-lite0".into(),
            version: "imagenet".into(),
        }),
    };
    for req in tries(&ask) {
        let r = match trn.download_model(req).await {
            Ok(stream) => stream.into_inner().message().await.map(|_| ()),
            Err(s) => Err(s),
        };
        unauthenticated(r, "download");
    }
    for req in tries(&pb::ActivateModelRequest {
        model: ask.model.clone(),
    }) {
        unauthenticated(trn.activate_model(req).await, "activate");
    }
    super::report(
        "raw gRPC DownloadModel (weights) and ActivateModel to the training port",
        "UNAUTHENTICATED",
    );
    t.sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_model_of_tampered_weights() {
    let t = target(|_| {}).await;
    let mut inf = InferenceServiceClient::new(channel(t.sys.inference_addr))
        .max_encoding_message_size(64 << 20);
    let real = std::fs::read(cbir_inference::test_weights_path()).expect("weights");
    let real_sha = cbir_inference::backend::sha256_hex(&real);
    let mut tampered = real;
    let n = tampered.len();
    tampered[n - 3] ^= 0x40;
    let load = pb::LoadModelRequest {
        model: Some(pb::ModelRef {
            name: "efficientnet-lite0".into(),
            version: "imagenet".into(),
        }),
        weights: Some(pb::load_model_request::Weights::Data(tampered)),
        weights_sha256: real_sha.clone(),
        ..Default::default()
    };
    for req in tries(&load) {
        unauthenticated(inf.load_model(req).await, "load model");
    }
    // Even a caller with the token cannot pass them off as the registry's.
    let s = inf
        .load_model(with_token(load, &t.token))
        .await
        .expect_err("tampered weights with the token");
    assert_eq!(s.code(), tonic::Code::InvalidArgument, "{s:?}");
    let served = inf
        .get_model_info(with_token(pb::GetModelInfoRequest::default(), &t.token))
        .await
        .expect("info")
        .into_inner()
        .info
        .expect("info");
    assert_eq!(
        served.weights_sha256, real_sha,
        "search keeps the real model"
    );
    let r = t
        .sys
        .http()
        .post(format!("{}/api/search", t.sys.url()))
        .json(&json!({"collection": "c", "image_id": 1}))
        .send()
        .await
        .expect("search");
    assert_eq!(r.status(), 200);
    super::report(
        "LoadModel of tampered weights under the active model's name",
        "UNAUTHENTICATED without the token; INVALID_ARGUMENT (SHA-256 mismatch) with it; real model kept",
    );
    t.sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_model_by_a_path_out_of_the_model_folder() {
    let t = target(|_| {}).await;
    let mut inf = InferenceServiceClient::new(channel(t.sys.inference_addr));
    // A valid weights file the attacker put outside the model folder.
    let planted = t.sys.dir.path().join("planted.safetensors");
    std::fs::copy(cbir_inference::test_weights_path(), &planted).expect("copy");
    let sha = cbir_inference::backend::sha256_hex(&std::fs::read(&planted).expect("read"));
    let folder = t.sys.dir.path().display().to_string();
    for path in [
        planted.display().to_string(),
        "../../../../../../../../etc/passwd".to_string(),
        "/proc/self/environ".to_string(),
    ] {
        let load = pb::LoadModelRequest {
            model: Some(pb::ModelRef {
                name: "efficientnet-lite0".into(),
                version: "imagenet".into(),
            }),
            weights: Some(pb::load_model_request::Weights::Path(path.clone())),
            weights_sha256: sha.clone(),
            ..Default::default()
        };
        for req in tries(&load) {
            unauthenticated(inf.load_model(req).await, "load by path");
        }
        let s = inf
            .load_model(with_token(load, &t.token))
            .await
            .expect_err("a path out of the model folder, with the token");
        assert_eq!(s.code(), tonic::Code::PermissionDenied, "{path}: {s:?}");
        assert!(
            !s.message().contains('/') && !s.message().contains(&folder),
            "{path}: the message echoes a path: {}",
            s.message()
        );
    }
    super::report(
        "LoadModel by a path out of the model folder (absolute, ../, /proc)",
        "PERMISSION_DENIED naming model_dir, no path echoed",
    );
    t.sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symlink_swap_during_a_server_folder_job() {
    let roots = tempfile::tempdir().expect("tmp");
    let root = roots.path().to_path_buf();
    let t = target(|g| g.allowed_roots = vec![root.clone()]).await;
    // 40 images: three batches, so the last file is read a few forward
    // passes after the listing.
    let folder = roots.path().join("photos");
    let files = flowers_subset(&folder, &["daisy", "sunflower"], 20);
    let victim = files.iter().max().expect("files").clone();
    // Outside the roots: an image that would index fine if it were read.
    let outside = t.sys.dir.path().join("outside");
    std::fs::create_dir_all(&outside).expect("mkdir");
    let secret = outside.join("secret.jpg");
    let dandelion = std::fs::read_dir(shared_data().join("flowers5/dandelion"))
        .expect("dandelion")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .min()
        .expect("one");
    std::fs::copy(dandelion, &secret).expect("copy");
    let http = t.sys.http();
    let r = http
        .post(format!("{}/api/collections/j/index-jobs", t.sys.url()))
        .json(&json!({"path": folder, "create_collection": true}))
        .send()
        .await
        .expect("job");
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap_or_default());
    // Listed already: now swap the last file for a link out of the roots.
    std::fs::remove_file(&victim).expect("rm");
    std::os::unix::fs::symlink(&secret, &victim).expect("link");
    let job: Value = r.json().await.expect("json");
    let id = job["id"].as_str().expect("id").to_string();
    let mut last = Value::Null;
    for _ in 0..1200 {
        last = http
            .get(format!("{}/api/jobs/{id}", t.sys.url()))
            .send()
            .await
            .expect("poll")
            .json()
            .await
            .expect("json");
        if last["state"] != "running" && last["state"] != "pending" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(last["state"], "succeeded", "{last}");
    assert_eq!(last["failed"], 1, "{last}");
    assert_eq!(last["done"], 39, "{last}");
    let failure = &last["failures"][0];
    let name = victim
        .file_name()
        .expect("name")
        .to_string_lossy()
        .to_string();
    assert!(
        failure["path"].as_str().is_some_and(|p| p.ends_with(&name)),
        "{failure}"
    );
    let reason = failure["reason"].as_str().expect("reason");
    assert!(reason.contains("link"), "{reason}");
    // Nothing from outside reached the index.
    let v: Value = http
        .get(format!("{}/api/collections/j", t.sys.url()))
        .send()
        .await
        .expect("collection")
        .json()
        .await
        .expect("json");
    let n = v["count"]
        .as_u64()
        .or_else(|| v["collection"]["count"].as_u64())
        .expect("count");
    assert_eq!(n, 39, "{v}");
    super::report(
        "file swapped for a symlink out of the allowed roots during a server-folder job",
        "that file fails (not read: a symbolic link), nothing outside read",
    );
    t.sys.shutdown().await;
}
