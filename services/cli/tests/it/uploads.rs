//! Uploads through the gateway: each image is decoded once in the whole
//! system, a bad file fails alone (REST and gRPC), and a batch the index
//! refuses is stored record by record.

use std::path::{Path, PathBuf};

use cbir_api::v1 as pb;
use cbir_api::v1::index_service_client::IndexServiceClient;
use cbir_api::v1::search_service_client::SearchServiceClient;
use serde_json::Value;
use tonic::transport::Channel;

use crate::system::{flowers_subset, System};

/// Uploads `(path, bytes)` parts named `files` as the browser does.
async fn upload(sys: &System, coll: &str, parts: Vec<(String, Vec<u8>)>) -> Value {
    let mut form = reqwest::multipart::Form::new();
    for (name, data) in parts {
        form = form.part(
            "files",
            reqwest::multipart::Part::bytes(data)
                .file_name(name)
                .mime_str("image/jpeg")
                .expect("mime"),
        );
    }
    let r = reqwest::Client::new()
        .post(format!(
            "{}/api/collections/{coll}/images?create=true",
            sys.url()
        ))
        .multipart(form)
        .send()
        .await
        .expect("upload");
    let status = r.status();
    let v: Value = r.json().await.expect("json");
    assert_eq!(status, 200, "{v}");
    v
}

fn parts_of(files: &[PathBuf]) -> Vec<(String, Vec<u8>)> {
    files
        .iter()
        .map(|f| {
            let class = f.parent().and_then(Path::file_name).expect("class");
            let name = f.file_name().expect("name");
            (
                format!("set/{}/{}", class.to_string_lossy(), name.to_string_lossy()),
                std::fs::read(f).expect("read"),
            )
        })
        .collect()
}

fn errors(v: &Value) -> Vec<String> {
    v["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| r["error"].as_str().expect("error").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_label_or_file_name_fails_its_file_alone() {
    let sys = System::start(|_| {}).await;
    let dir = sys.dir.path().join("set");
    let files = flowers_subset(&dir, &["daisy", "tulip"], 6);
    let mut parts = parts_of(&files[..10]);
    // A folder name over the index's 512-byte label limit, and a file name
    // over its 1024-byte limit: each fails alone, the other ten are stored.
    let long = "x".repeat(600);
    parts.insert(
        3,
        (
            format!("set/{long}/a.jpg"),
            std::fs::read(&files[10]).expect("read"),
        ),
    );
    let name = format!("{}.jpg", "n".repeat(1100));
    parts.insert(
        7,
        (
            format!("set/rose/{name}"),
            std::fs::read(&files[11]).expect("read"),
        ),
    );
    let v = upload(&sys, "perfile", parts).await;
    let errs = errors(&v);
    assert_eq!(v["added"], 10, "{v}");
    assert_eq!(v["failed"], 2, "{v}");
    assert!(
        errs[3].starts_with("label of \"a.jpg\" is 600 bytes, the limit is 512"),
        "{errs:?}"
    );
    assert!(errs[7].starts_with("file_name of \"nnn"), "{errs:?}");
    assert!(
        errs.iter()
            .enumerate()
            .all(|(i, e)| (i == 3 || i == 7) != e.is_empty()),
        "{errs:?}"
    );

    // gRPC AddImages: the same.
    let ch = Channel::from_shared(sys.url()).expect("uri").connect_lazy();
    let mut client = SearchServiceClient::new(ch).max_encoding_message_size(64 << 20);
    let more = flowers_subset(&sys.dir.path().join("more"), &["rose"], 4);
    let mut images: Vec<pb::NewImage> = more
        .iter()
        .map(|f| pb::NewImage {
            file_name: f.file_name().expect("n").to_string_lossy().into_owned(),
            path: f.display().to_string(),
            label: "rose".into(),
            data: std::fs::read(f).expect("read"),
        })
        .collect();
    images[1].label = "l".repeat(513);
    images[3].file_name = "tab\there.jpg".into();
    let r = client
        .add_images(pb::AddImagesRequest {
            collection: "perfile".into(),
            images,
            create_collection: false,
            replace: false,
        })
        .await
        .expect("add images")
        .into_inner();
    assert_eq!((r.added, r.failed), (2, 2), "{r:?}");
    assert!(r.results[1].error.contains("label"), "{:?}", r.results[1]);
    assert!(
        r.results[3].error.contains("control character"),
        "{:?}",
        r.results[3]
    );
    assert!(r.results[0].error.is_empty() && r.results[2].error.is_empty());

    // Stored: the 12 good files.
    let c = client
        .get_stats(pb::StatsRequest {
            collection: "perfile".into(),
        })
        .await
        .expect("stats")
        .into_inner();
    assert_eq!(c.count, 12, "{c:?}");
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_the_index_refuses_fails_alone_when_the_batch_is_sent_again_one_by_one() {
    let mut sys = System::start(|_| {}).await;
    // The index refuses labels over 40 bytes, the gateway checks 512: the
    // batch is refused whole, then sent again record by record.
    sys.stop_index().await;
    sys.index_limits.max_label_len = 40;
    sys.start_index().await;
    sys.wait_healthy().await;
    let files = flowers_subset(&sys.dir.path().join("set"), &["daisy"], 5);
    let mut parts = parts_of(&files);
    parts[2].0 = format!("set/{}/c.jpg", "y".repeat(60));
    let v = upload(&sys, "fallback", parts).await;
    assert_eq!(v["added"], 4, "{v}");
    assert_eq!(v["failed"], 1, "{v}");
    let errs = errors(&v);
    assert!(
        errs[2].contains("label") && errs[2].contains("40"),
        "{errs:?}"
    );
    sys.shutdown().await;
}

/// A photo padded to about `bytes` with JPEG comment segments.
fn padded(photo: &[u8], bytes: usize) -> Vec<u8> {
    let mut out = photo[..2].to_vec();
    while out.len() + photo.len() < bytes {
        out.extend_from_slice(&[0xFF, 0xFE, 0xFF, 0xFF]);
        out.extend(std::iter::repeat_n(b'c', 0xFFFD));
    }
    out.extend_from_slice(&photo[2..]);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_decodes_each_image_once_in_the_whole_system() {
    let sys = System::start(|_| {}).await;
    // Every service of this process shares the decode budget, which counts
    // the decodes it lets through.
    let budget = cbir_imaging::budget::Budget::shared(&cbir_imaging::Limits::default());
    let files = flowers_subset(&sys.dir.path().join("set"), &["rose"], 6);
    let mut parts = parts_of(&files);
    // One over 512 KiB: stored as a rendition, made by the same decode.
    let big = padded(&parts[0].1, 700 << 10);
    parts[0].1 = big.clone();
    let before = budget.granted();
    let v = upload(&sys, "once", parts).await;
    assert_eq!(v["added"], 6, "{v}");
    assert_eq!(
        budget.granted() - before,
        6,
        "six images, six decodes: the gateway does not decode them again"
    );
    let id = v["results"][0]["id"].as_u64().expect("id");
    let ch = Channel::from_shared(format!("http://{}", sys.index_addr))
        .expect("uri")
        .connect_lazy();
    let mut index = IndexServiceClient::new(ch).max_decoding_message_size(64 << 20);
    let mut req = tonic::Request::new(pb::GetImageRequest {
        collection: "once".into(),
        id,
        include_thumbnail: true,
        include_source: true,
        ..Default::default()
    });
    if let Some(t) = &sys.gateway_cfg.internal_token {
        req.metadata_mut()
            .insert("x-internal-token", t.parse().expect("ascii"));
    }
    let img = index
        .get_image(req)
        .await
        .expect("get image")
        .into_inner()
        .image
        .expect("image");
    for (what, jpeg) in [
        ("thumbnail", &img.thumbnail),
        ("rendition", &img.source_image),
    ] {
        assert_eq!(&jpeg[..2], &[0xFF, 0xD8], "{what} is a JPEG");
    }
    assert!(
        img.source_image.len() < big.len() / 4,
        "a rendition, not the file"
    );
    let r = image::load_from_memory(&img.source_image).expect("rendition decodes");
    assert!(r.width().min(r.height()) <= cbir_imaging::RENDITION_SHORTER_SIDE);
    sys.shutdown().await;
}
