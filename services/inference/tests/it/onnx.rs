//! The ONNX Runtime backend against the tch module (within 1e-4), the
//! PyTorch reference, and the tch served path's top-1 on
//! imagenet-sample-300. They load libonnxruntime from the setup's Python
//! environment (`scripts/setup.sh` installs the pinned wheel).

use cbir_inference::{Backend, DeviceConfig, ModelSpec, OrtBackend, TchBackend};
use tch::{Kind, Tensor};

use crate::harness::{imagenet_labels, read, repo_root, weights};

fn onnx_device() -> DeviceConfig {
    DeviceConfig {
        backend: "onnx".into(),
        ..Default::default()
    }
}

/// The trainable tch module, unfused: what the new path must match.
fn module_device() -> DeviceConfig {
    DeviceConfig {
        backend: "tch".into(),
        channels_last: false,
        fuse: false,
        ..Default::default()
    }
}

fn imagenet_spec() -> ModelSpec {
    ModelSpec {
        name: "efficientnet-lite0".into(),
        version: "imagenet".into(),
        class_names: vec![],
        weights: weights(),
    }
}

/// 224x224 RGB crops the service would feed: decoded and preprocessed by
/// cbir-imaging from real photos.
fn crops(n: usize) -> Vec<Vec<u8>> {
    imagenet_labels()
        .iter()
        .step_by(300 / n)
        .take(n)
        .map(|(p, _)| {
            let d =
                cbir_imaging::decode(&read(p), &cbir_imaging::Limits::default()).expect("decode");
            cbir_imaging::preprocess(&d.image).expect("preprocess")
        })
        .collect()
}

/// (features, logits) of the tch module for one crop; features made unit
/// length as the service serves them.
fn module_outputs(module: &TchBackend, crop: &[u8]) -> (Vec<f32>, Vec<f32>) {
    let x = Tensor::from_slice(crop)
        .view([1, 224, 224, 3])
        .to_kind(Kind::Float);
    let x = ((x - 127.0) / 128.0).permute([0, 3, 1, 2]).contiguous();
    let (f, l) = module.forward_nchw(&x);
    let f = &f / f.norm_scalaropt_dim(2.0, [1i64], true).clamp_min(1e-12);
    (
        Vec::try_from(f.flatten(0, -1)).expect("features"),
        Vec::try_from(l.flatten(0, -1)).expect("logits"),
    )
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
}

fn softmax(l: &[f32]) -> Vec<f32> {
    let m = l.iter().copied().fold(f32::MIN, f32::max);
    let e: Vec<f32> = l.iter().map(|v| (v - m).exp()).collect();
    let s: f32 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}

/// Runs `crops` one at a time and all in one batch through ONNX Runtime
/// and compares every output with the tch module's.
fn compare(spec: &ModelSpec, crops: &[Vec<u8>], what: &str) {
    let module = TchBackend::load(spec, &module_device()).expect("tch module");
    let mut ort = OrtBackend::load(spec, &onnx_device()).expect("onnx backend");
    assert_eq!(ort.meta().backend, "onnxruntime");
    assert_eq!(ort.meta().embedding_dim, module.meta().embedding_dim);
    let all: Vec<&[u8]> = crops.iter().map(Vec::as_slice).collect();
    let (bf, bp, bl) = ort.run(&all).expect("batch");
    let (d, c) = (bf.len() / crops.len(), bl.len() / crops.len());
    let (mut worst_logit, mut worst_feature, mut worst_prob, mut worst_batch) =
        (0f32, 0f32, 0f32, 0f32);
    for (i, crop) in crops.iter().enumerate() {
        let (mf, ml) = module_outputs(&module, crop);
        let (of, op, ol) = ort.run(&[crop.as_slice()]).expect("one");
        worst_logit = worst_logit.max(max_diff(&ol, &ml));
        worst_feature = worst_feature.max(max_diff(&of, &mf));
        worst_prob = worst_prob.max(max_diff(&op, &softmax(&ml)));
        worst_batch = worst_batch
            .max(max_diff(&bl[i * c..(i + 1) * c], &ol))
            .max(max_diff(&bf[i * d..(i + 1) * d], &of))
            .max(max_diff(&bp[i * c..(i + 1) * c], &op));
    }
    println!(
        "{what}, {} crops: max |logit diff| {worst_logit:.2e}, max |feature diff| \
         {worst_feature:.2e}, max |probability diff| {worst_prob:.2e}, batch vs single \
         {worst_batch:.2e}",
        crops.len()
    );
    assert!(worst_logit < 1e-4, "{what}: logits differ by {worst_logit}");
    assert!(
        worst_feature < 1e-4,
        "{what}: features differ by {worst_feature}"
    );
    assert!(
        worst_prob < 1e-5,
        "{what}: probabilities differ by {worst_prob}"
    );
    assert!(
        worst_batch < 1e-4,
        "{what}: a batch differs from single passes by {worst_batch}"
    );
}

#[test]
fn onnx_matches_the_tch_module_pretrained() {
    compare(&imagenet_spec(), &crops(12), "pretrained");
}

/// A fine-tuned model's layout (embedding layer, cosine classifier), with
/// every layer's values changed from the pretrained ones, as fine-tuning
/// does: the graph is written from those weights with no Python involved.
#[test]
fn onnx_matches_the_tch_module_fine_tuned_layout() {
    use cbir_inference::model::EfficientNetLite0;
    let base: std::collections::HashMap<String, Tensor> = Tensor::read_safetensors(weights())
        .expect("weights")
        .into_iter()
        .collect();
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let _net = EfficientNetLite0::with_embedding(&vs.root(), 5, 128);
    tch::manual_seed(7);
    tch::no_grad(|| {
        for (name, mut v) in vs.variables() {
            if name.starts_with("_fc.") || name.starts_with("_embed.") {
                continue;
            }
            let b = base.get(&name).expect("a base tensor");
            // Moved off the pretrained values (BatchNorm statistics and
            // scales too), variances kept positive.
            let noise = b.randn_like() * 0.02 * b.abs().mean(Kind::Float);
            let moved = if name.ends_with("running_var") {
                (b + noise).abs()
            } else {
                b + noise
            };
            v.copy_(&moved);
        }
    });
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("ft.safetensors");
    let named: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    Tensor::write_safetensors(&named, &path).expect("write");
    let spec = ModelSpec {
        name: "ft".into(),
        version: "1".into(),
        class_names: (0..5).map(|i| format!("class{i}")).collect(),
        weights: path,
    };
    compare(&spec, &crops(8), "fine-tuned layout");
}

/// The new path against the PyTorch reference's logits (the fixture the
/// tch paths are held to), and the same top-1.
#[test]
fn onnx_logits_match_pytorch_reference() {
    #[derive(serde::Deserialize)]
    struct Fixture {
        images: Vec<RefImage>,
    }
    #[derive(serde::Deserialize)]
    struct RefImage {
        source: String,
        input: String,
        logits: Vec<f32>,
        top1: usize,
    }
    let fixture: Fixture =
        serde_json::from_str(include_str!("../fixtures/reference.json")).expect("fixture parses");
    let dir = std::env::var_os("CBIR_DATA_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| repo_root().join("data"))
        .join("reference");
    let mut ort = OrtBackend::load(&imagenet_spec(), &onnx_device()).expect("onnx backend");
    for img in &fixture.images {
        let crop = image::open(dir.join(&img.input))
            .expect("reference crop: run scripts/setup.sh")
            .into_rgb8();
        let (_, _, logits) = ort.run(&[crop.as_raw().as_slice()]).expect("run");
        let d = max_diff(&logits, &img.logits);
        println!("{}: max |logit diff| against PyTorch {d:.2e}", img.source);
        assert!(d < 1e-3, "{}: {d}", img.source);
        let top1 = logits
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, _)| i);
        assert_eq!(top1, Some(img.top1), "{}", img.source);
    }
}

/// Every image of imagenet-sample-300 through both served paths (tch fused
/// and ONNX Runtime) as the batcher feeds them: the same top-1 accuracy.
#[test]
fn onnx_top1_on_imagenet_sample_300_equals_tch() {
    let labels = imagenet_labels();
    let spec = imagenet_spec();
    let mut tch = TchBackend::load(
        &spec,
        &DeviceConfig {
            backend: "tch".into(),
            ..Default::default()
        },
    )
    .expect("tch");
    let mut ort = OrtBackend::load(&spec, &onnx_device()).expect("onnx backend");
    let (mut right_tch, mut right_ort, mut disagree) = (0, 0, 0);
    for chunk in labels.chunks(4) {
        let crops: Vec<Vec<u8>> = chunk
            .iter()
            .map(|(p, _)| {
                let d = cbir_imaging::decode(&read(p), &cbir_imaging::Limits::default())
                    .expect("decode");
                cbir_imaging::preprocess(&d.image).expect("preprocess")
            })
            .collect();
        let inputs: Vec<&[u8]> = crops.iter().map(Vec::as_slice).collect();
        let a = tch.infer(&inputs).expect("tch");
        let b = ort.infer(&inputs).expect("onnx");
        for (((_, label), a), b) in chunk.iter().zip(a).zip(b) {
            let top = |p: &[f32]| {
                p.iter()
                    .enumerate()
                    .max_by(|x, y| x.1.total_cmp(y.1))
                    .map(|(i, _)| i as i32)
            };
            let (ta, tb) = (top(&a.probabilities), top(&b.probabilities));
            right_tch += usize::from(ta == Some(*label));
            right_ort += usize::from(tb == Some(*label));
            disagree += usize::from(ta != tb);
        }
    }
    println!(
        "imagenet-sample-300 top-1: tch {:.3}, onnxruntime {:.3}, {disagree} images with \
         another top-1",
        right_tch as f64 / 300.0,
        right_ort as f64 / 300.0
    );
    assert_eq!(
        right_ort, right_tch,
        "top-1 changed on the ONNX Runtime path"
    );
    assert!(right_ort >= 252, "top-1 {right_ort}/300 is below 0.84");
}

/// `auto` serves on ONNX Runtime on a CPU where the library loads, and on
/// tch where ONNX Runtime would not run the configuration.
#[test]
fn auto_picks_onnx_on_cpu_and_tch_otherwise() {
    use cbir_inference::Engine;
    assert_eq!(
        DeviceConfig::default().engine().expect("auto"),
        Engine::Onnx
    );
    let unfused = DeviceConfig {
        fuse: false,
        ..Default::default()
    };
    assert_eq!(unfused.engine().expect("auto"), Engine::Tch);
    let bad = DeviceConfig {
        backend: "tensorflow".into(),
        ..Default::default()
    };
    let e = bad.engine().expect_err("unknown backend").to_string();
    assert!(e.contains("auto, tch, onnx"), "{e}");
    let missing = cbir_inference::onnx::find_library(Some(std::path::Path::new(
        "/nonexistent/libonnxruntime.so",
    )))
    .expect_err("missing library")
    .to_string();
    assert!(missing.contains("onnxruntime_library"), "{missing}");
    // f16 on the CPU is refused by either engine, with the reason.
    let f16 = DeviceConfig {
        backend: "onnx".into(),
        dtype: "f16".into(),
        ..Default::default()
    };
    let e = OrtBackend::load(&imagenet_spec(), &f16)
        .err()
        .expect("f16 refused")
        .to_string();
    assert!(e.contains("f32") || e.contains("CUDA"), "{e}");
}
