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
        let name = self.collection_name(collection)?;
        check_id(id)?;
        let coll = self.collection(&name).await?;
        let msg = pb::GetImageRequest {
            collection: name.clone(),
            id,
            include_thumbnail,
            ..Default::default()
        };
        let img = self.get_image(msg, self.admin_timeout()).await?;
        let predicted_name = self
            .class_names(coll.model.as_ref())
            .await
            .and_then(|names| {
                let i = usize::try_from(img.predicted_class).ok()?;
                names.get(i).cloned()
            })
            .unwrap_or_default();
        Ok(pb::StoredImage {
            id: img.id,
            file_name: img.file_name,
            path: img.path,
            label: img.label,
            predicted_class: img.predicted_class,
            predicted_name,
            created_at_ms: img.created_at_ms,
            content_hash: img.content_hash,
            thumbnail: img.thumbnail,
            collection: name,
            source_image: Vec::new(),
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
        let r = self
            .index_rpc(
                "Delete",
                self.admin_timeout(),
                pb::DeleteRequest {
                    collection: name.clone(),
                    ids,
                },
                |mut c, r| async move { c.delete(r).await },
            )
            .await?;
        self.forget_collection(&name);
        Ok(r.deleted)
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
        self.index_rpc(
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
