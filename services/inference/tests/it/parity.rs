//! The Rust network against the PyTorch reference (scripts/reference_logits.py).

use sha2::{Digest, Sha256};
use tch::{Kind, Tensor};

use crate::harness::{repo_root, weights};

#[derive(serde::Deserialize)]
struct Fixture {
    images: Vec<RefImage>,
}

#[derive(serde::Deserialize)]
struct RefImage {
    source: String,
    input: String,
    sha256: String,
    logits: Vec<f32>,
    features: Vec<f32>,
    top1: i64,
}

fn crops_dir() -> std::path::PathBuf {
    std::env::var_os("CBIR_DATA_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| repo_root().join("data"))
        .join("reference")
}

fn check(channels_last: bool, fuse: bool) {
    let fixture: Fixture =
        serde_json::from_str(include_str!("../fixtures/reference.json")).expect("fixture parses");
    let spec = cbir_inference::ModelSpec {
        name: "efficientnet-lite0".into(),
        version: "imagenet".into(),
        class_names: vec![],
        weights: weights(),
    };
    let device = cbir_inference::DeviceConfig {
        channels_last,
        fuse,
        ..Default::default()
    };
    let backend = cbir_inference::TchBackend::load(&spec, &device).expect("load");
    for img in &fixture.images {
        let path = crops_dir().join(&img.input);
        let crop = image::open(&path)
            .unwrap_or_else(|e| {
                panic!(
                    "{}: {e}; run scripts/setup.sh, which writes the reference crops",
                    path.display()
                )
            })
            .into_rgb8();
        assert_eq!(
            hex::encode(Sha256::digest(crop.as_raw())),
            img.sha256,
            "crop of {} differs from the one the reference saw",
            img.source
        );
        let x = Tensor::from_slice(crop.as_raw())
            .view([1, 224, 224, 3])
            .to_kind(Kind::Float);
        let x = ((x - 127.0) / 128.0).permute([0, 3, 1, 2]).contiguous();
        let (feats, logits) = backend.forward_nchw(&x);
        let logits: Vec<f32> = Vec::try_from(logits.flatten(0, -1)).expect("logits");
        let feats: Vec<f32> = Vec::try_from(feats.flatten(0, -1)).expect("features");
        let max_logit = logits
            .iter()
            .zip(&img.logits)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        let max_feat = feats
            .iter()
            .zip(&img.features)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        println!(
            "{} channels_last={channels_last} fuse={fuse}: max |logit diff| {max_logit:.2e}, max |feature diff| {max_feat:.2e}",
            img.source
        );
        assert_eq!(logits.len(), 1000);
        assert!(
            max_logit < 1e-3,
            "{}: max |logit diff| {max_logit}",
            img.source
        );
        assert!(
            max_feat < 1e-3,
            "{}: max |feature diff| {max_feat}",
            img.source
        );
        let top1 = logits
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, _)| i as i64);
        assert_eq!(top1, Some(img.top1));
    }
}

/// The trainable module, as written.
#[test]
fn logits_match_pytorch_reference() {
    check(false, false);
}

#[test]
fn logits_match_pytorch_reference_channels_last() {
    check(true, false);
}

/// The inference copy with BatchNorm folded and NHWC activations (served).
#[test]
fn fused_logits_match_pytorch_reference() {
    check(true, true);
}

/// A fine-tuned model's layout (embedding layer, cosine classifier) loads
/// from its safetensors, reports its feature width, and the served (fused)
/// path gives the same feature and logits as the trainable module.
#[test]
fn an_embedding_model_loads_and_fused_matches_the_module() {
    use cbir_inference::model::EfficientNetLite0;
    use cbir_inference::Backend;
    let base: std::collections::HashMap<String, Tensor> = Tensor::read_safetensors(weights())
        .expect("weights")
        .into_iter()
        .collect();
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let net = EfficientNetLite0::with_embedding(&vs.root(), 3, 64);
    assert_eq!(net.embedding_dim(), 64);
    tch::no_grad(|| {
        for (name, mut v) in vs.variables() {
            // The new layers keep their initialisation.
            if name.starts_with("_fc.") || name.starts_with("_embed.") {
                continue;
            }
            v.copy_(base.get(&name).expect("a base tensor"));
        }
    });
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("ft.safetensors");
    let named: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    Tensor::write_safetensors(&named, &path).expect("write");
    let spec = cbir_inference::ModelSpec {
        name: "ft".into(),
        version: "1".into(),
        class_names: vec!["a".into(), "b".into(), "c".into()],
        weights: path,
    };
    let crop = image::open(
        crops_dir().join(
            std::fs::read_dir(crops_dir())
                .expect("reference crops: run scripts/setup.sh")
                .filter_map(|e| e.ok())
                .map(|e| e.file_name())
                .find(|n| n.to_string_lossy().ends_with(".png"))
                .expect("a crop"),
        ),
    )
    .expect("crop")
    .into_rgb8();
    let x = Tensor::from_slice(crop.as_raw())
        .view([1, 224, 224, 3])
        .to_kind(Kind::Float);
    let x = ((x - 127.0) / 128.0).permute([0, 3, 1, 2]).contiguous();
    let mut outs = Vec::new();
    for fuse in [false, true] {
        let device = cbir_inference::DeviceConfig {
            channels_last: fuse,
            fuse,
            ..Default::default()
        };
        let backend = cbir_inference::TchBackend::load(&spec, &device).expect("load");
        assert_eq!(backend.meta().embedding_dim, 64);
        let (f, l) = backend.forward_nchw(&x);
        assert_eq!(f.size(), [1, 64]);
        assert_eq!(l.size(), [1, 3]);
        // Cosine logits are bounded by the scale.
        let max = l.abs().max().double_value(&[]);
        assert!(max <= cbir_inference::model::COSINE_SCALE + 1e-3, "{max}");
        outs.push((f, l));
    }
    let df = (&outs[0].0 - &outs[1].0).abs().max().double_value(&[]);
    let dl = (&outs[0].1 - &outs[1].1).abs().max().double_value(&[]);
    assert!(
        df < 1e-3 && dl < 1e-3,
        "fused differs: features {df}, logits {dl}"
    );
}

/// A batch padded to its bucket (as on CUDA) answers its own inputs exactly
/// as an unpadded one: the copies that fill it are dropped, and nothing of
/// them leaks into the real rows. Run on the CPU, padding forced on.
#[test]
fn a_padded_batch_answers_like_an_unpadded_one() {
    use cbir_inference::Backend;
    let spec = cbir_inference::ModelSpec {
        name: "efficientnet-lite0".into(),
        version: "imagenet".into(),
        class_names: vec![],
        weights: weights(),
    };
    let mut backend = cbir_inference::TchBackend::load(&spec, &Default::default()).expect("load");
    let crops: Vec<Vec<u8>> = (0..3)
        .map(|i| {
            let path = crops_dir().join(format!("input{i}.png"));
            image::open(&path)
                .unwrap_or_else(|e| panic!("{}: {e}; run scripts/setup.sh", path.display()))
                .into_rgb8()
                .into_raw()
        })
        .collect();
    let inputs: Vec<&[u8]> = crops.iter().map(Vec::as_slice).collect();
    assert_eq!(cbir_inference::backend::batch_bucket(3), 4);
    assert_eq!(cbir_inference::backend::batch_bucket(0), 1);
    assert_eq!(cbir_inference::backend::batch_bucket(32), 32);
    assert!(!backend.pad_batches, "no padding on the CPU");
    let plain = backend.infer(&inputs).expect("unpadded");
    backend.pad_batches = true;
    backend.warm_up(4).expect("warm-up");
    let padded = backend.infer(&inputs).expect("padded");
    assert_eq!(padded.len(), 3, "one answer per input, not per padded row");
    for (i, (a, b)) in plain.iter().zip(&padded).enumerate() {
        let diff = a
            .feature
            .iter()
            .zip(&b.feature)
            .chain(a.probabilities.iter().zip(&b.probabilities))
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(diff < 1e-4, "input {i}: padded output differs by {diff}");
    }
}
