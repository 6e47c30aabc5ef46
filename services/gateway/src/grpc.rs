//! The public gRPC API: thin translations onto `Gateway`.

use std::pin::Pin;
use std::sync::Arc;

use cbir_api::v1 as pb;
use cbir_api::v1::search_service_server::SearchService;
use futures::StreamExt;
use tonic::{Request, Response, Status};

use crate::auth::{key_from_headers, Role};
use crate::gateway::Gateway;

/// A server stream of the public API.
type BoxStream<T> = Pin<Box<dyn futures::Stream<Item = Result<T, Status>> + Send + 'static>>;

pub struct SearchGrpc {
    pub gateway: Arc<Gateway>,
}

impl SearchGrpc {
    /// The caller's key (`x-api-key` metadata) must carry `role`.
    fn allow<T>(&self, request: &Request<T>, role: Role) -> Result<(), Status> {
        let headers = request.metadata().clone().into_headers();
        self.gateway
            .auth
            .check(key_from_headers(&headers), role)
            .map(|_| ())
            .map_err(Status::from)
    }
}

#[tonic::async_trait]
impl SearchService for SearchGrpc {
    async fn search(
        &self,
        request: Request<pb::SearchRequest>,
    ) -> Result<Response<pb::SearchResponse>, Status> {
        self.allow(&request, Role::Search)?;
        Ok(Response::new(
            self.gateway.search(request.into_inner()).await?,
        ))
    }

    async fn list_collections(
        &self,
        request: Request<pb::ListCollectionsRequest>,
    ) -> Result<Response<pb::ListCollectionsResponse>, Status> {
        self.allow(&request, Role::Search)?;
        Ok(Response::new(pb::ListCollectionsResponse {
            collections: self.gateway.list_collections().await?,
        }))
    }

    async fn create_collection(
        &self,
        request: Request<pb::CreateGatewayCollectionRequest>,
    ) -> Result<Response<pb::CreateCollectionResponse>, Status> {
        self.allow(&request, Role::Index)?;
        Ok(Response::new(pb::CreateCollectionResponse {
            collection: Some(self.gateway.create_collection(request.into_inner()).await?),
        }))
    }

    async fn delete_collection(
        &self,
        request: Request<pb::DeleteCollectionRequest>,
    ) -> Result<Response<pb::DeleteCollectionResponse>, Status> {
        self.allow(&request, Role::Admin)?;
        self.gateway
            .delete_collection(&request.into_inner().name)
            .await?;
        Ok(Response::new(pb::DeleteCollectionResponse {}))
    }

    async fn get_stats(
        &self,
        request: Request<pb::StatsRequest>,
    ) -> Result<Response<pb::StatsResponse>, Status> {
        self.allow(&request, Role::Search)?;
        Ok(Response::new(
            self.gateway.stats(&request.into_inner().collection).await?,
        ))
    }

    async fn clear_collection(
        &self,
        request: Request<pb::ClearRequest>,
    ) -> Result<Response<pb::ClearResponse>, Status> {
        self.allow(&request, Role::Admin)?;
        Ok(Response::new(pb::ClearResponse {
            removed: self.gateway.clear(&request.into_inner().collection).await?,
        }))
    }

    async fn add_images(
        &self,
        request: Request<pb::AddImagesRequest>,
    ) -> Result<Response<pb::AddImagesResponse>, Status> {
        self.allow(&request, Role::Index)?;
        Ok(Response::new(
            self.gateway.add_images(request.into_inner()).await?,
        ))
    }

    async fn start_index_job(
        &self,
        request: Request<pb::StartIndexJobRequest>,
    ) -> Result<Response<pb::IndexJob>, Status> {
        self.allow(&request, Role::Index)?;
        Ok(Response::new(
            self.gateway.start_index_job(request.into_inner()).await?,
        ))
    }

    async fn get_index_job(
        &self,
        request: Request<pb::GetIndexJobRequest>,
    ) -> Result<Response<pb::IndexJob>, Status> {
        self.allow(&request, Role::Search)?;
        Ok(Response::new(
            self.gateway.index_job(&request.into_inner().id).await?,
        ))
    }

    async fn get_image(
        &self,
        request: Request<pb::GetStoredImageRequest>,
    ) -> Result<Response<pb::StoredImage>, Status> {
        self.allow(&request, Role::Search)?;
        let r = request.into_inner();
        Ok(Response::new(
            self.gateway
                .image_with(&r.collection, r.id, r.include_thumbnail, r.include_source)
                .await?,
        ))
    }

    async fn delete_images(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        self.allow(&request, Role::Admin)?;
        let r = request.into_inner();
        Ok(Response::new(pb::DeleteResponse {
            deleted: self.gateway.delete_images(&r.collection, r.ids).await?,
        }))
    }

    async fn update_label(
        &self,
        request: Request<pb::UpdateLabelRequest>,
    ) -> Result<Response<pb::StoredImage>, Status> {
        self.allow(&request, Role::Index)?;
        let r = request.into_inner();
        Ok(Response::new(
            self.gateway
                .update_label(&r.collection, r.id, r.label)
                .await?,
        ))
    }

    async fn list_images(
        &self,
        request: Request<pb::ListImagesRequest>,
    ) -> Result<Response<pb::ListStoredImagesResponse>, Status> {
        self.allow(&request, Role::Search)?;
        Ok(Response::new(
            self.gateway.list_images(request.into_inner()).await?,
        ))
    }

    async fn search_batch(
        &self,
        request: Request<pb::SearchBatchRequest>,
    ) -> Result<Response<pb::SearchBatchResponse>, Status> {
        self.allow(&request, Role::Search)?;
        Ok(Response::new(
            self.gateway.search_batch(request.into_inner()).await?,
        ))
    }

    async fn refine_collection(
        &self,
        request: Request<pb::RefineCollectionRequest>,
    ) -> Result<Response<pb::RefineCollectionResponse>, Status> {
        self.allow(&request, Role::Admin)?;
        let r = request.into_inner();
        Ok(Response::new(pb::RefineCollectionResponse {
            operation_id: self.gateway.refine(&r.collection).await?,
        }))
    }

    async fn find_duplicates(
        &self,
        request: Request<pb::FindDuplicatesRequest>,
    ) -> Result<Response<pb::FindDuplicatesResponse>, Status> {
        self.allow(&request, Role::Index)?;
        let r = request.into_inner();
        Ok(Response::new(pb::FindDuplicatesResponse {
            operation_id: self
                .gateway
                .find_duplicates(&r.collection, r.min_similarity)
                .await?,
        }))
    }

    async fn list_duplicates(
        &self,
        request: Request<pb::ListDuplicatesRequest>,
    ) -> Result<Response<pb::ListDuplicatesResponse>, Status> {
        self.allow(&request, Role::Search)?;
        Ok(Response::new(
            self.gateway
                .list_duplicates(&request.into_inner().collection)
                .await?,
        ))
    }

    type WatchOperationStream = BoxStream<pb::OperationProgress>;

    async fn watch_operation(
        &self,
        request: Request<pb::WatchOperationRequest>,
    ) -> Result<Response<Self::WatchOperationStream>, Status> {
        use futures::StreamExt;
        self.allow(&request, Role::Search)?;
        let mut stream = Box::pin(
            self.gateway
                .watch_operation(request.into_inner().operation_id),
        );
        // An unknown operation is refused as the call's status, not as an
        // error inside an opened stream.
        let first = match stream.next().await {
            Some(Ok(p)) => p,
            Some(Err(e)) => return Err(e.into()),
            None => return Err(Status::internal("the operation's stream ended empty")),
        };
        let rest = stream.map(|r| r.map_err(Status::from));
        Ok(Response::new(Box::pin(
            futures::stream::once(async move { Ok(first) }).chain(rest),
        )))
    }

    type ExportCollectionStream = BoxStream<pb::ExportChunk>;

    async fn export_collection(
        &self,
        request: Request<pb::ExportCollectionRequest>,
    ) -> Result<Response<Self::ExportCollectionStream>, Status> {
        self.allow(&request, Role::Admin)?;
        let chunks = self
            .gateway
            .export_collection(&request.into_inner().collection)
            .await?;
        Ok(Response::new(Box::pin(chunks)))
    }

    async fn import_collection(
        &self,
        request: Request<tonic::Streaming<pb::ExportChunk>>,
    ) -> Result<Response<pb::ImportCollectionResponse>, Status> {
        self.allow(&request, Role::Admin)?;
        let chunks = StreamExt::map(request.into_inner(), |c| {
            c.map_err(|s| {
                crate::Error::InvalidArgument(format!(
                    "the import stream broke ({}): nothing was imported",
                    s.message()
                ))
            })
        });
        Ok(Response::new(self.gateway.import_collection(chunks).await?))
    }

    type BackupDatabaseStream = BoxStream<pb::BackupChunk>;

    async fn backup_database(
        &self,
        request: Request<pb::BackupDatabaseRequest>,
    ) -> Result<Response<Self::BackupDatabaseStream>, Status> {
        self.allow(&request, Role::Admin)?;
        Ok(Response::new(Box::pin(
            self.gateway.backup_database().await?,
        )))
    }
}

/// Refuses a public gRPC call whose first message is over `limit` bytes
/// (`limits.max_request_bytes`), from its 5-byte frame header, before the
/// body is read: tonic would answer OUT_OF_RANGE without naming the
/// setting. Later messages of a stream are bounded by tonic alone.
pub async fn refuse_oversized_message(
    limit: usize,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use futures::StreamExt;
    let (parts, body) = req.into_parts();
    let mut stream = body.into_data_stream();
    let mut head: Vec<bytes::Bytes> = Vec::new();
    let mut have = 0;
    while have < 5 {
        match stream.next().await {
            Some(Ok(chunk)) => {
                have += chunk.len();
                head.push(chunk);
            }
            // An error or the end: tonic reports it as it would.
            Some(Err(_)) | None => break,
        }
    }
    let header: Vec<u8> = head
        .iter()
        .flat_map(|c| c.iter().copied())
        .take(5)
        .collect();
    if let [_, a, b, c, d] = header[..] {
        let len = u32::from_be_bytes([a, b, c, d]) as usize;
        if len > limit {
            return Status::resource_exhausted(format!(
                "the message has {len} bytes, over the limit of {limit} bytes per request (limits.max_request_bytes): send fewer or smaller images per call"
            ))
            .into_http();
        }
    }
    let rest = futures::stream::iter(head.into_iter().map(Ok)).chain(stream);
    let req = axum::extract::Request::from_parts(parts, axum::body::Body::from_stream(rest));
    next.run(req).await
}
