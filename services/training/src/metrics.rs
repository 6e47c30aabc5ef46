//! Training progress as Prometheus metrics (the request metrics come from
//! the server layer).

use std::sync::Arc;

use cbir_api::v1 as pb;
use prometheus::{Gauge, IntCounterVec, IntGauge, Opts};

pub struct TrainingMetrics {
    pub metrics: Arc<cbir_common::metrics::Metrics>,
    pub running: IntGauge,
    pub finished: IntCounterVec,
    epoch: IntGauge,
    iteration: IntGauge,
    loss: Gauge,
    train_accuracy: Gauge,
    validation_accuracy: Gauge,
    images_per_second: Gauge,
    eta_seconds: Gauge,
}

impl TrainingMetrics {
    pub fn new() -> prometheus::Result<Self> {
        let m = cbir_common::metrics::Metrics::new("training");
        let running = IntGauge::new("training_jobs_running", "Jobs training now (0 or 1)")?;
        let finished = IntCounterVec::new(
            Opts::new("training_jobs_finished_total", "Jobs ended, by outcome"),
            &["state"],
        )?;
        let epoch = IntGauge::new("training_epoch", "Epoch of the running job")?;
        let iteration = IntGauge::new("training_iteration", "Optimiser steps of the running job")?;
        let loss = Gauge::new("training_loss", "Training loss of the last step")?;
        let train_accuracy = Gauge::new(
            "training_train_accuracy",
            "Training accuracy of the epoch so far",
        )?;
        let validation_accuracy = Gauge::new(
            "training_validation_accuracy",
            "Validation accuracy after the last epoch",
        )?;
        let images_per_second = Gauge::new("training_images_per_second", "Training throughput")?;
        let eta_seconds = Gauge::new("training_eta_seconds", "Estimated time left of the phase")?;
        for c in [
            Box::new(running.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(finished.clone()),
            Box::new(epoch.clone()),
            Box::new(iteration.clone()),
            Box::new(loss.clone()),
            Box::new(train_accuracy.clone()),
            Box::new(validation_accuracy.clone()),
            Box::new(images_per_second.clone()),
            Box::new(eta_seconds.clone()),
        ] {
            m.registry.register(c)?;
        }
        Ok(Self {
            metrics: m,
            running,
            finished,
            epoch,
            iteration,
            loss,
            train_accuracy,
            validation_accuracy,
            images_per_second,
            eta_seconds,
        })
    }

    pub fn observe(&self, p: &pb::JobProgress) {
        self.epoch.set(i64::from(p.epoch));
        self.iteration.set(p.iteration as i64);
        self.loss.set(f64::from(p.loss));
        self.train_accuracy.set(f64::from(p.train_accuracy));
        self.validation_accuracy
            .set(f64::from(p.validation_accuracy));
        self.images_per_second.set(p.images_per_second);
        self.eta_seconds.set(p.eta_seconds);
    }
}
