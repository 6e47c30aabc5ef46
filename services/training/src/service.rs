//! The gRPC face of the training service: validation and mapping only.

use std::pin::Pin;
use std::sync::Arc;

use cbir_api::v1 as pb;
use cbir_api::v1::training_service_server::TrainingService;
use futures::Stream;
use tokio::io::AsyncWriteExt;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use crate::error::Error;
use crate::store::CHUNK_BYTES;
use crate::training::{is_terminal, Training};

pub struct TrainingGrpc(pub Arc<Training>);

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

fn model_ref(m: Option<pb::ModelRef>) -> Result<pb::ModelRef, Status> {
    match m {
        Some(m) if !m.name.is_empty() && !m.version.is_empty() => Ok(m),
        _ => Err(Error::InvalidArgument("give the model's name and version".into()).into()),
    }
}

#[tonic::async_trait]
impl TrainingService for TrainingGrpc {
    async fn upload_dataset(
        &self,
        req: Request<Streaming<pb::UploadDatasetChunk>>,
    ) -> Result<Response<pb::UploadDatasetResponse>, Status> {
        let mut stream = req.into_inner();
        let path = self.0.upload_path()?;
        let mut file = tokio::fs::File::create(&path)
            .await
            .map_err(|e| Error::Io(format!("{}: {e}", path.display())))?;
        let mut name = String::new();
        let mut bytes = 0u64;
        let limit = self.0.cfg.max_upload_bytes;
        // The datasets on disk when the upload starts; the uploads in
        // progress (this one included) are counted as they stream.
        let on_disk = self.0.datasets_bytes().await?;
        let mut share = self.0.upload_share();
        let result: Result<(), Status> = async {
            self.0.check_quota(on_disk)?;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk?;
                if name.is_empty() {
                    name = chunk.file_name.clone();
                }
                bytes += chunk.data.len() as u64;
                if bytes > limit {
                    return Err(Error::InvalidArgument(format!(
                        "the archive is over the limit of {limit} bytes (max_upload_bytes)"
                    ))
                    .into());
                }
                share.add(chunk.data.len() as u64);
                self.0.check_quota(on_disk)?;
                file.write_all(&chunk.data)
                    .await
                    .map_err(|e| Error::Io(format!("{}: {e}", path.display())))?;
            }
            file.flush()
                .await
                .map_err(|e| Error::Io(format!("{}: {e}", path.display())))?;
            Ok(())
        }
        .await;
        drop(file);
        drop(share);
        if let Err(e) = result {
            let _ = tokio::fs::remove_file(&path).await;
            return Err(e);
        }
        if bytes == 0 {
            let _ = tokio::fs::remove_file(&path).await;
            return Err(Error::InvalidArgument("the archive is empty".into()).into());
        }
        let id = match self.0.add_archive(path.clone(), &name).await {
            Ok(id) => id,
            Err(e) => {
                let _ = tokio::fs::remove_file(&path).await;
                return Err(e.into());
            }
        };
        tracing::info!(dataset = %id, bytes, file = %name, "dataset uploaded");
        Ok(Response::new(pb::UploadDatasetResponse {
            dataset_id: id,
            bytes,
        }))
    }

    async fn submit_job(
        &self,
        req: Request<pb::SubmitJobRequest>,
    ) -> Result<Response<pb::SubmitJobResponse>, Status> {
        let job = self.0.submit(req.into_inner()).await?;
        Ok(Response::new(pb::SubmitJobResponse { job: Some(job) }))
    }

    type WatchJobStream = BoxStream<pb::JobEvent>;

    async fn watch_job(
        &self,
        req: Request<pb::WatchJobRequest>,
    ) -> Result<Response<Self::WatchJobStream>, Status> {
        let id = req.into_inner().job_id;
        let training = self.0.clone();
        let first = training.job(&id).await?;
        let rx = training.watch(&id);
        let s = async_stream::stream! {
            let Some(mut rx) = rx else {
                yield Ok(pb::JobEvent { job: Some(first) });
                return;
            };
            loop {
                let job = rx.borrow_and_update().clone();
                let done = is_terminal(job.state);
                yield Ok(pb::JobEvent { job: Some(job) });
                if done || rx.changed().await.is_err() {
                    break;
                }
            }
            // The sender went away with the job: its last state is stored.
            if let Ok(job) = training.job(&id).await {
                if is_terminal(job.state) && !is_terminal(rx.borrow().state) {
                    yield Ok(pb::JobEvent { job: Some(job) });
                }
            }
        };
        Ok(Response::new(Box::pin(s)))
    }

    async fn cancel_job(
        &self,
        req: Request<pb::CancelJobRequest>,
    ) -> Result<Response<pb::CancelJobResponse>, Status> {
        let job = self.0.cancel(&req.into_inner().job_id).await?;
        Ok(Response::new(pb::CancelJobResponse { job: Some(job) }))
    }

    async fn get_job(
        &self,
        req: Request<pb::GetJobRequest>,
    ) -> Result<Response<pb::GetJobResponse>, Status> {
        let job = self.0.job(&req.into_inner().job_id).await?;
        Ok(Response::new(pb::GetJobResponse { job: Some(job) }))
    }

    async fn list_jobs(
        &self,
        _req: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        Ok(Response::new(pb::ListJobsResponse {
            jobs: self.0.jobs().await?,
        }))
    }

    async fn list_models(
        &self,
        _req: Request<pb::ListModelsRequest>,
    ) -> Result<Response<pb::ListModelsResponse>, Status> {
        Ok(Response::new(pb::ListModelsResponse {
            models: self.0.store.models().await?,
        }))
    }

    async fn get_model(
        &self,
        req: Request<pb::GetModelRequest>,
    ) -> Result<Response<pb::GetModelResponse>, Status> {
        let r = model_ref(req.into_inner().model)?;
        Ok(Response::new(pb::GetModelResponse {
            model: Some(self.0.store.model(&r).await?),
        }))
    }

    async fn delete_model(
        &self,
        req: Request<pb::DeleteModelRequest>,
    ) -> Result<Response<pb::DeleteModelResponse>, Status> {
        let r = model_ref(req.into_inner().model)?;
        self.0.delete_model(&r).await?;
        tracing::info!(model = %r.name, version = %r.version, "model deleted");
        Ok(Response::new(pb::DeleteModelResponse {}))
    }

    async fn activate_model(
        &self,
        req: Request<pb::ActivateModelRequest>,
    ) -> Result<Response<pb::ActivateModelResponse>, Status> {
        let r = model_ref(req.into_inner().model)?;
        let (model, ops) = self.0.activate(&r).await?;
        Ok(Response::new(pb::ActivateModelResponse {
            model: Some(model),
            rebuild_operation_ids: ops,
        }))
    }

    async fn get_performance_curve(
        &self,
        req: Request<pb::GetPerformanceCurveRequest>,
    ) -> Result<Response<pb::GetPerformanceCurveResponse>, Status> {
        let points = self.0.curve(req.into_inner().target).await?;
        Ok(Response::new(pb::GetPerformanceCurveResponse { points }))
    }

    async fn list_datasets(
        &self,
        _req: Request<pb::ListDatasetsRequest>,
    ) -> Result<Response<pb::ListDatasetsResponse>, Status> {
        Ok(Response::new(self.0.list_datasets().await?))
    }

    async fn delete_dataset(
        &self,
        req: Request<pb::DeleteDatasetRequest>,
    ) -> Result<Response<pb::DeleteDatasetResponse>, Status> {
        let id = req.into_inner().dataset_id;
        let freed_bytes = self.0.delete_dataset(&id).await?;
        tracing::info!(dataset = %id, bytes = freed_bytes, "dataset deleted");
        Ok(Response::new(pb::DeleteDatasetResponse { freed_bytes }))
    }

    type DownloadModelStream = BoxStream<pb::ModelChunk>;

    async fn download_model(
        &self,
        req: Request<pb::DownloadModelRequest>,
    ) -> Result<Response<Self::DownloadModelStream>, Status> {
        let r = model_ref(req.into_inner().model)?;
        let meta = self.0.store.model(&r).await?;
        let weights = self.0.store.weights(&r).await?;
        let s = async_stream::stream! {
            let mut meta = Some(meta);
            for c in weights.chunks(CHUNK_BYTES) {
                yield Ok(pb::ModelChunk { data: c.to_vec(), model: meta.take() });
            }
        };
        Ok(Response::new(Box::pin(s)))
    }
}
