//! Ingest: adding images (REST uploads, gRPC `AddImages` and server-folder
//! jobs) to a collection. Each file is checked,
//! hashed here, decoded once in the inference service (feature, thumbnail
//! and rendition from the same decode) and stored on its own, so one bad
//! file fails alone. Calls to the inference and index services are cut to
//! fit their message limit.

use std::sync::Arc;

use cbir_api::v1 as pb;

use crate::collections::Next;
use crate::error::{Error, Result};
use crate::gateway::{file_name_of, model_label, same_model, Gateway};

/// Room left in each message for its framing and the fields besides the
/// images (ids, model, collection name).
const MESSAGE_HEADROOM: usize = 64 * 1024;
/// Bytes each item adds to a message besides its payload (field tags,
/// lengths, ids, file names up to their limits).
const ITEM_OVERHEAD: usize = 8 * 1024;
/// Most records in one Upsert (the index's `max_records_per_upsert` is
/// 1000 by default).
const MAX_RECORDS_PER_UPSERT: usize = 256;

/// What is stored of an image besides its feature.
struct Prepared {
    thumbnail: Vec<u8>,
    source: Vec<u8>,
}

/// One image's answer from the inference service.
#[derive(Clone)]
struct Embedded {
    embedding: pb::Embedding,
    /// Empty when the replica makes none (the gateway decodes then).
    thumbnail: Vec<u8>,
    rendition: Vec<u8>,
}

/// The file itself when small, else its rendition.
fn source_of(data: &[u8], forms: cbir_imaging::StoredForms) -> Prepared {
    Prepared {
        thumbnail: forms.thumbnail,
        source: forms.rendition.unwrap_or_else(|| data.to_vec()),
    }
}

/// Decodes here for the thumbnail and rendition: only when the inference
/// service made none (an older replica). The caller holds the decode budget.
fn prepare(data: &[u8], limits: &cbir_imaging::Limits) -> std::result::Result<Prepared, String> {
    let decoded = cbir_imaging::decode(data, limits).map_err(|e| e.to_string())?;
    let forms =
        cbir_imaging::stored_forms(&decoded.image, data.len()).map_err(|e| e.to_string())?;
    Ok(source_of(data, forms))
}

/// Cuts `items` into consecutive groups of at most `max_items` whose sizes
/// (`size` plus `ITEM_OVERHEAD` each) add up to at most `max_bytes`; an item
/// over `max_bytes` alone still gets its own group (the receiver refuses
/// it, alone).
pub(crate) fn split_by_size<T>(
    items: Vec<T>,
    size: impl Fn(&T) -> usize,
    max_bytes: usize,
    max_items: usize,
) -> Vec<Vec<T>> {
    let mut out: Vec<Vec<T>> = Vec::new();
    let mut bytes = 0usize;
    for item in items {
        let s = size(&item).saturating_add(ITEM_OVERHEAD);
        let fits = out
            .last()
            .is_some_and(|g| g.len() < max_items && bytes.saturating_add(s) <= max_bytes);
        if fits {
            bytes += s;
            if let Some(g) = out.last_mut() {
                g.push(item);
            }
        } else {
            bytes = s;
            out.push(vec![item]);
        }
    }
    out
}

/// The largest image that fits in one message of `max_message_bytes` (the
/// rule behind `limits.max_image_bytes`).
pub fn max_image_in_message(max_message_bytes: usize) -> usize {
    max_message_bytes.saturating_sub(MESSAGE_HEADROOM + ITEM_OVERHEAD)
}

fn record_bytes(r: &pb::ImageRecord) -> usize {
    r.thumbnail.len()
        + r.source_image.len()
        + r.feature.len() * 4
        + r.file_name.len()
        + r.path.len()
        + r.label.len()
}

impl Gateway {
    /// The largest payload of one call to an internal service: its
    /// `max_message_bytes`, less room for the framing.
    fn call_payload(&self) -> usize {
        self.max_msg().saturating_sub(MESSAGE_HEADROOM).max(1)
    }

    /// Prepares image `i` of `images` on the blocking pool once its decode
    /// fits in the budget (read from the header first).
    async fn prepare_within_budget(
        &self,
        images: Arc<Vec<pb::NewImage>>,
        i: usize,
        limits: cbir_imaging::Limits,
    ) -> std::result::Result<Prepared, String> {
        let header = cbir_imaging::probe(&images[i].data, &limits).map_err(|e| e.to_string())?;
        let permit = self
            .decode_budget
            .acquire(header.peak_bytes())
            .await
            .map_err(|e| e.to_string())?;
        tokio::task::spawn_blocking(move || {
            let prepared = prepare(&images[i].data, &limits);
            drop(permit);
            prepared
        })
        .await
        .map_err(|e| format!("image preparation failed: {e}"))?
    }

    /// One Embed call for `inputs` with the collection's model, looking
    /// again once when another model answers (see
    /// [`crate::collections::LookAgain`]).
    async fn embed_call(
        &self,
        collection: &str,
        coll: &mut pb::Collection,
        inputs: &[pb::ImageInput],
    ) -> Result<pb::EmbedResponse> {
        let mut again = self.look_again(collection);
        loop {
            let msg = pb::EmbedRequest {
                include_renditions: true,
                images: inputs.to_vec(),
                priority: pb::Priority::Bulk as i32,
                include_probabilities: false,
                model: coll.model.clone(),
            };
            let embedded = self
                .inference_rpc(
                    "Embed",
                    Self::t(self.cfg.timeouts.bulk_ms),
                    msg,
                    |mut c, r| async move { c.embed(r).await },
                )
                .await?;
            if same_model(coll.model.as_ref(), embedded.model.as_ref()) {
                return Ok(embedded);
            }
            match again.after_mismatch(coll, embedded.model.as_ref()).await? {
                Next::Keep => return Ok(embedded),
                Next::Retry => continue,
                Next::GiveUp => {
                    return Err(Error::FailedPrecondition(format!(
                        "collection {collection:?} is bound to model {}, but the inference service serves {}: rebuild the collection or add to another one",
                        model_label(coll.model.as_ref()),
                        model_label(embedded.model.as_ref())
                    )))
                }
            }
        }
    }

    /// Embeds `inputs` in calls that fit the inference service's message
    /// limit; every result comes from the model the collection is bound to
    /// at the end (a call answered by an earlier model is sent again).
    async fn embed_all(
        &self,
        collection: &str,
        mut coll: pb::Collection,
        inputs: Vec<pb::ImageInput>,
    ) -> Result<Vec<pb::EmbedResult>> {
        let max_items = self.cfg.limits.max_files_per_request.max(1);
        let groups = split_by_size(inputs, |i| i.data.len(), self.call_payload(), max_items);
        let mut answers = Vec::with_capacity(groups.len());
        for g in &groups {
            let r = self.embed_call(collection, &mut coll, g).await?;
            answers.push(r);
        }
        let mut results = Vec::new();
        for (g, r) in groups.iter().zip(answers) {
            if same_model(coll.model.as_ref(), r.model.as_ref()) {
                results.extend(r.results);
                continue;
            }
            let again = self.embed_call(collection, &mut coll, g).await?;
            results.extend(again.results);
        }
        Ok(results)
    }

    /// Stores `records` in Upserts that fit the index's message limit. A
    /// batch the index refuses as invalid is sent again record by record,
    /// so only the bad record fails. Returns one outcome per record.
    async fn upsert_all(
        &self,
        collection: &str,
        records: Vec<pb::ImageRecord>,
        replace: bool,
    ) -> Result<Vec<std::result::Result<pb::UpsertResult, String>>> {
        let groups = split_by_size(
            records,
            record_bytes,
            self.call_payload(),
            MAX_RECORDS_PER_UPSERT,
        );
        let mut out = Vec::new();
        let mut stored_any = false;
        let mut first_failure = None;
        for g in groups {
            match self.upsert_call(collection, g.clone(), replace).await {
                Ok(r) => {
                    stored_any = true;
                    out.extend(r.into_iter().map(Ok));
                }
                Err(Error::InvalidArgument(_)) if g.len() > 1 => {
                    for rec in g {
                        match self.upsert_call(collection, vec![rec], replace).await {
                            Ok(mut r) => {
                                stored_any = true;
                                out.push(r.pop().ok_or_else(|| {
                                    "the index service answered without a result".to_string()
                                }));
                            }
                            Err(e) => out.push(Err(e.to_string())),
                        }
                    }
                }
                Err(e) => {
                    let msg = e.to_string();
                    out.extend(g.iter().map(|_| Err(msg.clone())));
                    if !matches!(e, Error::InvalidArgument(_)) && first_failure.is_none() {
                        first_failure = Some(e);
                    }
                }
            }
        }
        // Nothing stored and the index failed as a service: the request
        // fails with its status (503, 504...), not as a list of failures.
        match first_failure {
            Some(e) if !stored_any => Err(e),
            _ => Ok(out),
        }
    }

    async fn upsert_call(
        &self,
        collection: &str,
        records: Vec<pb::ImageRecord>,
        replace: bool,
    ) -> Result<Vec<pb::UpsertResult>> {
        let n = records.len();
        let msg = pb::UpsertRequest {
            replace,
            collection: collection.to_string(),
            records,
        };
        // Upserts are keyed by content hash, so a retry cannot duplicate.
        let r = self
            .index_upsert(msg, Self::t(self.cfg.timeouts.bulk_ms))
            .await?;
        if r.results.len() != n {
            return Err(Error::Internal(format!(
                "the index service answered {} results for {n} records",
                r.results.len()
            )));
        }
        Ok(r.results)
    }

    /// Embeds and stores a batch; each image succeeds or fails on its own.
    #[tracing::instrument(name = "gateway.add_images", skip_all, fields(images = req.images.len()))]
    pub async fn add_images(&self, req: pb::AddImagesRequest) -> Result<pb::AddImagesResponse> {
        let collection = self.collection_name(&req.collection)?;
        let limits = &self.cfg.limits;
        if req.images.len() > limits.max_files_per_request {
            return Err(Error::TooLarge(format!(
                "{} images in one request, the limit is {}: send them in smaller batches",
                req.images.len(),
                limits.max_files_per_request
            )));
        }
        let coll = self
            .collection_for_upload(&collection, req.create_collection)
            .await?;
        let mut batch = self.validate(&req.images);
        let images: Arc<Vec<pb::NewImage>> = Arc::new(req.images);
        let (hashes, embeddings) = self
            .hash_and_embed(&collection, coll, &images, &mut batch)
            .await?;
        let (records, record_of) = self
            .assemble_records(&images, hashes, embeddings, &mut batch)
            .await;
        if !records.is_empty() {
            let stored = self.upsert_all(&collection, records, req.replace).await?;
            batch.stored(&record_of, stored);
            self.forget_collection(&collection);
        }
        Ok(batch.into_response())
    }

    /// The collection to add to, created first when the request asks so.
    async fn collection_for_upload(&self, name: &str, create: bool) -> Result<pb::Collection> {
        match self.fetch_collection(name).await {
            Err(Error::NotFound(_)) if create => {
                match self
                    .create_collection(pb::CreateGatewayCollectionRequest {
                        name: name.to_string(),
                        description: String::new(),
                        if_not_exists: true,
                    })
                    .await
                {
                    // Another batch created it at the same moment.
                    Err(Error::AlreadyExists(_)) => self.fetch_collection(name).await,
                    r => r,
                }
            }
            r => r,
        }
    }

    /// Checks each image on its own: a bad one fails alone.
    fn validate(&self, images: &[pb::NewImage]) -> Batch {
        let max = self.cfg.limits.max_image_bytes;
        let mut batch = Batch {
            results: images
                .iter()
                .map(|i| pb::AddImageResult {
                    file_name: if i.file_name.is_empty() {
                        file_name_of(&i.path)
                    } else {
                        i.file_name.clone()
                    },
                    path: i.path.clone(),
                    ..Default::default()
                })
                .collect(),
            ok: vec![true; images.len()],
        };
        for (i, img) in images.iter().enumerate() {
            let err = if img.data.is_empty() {
                Some("empty file: the image has zero bytes".to_string())
            } else if img.data.len() > max {
                Some(format!(
                    "image too large: {} bytes, the limit is {max} bytes",
                    img.data.len(),
                ))
            } else {
                // The index's own limits: a bad name fails its file alone
                // instead of the whole Upsert.
                cbir_common::records::check_text(
                    &batch.results[i].file_name,
                    &img.path,
                    &img.label,
                    &cbir_common::records::DEFAULT_TEXT_LIMITS,
                )
                .err()
            };
            if let Some(e) = err {
                batch.fail(i, e);
            }
        }
        batch
    }

    /// Hashes here; features, thumbnails and renditions in the inference
    /// service, from one decode there, at the same time.
    async fn hash_and_embed(
        &self,
        collection: &str,
        coll: pb::Collection,
        images: &Arc<Vec<pb::NewImage>>,
        batch: &mut Batch,
    ) -> Result<(Vec<Option<String>>, Vec<Option<Embedded>>)> {
        let to_hash = images.clone();
        let hash_ok = batch.ok.clone();
        let hashes = tokio::task::spawn_blocking(move || {
            to_hash
                .iter()
                .zip(hash_ok)
                .map(|(img, ok)| ok.then(|| cbir_imaging::content_hash(&img.data)))
                .collect::<Vec<_>>()
        });
        let inputs: Vec<pb::ImageInput> = images
            .iter()
            .enumerate()
            .filter(|(i, _)| batch.ok[*i])
            .map(|(i, img)| pb::ImageInput {
                id: i.to_string(),
                data: img.data.clone(),
            })
            .collect();
        let embed = async {
            if inputs.is_empty() {
                return Ok(Vec::new());
            }
            self.embed_all(collection, coll, inputs).await
        };
        let (hashes, embedded) = tokio::join!(hashes, embed);
        let hashes = hashes.map_err(|e| Error::Internal(format!("hashing the images: {e}")))?;
        Ok((hashes, batch.embedded(embedded?)))
    }

    /// One record per image still going: its feature, and the thumbnail
    /// and rendition from the inference service (made here when it sent
    /// none). Returns the records and the image each one is for.
    async fn assemble_records(
        &self,
        images: &Arc<Vec<pb::NewImage>>,
        hashes: Vec<Option<String>>,
        mut embeddings: Vec<Option<Embedded>>,
        batch: &mut Batch,
    ) -> (Vec<pb::ImageRecord>, Vec<usize>) {
        let imaging_limits = self.cfg.limits.imaging();
        let mut records = Vec::new();
        let mut record_of = Vec::new();
        for (i, hash) in hashes.into_iter().enumerate() {
            let Some(hash) = hash.filter(|_| batch.ok[i]) else {
                continue;
            };
            let Some(Embedded {
                embedding: emb,
                thumbnail,
                rendition,
            }) = embeddings[i].take()
            else {
                batch.fail(i, "the inference service returned no feature".into());
                continue;
            };
            let img = &images[i];
            let prep = if thumbnail.is_empty() {
                match self
                    .prepare_within_budget(images.clone(), i, imaging_limits)
                    .await
                {
                    Ok(p) => p,
                    Err(e) => {
                        batch.fail(i, e);
                        continue;
                    }
                }
            } else {
                source_of(
                    &img.data,
                    cbir_imaging::StoredForms {
                        thumbnail,
                        rendition: (!rendition.is_empty()).then_some(rendition),
                    },
                )
            };
            let result = &mut batch.results[i];
            result.predicted_class = emb.predicted_class;
            result.predicted_name.clone_from(&emb.predicted_name);
            records.push(pb::ImageRecord {
                content_hash: hash,
                file_name: result.file_name.clone(),
                path: img.path.clone(),
                label: img.label.clone(),
                predicted_class: emb.predicted_class,
                feature: emb.feature,
                thumbnail: prep.thumbnail,
                source_image: prep.source,
                ..Default::default()
            });
            record_of.push(i);
        }
        (records, record_of)
    }
}

/// The answers of one AddImages call as they are built, and which images
/// are still going.
struct Batch {
    results: Vec<pb::AddImageResult>,
    ok: Vec<bool>,
}

impl Batch {
    fn fail(&mut self, i: usize, error: String) {
        self.results[i].error = error;
        self.ok[i] = false;
    }

    /// The inference service's answers by image; its per-image errors fail
    /// their images.
    fn embedded(&mut self, answers: Vec<pb::EmbedResult>) -> Vec<Option<Embedded>> {
        let n = self.results.len();
        let mut embeddings: Vec<Option<Embedded>> = vec![None; n];
        for r in answers {
            let Ok(i) = r.id.parse::<usize>() else {
                continue;
            };
            if i >= n {
                continue;
            }
            match r.outcome {
                Some(pb::embed_result::Outcome::Embedding(e)) => {
                    embeddings[i] = Some(Embedded {
                        embedding: e,
                        thumbnail: r.thumbnail,
                        rendition: r.rendition,
                    });
                }
                Some(pb::embed_result::Outcome::Error(e)) => self.fail(i, e.message),
                None => self.fail(i, "the inference service returned no result".into()),
            }
        }
        embeddings
    }

    /// The index's outcome of each record (`record_of` names its image).
    fn stored(
        &mut self,
        record_of: &[usize],
        stored: Vec<std::result::Result<pb::UpsertResult, String>>,
    ) {
        for (k, u) in stored.into_iter().enumerate() {
            let Some(&i) = record_of.get(k) else {
                continue;
            };
            match u {
                Ok(u) => {
                    self.results[i].id = u.id;
                    self.results[i].created = u.created;
                }
                Err(e) => self.results[i].error = e,
            }
        }
    }

    fn into_response(self) -> pb::AddImagesResponse {
        let n = self.results.len() as u64;
        let failed = self.results.iter().filter(|r| !r.error.is_empty()).count() as u64;
        pb::AddImagesResponse {
            added: n - failed,
            failed,
            results: self.results,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_cut_by_size_and_count() {
        let sizes = vec![10usize, 10, 10, 100, 10, 1000, 10];
        let groups = split_by_size(sizes, |s| *s, 3 * ITEM_OVERHEAD + 40, 10);
        assert_eq!(
            groups,
            vec![vec![10, 10, 10], vec![100, 10], vec![1000, 10]]
        );
        // An item over the limit alone travels alone.
        let groups = split_by_size(vec![5usize, 50, 5], |s| *s, ITEM_OVERHEAD + 10, 10);
        assert_eq!(groups, vec![vec![5], vec![50], vec![5]]);
        let groups = split_by_size(vec![1usize; 7], |s| *s, usize::MAX, 3);
        assert_eq!(groups.iter().map(Vec::len).collect::<Vec<_>>(), [3, 3, 1]);
        assert!(split_by_size(Vec::<usize>::new(), |s| *s, 10, 10).is_empty());
    }

    #[test]
    fn a_67_megabyte_batch_is_cut_for_a_64_mib_limit() {
        // The UI batch of issue 13: sixteen photos of about 4.2 MB.
        let photos = vec![4_200_000usize; 16];
        let limit = cbir_common::grpc::DEFAULT_MAX_MESSAGE_BYTES - MESSAGE_HEADROOM;
        let groups = split_by_size(photos, |s| *s, limit, 64);
        assert_eq!(groups.len(), 2);
        for g in &groups {
            let bytes: usize = g.iter().map(|s| s + ITEM_OVERHEAD).sum();
            assert!(bytes <= limit, "{bytes}");
        }
    }
}
