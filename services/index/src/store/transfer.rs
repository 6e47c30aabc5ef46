//! Collections whole, in and out of the database: export pages read in one
//! snapshot, imported batches keeping their creation times, and the online
//! copy of an SQLite database.

use std::collections::HashSet;
use std::path::PathBuf;

use sea_orm::{ConnectionTrait, DatabaseTransaction, DbBackend, IsolationLevel, TransactionTrait};

use super::{db_err, retried, LoadedImage, NewImage, Store};
use crate::error::{Error, Result};

/// An image whole, as exported.
pub struct ExportedImage {
    pub image: LoadedImage,
    pub created_at_ms: i64,
    pub thumbnail: Vec<u8>,
    pub source: Vec<u8>,
}

/// A read transaction: every page of an export sees the database as it was
/// at its first read (SQLite's WAL snapshot, InnoDB's consistent read of
/// REPEATABLE READ), so an export is one moment of the collection however
/// long it takes and whatever is written meanwhile.
pub struct Snapshot {
    tx: DatabaseTransaction,
    store: Store,
}

/// Where the documentation tells MySQL/MariaDB users how to back up.
const MYSQL_BACKUP_DOCS: &str = "docs/OPERATIONS.md, section \"Backups\"";

impl Store {
    pub async fn snapshot(&self) -> Result<Snapshot> {
        // Asked for, not left to the server's default: a Spider head runs
        // READ COMMITTED (docs/OPERATIONS.md, "Sharding the image table").
        let isolation =
            (self.backend == DbBackend::MySql).then_some(IsolationLevel::RepeatableRead);
        let tx = self
            .db
            .begin_with_config(isolation, None)
            .await
            .map_err(db_err("starting the export's snapshot"))?;
        Ok(Snapshot {
            tx,
            store: self.clone(),
        })
    }

    /// Inserts the images of an import into `collection_id` in one
    /// transaction, with their own creation times. An image whose content
    /// hash the collection holds already is refused: an export holds each
    /// image once, so a repeat means a corrupt or doctored file.
    #[tracing::instrument(name = "db.insert_imported", skip_all)]
    pub async fn insert_imported(
        &self,
        collection_id: i64,
        images: &[NewImage],
        created_at: &[i64],
    ) -> Result<()> {
        let mut seen = HashSet::new();
        if let Some(twice) = images.iter().find(|i| !seen.insert(&i.content_hash)) {
            return Err(duplicate(&twice.content_hash));
        }
        retried("importing images", || async {
            let tx = self.begin().await?;
            self.bump_seq(&tx, collection_id).await?;
            let hashes: Vec<&str> = images.iter().map(|i| i.content_hash.as_str()).collect();
            let before = self.ids_by_hash(&*tx, collection_id, &hashes).await?;
            if let Some(hash) = before.keys().next() {
                return Err(duplicate(hash));
            }
            let refs: Vec<&NewImage> = images.iter().collect();
            self.insert_images(&tx, collection_id, &refs, created_at)
                .await?;
            let ids = self.ids_by_hash(&*tx, collection_id, &hashes).await?;
            let rows = images
                .iter()
                .map(|img| {
                    ids.get(img.content_hash.as_str())
                        .map(|&(id, _, _)| (id as i64, img))
                        .ok_or_else(|| {
                            Error::Database("an imported image cannot be read back".into())
                        })
                })
                .collect::<Result<Vec<_>>>()?;
            self.insert_blobs(&tx, collection_id, &rows).await?;
            tx.commit().await.map_err(db_err("commit"))
        })
        .await
    }

    /// A consistent copy of the SQLite database (`VACUUM INTO`, which reads
    /// one snapshot while writers go on) in a new file beside it; the
    /// caller removes it. Refused on MySQL/MariaDB, whose own tools do this.
    pub async fn backup_copy(&self) -> Result<PathBuf> {
        if self.backend != DbBackend::Sqlite {
            return Err(Error::FailedPrecondition(format!(
                "the index database is MySQL/MariaDB: back it up with `mariadb-dump \
                 --single-transaction` (or mariabackup), see {MYSQL_BACKUP_DOCS}"
            )));
        }
        let row = self
            .db
            .query_one(self.stmt(
                "SELECT file FROM pragma_database_list WHERE name = 'main'",
                vec![],
            ))
            .await
            .map_err(db_err("finding the database file"))?;
        let file: String = match row {
            Some(r) => r.try_get("", "file").map_err(db_err("database file"))?,
            None => String::new(),
        };
        if file.is_empty() {
            return Err(Error::FailedPrecondition(
                "the index database is in memory: there is no file to back up".into(),
            ));
        }
        let file = PathBuf::from(file);
        let base = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "index.db".into());
        let copy = file.with_file_name(format!(
            ".{base}.backup-{}.tmp",
            uuid::Uuid::new_v4().simple()
        ));
        let done = self
            .db
            .execute(self.stmt(
                "VACUUM INTO ?",
                vec![copy.to_string_lossy().into_owned().into()],
            ))
            .await;
        if let Err(e) = done {
            let _ = std::fs::remove_file(&copy);
            return Err(db_err("copying the database")(e));
        }
        Ok(copy)
    }
}

fn duplicate(hash: &str) -> Error {
    Error::InvalidArgument(format!(
        "image {hash} appears twice in the export: the file is corrupt"
    ))
}

impl Snapshot {
    pub async fn count(&self, collection_id: i64) -> Result<u64> {
        let row = self
            .tx
            .query_one(self.store.stmt(
                "SELECT COUNT(*) AS n FROM images WHERE collection_id = ?",
                vec![collection_id.into()],
            ))
            .await
            .map_err(db_err("counting images"))?;
        Ok(row
            .map(|r| r.try_get::<i64>("", "n"))
            .transpose()
            .map_err(db_err("count"))?
            .unwrap_or(0) as u64)
    }

    /// Up to `limit` whole images with id > `after`, by id.
    pub async fn page(
        &self,
        collection_id: i64,
        after: u64,
        limit: u64,
    ) -> Result<Vec<ExportedImage>> {
        let rows = self
            .tx
            .query_all(self.store.stmt(
                "SELECT i.id, i.predicted_class, i.content_hash, i.file_name, i.path, i.label, \
                 i.feature, i.created_at_ms, b.thumbnail, b.source FROM images i \
                 LEFT JOIN image_blobs b ON b.image_id = i.id \
                 WHERE i.collection_id = ? AND i.id > ? ORDER BY i.id LIMIT ?",
                vec![
                    collection_id.into(),
                    (after as i64).into(),
                    (limit as i64).into(),
                ],
            ))
            .await
            .map_err(db_err("reading images to export"))?;
        rows.iter()
            .map(|r| {
                let blob = |col: &str| -> Result<Vec<u8>> {
                    Ok(r.try_get::<Option<Vec<u8>>>("", col)
                        .map_err(db_err("blob"))?
                        .unwrap_or_default())
                };
                Ok(ExportedImage {
                    image: Store::loaded_from_row(r)?,
                    created_at_ms: r.try_get("", "created_at_ms").map_err(db_err("created"))?,
                    thumbnail: blob("thumbnail")?,
                    source: blob("source")?,
                })
            })
            .collect()
    }
}
