//! The last step: the best epoch's weights restored, their per-class
//! validation accuracy, and the measures every epoch reports.

use std::collections::HashMap;

use cbir_api::v1 as pb;
use tch::{Device, Kind, Tensor};

use super::extract::Cache;
use super::network::{is_trainable, safetensors_bytes};
use super::{Trained, Trainer};
use crate::error::Result;

impl Trainer<'_, '_> {
    /// Restores the best epoch's weights and measures them per class.
    pub(super) fn evaluate(mut self, val: &Cache) -> Result<Trained> {
        self.progress.phase = "saving".into();
        (self.report)(&self.progress, None);
        let vars = self.vs.variables();
        tch::no_grad(|| -> Result<()> {
            for (name, t) in &self.best.1 {
                if let Some(v) = vars.get(name) {
                    let mut v = v.shallow_clone();
                    v.f_copy_(t)?;
                }
            }
            Ok(())
        })?;
        self.vs.freeze();
        let logits = tch::no_grad(|| {
            let f = self.net.embed_t(&self.val_features(val), false);
            self.net.classify_t(&f, false)
        });
        let pred = logits.argmax(-1, false).to_device(Device::Cpu);
        let truth = val.labels.to_device(Device::Cpu);
        let pred: Vec<i64> = Vec::try_from(&pred)?;
        let truth: Vec<i64> = Vec::try_from(&truth)?;
        let classes = &self.ds.classes;
        let mut per = vec![(0u32, 0u32); classes.len()];
        for (p, t) in pred.iter().zip(&truth) {
            let e = &mut per[*t as usize];
            e.1 += 1;
            if p == t {
                e.0 += 1;
            }
        }
        let overall = per.iter().map(|e| e.0).sum::<u32>() as f32 / truth.len().max(1) as f32;
        let per_class = classes
            .iter()
            .zip(per)
            .map(|(c, (ok, n))| pb::ClassAccuracy {
                class_name: c.clone(),
                accuracy: if n == 0 { 0.0 } else { ok as f32 / n as f32 },
                images: n,
            })
            .collect();
        let weights = safetensors_bytes(&self.vs)?;
        Ok(Trained {
            weights,
            validation_accuracy: overall,
            per_class,
            iterations: self.iteration,
            epochs: self.epoch_no,
            skipped: self.skipped,
        })
    }

    /// The validation images' features after the tuned blocks (not yet
    /// embedded), without gradients.
    pub(super) fn val_features(&self, val: &Cache) -> Tensor {
        let all_val: Vec<i64> = (0..val.samples()).collect();
        tch::no_grad(|| {
            let parts: Vec<Tensor> = all_val
                .chunks(128)
                .map(|c| self.net.tail_features_t(&val.rows(c, 0), self.from, false))
                .collect();
            Tensor::cat(&parts, 0)
        })
    }

    /// A copy of the trainable tensors, to come back to the best epoch.
    pub(super) fn snapshot(&self) -> HashMap<String, Tensor> {
        self.vs
            .variables()
            .into_iter()
            .filter(|(n, _)| is_trainable(n, self.from))
            .map(|(n, t)| (n, t.detach().copy()))
            .collect()
    }
}

/// The share of `logits` whose largest class is the label.
pub(super) fn accuracy(logits: &Tensor, labels: &Tensor) -> f32 {
    logits
        .argmax(-1, false)
        .eq_tensor(labels)
        .to_kind(Kind::Float)
        .mean(Kind::Float)
        .double_value(&[]) as f32
}

/// Mean average precision of leave-one-out retrieval among `features`
/// (L2-normalised, Euclidean, as the index searches): logged to see what a
/// fine-tune does to search, which classification accuracy does not show.
pub(super) fn retrieval_map(features: &Tensor, labels: &Tensor) -> f64 {
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

pub(super) fn val_point(p: &pb::JobProgress, iteration: u64, va: f32) -> pb::CurvePoint {
    pb::CurvePoint {
        iteration,
        epoch: p.epoch,
        elapsed_seconds: p.elapsed_seconds,
        loss: p.loss,
        train_accuracy: p.train_accuracy,
        validation_accuracy: va,
    }
}
