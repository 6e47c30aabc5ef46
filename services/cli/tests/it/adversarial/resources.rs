//! Bounded resources (issue 13, item 4): decompression bombs against every
//! service that decodes, the batch bigger than a service's message limit,
//! an oversized public gRPC message, a dataset upload over the disk quota.

use std::time::Duration;

use cbir_api::v1 as pb;
use cbir_api::v1::inference_service_client::InferenceServiceClient;
use cbir_api::v1::search_service_client::SearchServiceClient;
use serde_json::Value;
use tonic::transport::Channel;

use crate::system::{flowers_subset, System};

const MIB: u64 = 1 << 20;
/// The decode budget of these systems: room for three bombs at once.
const BUDGET: u64 = 640 * MIB;
/// What else a burst of requests may take besides decoding: request
/// bodies, forward passes, allocator slack.
const MARGIN: u64 = 320 * MIB;

/// A field of /proc/self/status in bytes (`VmRSS`, `VmHWM`).
fn status_bytes(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    s.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"))
}

/// Resets the peak resident size (`VmHWM`) to the current one.
fn reset_peak() {
    std::fs::write("/proc/self/clear_refs", "5").expect("reset VmHWM");
}

/// The 8000x8000 16-bit RGBA PNG of issue 13: 0.6 MB, 512 MB of pixels.
fn bomb() -> Vec<u8> {
    let b = cbir_imaging::testing::png_16bit(8000, 8000, true);
    assert!(b.len() < MIB as usize, "{} bytes", b.len());
    b
}

/// A request to an internal service, with the system's token if it has one.
fn token_request<T>(token: Option<&str>, msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.set_timeout(Duration::from_secs(300));
    if let Some(t) = token {
        r.metadata_mut()
            .insert("x-internal-token", t.parse().expect("ascii"));
    }
    r
}

/// An answer to a bomb is a result, or a refusal that says to retry or
/// names the budget; never a server error. A search has 10 s in all: on a
/// starved CPU its decode may outlast them, answered 504 "did not answer in
/// time".
fn acceptable(status: u16, body: &Value, search: bool) -> bool {
    let text = body.to_string();
    match status {
        504 => search && body["error"]["code"] == "deadline_exceeded",
        200 => body["results"].as_array().is_some_and(|r| {
            r.iter().all(|i| {
                let e = i["error"].as_str().unwrap_or_default();
                e.is_empty() || e.contains("retry") || e.contains("decode memory budget")
            })
        }),
        429 => text.contains("retry"),
        _ => false,
    }
}

async fn upload_bomb(http: &reqwest::Client, base: &str, data: Vec<u8>, i: usize) -> (u16, Value) {
    let form = reqwest::multipart::Form::new().part(
        "files",
        reqwest::multipart::Part::bytes(data)
            .file_name(format!("bombs/bomb{i}.png"))
            .mime_str("image/png")
            .expect("mime"),
    );
    let r = http
        .post(format!("{base}/api/collections/bombs/images?create=true"))
        .multipart(form)
        .send()
        .await
        .expect("upload");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn search_bomb(http: &reqwest::Client, base: &str, data: Vec<u8>) -> (u16, Value) {
    let r = http
        .post(format!("{base}/api/search?collection=bombs"))
        .header("content-type", "image/png")
        .body(data)
        .send()
        .await
        .expect("search");
    let status = r.status().as_u16();
    let mut v: Value = r.json().await.unwrap_or(Value::Null);
    // A search answer has results of the collection, not per-file errors.
    if status == 200 {
        v["results"] = Value::Array(Vec::new());
    }
    (status, v)
}

/// Runs `n` copies of an attack at once; returns the answers and the peak
/// resident size above the resident size before.
async fn burst<F, Fut>(n: usize, attack: F) -> (Vec<(u16, Value)>, u64)
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = (u16, Value)> + Send + 'static,
{
    reset_peak();
    let before = status_bytes("VmRSS");
    let tasks: Vec<_> = (0..n).map(|i| tokio::spawn(attack(i))).collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("attack task"));
    }
    let peak = status_bytes("VmHWM").saturating_sub(before);
    (out, peak)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn decompression_bombs_keep_memory_within_the_decode_budget() {
    let sys = System::start(|c| {
        c.limits.decode_memory_bytes = BUDGET;
    })
    .await;
    let base = sys.url();
    let http = reqwest::Client::new();
    let data = bomb();
    // Warm up with real photos: the forward pass's buffers are resident
    // before the peak is measured.
    let dir = sys.dir.path().join("warm");
    let files = flowers_subset(&dir, &["daisy", "rose"], 8);
    let mut form = reqwest::multipart::Form::new();
    for f in &files {
        form = form.part(
            "files",
            reqwest::multipart::Part::bytes(std::fs::read(f).expect("read")).file_name(format!(
                "warm/{}",
                f.file_name().expect("n").to_string_lossy()
            )),
        );
    }
    let r = http
        .post(format!("{base}/api/collections/bombs/images?create=true"))
        .multipart(form)
        .send()
        .await
        .expect("warm-up");
    assert_eq!(r.status(), 200);

    for n in [3, 14] {
        let (answers, peak) = burst(n, |i| {
            let (http, base, data) = (http.clone(), base.clone(), data.clone());
            async move { upload_bomb(&http, &base, data, i).await }
        })
        .await;
        let stored = answers.iter().filter(|(_, b)| b["added"] == 1).count();
        println!(
            "{n} bomb uploads at once: peak resident +{} MiB (budget {} MiB), {stored} stored, the rest answered retry",
            peak / MIB,
            BUDGET / MIB
        );
        for (status, body) in &answers {
            assert!(acceptable(*status, body, false), "{status}: {body}");
        }
        assert!(
            peak <= BUDGET + MARGIN,
            "{n} uploads at once took {} MiB over the resident size, the decode budget is {} MiB",
            peak / MIB,
            BUDGET / MIB
        );
        super::report(
            &format!("{n} decompression-bomb PNGs (8000x8000 16-bit, 0.6 MB) uploaded at once"),
            &format!(
                "peak memory +{} MiB within the {} MiB decode budget; each stored or answered retry",
                peak / MIB,
                BUDGET / MIB
            ),
        );
    }

    let (answers, peak) = burst(14, |_| {
        let (http, base, data) = (http.clone(), base.clone(), data.clone());
        async move { search_bomb(&http, &base, data).await }
    })
    .await;
    let late = answers.iter().filter(|(s, _)| *s == 504).count();
    println!(
        "14 bomb searches at once: peak resident +{} MiB, {late} past the search deadline",
        peak / MIB
    );
    for (status, body) in &answers {
        assert!(acceptable(*status, body, true), "{status}: {body}");
    }
    assert!(peak <= BUDGET + MARGIN, "searches: +{} MiB", peak / MIB);
    super::report(
        "14 decompression-bomb PNGs as search queries at once",
        &format!("peak memory +{} MiB within the decode budget", peak / MIB),
    );

    let ch = Channel::from_shared(format!("http://{}", sys.inference_addr))
        .expect("uri")
        .connect_lazy();
    let inference = InferenceServiceClient::new(ch).max_encoding_message_size(64 << 20);
    let token = sys.gateway_cfg.internal_token.clone();
    let (answers, peak) = burst(14, move |i| {
        let mut c = inference.clone();
        let req = token_request(
            token.as_deref(),
            pb::EmbedRequest {
                include_renditions: false,
                images: vec![pb::ImageInput {
                    id: i.to_string(),
                    data: data.clone(),
                }],
                priority: pb::Priority::Bulk as i32,
                ..Default::default()
            },
        );
        async move {
            match c.embed(req).await {
                Ok(r) => {
                    let r = r.into_inner();
                    let ok = r.results.iter().all(|x| match &x.outcome {
                        Some(pb::embed_result::Outcome::Embedding(_)) => true,
                        Some(pb::embed_result::Outcome::Error(e)) => {
                            e.code == tonic::Code::ResourceExhausted as i32
                                && e.message.contains("retry")
                        }
                        None => false,
                    });
                    (if ok { 200 } else { 500 }, Value::Null)
                }
                Err(s) => (500, Value::String(s.to_string())),
            }
        }
    })
    .await;
    println!(
        "14 bombs straight to inference: peak resident +{} MiB",
        peak / MIB
    );
    for (status, body) in &answers {
        assert_eq!(*status, 200, "{body}");
    }
    assert!(peak <= BUDGET + MARGIN, "inference: +{} MiB", peak / MIB);
    super::report(
        "14 decompression-bomb PNGs sent straight to inference's Embed at once",
        &format!("peak memory +{} MiB within the decode budget", peak / MIB),
    );

    // Still serving.
    let form = reqwest::multipart::Form::new().part(
        "image",
        reqwest::multipart::Part::bytes(std::fs::read(&files[0]).expect("read")).file_name("q.jpg"),
    );
    let r = http
        .post(format!("{base}/api/search"))
        .query(&[("collection", "bombs")])
        .multipart(form)
        .send()
        .await
        .expect("search");
    assert_eq!(r.status(), 200);
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_image_over_the_whole_decode_budget_is_refused_clearly() {
    let sys = System::start(|c| {
        c.limits.decode_memory_bytes = 64 * MIB;
    })
    .await;
    let http = reqwest::Client::new();
    let (status, body) = upload_bomb(&http, &sys.url(), bomb(), 0).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["failed"], 1, "{body}");
    let e = body["results"][0]["error"].as_str().expect("error");
    assert!(
        e.contains("decode memory budget") && e.contains("limits.decode_memory_bytes"),
        "{e}"
    );
    let (status, body) = search_bomb(&http, &sys.url(), bomb()).await;
    assert_eq!(status, 429, "{body}");
    assert!(body.to_string().contains("decode_memory_bytes"), "{body}");
    super::report(
        "one decompression bomb needing more than the whole decode budget",
        "refused at once from its header (upload: per-file error; search: 429), naming limits.decode_memory_bytes",
    );
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_public_grpc_message_is_refused_before_it_is_buffered() {
    let sys = System::start(|c| {
        c.limits.max_image_bytes = 2 * MIB as usize;
        c.limits.max_request_bytes = 4 * MIB as usize;
    })
    .await;
    let ch = Channel::from_shared(sys.url()).expect("uri").connect_lazy();
    let mut client = SearchServiceClient::new(ch)
        .max_encoding_message_size(usize::MAX)
        .max_decoding_message_size(usize::MAX);
    let s = client
        .add_images(pb::AddImagesRequest {
            collection: "big".into(),
            create_collection: true,
            replace: false,
            images: (0..3)
                .map(|i| pb::NewImage {
                    file_name: format!("{i}.jpg"),
                    data: vec![0xAB; 2 * MIB as usize],
                    ..Default::default()
                })
                .collect(),
        })
        .await
        .expect_err("6 MiB is over the 4 MiB request limit");
    assert_eq!(s.code(), tonic::Code::ResourceExhausted, "{s:?}");
    assert!(
        s.message().contains("limits.max_request_bytes"),
        "{}",
        s.message()
    );
    super::report(
        "a public gRPC AddImages message over the request limit",
        "RESOURCE_EXHAUSTED naming limits.max_request_bytes, from the frame header before the body is read",
    );
    sys.shutdown().await;
}

/// A real photo padded to about `bytes` with JPEG comment segments: still
/// the same picture to every decoder.
fn padded_jpeg(photo: &[u8], bytes: usize) -> Vec<u8> {
    assert_eq!(&photo[..2], &[0xFF, 0xD8]);
    let mut out = photo[..2].to_vec();
    let mut i = 0u32;
    while out.len() + photo.len() < bytes {
        let body: Vec<u8> = (0..65_000u32)
            .map(|k| b'a' + ((k + i) % 26) as u8)
            .collect();
        out.extend_from_slice(&[0xFF, 0xFE]);
        out.extend_from_slice(&((body.len() + 2) as u16).to_be_bytes());
        out.extend_from_slice(&body);
        i += 1;
    }
    out.extend_from_slice(&photo[2..]);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_67_megabyte_batch_is_cut_to_fit_the_inference_message_limit() {
    let sys = System::start(|_| {}).await;
    let files = flowers_subset(&sys.dir.path().join("set"), &["sunflower"], 16);
    let mut form = reqwest::multipart::Form::new();
    let mut total = 0;
    for f in &files {
        let data = padded_jpeg(&std::fs::read(f).expect("read"), 4_200_000);
        total += data.len();
        let name = f.file_name().expect("name").to_string_lossy();
        form = form.part(
            "files",
            reqwest::multipart::Part::bytes(data).file_name(format!("sunflower/{name}")),
        );
    }
    assert!(
        total > 64 << 20,
        "{total} bytes: more than one inference message"
    );
    let r = reqwest::Client::new()
        .post(format!(
            "{}/api/collections/big/images?create=true",
            sys.url()
        ))
        .multipart(form)
        .send()
        .await
        .expect("upload");
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["added"], 16, "{v}");
    assert_eq!(v["failed"], 0, "{v}");
    super::report(
        "a 16-photo upload of 67 MB, over the inference service's 64 MiB message limit",
        "stored whole: the gateway cuts its Embed and Upsert calls to fit",
    );
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dataset_upload_over_the_disk_quota_is_refused_and_leaves_nothing() {
    let mut sys = System::start(|_| {}).await;
    let archive = |dir: &std::path::Path| {
        let mut b = tar::Builder::new(Vec::new());
        b.append_dir_all("set", dir).expect("tar");
        b.into_inner().expect("tar")
    };
    // Room for one set of photos, not two.
    let small = sys.dir.path().join("small");
    flowers_subset(&small, &["daisy", "rose"], 30);
    let one = archive(&small).len() as u64;
    let quota = one * 3 / 2;
    sys.stop_training().await;
    sys.training_cfg.max_datasets_bytes = quota;
    sys.start_training().await;
    let base = sys.url();
    let http = reqwest::Client::new();
    let post = |data: Vec<u8>| {
        http.post(format!("{base}/api/training/datasets?file_name=set.tar"))
            .body(data)
            .send()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let first = loop {
        let r = post(archive(&small)).await.expect("upload");
        if r.status() != 503 || std::time::Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(first.status(), 200);
    let r = post(archive(&small)).await.expect("second upload");
    assert_eq!(r.status(), 507);
    let e: Value = r.json().await.expect("json");
    assert_eq!(e["error"]["code"], "insufficient_storage", "{e}");
    let msg = e["error"]["message"].as_str().expect("message");
    assert!(
        msg.contains("max_datasets_bytes") && msg.contains("delete datasets"),
        "{msg}"
    );
    // Nothing of the refused upload is left; the quota still holds one.
    let l: Value = http
        .get(format!("{base}/api/training/datasets"))
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert_eq!(l["datasets"].as_array().expect("d").len(), 1, "{l}");
    assert!(l["used_bytes"].as_u64().expect("used") <= quota, "{l}");
    let uploads = sys.training_cfg.data_dir.join("uploads");
    assert_eq!(
        std::fs::read_dir(&uploads).map_or(0, |d| d.count()),
        0,
        "no partial upload is left"
    );
    super::report(
        "a training dataset upload over the disk quota",
        "507 insufficient_storage naming max_datasets_bytes and how to free space; nothing left on disk",
    );
    sys.shutdown().await;
}
