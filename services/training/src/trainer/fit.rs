//! Steps 2 and 3: the new embedding layer and classifier on the cached
//! features, then the last blocks with them at a lower learning rate.

use std::time::Instant;

use cbir_api::v1 as pb;
use rand::seq::SliceRandom;
use tch::nn::{self, OptimizerConfig};
use tch::{Kind, Tensor};

use super::evaluate::{accuracy, retrieval_map, val_point};
use super::extract::Cache;
use super::{check_cancel, Trainer, FINE_TUNE_SPEEDUP};
use crate::error::Result;

/// The new classifier starts from scratch on fixed features: it takes a
/// much larger step than the pretrained blocks.
const HEAD_LR_FACTOR: f64 = 30.0;

/// How the epochs and optimiser steps split between steps 2 and 3.
pub(super) struct Plan {
    bs: i64,
    head_epochs: u32,
    tune_epochs: u32,
    head_steps_per_epoch: i64,
    steps_per_epoch: i64,
    /// Images per second of the extraction, behind the time left.
    extract_rate: f64,
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
    extract_rate: f64,
}

impl Pace {
    fn new(steps: i64, later_images: f64, extract_rate: f64) -> Self {
        Self {
            started: Instant::now(),
            steps: 0,
            images: 0,
            steps_left: steps.max(0) as u64,
            later_images,
            extract_rate,
        }
    }
}

impl Trainer<'_, '_> {
    /// Splits the epochs between the stages and announces the step count.
    pub(super) fn plan(&mut self, train: &Cache, extract_rate: f64) -> Plan {
        let p = self.p;
        let n_train = train.samples();
        let bs = i64::from(p.batch_size);
        let steps_per_epoch = (n_train + bs - 1) / bs;
        let head_only = self.from == self.net.num_blocks();
        let head_epochs = if head_only {
            p.epochs.max(p.head_epochs)
        } else {
            p.head_epochs
        };
        let tune_epochs = if head_only { 0 } else { p.epochs };
        let head_steps_per_epoch = (n_train * train.views + bs - 1) / bs;
        let total_steps = i64::from(head_epochs) * head_steps_per_epoch
            + i64::from(tune_epochs) * steps_per_epoch;
        self.progress.iterations = total_steps as u64;
        self.progress.epochs = head_epochs + tune_epochs;
        Plan {
            bs,
            head_epochs,
            tune_epochs,
            head_steps_per_epoch,
            steps_per_epoch,
            extract_rate,
        }
    }

    /// Step 2: the embedding layer and the classifier on the pooled
    /// features of every cached view (the blocks do not change here).
    pub(super) fn train_head(&mut self, train: &Cache, val: &Cache, plan: &Plan) -> Result<()> {
        self.progress.phase = "training the classifier".into();
        let all_rows: Vec<i64> = (0..train.maps.size()[0]).collect();
        let train_features = self.pooled_rows(train, &all_rows);
        let row_labels = train
            .labels
            .repeat_interleave_self_int(train.views, 0, None::<i64>);
        let mut row_order = all_rows;
        let mut opt = nn::AdamW::default()
            .wd(1e-4)
            .build(&self.vs, self.p.learning_rate * HEAD_LR_FACTOR)?;
        let val_f = self.val_features(val);
        let mut pace = Pace::new(
            i64::from(plan.head_epochs) * plan.head_steps_per_epoch,
            self.later_images(),
            plan.extract_rate,
        );
        for e in 0..plan.head_epochs {
            self.epoch_no += 1;
            self.progress.epoch = self.epoch_no;
            row_order.shuffle(&mut self.rng);
            let (mut seen, mut correct) = (0i64, 0f64);
            for c in row_order.chunks(plan.bs as usize) {
                check_cancel(self.setup.cancel)?;
                let idx = Tensor::from_slice(c).to_device(self.setup.device);
                let f = train_features.index_select(0, &idx);
                let y = row_labels.index_select(0, &idx);
                let logits = self.net.classify_t(&self.net.embed_t(&f, true), true);
                let loss = logits.cross_entropy_for_logits(&y);
                opt.backward_step(&loss);
                seen += c.len() as i64;
                correct += f64::from(accuracy(&logits, &y)) * c.len() as f64;
                let loss = loss.double_value(&[]) as f32;
                let acc = (correct / seen as f64) as f32;
                self.step(&mut pace, loss, acc, c.len() as i64);
            }
            let (va, vmap) = tch::no_grad(|| {
                let emb = self.net.embed_t(&val_f, false);
                (
                    accuracy(&self.net.classify_t(&emb, false), &val.labels),
                    retrieval_map(&emb, &val.labels),
                )
            });
            self.report_validation(va);
            if e == 0 {
                tracing::info!(
                    validation_map = tch::no_grad(|| retrieval_map(&val_f, &val.labels)),
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
            if va > self.best.0 || plan.tune_epochs > 0 {
                self.best = (va, self.snapshot());
            }
        }
        Ok(())
    }

    /// Step 3: the last blocks with the classifier, BatchNorm frozen, one
    /// cached view per epoch plus random flips; stops early when the
    /// validation accuracy stops improving.
    pub(super) fn fine_tune(&mut self, train: &Cache, val: &Cache, plan: &Plan) -> Result<()> {
        if plan.tune_epochs == 0 {
            return Ok(());
        }
        let tune_epochs = plan.tune_epochs;
        let blocks = self.net.num_blocks() - self.from;
        self.progress.phase = format!("fine-tuning the last {blocks} blocks");
        let mut opt = nn::AdamW::default()
            .wd(1e-4)
            .build(&self.vs, self.p.learning_rate)?;
        let mut stale = 0;
        self.best.0 = f32::MIN;
        let mut pace = Pace::new(
            i64::from(tune_epochs) * plan.steps_per_epoch,
            0.0,
            plan.extract_rate,
        );
        let mut order: Vec<i64> = (0..train.samples()).collect();
        let device = self.setup.device;
        for e in 0..tune_epochs {
            // Cosine decay over the fine-tuning epochs.
            let lr = self.p.learning_rate
                * 0.5
                * (1.0 + (std::f64::consts::PI * f64::from(e) / f64::from(tune_epochs)).cos());
            opt.set_lr(lr);
            self.epoch_no += 1;
            self.progress.epoch = self.epoch_no;
            order.shuffle(&mut self.rng);
            let view = i64::from(e) % train.views;
            let (mut seen, mut correct) = (0i64, 0f64);
            for c in order.chunks(plan.bs as usize) {
                check_cancel(self.setup.cancel)?;
                let x = train.rows(c, view);
                let n = c.len() as i64;
                let flips: Vec<bool> = (0..n)
                    .map(|_| rand::Rng::random_bool(&mut self.rng, 0.5))
                    .collect();
                let mask = Tensor::from_slice(&flips)
                    .to_device(device)
                    .view([n, 1, 1, 1]);
                let x = x.flip([3]).where_self(&mask, &x);
                let y = train
                    .labels
                    .index_select(0, &Tensor::from_slice(c).to_device(device));
                // BatchNorm in eval mode: its statistics stay those of
                // ImageNet, which small batches would only make noisier.
                let f = self
                    .net
                    .embed_t(&self.net.tail_features_t(&x, self.from, false), true);
                let logits = self.net.classify_t(&f, true);
                let loss = logits.cross_entropy_for_logits(&y);
                opt.backward_step_clip_norm(&loss, 5.0);
                seen += n;
                correct += f64::from(accuracy(&logits, &y)) * n as f64;
                let loss = loss.double_value(&[]) as f32;
                self.step(&mut pace, loss, (correct / seen as f64) as f32, n);
            }
            let (va, vmap) = tch::no_grad(|| {
                let f = self.net.embed_t(&self.val_features(val), false);
                (
                    accuracy(&self.net.classify_t(&f, false), &val.labels),
                    retrieval_map(&f, &val.labels),
                )
            });
            self.report_validation(va);
            tracing::info!(
                epoch = e + 1,
                validation_accuracy = va,
                validation_map = vmap,
                lr,
                "fine-tuning epoch"
            );
            if va > self.best.0 {
                self.best = (va, self.snapshot());
                stale = 0;
            } else {
                stale += 1;
                if stale >= self.p.early_stopping_patience {
                    tracing::info!(
                        epoch = e + 1,
                        "early stop: validation accuracy stopped improving"
                    );
                    break;
                }
            }
        }
        Ok(())
    }

    /// The pooled features of the cached `rows` (all views), without
    /// gradients: the blocks stay fixed while the head trains on them.
    fn pooled_rows(&self, cache: &Cache, rows: &[i64]) -> Tensor {
        tch::no_grad(|| {
            let dev = cache.maps.device();
            let parts: Vec<Tensor> = rows
                .chunks(128)
                .map(|c| {
                    let x = cache
                        .maps
                        .index_select(0, &Tensor::from_slice(c).to_device(dev))
                        .to_kind(Kind::Float);
                    self.net.tail_features_t(&x, self.from, false)
                })
                .collect();
            Tensor::cat(&parts, 0)
        })
    }

    /// Records one optimiser step: its progress, the time left and a curve
    /// point.
    fn step(&mut self, pace: &mut Pace, loss: f32, acc: f32, images: i64) {
        self.iteration += 1;
        pace.steps += 1;
        pace.images += images as u64;
        let secs = pace.started.elapsed().as_secs_f64().max(1e-3);
        let progress = &mut self.progress;
        progress.iteration = self.iteration;
        progress.loss = loss;
        progress.train_accuracy = acc;
        progress.images_per_second = pace.images as f64 / secs;
        progress.eta_seconds = pace.steps_left.saturating_sub(pace.steps) as f64 * secs
            / pace.steps as f64
            + pace.later_images / FINE_TUNE_SPEEDUP / pace.extract_rate.max(1e-3);
        progress.elapsed_seconds = self.clock.secs();
        let point = pb::CurvePoint {
            iteration: self.iteration,
            epoch: progress.epoch,
            elapsed_seconds: progress.elapsed_seconds,
            loss,
            train_accuracy: acc,
            validation_accuracy: f32::NAN,
        };
        (self.report)(progress, Some(point));
    }

    /// Reports an epoch's validation accuracy as progress and a curve point.
    fn report_validation(&mut self, va: f32) {
        self.progress.validation_accuracy = va;
        let point = val_point(&self.progress, self.iteration, va);
        (self.report)(&self.progress, Some(point));
    }
}
