//! Fine-tuning EfficientNet-Lite0 with tch, practical on a CPU.
//!
//! 1. Every training image is decoded once and turned into `augment_views`
//!    augmented views (random resized crop, flip, colour jitter, PCA
//!    lighting); the frozen trunk runs once per view and its activations
//!    before the last `tune_blocks` blocks are cached (half precision).
//! 2. A new classifier for the user's classes is trained on the pooled
//!    features of the cached activations (`head_epochs`).
//! 3. The last blocks, the head convolution and the classifier are trained
//!    together at a lower learning rate, BatchNorm statistics frozen, one
//!    view per epoch plus random flips of the cached maps; validation
//!    accuracy after every epoch picks the best weights and stops early.
//!
//! Only step 3 changes the feature the index searches with, which is what
//! makes a fine-tuned model retrieve better, not just classify better.

mod evaluate;
mod extract;
mod fit;
mod network;
mod params;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use cbir_api::v1 as pb;
use cbir_imaging::Limits;
use cbir_inference::model::EfficientNetLite0;
use rand::rngs::StdRng;
use rand::SeedableRng;
use tch::{nn, Device, Tensor};

use crate::dataset::Dataset;
use crate::error::{Error, Result};

pub use params::Params;

/// How many images fine-tuning the last blocks gets through while the
/// extraction (decode plus the whole trunk) does one: the estimate behind
/// the time left until fine-tuning measures itself (about 4 on a CPU with
/// two blocks; the estimate stays on the safe side).
const FINE_TUNE_SPEEDUP: f64 = 3.0;

/// A finished fine-tune.
pub struct Trained {
    /// The whole network as safetensors, loadable by the inference service.
    pub weights: Vec<u8>,
    pub validation_accuracy: f32,
    pub per_class: Vec<pb::ClassAccuracy>,
    pub iterations: u64,
    pub epochs: u32,
    /// Images that failed to decode during training, with the reason.
    pub skipped: Vec<String>,
}

/// Receives progress: the job's state, and a curve point after each
/// optimiser step or validation.
pub type Report<'a> = dyn FnMut(&pb::JobProgress, Option<pb::CurvePoint>) + 'a;

/// Everything `train` needs besides the data set.
pub struct Setup<'a> {
    pub base_weights: &'a Path,
    pub device: Device,
    pub limits: Limits,
    pub cancel: &'a AtomicBool,
}

/// Runs the whole fine-tune; see the module comment.
pub fn train(
    setup: &Setup<'_>,
    ds: &Dataset,
    p: &Params,
    report: &mut Report<'_>,
) -> Result<Trained> {
    p.check()?;
    let mut t = Trainer::new(setup, ds, p, report)?;
    let (train, val, extract_rate) = t.extract_views()?;
    let plan = t.plan(&train, extract_rate);
    t.train_head(&train, &val, &plan)?;
    t.fine_tune(&train, &val, &plan)?;
    t.evaluate(&val)
}

/// What the steps of one fine-tune share: the network, the progress
/// reported so far, the one random generator (its draws, in order, make a
/// run repeatable) and the best weights seen.
struct Trainer<'a, 'r> {
    setup: &'a Setup<'a>,
    ds: &'a Dataset,
    p: &'a Params,
    report: &'a mut Report<'r>,
    clock: Clock,
    vs: nn::VarStore,
    net: EfficientNetLite0,
    /// The first block that trains; `net.num_blocks()` when none does.
    from: usize,
    progress: pb::JobProgress,
    skipped: Vec<String>,
    rng: StdRng,
    iteration: u64,
    epoch_no: u32,
    /// The best validation accuracy and the trainable tensors that gave it.
    best: (f32, HashMap<String, Tensor>),
}

impl<'a, 'r> Trainer<'a, 'r> {
    fn new(
        setup: &'a Setup<'a>,
        ds: &'a Dataset,
        p: &'a Params,
        report: &'a mut Report<'r>,
    ) -> Result<Self> {
        let clock = Clock {
            started: Instant::now(),
        };
        let classes = ds.classes.len() as i64;
        let (vs, net) = network::network(
            setup.base_weights,
            classes,
            i64::from(p.embedding_dim),
            setup.device,
        )?;
        let from = net.num_blocks() - (p.blocks_to_tune() as usize).min(net.num_blocks());
        for (name, var) in vs.variables() {
            let _ = var.set_requires_grad(network::is_trainable(&name, from));
        }
        let progress = pb::JobProgress {
            phase: "extracting features".into(),
            epochs: p.epochs,
            ..Default::default()
        };
        Ok(Self {
            setup,
            ds,
            p,
            report,
            clock,
            vs,
            net,
            from,
            progress,
            skipped: Vec::new(),
            rng: StdRng::seed_from_u64(p.seed),
            iteration: 0,
            epoch_no: 0,
            best: (f32::MIN, HashMap::new()),
        })
    }

    /// Images of the fine-tuning epochs, which the extraction's time left
    /// counts at the extraction rate.
    fn later_images(&self) -> f64 {
        if (self.p.blocks_to_tune() as usize) == 0 {
            0.0
        } else {
            f64::from(self.p.epochs) * self.ds.train.len() as f64
        }
    }
}

struct Clock {
    started: Instant,
}

impl Clock {
    fn secs(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }
}

fn check_cancel(cancel: &AtomicBool) -> Result<()> {
    if cancel.load(Ordering::Relaxed) {
        Err(Error::Cancelled)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::evaluate::retrieval_map;
    use super::network::is_trainable;
    use super::*;

    #[test]
    fn retrieval_map_matches_a_hand_count() {
        // Classes 0,0,1: the two 0s are nearest each other, the 1 is far.
        let f = Tensor::from_slice(&[1.0f32, 0.0, 0.9, 0.1, 0.0, 1.0]).view([3, 2]);
        let y = Tensor::from_slice(&[0i64, 0, 1]);
        // Queries 0 and 1: AP 1; query 2 has no relevant image: AP 0.
        assert!((retrieval_map(&f, &y) - 2.0 / 3.0).abs() < 1e-6);
    }

    #[test]
    fn trainable_names_follow_the_cut() {
        assert!(is_trainable("_fc.weight", 16));
        assert!(is_trainable("_bn1.bias", 14));
        assert!(!is_trainable("_bn1.running_mean", 14));
        assert!(is_trainable("_blocks.14._expand_conv.weight", 14));
        assert!(!is_trainable("_blocks.13._expand_conv.weight", 14));
        assert!(!is_trainable("_conv_stem.weight", 14));
    }

    #[test]
    fn request_zeros_take_the_defaults_and_ranges_are_checked() {
        let d = Params::default();
        let p = Params::from_request(
            Some(&pb::TrainingParams {
                epochs: 1,
                ..Default::default()
            }),
            &d,
        )
        .expect("params");
        assert_eq!(p.epochs, 1);
        assert_eq!(p.batch_size, d.batch_size);
        let e = Params::from_request(
            Some(&pb::TrainingParams {
                batch_size: 1,
                ..Default::default()
            }),
            &d,
        )
        .expect_err("batch 1");
        assert!(e.to_string().contains("batch_size"), "{e}");
    }
}
