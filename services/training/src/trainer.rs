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

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use cbir_api::v1 as pb;
use cbir_imaging::{Limits, INPUT_SIZE};
use cbir_inference::model::{EfficientNetLite0, FusedEfficientNet};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use tch::nn::{self, OptimizerConfig};
use tch::{Device, Kind, Tensor};

use crate::augment::{random_view, working_copy, Jitter};
use crate::dataset::Dataset;
use crate::error::{Error, Result};

/// What a job trains with; zeros in a request mean these defaults.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Params {
    pub epochs: u32,
    pub batch_size: u32,
    pub learning_rate: f64,
    /// Train the last three stages (7 blocks) instead of `tune_blocks`.
    pub fine_tune_backbone: bool,
    pub validation_fraction: f64,
    pub seed: u64,
    pub min_images_per_class: u32,
    pub early_stopping_patience: u32,
    pub tune_blocks: u32,
    pub augment_views: u32,
    pub head_epochs: u32,
    /// Width of the embedding layer that becomes the searched feature
    /// (trained with a cosine classifier); 0 keeps the pooled 1280-d feature
    /// and a linear classifier.
    pub embedding_dim: u32,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            epochs: 6,
            batch_size: 32,
            learning_rate: 1e-4,
            fine_tune_backbone: false,
            validation_fraction: 0.1,
            seed: 42,
            min_images_per_class: 100,
            early_stopping_patience: 2,
            tune_blocks: 2,
            augment_views: 2,
            head_epochs: 8,
            embedding_dim: 256,
        }
    }
}

/// The new classifier starts from scratch on fixed features: it takes a
/// much larger step than the pretrained blocks.
const HEAD_LR_FACTOR: f64 = 30.0;
/// Blocks trained when `fine_tune_backbone` is set: stages 5 to 7.
const BACKBONE_BLOCKS: u32 = 7;
const MAX_EPOCHS: u32 = 200;
const MAX_VIEWS: u32 = 8;
/// How many images fine-tuning the last blocks gets through while the
/// extraction (decode plus the whole trunk) does one: the estimate behind
/// the time left until fine-tuning measures itself (about 4 on a CPU with
/// two blocks; the estimate stays on the safe side).
const FINE_TUNE_SPEEDUP: f64 = 3.0;
/// Images decoded and run through the trunk at once.
const EXTRACT_BATCH: usize = 32;

impl Params {
    /// Fills zeros from `defaults` and checks the ranges.
    pub fn from_request(p: Option<&pb::TrainingParams>, defaults: &Params) -> Result<Self> {
        let d = defaults;
        let Some(p) = p else {
            return Ok(d.clone());
        };
        let or = |v: u32, dv: u32| if v == 0 { dv } else { v };
        let out = Params {
            epochs: or(p.epochs, d.epochs),
            batch_size: or(p.batch_size, d.batch_size),
            learning_rate: if p.learning_rate > 0.0 {
                f64::from(p.learning_rate)
            } else {
                d.learning_rate
            },
            fine_tune_backbone: p.fine_tune_backbone,
            validation_fraction: if p.validation_fraction > 0.0 {
                f64::from(p.validation_fraction)
            } else {
                d.validation_fraction
            },
            seed: if p.seed == 0 { d.seed } else { p.seed },
            min_images_per_class: or(p.min_images_per_class, d.min_images_per_class),
            early_stopping_patience: or(p.early_stopping_patience, d.early_stopping_patience),
            tune_blocks: or(p.tune_blocks, d.tune_blocks),
            augment_views: or(p.augment_views, d.augment_views),
            head_epochs: or(p.head_epochs, d.head_epochs),
            embedding_dim: or(p.embedding_dim, d.embedding_dim),
        };
        out.check()?;
        Ok(out)
    }

    pub fn check(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidArgument(m));
        if self.epochs > MAX_EPOCHS {
            return bad(format!("epochs {} is over {MAX_EPOCHS}", self.epochs));
        }
        if !(2..=512).contains(&self.batch_size) {
            return bad(format!("batch_size {} is outside 2..512", self.batch_size));
        }
        if !(self.learning_rate > 0.0 && self.learning_rate <= 1.0) {
            return bad(format!(
                "learning_rate {} is outside (0, 1]",
                self.learning_rate
            ));
        }
        if !(self.validation_fraction > 0.0 && self.validation_fraction < 0.9) {
            return bad(format!(
                "validation_fraction {} is outside (0, 0.9)",
                self.validation_fraction
            ));
        }
        if self.tune_blocks > 16 {
            return bad(format!("tune_blocks {} is over 16", self.tune_blocks));
        }
        if self.augment_views > MAX_VIEWS {
            return bad(format!(
                "augment_views {} is over {MAX_VIEWS}",
                self.augment_views
            ));
        }
        if self.embedding_dim > 4096 {
            return bad(format!("embedding_dim {} is over 4096", self.embedding_dim));
        }
        if self.head_epochs > MAX_EPOCHS {
            return bad(format!(
                "head_epochs {} is over {MAX_EPOCHS}",
                self.head_epochs
            ));
        }
        Ok(())
    }

    pub fn to_proto(&self) -> pb::TrainingParams {
        pb::TrainingParams {
            epochs: self.epochs,
            batch_size: self.batch_size,
            learning_rate: self.learning_rate as f32,
            fine_tune_backbone: self.fine_tune_backbone,
            validation_fraction: self.validation_fraction as f32,
            seed: self.seed,
            min_images_per_class: self.min_images_per_class,
            early_stopping_patience: self.early_stopping_patience,
            tune_blocks: self.tune_blocks,
            augment_views: self.augment_views,
            head_epochs: self.head_epochs,
            embedding_dim: self.embedding_dim,
        }
    }

    fn blocks_to_tune(&self) -> u32 {
        if self.fine_tune_backbone {
            self.tune_blocks.max(BACKBONE_BLOCKS)
        } else {
            self.tune_blocks
        }
    }
}

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

/// Cached trunk activations and their labels.
struct Cache {
    /// `[rows, C, H, W]` half precision; row = sample * views + view.
    maps: Tensor,
    labels: Tensor,
    views: i64,
}

impl Cache {
    fn samples(&self) -> i64 {
        self.labels.size()[0]
    }

    fn rows(&self, samples: &[i64], view: i64) -> Tensor {
        let idx: Vec<i64> = samples.iter().map(|s| s * self.views + view).collect();
        let dev = self.maps.device();
        self.maps
            .index_select(0, &Tensor::from_slice(&idx).to_device(dev))
            .to_kind(Kind::Float)
    }
}

fn is_trainable(name: &str, from: usize) -> bool {
    if name.ends_with("running_mean") || name.ends_with("running_var") {
        return false;
    }
    if name.starts_with("_fc.")
        || name.starts_with("_embed.")
        || name.starts_with("_conv_head.")
        || name.starts_with("_bn1.")
    {
        return true;
    }
    name.strip_prefix("_blocks.")
        .and_then(|r| r.split('.').next())
        .and_then(|i| i.parse::<usize>().ok())
        .is_some_and(|i| i >= from)
}

/// Builds the network for `classes` classes from the base weights: every
/// tensor but the classifier is copied; the classifier starts fresh.
fn network(
    base: &Path,
    classes: i64,
    embedding_dim: i64,
    device: Device,
) -> Result<(nn::VarStore, EfficientNetLite0)> {
    let named = Tensor::read_safetensors(base).map_err(|e| {
        tracing::error!(path = %base.display(), error = %e, "cannot read the base weights");
        Error::Training(
            "the base weights cannot be read (base_weights; the training service's log names the file)"
                .into(),
        )
    })?;
    let named: HashMap<String, Tensor> = named.into_iter().collect();
    let vs = nn::VarStore::new(device);
    let net = if embedding_dim > 0 {
        EfficientNetLite0::with_embedding(&vs.root(), classes, embedding_dim)
    } else {
        EfficientNetLite0::new(&vs.root(), classes)
    };
    for (name, mut var) in vs.variables() {
        // The new layers start fresh.
        if name.starts_with("_fc.") || name.starts_with("_embed.") {
            continue;
        }
        let src = named.get(&name).ok_or_else(|| {
            Error::Training(format!(
                "the base weights lack tensor {name}: not EfficientNet-Lite0"
            ))
        })?;
        if src.size() != var.size() {
            return Err(Error::Training(format!(
                "tensor {name} has shape {:?} in the base weights, the network needs {:?}",
                src.size(),
                var.size()
            )));
        }
        tch::no_grad(|| var.f_copy_(&src.to_kind(var.kind())))?;
    }
    Ok((vs, net))
}

/// Speed of the current phase, for images/s and the time left.
struct Pace {
    started: Instant,
    steps: u64,
    images: u64,
    /// Steps of this phase in all.
    steps_left: u64,
    /// Images of later phases, estimated at the extraction rate.
    later_images: f64,
}

impl Pace {
    fn new(steps: i64, later_images: f64) -> Self {
        Self {
            started: Instant::now(),
            steps: 0,
            images: 0,
            steps_left: steps.max(0) as u64,
            later_images,
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

/// Decodes `paths` (of `ds`) on all cores; each gives `views` random views (or the
/// centre view when `views` is 0), or the reason it could not be read.
fn decode_views(
    ds: &crate::dataset::Dataset,
    paths: &[(usize, &Path)],
    views: usize,
    seed: u64,
    limits: &Limits,
) -> Vec<std::result::Result<Vec<Vec<u8>>, String>> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(8);
    let per = paths.len().div_ceil(threads).max(1);
    let budget = cbir_imaging::budget::Budget::shared(limits);
    let budget = &budget;
    std::thread::scope(|s| {
        let handles: Vec<_> = paths
            .chunks(per)
            .map(|chunk| {
                s.spawn(move || {
                    chunk
                        .iter()
                        .map(|(i, p)| {
                            // Not through a link swapped in since the scan.
                            let bytes = crate::dataset::read_sample(ds, p)?;
                            let header =
                                cbir_imaging::probe(&bytes, limits).map_err(|e| e.to_string())?;
                            // Training waits as long as it takes: searches
                            // and uploads share the budget and come first.
                            let permit = budget
                                .acquire_blocking(header.peak_bytes(), None)
                                .map_err(|e| e.to_string())?;
                            let d =
                                cbir_imaging::decode(&bytes, limits).map_err(|e| e.to_string())?;
                            let img = working_copy(d.image)?;
                            drop(permit);
                            if views == 0 {
                                return cbir_imaging::preprocess(&img)
                                    .map(|v| vec![v])
                                    .map_err(|e| e.to_string());
                            }
                            let mut rng = rand::rngs::StdRng::seed_from_u64(
                                seed ^ (*i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
                            );
                            (0..views).map(|_| random_view(&img, &mut rng)).collect()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| {
                h.join()
                    .unwrap_or_else(|_| vec![Err("decoding panicked".to_string())])
            })
            .collect()
    })
}

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
    let clock = Clock {
        started: Instant::now(),
    };
    let classes = ds.classes.len() as i64;
    let (mut vs, net) = network(
        setup.base_weights,
        classes,
        i64::from(p.embedding_dim),
        setup.device,
    )?;
    let from = net.num_blocks() - (p.blocks_to_tune() as usize).min(net.num_blocks());
    for (name, var) in vs.variables() {
        let _ = var.set_requires_grad(is_trainable(&name, from));
    }
    let mut skipped = Vec::new();
    let mut progress = pb::JobProgress {
        phase: "extracting features".into(),
        epochs: p.epochs,
        ..Default::default()
    };

    // 1. Cache trunk activations.
    let fused = FusedEfficientNet::from_trained(&net);
    let views = p.augment_views.max(1) as usize;
    let total_images = ds.train.len() * views + ds.validation.len();
    let mut done_images = 0usize;
    let later_images = if (p.blocks_to_tune() as usize) == 0 {
        0.0
    } else {
        f64::from(p.epochs) * ds.train.len() as f64
    };
    let extract_started = Instant::now();
    let mut extract = |samples: &[crate::dataset::Sample],
                       views: usize,
                       rng: &mut rand::rngs::StdRng,
                       skipped: &mut Vec<String>,
                       report: &mut Report<'_>|
     -> Result<Cache> {
        let mut maps = Vec::new();
        let mut labels = Vec::new();
        let indexed: Vec<(usize, &Path)> = samples
            .iter()
            .enumerate()
            .map(|(i, s)| (i, s.path.as_path()))
            .collect();
        // Decoding the next chunk overlaps the forward pass of this one.
        std::thread::scope(|s| -> Result<()> {
            let (tx, rx) = std::sync::mpsc::sync_channel(2);
            let limits = setup.limits;
            let seed = p.seed;
            let cancel = setup.cancel;
            let chunks: Vec<&[(usize, &Path)]> = indexed.chunks(EXTRACT_BATCH).collect();
            s.spawn(move || {
                for chunk in chunks {
                    if cancel.load(Ordering::Relaxed) {
                        break;
                    }
                    let decoded = decode_views(ds, chunk, views, seed, &limits);
                    if tx.send((chunk, decoded)).is_err() {
                        break;
                    }
                }
            });
            for (chunk, decoded) in rx {
                check_cancel(setup.cancel)?;
                let mut buf = Vec::new();
                let mut n = 0i64;
                for ((i, path), d) in chunk.iter().zip(decoded) {
                    match d {
                        Ok(vs) => {
                            for v in vs {
                                buf.extend_from_slice(&v);
                                n += 1;
                            }
                            labels.push(samples[*i].class as i64);
                        }
                        Err(why) => skipped.push(format!(
                            "{}: {why}",
                            path.strip_prefix(&ds.root).unwrap_or(path).display()
                        )),
                    }
                }
                if n > 0 {
                    let side = i64::from(INPUT_SIZE);
                    let x = Tensor::from_slice(&buf)
                        .view([n, side, side, 3])
                        .to_device(setup.device)
                        .permute([0, 3, 1, 2])
                        .to_kind(Kind::Float);
                    let x = if views > 0 {
                        Jitter::sample(n as usize, rng).apply(&x)
                    } else {
                        x
                    };
                    let x = ((x - 127.0) / 128.0).permute([0, 2, 3, 1]);
                    // BatchNorm is frozen, so the folded network gives the same
                    // activations as the trainable one, about twice as fast.
                    let m = tch::no_grad(|| fused.trunk_nhwc(&x, from))
                        .permute([0, 3, 1, 2])
                        .to_kind(Kind::Half)
                        .contiguous();
                    maps.push(m);
                }
                done_images += chunk.len() * views.max(1);
                let secs = extract_started.elapsed().as_secs_f64().max(1e-3);
                let rate = done_images as f64 / secs;
                progress.phase =
                    format!("extracting features ({done_images}/{total_images} images)");
                progress.images_per_second = rate;
                progress.eta_seconds = ((total_images - done_images.min(total_images)) as f64
                    + later_images / FINE_TUNE_SPEEDUP)
                    / rate;
                progress.elapsed_seconds = clock.secs();
                report(&progress, None);
            }
            Ok(())
        })?;
        check_cancel(setup.cancel)?;
        if maps.is_empty() {
            return Err(Error::InvalidArgument(
                "no image of the data set could be read".into(),
            ));
        }
        Ok(Cache {
            maps: Tensor::cat(&maps, 0),
            labels: Tensor::from_slice(&labels).to_device(setup.device),
            views: views.max(1) as i64,
        })
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(p.seed);
    let train_cache = extract(&ds.train, views, &mut rng, &mut skipped, report)?;
    let val_cache = extract(&ds.validation, 0, &mut rng, &mut skipped, report)?;
    drop(fused);
    let n_train = train_cache.samples();
    let bs = i64::from(p.batch_size);
    let steps_per_epoch = (n_train + bs - 1) / bs;
    let head_epochs = if from == net.num_blocks() {
        p.epochs.max(p.head_epochs)
    } else {
        p.head_epochs
    };
    let tune_epochs = if from == net.num_blocks() {
        0
    } else {
        p.epochs
    };
    let head_steps_per_epoch = (n_train * train_cache.views + bs - 1) / bs;
    let total_steps =
        i64::from(head_epochs) * head_steps_per_epoch + i64::from(tune_epochs) * steps_per_epoch;
    progress.iterations = total_steps as u64;
    progress.epochs = head_epochs + tune_epochs;

    let all_val: Vec<i64> = (0..val_cache.samples()).collect();
    let val_features = |net: &EfficientNetLite0| -> Tensor {
        tch::no_grad(|| {
            let parts: Vec<Tensor> = all_val
                .chunks(128)
                .map(|c| net.tail_features_t(&val_cache.rows(c, 0), from, false))
                .collect();
            Tensor::cat(&parts, 0)
        })
    };
    let accuracy = |logits: &Tensor, labels: &Tensor| -> f32 {
        logits
            .argmax(-1, false)
            .eq_tensor(labels)
            .to_kind(Kind::Float)
            .mean(Kind::Float)
            .double_value(&[]) as f32
    };
    let mut order: Vec<i64> = (0..n_train).collect();
    let mut iteration = 0u64;
    let mut epoch_no = 0u32;
    let extract_rate = done_images as f64 / extract_started.elapsed().as_secs_f64().max(1e-3);
    let step = |progress: &mut pb::JobProgress,
                iteration: &mut u64,
                pace: &mut Pace,
                loss: f32,
                acc: f32,
                images: i64,
                report: &mut Report<'_>| {
        *iteration += 1;
        pace.steps += 1;
        pace.images += images as u64;
        let secs = pace.started.elapsed().as_secs_f64().max(1e-3);
        progress.iteration = *iteration;
        progress.loss = loss;
        progress.train_accuracy = acc;
        progress.images_per_second = pace.images as f64 / secs;
        progress.eta_seconds = pace.steps_left.saturating_sub(pace.steps) as f64 * secs
            / pace.steps as f64
            + pace.later_images / FINE_TUNE_SPEEDUP / extract_rate.max(1e-3);
        progress.elapsed_seconds = clock.secs();
        let point = pb::CurvePoint {
            iteration: *iteration,
            epoch: progress.epoch,
            elapsed_seconds: progress.elapsed_seconds,
            loss,
            train_accuracy: acc,
            validation_accuracy: f32::NAN,
        };
        report(progress, Some(point));
    };

    // 2. The embedding layer and the classifier on the pooled features of
    // every cached view (the blocks do not change in this stage).
    progress.phase = "training the classifier".into();
    let all_rows: Vec<i64> = (0..train_cache.maps.size()[0]).collect();
    let train_features = tch::no_grad(|| {
        let dev = train_cache.maps.device();
        let parts: Vec<Tensor> = all_rows
            .chunks(128)
            .map(|c| {
                let x = train_cache
                    .maps
                    .index_select(0, &Tensor::from_slice(c).to_device(dev))
                    .to_kind(Kind::Float);
                net.tail_features_t(&x, from, false)
            })
            .collect();
        Tensor::cat(&parts, 0)
    });
    let row_labels =
        train_cache
            .labels
            .repeat_interleave_self_int(train_cache.views, 0, None::<i64>);
    let mut row_order = all_rows;
    let mut best = (f32::MIN, HashMap::new());
    let snapshot = |vs: &nn::VarStore| -> HashMap<String, Tensor> {
        vs.variables()
            .into_iter()
            .filter(|(n, _)| is_trainable(n, from))
            .map(|(n, t)| (n, t.detach().copy()))
            .collect()
    };
    {
        let mut opt = nn::AdamW::default()
            .wd(1e-4)
            .build(&vs, p.learning_rate * HEAD_LR_FACTOR)?;
        let val_f = val_features(&net);
        let mut pace = Pace::new(i64::from(head_epochs) * head_steps_per_epoch, later_images);
        for e in 0..head_epochs {
            epoch_no += 1;
            progress.epoch = epoch_no;
            row_order.shuffle(&mut rng);
            let (mut seen, mut correct) = (0i64, 0f64);
            for c in row_order.chunks(bs as usize) {
                check_cancel(setup.cancel)?;
                let idx = Tensor::from_slice(c).to_device(setup.device);
                let f = train_features.index_select(0, &idx);
                let y = row_labels.index_select(0, &idx);
                let logits = net.classify_t(&net.embed_t(&f, true), true);
                let loss = logits.cross_entropy_for_logits(&y);
                opt.backward_step(&loss);
                seen += c.len() as i64;
                correct += f64::from(accuracy(&logits, &y)) * c.len() as f64;
                let loss = loss.double_value(&[]) as f32;
                step(
                    &mut progress,
                    &mut iteration,
                    &mut pace,
                    loss,
                    (correct / seen as f64) as f32,
                    c.len() as i64,
                    report,
                );
            }
            let (va, vmap) = tch::no_grad(|| {
                let emb = net.embed_t(&val_f, false);
                (
                    accuracy(&net.classify_t(&emb, false), &val_cache.labels),
                    retrieval_map(&emb, &val_cache.labels),
                )
            });
            progress.validation_accuracy = va;
            report(&progress, Some(val_point(&progress, iteration, va)));
            if e == 0 {
                tracing::info!(
                    validation_map = tch::no_grad(|| retrieval_map(&val_f, &val_cache.labels)),
                    "retrieval mAP of the pretrained features on the validation images"
                );
            }
            tracing::info!(
                epoch = e + 1,
                validation_accuracy = va,
                validation_map = vmap,
                "classifier epoch"
            );
            // With blocks to tune, the model is picked among their epochs:
            // the classifier alone leaves the searched feature as it was.
            if va > best.0 || tune_epochs > 0 {
                best = (va, snapshot(&vs));
            }
        }
    }
    drop(train_features);

    // 3. The last blocks with the classifier.
    if tune_epochs > 0 {
        progress.phase = format!("fine-tuning the last {} blocks", net.num_blocks() - from);
        let mut opt = nn::AdamW::default().wd(1e-4).build(&vs, p.learning_rate)?;
        let mut stale = 0;
        best.0 = f32::MIN;
        let mut pace = Pace::new(i64::from(tune_epochs) * steps_per_epoch, 0.0);
        for e in 0..tune_epochs {
            // Cosine decay over the fine-tuning epochs.
            let lr = p.learning_rate
                * 0.5
                * (1.0 + (std::f64::consts::PI * f64::from(e) / f64::from(tune_epochs)).cos());
            opt.set_lr(lr);
            epoch_no += 1;
            progress.epoch = epoch_no;
            order.shuffle(&mut rng);
            let view = i64::from(e) % train_cache.views;
            let (mut seen, mut correct) = (0i64, 0f64);
            for c in order.chunks(bs as usize) {
                check_cancel(setup.cancel)?;
                let x = train_cache.rows(c, view);
                let n = c.len() as i64;
                let flips: Vec<bool> = (0..n)
                    .map(|_| rand::Rng::random_bool(&mut rng, 0.5))
                    .collect();
                let mask = Tensor::from_slice(&flips)
                    .to_device(setup.device)
                    .view([n, 1, 1, 1]);
                let x = x.flip([3]).where_self(&mask, &x);
                let y = train_cache
                    .labels
                    .index_select(0, &Tensor::from_slice(c).to_device(setup.device));
                // BatchNorm in eval mode: its statistics stay those of
                // ImageNet, which small batches would only make noisier.
                let f = net.embed_t(&net.tail_features_t(&x, from, false), true);
                let logits = net.classify_t(&f, true);
                let loss = logits.cross_entropy_for_logits(&y);
                opt.backward_step_clip_norm(&loss, 5.0);
                seen += n;
                correct += f64::from(accuracy(&logits, &y)) * n as f64;
                let loss = loss.double_value(&[]) as f32;
                step(
                    &mut progress,
                    &mut iteration,
                    &mut pace,
                    loss,
                    (correct / seen as f64) as f32,
                    n,
                    report,
                );
            }
            let (va, vmap) = tch::no_grad(|| {
                let f = net.embed_t(&val_features(&net), false);
                (
                    accuracy(&net.classify_t(&f, false), &val_cache.labels),
                    retrieval_map(&f, &val_cache.labels),
                )
            });
            progress.validation_accuracy = va;
            report(&progress, Some(val_point(&progress, iteration, va)));
            tracing::info!(
                epoch = e + 1,
                validation_accuracy = va,
                validation_map = vmap,
                lr,
                "fine-tuning epoch"
            );
            if va > best.0 {
                best = (va, snapshot(&vs));
                stale = 0;
            } else {
                stale += 1;
                if stale >= p.early_stopping_patience {
                    tracing::info!(
                        epoch = e + 1,
                        "early stop: validation accuracy stopped improving"
                    );
                    break;
                }
            }
        }
    }

    // The best epoch's weights, then its per-class accuracy.
    progress.phase = "saving".into();
    report(&progress, None);
    let vars = vs.variables();
    tch::no_grad(|| -> Result<()> {
        for (name, t) in &best.1 {
            if let Some(v) = vars.get(name) {
                let mut v = v.shallow_clone();
                v.f_copy_(t)?;
            }
        }
        Ok(())
    })?;
    vs.freeze();
    let logits = tch::no_grad(|| net.classify_t(&net.embed_t(&val_features(&net), false), false));
    let pred = logits.argmax(-1, false).to_device(Device::Cpu);
    let truth = val_cache.labels.to_device(Device::Cpu);
    let pred: Vec<i64> = Vec::try_from(&pred)?;
    let truth: Vec<i64> = Vec::try_from(&truth)?;
    let mut per = vec![(0u32, 0u32); ds.classes.len()];
    for (p, t) in pred.iter().zip(&truth) {
        let e = &mut per[*t as usize];
        e.1 += 1;
        if p == t {
            e.0 += 1;
        }
    }
    let overall = per.iter().map(|e| e.0).sum::<u32>() as f32 / truth.len().max(1) as f32;
    let per_class = ds
        .classes
        .iter()
        .zip(per)
        .map(|(c, (ok, n))| pb::ClassAccuracy {
            class_name: c.clone(),
            accuracy: if n == 0 { 0.0 } else { ok as f32 / n as f32 },
            images: n,
        })
        .collect();
    let weights = safetensors_bytes(&vs)?;
    Ok(Trained {
        weights,
        validation_accuracy: overall,
        per_class,
        iterations: iteration,
        epochs: epoch_no,
        skipped,
    })
}

/// Mean average precision of leave-one-out retrieval among `features`
/// (L2-normalised, Euclidean, as the index searches): logged to see what a
/// fine-tune does to search, which classification accuracy does not show.
fn retrieval_map(features: &Tensor, labels: &Tensor) -> f64 {
    let n = features.size()[0];
    if n < 2 {
        return 0.0;
    }
    let f = features
        / features
            .norm_scalaropt_dim(2.0, [1i64], true)
            .clamp_min(1e-12);
    let sim = f.mm(&f.tr());
    // Self last: it is cut off below.
    let sim = sim - Tensor::eye(n, (Kind::Float, f.device())) * 1e9;
    let order = sim.argsort(1, true);
    let ranked = labels.index_select(0, &order.flatten(0, -1)).view([n, n]);
    let rel = ranked
        .eq_tensor(&labels.unsqueeze(1))
        .narrow(1, 0, n - 1)
        .to_kind(Kind::Float);
    let ranks = Tensor::arange_start(1, n, (Kind::Float, f.device()));
    let precision = rel.cumsum(1, Kind::Float) / ranks;
    let hits = rel.sum_dim_intlist([1i64].as_slice(), false, Kind::Float);
    let ap = (precision * &rel).sum_dim_intlist([1i64].as_slice(), false, Kind::Float)
        / hits.clamp_min(1.0);
    ap.mean(Kind::Float).double_value(&[])
}

fn val_point(p: &pb::JobProgress, iteration: u64, va: f32) -> pb::CurvePoint {
    pb::CurvePoint {
        iteration,
        epoch: p.epoch,
        elapsed_seconds: p.elapsed_seconds,
        loss: p.loss,
        train_accuracy: p.train_accuracy,
        validation_accuracy: va,
    }
}

/// The var store as a safetensors file in memory (f32, CPU).
fn safetensors_bytes(vs: &nn::VarStore) -> Result<Vec<u8>> {
    let mut named: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .map(|(n, t)| {
            (
                n,
                t.to_device(Device::Cpu).to_kind(Kind::Float).contiguous(),
            )
        })
        .collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    let dir = tempfile_dir()?;
    let path = dir.join(format!("{}.safetensors", uuid::Uuid::new_v4()));
    Tensor::write_safetensors(&named, &path)?;
    let bytes = std::fs::read(&path).map_err(|e| Error::Io(format!("{}: {e}", path.display())));
    let _ = std::fs::remove_file(&path);
    bytes
}

fn tempfile_dir() -> Result<std::path::PathBuf> {
    let d = std::env::temp_dir().join("cbir-training");
    std::fs::create_dir_all(&d).map_err(|e| Error::Io(format!("{}: {e}", d.display())))?;
    Ok(d)
}

#[cfg(test)]
mod tests {
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
