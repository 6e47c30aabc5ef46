//! One stored image at a time: its metadata and thumbnail, deleting images
//! by id, and setting an image's label. The index answers each write once
//! memory holds it, so searches show it at once.

use cbir_api::v1 as pb;

use crate::error::{Error, Result};
use crate::gateway::Gateway;

/// Most ids one delete may name: the index deletes them in one transaction.
pub const MAX_IDS_PER_DELETE: usize = 10_000;

fn check_id(id: u64) -> Result<()> {
    if id == 0 {
        return Err(Error::InvalidArgument(
            "image ids start at 1: take them from search or upload results".into(),
        ));
    }
    Ok(())
}

impl Gateway {
    /// The image's metadata, with its class name and (when asked) thumbnail.
    pub async fn image(
        &self,
        collection: &str,
        id: u64,
        include_thumbnail: bool,
    ) -> Result<pb::StoredImage> {
        self.image_with(collection, id, include_thumbnail, false)
            .await
    }

    /// The image's metadata, with its thumbnail and kept source when asked.
    pub async fn image_with(
        &self,
        collection: &str,
        id: u64,
        include_thumbnail: bool,
        include_source: bool,
    ) -> Result<pb::StoredImage> {
        let name = self.collection_name(collection)?;
        check_id(id)?;
        let coll = self.collection(&name).await?;
        let msg = pb::GetImageRequest {
            collection: name.clone(),
            id,
            include_thumbnail,
            include_source,
            ..Default::default()
        };
        let img = self.get_image(msg, self.admin_timeout()).await?;
        let names = self.class_names(coll.model.as_ref()).await;
        Ok(stored_image(&name, img, names.as_deref()))
    }

    /// The kept original (or its rendition) of an image, with its media
    /// type; NOT_FOUND when the collection keeps none for it.
    pub async fn original(&self, collection: &str, id: u64) -> Result<(Vec<u8>, &'static str)> {
        let img = self.image_with(collection, id, false, true).await?;
        if img.source_image.is_empty() {
            return Err(Error::NotFound(format!(
                "image {id} of collection {:?} has no kept original (it was stored without one): its thumbnail is all there is",
                img.collection
            )));
        }
        let media = cbir_imaging::media_type(&img.source_image);
        Ok((img.source_image, media))
    }

    /// A page of a collection's images (see `ListImagesRequest`).
    pub async fn list_images(
        &self,
        mut req: pb::ListImagesRequest,
    ) -> Result<pb::ListStoredImagesResponse> {
        let name = self.collection_name(&req.collection)?;
        req.collection.clone_from(&name);
        let coll = self.collection(&name).await?;
        let page = self
            .index_rpc(
                "ListImages",
                self.admin_timeout(),
                req,
                |mut c, r| async move { c.list_images(r).await },
            )
            .await?;
        let names = self.class_names(coll.model.as_ref()).await;
        Ok(pb::ListStoredImagesResponse {
            images: page
                .images
                .into_iter()
                .map(|i| stored_image(&name, i, names.as_deref()))
                .collect(),
            next_cursor: page.next_cursor,
            total: page.total,
        })
    }

    /// Deletes the images `ids` of `collection`; returns how many existed.
    pub async fn delete_images(&self, collection: &str, ids: Vec<u64>) -> Result<u64> {
        let name = self.collection_name(collection)?;
        if ids.is_empty() {
            return Err(Error::InvalidArgument(
                "no image ids to delete: send at least one".into(),
            ));
        }
        if ids.len() > MAX_IDS_PER_DELETE {
            return Err(Error::InvalidArgument(format!(
                "{} image ids in one delete, the limit is {MAX_IDS_PER_DELETE}: send smaller batches",
                ids.len()
            )));
        }
        ids.iter().try_for_each(|&id| check_id(id))?;
        let deleted = self
            .index_delete(
                pb::DeleteRequest {
                    collection: name.clone(),
                    ids,
                },
                self.admin_timeout(),
            )
            .await?;
        self.forget_collection(&name);
        Ok(deleted)
    }

    /// Sets the label of image `id`; answers the image as stored now.
    pub async fn update_label(
        &self,
        collection: &str,
        id: u64,
        label: String,
    ) -> Result<pb::StoredImage> {
        let name = self.collection_name(collection)?;
        check_id(id)?;
        // Every shard: the one holding the image shows the label at once.
        self.index_each(
            "UpdateLabel",
            self.admin_timeout(),
            pb::UpdateLabelRequest {
                collection: name.clone(),
                id,
                label,
            },
            |mut c, r| async move { c.update_label(r).await },
        )
        .await?;
        self.image(&name, id, false).await
    }
}

/// An index record as the public API shows it, named by `class_names`.
fn stored_image(
    collection: &str,
    img: pb::ImageRecord,
    class_names: Option<&Vec<String>>,
) -> pb::StoredImage {
    let predicted_name = class_names
        .and_then(|names| {
            names
                .get(usize::try_from(img.predicted_class).ok()?)
                .cloned()
        })
        .unwrap_or_default();
    pb::StoredImage {
        id: img.id,
        file_name: img.file_name,
        path: img.path,
        label: img.label,
        predicted_class: img.predicted_class,
        predicted_name,
        created_at_ms: img.created_at_ms,
        content_hash: img.content_hash,
        thumbnail: img.thumbnail,
        collection: collection.to_string(),
        has_source: img.has_source || !img.source_image.is_empty(),
        source_image: img.source_image,
    }
}
