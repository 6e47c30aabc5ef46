//! The gRPC service with the real network: accuracy, batching, priorities,
//! bad input, streaming and model swaps.

use std::time::{Duration, Instant};

use cbir_api::v1 as pb;
use cbir_api::v1::embed_result::Outcome;
use tonic::Code;

use cbir_imaging::testing::png_claiming;

use crate::harness::{imagenet_labels, read, sha256, sha256_file, Server};

fn image(id: &str, data: Vec<u8>) -> pb::ImageInput {
    pb::ImageInput {
        id: id.into(),
        data,
    }
}

fn embedding(r: &pb::EmbedResult) -> &pb::Embedding {
    match &r.outcome {
        Some(Outcome::Embedding(e)) => e,
        other => panic!("{}: expected an embedding, got {other:?}", r.id),
    }
}

fn fast_config() -> cbir_inference::Config {
    let mut cfg = cbir_inference::Config::for_test();
    cfg.batcher.max_batch_size = 16;
    cfg.batcher.max_queue_delay_us = 5_000;
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top1_accuracy_on_imagenet_sample_300() {
    let server = Server::start(fast_config()).await;
    let labels = imagenet_labels();
    assert_eq!(labels.len(), 300);
    let mut client = server.client.clone();
    // The default engine on a CPU (`auto`) is ONNX Runtime.
    let info = client
        .get_model_info(pb::GetModelInfoRequest::default())
        .await
        .expect("info")
        .into_inner()
        .info
        .expect("model info");
    assert_eq!(info.backend, "onnxruntime");
    let mut correct = 0;
    let mut top5 = 0;
    let started = Instant::now();
    for chunk in labels.chunks(25) {
        let images = chunk.iter().map(|(p, _)| image(p, read(p))).collect();
        let resp = client
            .embed(pb::EmbedRequest {
                include_renditions: false,
                images,
                priority: pb::Priority::Bulk as i32,
                include_probabilities: false,
                ..Default::default()
            })
            .await
            .expect("embed")
            .into_inner();
        for ((_, label), r) in chunk.iter().zip(&resp.results) {
            let e = embedding(r);
            assert_eq!(e.feature.len(), 1280);
            let norm: f32 = e.feature.iter().map(|v| v * v).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-4, "feature norm {norm}");
            assert_eq!(e.top5.len(), 5);
            assert!(e
                .top5
                .windows(2)
                .all(|w| w[0].probability >= w[1].probability));
            correct += usize::from(e.predicted_class == *label);
            top5 += usize::from(e.top5.iter().any(|c| c.index == *label));
        }
    }
    let acc = correct as f64 / 300.0;
    println!(
        "imagenet-sample-300 through gRPC: top-1 {acc:.3}, top-5 {:.3}, {:.1} images/s",
        top5 as f64 / 300.0,
        300.0 / started.elapsed().as_secs_f64()
    );
    assert!(acc >= 0.84, "top-1 accuracy {acc} is below 0.84");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_match_single_requests() {
    let server = Server::start(fast_config()).await;
    let labels = imagenet_labels();
    let picks: Vec<&(String, i32)> = labels.iter().step_by(37).take(8).collect();
    let mut client = server.client.clone();
    // One at a time: batches of one.
    let mut single = Vec::new();
    for (p, _) in &picks {
        let e = client
            .embed_image(pb::EmbedImageRequest {
                image: Some(image(p, read(p))),
                priority: 0,
                include_probabilities: true,
                ..Default::default()
            })
            .await
            .expect("single")
            .into_inner()
            .embedding
            .expect("embedding");
        single.push(e);
    }
    // 32 at once from 32 tasks: the batcher merges them.
    let before = client
        .get_model_info(pb::GetModelInfoRequest::default())
        .await
        .expect("info")
        .into_inner()
        .batcher
        .expect("stats");
    let mut tasks = Vec::new();
    for i in 0..32 {
        let mut c = client.clone();
        let (p, _) = picks[i % picks.len()];
        let data = read(p);
        tasks.push(tokio::spawn(async move {
            let r = c
                .embed_image(pb::EmbedImageRequest {
                    image: Some(image("x", data)),
                    priority: 0,
                    include_probabilities: true,
                    ..Default::default()
                })
                .await
                .expect("concurrent");
            (i, r.into_inner().embedding.expect("embedding"))
        }));
    }
    for t in tasks {
        let (i, e) = t.await.expect("task");
        let s = &single[i % picks.len()];
        assert_eq!(e.predicted_class, s.predicted_class);
        let max = e
            .feature
            .iter()
            .zip(&s.feature)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(max < 1e-4, "feature differs by {max} in a batch");
        let maxp = e
            .probabilities
            .iter()
            .zip(&s.probabilities)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(maxp < 1e-4, "probabilities differ by {maxp} in a batch");
    }
    let after = client
        .get_model_info(pb::GetModelInfoRequest::default())
        .await
        .expect("info")
        .into_inner()
        .batcher
        .expect("stats");
    let batches = after.batches - before.batches;
    assert_eq!(after.images - before.images, 32);
    assert!(
        batches < 32,
        "32 concurrent requests ran in {batches} batches: no batching"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interactive_request_overtakes_bulk_work() {
    let mut cfg = fast_config();
    cfg.batcher.max_batch_size = 4;
    cfg.batcher.max_queue_delay_us = 0;
    let server = Server::start(cfg).await;
    let labels = imagenet_labels();
    let bulk: Vec<pb::ImageInput> = labels
        .iter()
        .take(64)
        .map(|(p, _)| image(p, read(p)))
        .collect();
    let query = read(&labels[100].0);
    let mut c1 = server.client.clone();
    let started = Instant::now();
    let bulk_task = tokio::spawn(async move {
        c1.embed(pb::EmbedRequest {
            include_renditions: false,
            images: bulk,
            priority: pb::Priority::Bulk as i32,
            include_probabilities: false,
            ..Default::default()
        })
        .await
        .expect("bulk");
        started.elapsed()
    });
    // Let the bulk images reach the queue first.
    let mut c2 = server.client.clone();
    loop {
        let s = c2
            .get_model_info(pb::GetModelInfoRequest::default())
            .await
            .expect("info")
            .into_inner()
            .batcher
            .expect("stats");
        if s.queued_bulk >= 32 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "bulk never queued"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let t = Instant::now();
    c2.embed_image(pb::EmbedImageRequest {
        image: Some(image("q", query)),
        priority: pb::Priority::Interactive as i32,
        include_probabilities: false,
        ..Default::default()
    })
    .await
    .expect("interactive");
    let interactive = t.elapsed();
    let interactive_done = started.elapsed();
    let bulk_done = bulk_task.await.expect("bulk task");
    println!("interactive answered after {interactive:?}; bulk of 64 took {bulk_done:?}");
    assert!(
        interactive_done < bulk_done,
        "the interactive request ({interactive_done:?}) waited for the bulk work ({bulk_done:?})"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_answers_resource_exhausted() {
    let mut cfg = fast_config();
    cfg.batcher.max_queue_bulk = 4;
    let server = Server::start(cfg).await;
    let labels = imagenet_labels();
    let images: Vec<pb::ImageInput> = labels
        .iter()
        .take(10)
        .map(|(p, _)| image(p, read(p)))
        .collect();
    let mut client = server.client.clone();
    let err = client
        .embed(pb::EmbedRequest {
            include_renditions: false,
            images: images.clone(),
            priority: pb::Priority::Bulk as i32,
            include_probabilities: false,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("queue is full"), "{}", err.message());
    // It keeps serving, and smaller requests fit.
    let ok = client
        .embed(pb::EmbedRequest {
            include_renditions: false,
            images: images[..3].to_vec(),
            priority: pb::Priority::Bulk as i32,
            include_probabilities: false,
            ..Default::default()
        })
        .await
        .expect("fits")
        .into_inner();
    assert_eq!(ok.results.len(), 3);
    ok.results.iter().for_each(|r| {
        embedding(r);
    });
    server.stop().await;
}

fn one_pixel_png() -> Vec<u8> {
    let img = image::RgbImage::from_pixel(1, 1, image::Rgb([200, 30, 30]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)
        .expect("png");
    out.into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_images_fail_alone_and_service_keeps_serving() {
    let server = Server::start(fast_config()).await;
    let mut client = server.client.clone();
    let good_path = "imagenet-sample-300/n01440764/n01440764_tench.JPEG";
    let good = read(good_path);
    let truncated = good[..good.len() / 3].to_vec();
    let cases: Vec<(&str, Vec<u8>, Option<&str>)> = vec![
        ("truncated.jpg", truncated, Some("corrupt JPEG")),
        ("empty.jpg", Vec::new(), Some("zero bytes")),
        (
            "notes.txt",
            b"just some text, not an image\n".to_vec(),
            Some("not an image"),
        ),
        (
            "bomb.png",
            png_claiming(50_000, 50_000),
            Some("50000x50000"),
        ),
        ("one-pixel.png", one_pixel_png(), None),
        ("tench.jpg", good.clone(), None),
    ];
    let resp = client
        .embed(pb::EmbedRequest {
            include_renditions: false,
            images: cases.iter().map(|(n, d, _)| image(n, d.clone())).collect(),
            priority: 0,
            include_probabilities: false,
            ..Default::default()
        })
        .await
        .expect("the batch call succeeds")
        .into_inner();
    assert_eq!(resp.results.len(), cases.len());
    for ((name, _, expect_err), r) in cases.iter().zip(&resp.results) {
        assert_eq!(&r.id, name);
        match (expect_err, &r.outcome) {
            (Some(msg), Some(Outcome::Error(e))) => {
                assert_eq!(e.code, Code::InvalidArgument as i32, "{name}: {e:?}");
                assert!(e.message.contains(msg), "{name}: {:?}", e.message);
            }
            (None, Some(Outcome::Embedding(e))) => assert_eq!(e.feature.len(), 1280),
            (want, got) => panic!("{name}: expected error {want:?}, got {got:?}"),
        }
    }
    let tench = embedding(&resp.results[5]);
    assert_eq!(tench.predicted_class, 0, "tench");
    let one = embedding(&resp.results[4]);
    assert_eq!((one.width, one.height), (1, 1));

    // The single-image call fails with the status itself.
    for (name, data, msg) in &cases[..4] {
        let err = client
            .embed_image(pb::EmbedImageRequest {
                image: Some(image(name, data.clone())),
                priority: 0,
                include_probabilities: false,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{name}");
        assert!(
            err.message().contains(msg.unwrap_or_default()),
            "{name}: {}",
            err.message()
        );
    }
    let err = client
        .embed_image(pb::EmbedImageRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("image"), "{}", err.message());
    let err = client.embed(pb::EmbedRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = client
        .embed(pb::EmbedRequest {
            include_renditions: false,
            images: (0..257).map(|i| image(&i.to_string(), vec![1])).collect(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("limit is 256"), "{}", err.message());

    // And the next good request still works.
    let e = client
        .embed_image(pb::EmbedImageRequest {
            image: Some(image("again", good)),
            priority: 0,
            include_probabilities: false,
            ..Default::default()
        })
        .await
        .expect("good request after bad ones")
        .into_inner()
        .embedding
        .expect("embedding");
    assert_eq!(e.predicted_class, 0);
    assert_eq!(e.top5[0].name, "tench");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_embeds_every_image() {
    let server = Server::start(fast_config()).await;
    let labels = imagenet_labels();
    let mut reqs: Vec<pb::EmbedStreamRequest> = labels
        .iter()
        .take(20)
        .map(|(p, _)| pb::EmbedStreamRequest {
            image: Some(image(p, read(p))),
            priority: 0,
            include_probabilities: false,
            ..Default::default()
        })
        .collect();
    reqs.push(pb::EmbedStreamRequest {
        image: Some(image("bad", b"nope".to_vec())),
        ..Default::default()
    });
    let mut client = server.client.clone();
    let mut stream = client
        .embed_stream(tokio_stream::iter(reqs))
        .await
        .expect("stream")
        .into_inner();
    let mut got = std::collections::HashMap::new();
    while let Some(r) = stream.message().await.expect("message") {
        got.insert(r.id.clone(), r);
    }
    assert_eq!(got.len(), 21);
    for (p, label) in labels.iter().take(20) {
        let e = embedding(&got[p]);
        assert_eq!(e.feature.len(), 1280);
        let _ = label;
    }
    assert!(
        matches!(&got["bad"].outcome, Some(Outcome::Error(e)) if e.code == Code::InvalidArgument as i32)
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_swap_keeps_requests_working() {
    let server = Server::start(fast_config()).await;
    let mut client = server.client.clone();
    let info = client
        .get_model_info(pb::GetModelInfoRequest {
            include_class_names: true,
        })
        .await
        .expect("info")
        .into_inner()
        .info
        .expect("info");
    assert_eq!(info.num_classes, 1000);
    assert_eq!(info.class_names.len(), 1000);
    assert_eq!(info.embedding_dim, 1280);
    assert_eq!(
        info.model.as_ref().map(|m| m.version.as_str()),
        Some("imagenet")
    );

    let labels = imagenet_labels();
    let mut load = Vec::new();
    for i in 0..6 {
        let mut c = client.clone();
        let p = labels[i * 10].0.clone();
        load.push(tokio::spawn(async move {
            let mut n = 0;
            for _ in 0..5 {
                c.embed_image(pb::EmbedImageRequest {
                    image: Some(image(&p, read(&p))),
                    ..Default::default()
                })
                .await
                .expect("no request fails during a swap");
                n += 1;
            }
            n
        }));
    }
    let weights = std::fs::read(crate::harness::weights()).expect("weights");
    let resp = client
        .load_model(pb::LoadModelRequest {
            model: Some(pb::ModelRef {
                name: "efficientnet-lite0".into(),
                version: "reloaded".into(),
            }),
            class_names: vec![],
            weights_sha256: sha256(&weights),
            weights: Some(pb::load_model_request::Weights::Data(weights)),
            ..Default::default()
        })
        .await
        .expect("load")
        .into_inner();
    assert_eq!(
        resp.info.and_then(|i| i.model).map(|m| m.version),
        Some("reloaded".to_string())
    );
    for t in load {
        assert_eq!(t.await.expect("task"), 5);
    }
    let r = client
        .embed_image(pb::EmbedImageRequest {
            image: Some(image("t", read(&labels[0].0))),
            ..Default::default()
        })
        .await
        .expect("after swap")
        .into_inner();
    assert_eq!(r.model.map(|m| m.version), Some("reloaded".to_string()));

    // Bad models are refused and the service keeps the current one.
    for weights in [
        pb::load_model_request::Weights::Path("/nonexistent/x.safetensors".into()),
        pb::load_model_request::Weights::Data(b"not safetensors".to_vec()),
    ] {
        let weights_sha256 = match &weights {
            pb::load_model_request::Weights::Data(d) => sha256(d),
            pb::load_model_request::Weights::Path(_) => sha256_file(&crate::harness::weights()),
        };
        let err = client
            .load_model(pb::LoadModelRequest {
                model: Some(pb::ModelRef {
                    name: "broken".into(),
                    version: "1".into(),
                }),
                class_names: vec![],
                weights_sha256,
                weights: Some(weights),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    }
    let err = client
        .load_model(pb::LoadModelRequest {
            model: Some(pb::ModelRef {
                name: "wrong-classes".into(),
                version: "1".into(),
            }),
            class_names: vec!["a".into(), "b".into()],
            weights: Some(pb::load_model_request::Weights::Path(
                crate::harness::weights().display().to_string(),
            )),
            weights_sha256: sha256_file(&crate::harness::weights()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("2 class names"), "{}", err.message());
    let info = client
        .get_model_info(pb::GetModelInfoRequest::default())
        .await
        .expect("info")
        .into_inner()
        .info
        .expect("info");
    assert_eq!(info.model.map(|m| m.version), Some("reloaded".to_string()));
    server.stop().await;
}

/// The ImageNet weights cut to their first five classes: another model
/// (the same features, five probabilities) that answers tell apart.
fn five_class_weights(dir: &std::path::Path) -> std::path::PathBuf {
    let named = tch::Tensor::read_safetensors(crate::harness::weights()).expect("read weights");
    let named: Vec<(String, tch::Tensor)> = named
        .into_iter()
        .map(|(k, t)| match k.as_str() {
            "_fc.weight" | "_fc.bias" => (k, t.narrow(0, 0, 5).contiguous()),
            _ => (k, t),
        })
        .collect();
    let path = dir.join("five.safetensors");
    tch::Tensor::write_safetensors(&named, &path).expect("write weights");
    path
}

fn model(name: &str, version: &str) -> Option<pb::ModelRef> {
    Some(pb::ModelRef {
        name: name.into(),
        version: version.into(),
    })
}

/// Embeds the tench naming `wanted`; returns the model that answered and
/// how many class probabilities it gave (1000 or 5).
async fn embed_naming(
    client: &mut cbir_api::v1::inference_service_client::InferenceServiceClient<
        tonic::transport::Channel,
    >,
    wanted: Option<pb::ModelRef>,
) -> (pb::ModelRef, usize) {
    let tench = read("imagenet-sample-300/n01440764/n01440764_tench.JPEG");
    let one = client
        .embed_image(pb::EmbedImageRequest {
            image: Some(image("t", tench.clone())),
            include_probabilities: true,
            model: wanted.clone(),
            ..Default::default()
        })
        .await
        .expect("embed image")
        .into_inner();
    let e = one.embedding.expect("embedding");
    let used = one.model.expect("model");
    // The batch call and the stream pick the same model.
    let many = client
        .embed(pb::EmbedRequest {
            include_renditions: false,
            images: vec![image("a", tench.clone()), image("b", tench.clone())],
            include_probabilities: true,
            model: wanted.clone(),
            ..Default::default()
        })
        .await
        .expect("embed")
        .into_inner();
    assert_eq!(
        many.model.as_ref(),
        Some(&used),
        "Embed and EmbedImage differ"
    );
    for r in &many.results {
        assert_eq!(embedding(r).probabilities.len(), e.probabilities.len());
    }
    let mut stream = client
        .embed_stream(tokio_stream::iter(vec![pb::EmbedStreamRequest {
            image: Some(image("s", tench)),
            include_probabilities: true,
            model: wanted,
            ..Default::default()
        }]))
        .await
        .expect("stream")
        .into_inner();
    let r = stream
        .message()
        .await
        .expect("message")
        .expect("one result");
    assert_eq!(embedding(&r).probabilities.len(), e.probabilities.len());
    (used, e.probabilities.len())
}

async fn retained(
    client: &mut cbir_api::v1::inference_service_client::InferenceServiceClient<
        tonic::transport::Channel,
    >,
) -> (Option<pb::ModelRef>, Option<pb::ModelRef>) {
    let r = client
        .get_model_info(pb::GetModelInfoRequest::default())
        .await
        .expect("info")
        .into_inner();
    (r.info.and_then(|i| i.model), r.retained)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn previous_model_is_retained_for_requests_naming_it() {
    // Loads by path read the model folder only: this test's folder, with a
    // copy of the ImageNet weights.
    let dir = tempfile::tempdir().expect("tempdir");
    let imagenet_file = dir.path().join("imagenet.safetensors");
    std::fs::copy(crate::harness::weights(), &imagenet_file).expect("copy weights");
    let imagenet_sha = sha256_file(&imagenet_file);
    let mut cfg = fast_config();
    cfg.model_dir = Some(dir.path().to_path_buf());
    let server = Server::start(cfg).await;
    let mut client = server.client.clone();
    let five = five_class_weights(dir.path());
    let imagenet = model("efficientnet-lite0", "imagenet");
    let flowers = model("flowers", "1");
    let names: Vec<String> = ["a", "b", "c", "d", "e"].map(String::from).into();

    // A new model sent as bytes; the configured one stays for those who name it.
    let loaded = client
        .load_model(pb::LoadModelRequest {
            model: flowers.clone(),
            class_names: names.clone(),
            weights: Some(pb::load_model_request::Weights::Data(
                std::fs::read(&five).expect("read"),
            )),
            retain_previous: true,
            weights_sha256: sha256_file(&five),
        })
        .await
        .expect("load flowers")
        .into_inner()
        .info
        .expect("info");
    assert_eq!(loaded.model, flowers);
    assert_eq!(loaded.num_classes, 5);
    // The staged copy of the bytes: kept while the model is current or retained.
    let staged = std::path::PathBuf::from(&loaded.source);
    assert!(staged.is_file(), "{}", staged.display());
    assert_eq!(
        retained(&mut client).await,
        (flowers.clone(), imagenet.clone())
    );
    assert_eq!(
        embed_naming(&mut client, imagenet.clone()).await,
        (imagenet.clone().unwrap(), 1000)
    );
    for wanted in [
        flowers.clone(),
        None,
        model("nope", "1"),
        model("flowers", "2"),
    ] {
        assert_eq!(
            embed_naming(&mut client, wanted.clone()).await,
            (flowers.clone().unwrap(), 5),
            "naming {wanted:?}"
        );
    }

    // Reactivating the previous model (by path) retains the bytes-loaded one,
    // rebuilt from its staged file.
    client
        .load_model(pb::LoadModelRequest {
            model: imagenet.clone(),
            weights: Some(pb::load_model_request::Weights::Path(
                "imagenet.safetensors".into(),
            )),
            retain_previous: true,
            weights_sha256: imagenet_sha.clone(),
            ..Default::default()
        })
        .await
        .expect("reactivate imagenet");
    assert_eq!(
        retained(&mut client).await,
        (imagenet.clone(), flowers.clone())
    );
    assert_eq!(
        embed_naming(&mut client, flowers.clone()).await,
        (flowers.clone().unwrap(), 5)
    );
    assert_eq!(
        embed_naming(&mut client, None).await,
        (imagenet.clone().unwrap(), 1000)
    );
    assert!(
        staged.is_file(),
        "the retained model's weights were deleted"
    );

    // Reloading the active model with retain_previous keeps the retained one.
    client
        .load_model(pb::LoadModelRequest {
            model: imagenet.clone(),
            weights: Some(pb::load_model_request::Weights::Path(
                "imagenet.safetensors".into(),
            )),
            retain_previous: true,
            weights_sha256: imagenet_sha.clone(),
            ..Default::default()
        })
        .await
        .expect("reload imagenet");
    assert_eq!(
        retained(&mut client).await,
        (imagenet.clone(), flowers.clone())
    );

    // A load without retain_previous drops it: naming it gets the active model.
    let reloaded = model("efficientnet-lite0", "reloaded");
    let info = client
        .load_model(pb::LoadModelRequest {
            model: reloaded.clone(),
            weights: Some(pb::load_model_request::Weights::Data(
                std::fs::read(crate::harness::weights()).expect("read"),
            )),
            weights_sha256: sha256_file(&crate::harness::weights()),
            ..Default::default()
        })
        .await
        .expect("load without retaining")
        .into_inner()
        .info
        .expect("info");
    assert_eq!(retained(&mut client).await, (reloaded.clone(), None));
    for wanted in [flowers.clone(), imagenet.clone()] {
        assert_eq!(
            embed_naming(&mut client, wanted).await,
            (reloaded.clone().unwrap(), 1000)
        );
    }
    assert!(!staged.is_file(), "weights of a dropped model stay staged");
    let current = std::path::PathBuf::from(&info.source);
    assert!(current.is_file(), "{}", current.display());

    // A retained model whose weights are gone fails the load; nothing changes.
    let gone = dir.path().join("gone.safetensors");
    std::fs::copy(&five, &gone).expect("copy");
    client
        .load_model(pb::LoadModelRequest {
            model: flowers.clone(),
            class_names: names.clone(),
            weights: Some(pb::load_model_request::Weights::Path(
                gone.display().to_string(),
            )),
            weights_sha256: sha256_file(&five),
            ..Default::default()
        })
        .await
        .expect("load flowers by path");
    std::fs::remove_file(&gone).expect("remove");
    let err = client
        .load_model(pb::LoadModelRequest {
            model: imagenet.clone(),
            weights: Some(pb::load_model_request::Weights::Path(
                "imagenet.safetensors".into(),
            )),
            retain_previous: true,
            weights_sha256: imagenet_sha.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("flowers:1 cannot be retained"),
        "{}",
        err.message()
    );
    assert_eq!(retained(&mut client).await, (flowers.clone(), None));
    assert!(
        !current.is_file(),
        "weights of a replaced model stay staged"
    );

    // Staged weights go with the service.
    let info = client
        .load_model(pb::LoadModelRequest {
            model: reloaded.clone(),
            weights: Some(pb::load_model_request::Weights::Data(
                std::fs::read(crate::harness::weights()).expect("read"),
            )),
            weights_sha256: sha256_file(&crate::harness::weights()),
            ..Default::default()
        })
        .await
        .expect("load by bytes")
        .into_inner()
        .info
        .expect("info");
    let current = std::path::PathBuf::from(&info.source);
    assert!(current.is_file(), "{}", current.display());
    server.stop().await;
    assert!(!current.is_file(), "staged weights outlive the service");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_are_served() {
    let server = Server::start(fast_config()).await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel.clone());
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "cbir.v1.InferenceService".into(),
        })
        .await
        .expect("health")
        .into_inner()
        .status;
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    server.stop().await;
}

/// A stop (SIGTERM in the binary) while embeddings are queued and running:
/// every request already accepted is answered in full, then the service
/// exits; new connections are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_finishes_the_embeddings_in_flight() {
    let server = Server::start(fast_config()).await;
    let labels = imagenet_labels();
    let mut calls = Vec::new();
    for (n, chunk) in labels.chunks(8).take(8).enumerate() {
        let mut c = server.client.clone();
        let images: Vec<pb::ImageInput> = chunk.iter().map(|(p, _)| image(p, read(p))).collect();
        calls.push(tokio::spawn(async move {
            let want = images.len();
            let r = c
                .embed(pb::EmbedRequest {
                    include_renditions: false,
                    images,
                    priority: if n % 2 == 0 {
                        pb::Priority::Bulk
                    } else {
                        pb::Priority::Interactive
                    } as i32,
                    ..Default::default()
                })
                .await;
            (want, r)
        }));
    }
    // Let the requests reach the queue, then stop.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let channel = server.channel.clone();
    let stopped = tokio::spawn(server.stop());
    let mut answered = 0;
    for call in calls {
        let (want, r) = call.await.expect("task");
        let r = r.expect("an accepted request is answered").into_inner();
        assert_eq!(r.results.len(), want);
        for e in &r.results {
            assert_eq!(embedding(e).feature.len(), 1280);
        }
        answered += want;
    }
    stopped.await.expect("the service stopped cleanly");
    assert_eq!(answered, 64);
    // Gone: a new call fails in transport.
    let e = cbir_api::v1::inference_service_client::InferenceServiceClient::new(channel)
        .get_model_info(pb::GetModelInfoRequest::default())
        .await
        .expect_err("stopped");
    assert!(
        matches!(e.code(), Code::Unavailable | Code::Cancelled),
        "a transport failure: {e:?}"
    );
}
