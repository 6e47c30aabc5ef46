//! Training through the gateway: dataset archives streamed to the
//! training service, training jobs, and the model registry (the caller's
//! role is checked by the HTTP layer).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use cbir_api::v1 as pb;
use futures::StreamExt;
use parking_lot::Mutex;

use crate::error::{Error, Result};
use crate::gateway::Gateway;
use crate::upstream::{request, Client, TrainingClient};

/// Uploads are forwarded in messages of about this size.
const UPLOAD_CHUNK: usize = 1 << 20;
/// A job's event stream may stay open this long.
const WATCH_DEADLINE: Duration = Duration::from_secs(24 * 3600);
/// Submitting a job and activating a model may wait for the training
/// service to finish what it is doing.
const SLOW_CALL: Duration = Duration::from_secs(300);

fn model_ref(name: String, version: String) -> Option<pb::ModelRef> {
    Some(pb::ModelRef { name, version })
}

impl Gateway {
    /// Streams an archive to the training service; nothing is buffered
    /// whole. Refused with 413 past `max_dataset_bytes`.
    pub async fn upload_dataset(
        &self,
        file_name: String,
        body: Body,
    ) -> Result<pb::UploadDatasetResponse> {
        let limit = self.cfg.limits.max_dataset_bytes;
        let over = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let over2 = over.clone();
        let mut data = body.into_data_stream();
        let chunks = async_stream::stream! {
            let mut buf = Vec::with_capacity(UPLOAD_CHUNK);
            let mut total = 0u64;
            let mut first = true;
            while let Some(Ok(b)) = data.next().await {
                total += b.len() as u64;
                if total > limit {
                    over2.store(true, std::sync::atomic::Ordering::Relaxed);
                    // The truncated archive fails to unpack on the other side.
                    return;
                }
                buf.extend_from_slice(&b);
                if buf.len() >= UPLOAD_CHUNK {
                    let file_name = if first { file_name.clone() } else { String::new() };
                    first = false;
                    yield pb::UploadDatasetChunk { file_name, data: std::mem::take(&mut buf) };
                }
            }
            if first || !buf.is_empty() {
                yield pb::UploadDatasetChunk {
                    file_name: if first { file_name.clone() } else { String::new() },
                    data: buf,
                };
            }
        };
        // A stream can be sent once: no retry on another replica.
        let chunks = Mutex::new(Some(chunks));
        let max = self.max_msg();
        let r = self
            .training
            .call("UploadDataset", WATCH_DEADLINE, false, |ch, t| {
                let s = chunks.lock().take();
                async move {
                    let s = s.ok_or_else(|| {
                        tonic::Status::unavailable("the upload cannot be sent twice: upload again")
                    })?;
                    TrainingClient::on(ch, max)
                        .upload_dataset(request(s, t))
                        .await
                        .map(tonic::Response::into_inner)
                }
            })
            .await;
        if over.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(Error::TooLarge(format!(
                "the dataset archive is over the limit of {limit} bytes (max_dataset_bytes)"
            )));
        }
        r
    }

    pub async fn datasets(&self) -> Result<pb::ListDatasetsResponse> {
        self.training_rpc(
            "ListDatasets",
            self.admin_timeout(),
            pb::ListDatasetsRequest {},
            |mut c, r| async move { c.list_datasets(r).await },
        )
        .await
    }

    pub async fn delete_dataset(&self, id: String) -> Result<pb::DeleteDatasetResponse> {
        self.training_rpc(
            "DeleteDataset",
            self.admin_timeout(),
            pb::DeleteDatasetRequest { dataset_id: id },
            |mut c, r| async move { c.delete_dataset(r).await },
        )
        .await
    }

    pub async fn submit_training_job(&self, msg: pb::SubmitJobRequest) -> Result<pb::Job> {
        let r = self
            .training_rpc("SubmitJob", SLOW_CALL, msg, |mut c, r| async move {
                c.submit_job(r).await
            })
            .await?;
        Ok(r.job.unwrap_or_default())
    }

    pub async fn training_jobs(&self) -> Result<Vec<pb::Job>> {
        let r = self
            .training_rpc(
                "ListJobs",
                self.admin_timeout(),
                pb::ListJobsRequest {},
                |mut c, r| async move { c.list_jobs(r).await },
            )
            .await?;
        Ok(r.jobs)
    }

    pub async fn training_job(&self, id: String) -> Result<pb::Job> {
        let r = self
            .training_rpc(
                "GetJob",
                self.admin_timeout(),
                pb::GetJobRequest { job_id: id },
                |mut c, r| async move { c.get_job(r).await },
            )
            .await?;
        Ok(r.job.unwrap_or_default())
    }

    pub async fn cancel_training_job(&self, id: String) -> Result<pb::Job> {
        let r = self
            .training_rpc(
                "CancelJob",
                self.admin_timeout(),
                pb::CancelJobRequest { job_id: id },
                |mut c, r| async move { c.cancel_job(r).await },
            )
            .await?;
        Ok(r.job.unwrap_or_default())
    }

    /// A job's updates until it ends.
    pub async fn watch_training_job(&self, id: String) -> Result<tonic::Streaming<pb::JobEvent>> {
        self.training_rpc(
            "WatchJob",
            WATCH_DEADLINE,
            pb::WatchJobRequest { job_id: id },
            |mut c, r| async move { c.watch_job(r).await },
        )
        .await
    }

    pub async fn training_curve(&self, job_id: String) -> Result<Vec<pb::CurvePoint>> {
        let msg = pb::GetPerformanceCurveRequest {
            target: Some(pb::get_performance_curve_request::Target::JobId(job_id)),
        };
        let r = self
            .training_rpc(
                "GetPerformanceCurve",
                self.admin_timeout(),
                msg,
                |mut c, r| async move { c.get_performance_curve(r).await },
            )
            .await?;
        Ok(r.points)
    }

    pub async fn models(&self) -> Result<Vec<pb::RegisteredModel>> {
        let r = self
            .training_rpc(
                "ListModels",
                self.admin_timeout(),
                pb::ListModelsRequest {},
                |mut c, r| async move { c.list_models(r).await },
            )
            .await?;
        Ok(r.models)
    }

    pub async fn model(&self, name: String, version: String) -> Result<pb::RegisteredModel> {
        let msg = pb::GetModelRequest {
            model: model_ref(name, version),
        };
        let r = self
            .training_rpc(
                "GetModel",
                self.admin_timeout(),
                msg,
                |mut c, r| async move { c.get_model(r).await },
            )
            .await?;
        Ok(r.model.unwrap_or_default())
    }

    pub async fn delete_model(&self, name: String, version: String) -> Result<()> {
        let msg = pb::DeleteModelRequest {
            model: model_ref(name, version),
        };
        self.training_rpc(
            "DeleteModel",
            self.admin_timeout(),
            msg,
            |mut c, r| async move { c.delete_model(r).await },
        )
        .await?;
        Ok(())
    }

    /// Serves the model from now on; answers the rebuilds it started.
    pub async fn activate_model(
        &self,
        name: String,
        version: String,
    ) -> Result<pb::ActivateModelResponse> {
        let msg = pb::ActivateModelRequest {
            model: model_ref(name, version),
        };
        self.training_rpc("ActivateModel", SLOW_CALL, msg, |mut c, r| async move {
            c.activate_model(r).await
        })
        .await
    }
}
