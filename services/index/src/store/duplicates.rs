//! The latest near-duplicate run of each collection: its progress, saved
//! as it goes so that every replica answers for it, and its groups.

use cbir_api::prost::Message;
use cbir_api::v1 as pb;
use sea_orm::{ConnectionTrait, Value};

use super::{db_err, now_ms, retried, Store, ROWS_PER_STATEMENT};
use crate::duplicates::grouping::Group;
use crate::error::{Error, Result};

/// A run not saved for this long while it runs is answered as failed: the
/// replica running it stopped (it saves at least every few seconds).
pub const RUN_LEASE_MS: i64 = 30_000;

/// What a start found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunStart {
    /// This run is now the collection's latest.
    Started,
    /// A run of the collection is running already: its operation id.
    Running(String),
}

/// A run as stored.
#[derive(Debug, Clone)]
pub struct DuplicateRun {
    pub collection_id: i64,
    pub min_similarity: f32,
    pub progress: pb::OperationProgress,
}

fn running(state: i32) -> bool {
    use pb::operation_progress::State;
    state == State::Running as i32 || state == State::Pending as i32
}

/// The run as clients see it at `now`: running but not saved within the
/// lease means its replica stopped.
pub fn settle(mut p: pb::OperationProgress, saved_at_ms: i64, now: i64) -> pb::OperationProgress {
    if running(p.state) && now - saved_at_ms > RUN_LEASE_MS {
        p.state = pb::operation_progress::State::Failed as i32;
        p.message = format!(
            "the index replica running this stopped reporting {} s ago (stopped or restarted) \
             after {} of {} images: start it again",
            (now - saved_at_ms) / 1000,
            p.done,
            p.total
        );
        p.updated_at_ms = saved_at_ms + RUN_LEASE_MS;
    }
    p
}

fn run_from_row(r: &sea_orm::QueryResult, now: i64) -> Result<DuplicateRun> {
    let bytes: Vec<u8> = r.try_get("", "progress").map_err(db_err("progress"))?;
    let saved: i64 = r
        .try_get("", "saved_at_ms")
        .map_err(db_err("saved_at_ms"))?;
    let min: f64 = r
        .try_get("", "min_similarity")
        .map_err(db_err("min_similarity"))?;
    let progress = pb::OperationProgress::decode(bytes.as_slice())
        .map_err(|e| Error::Corrupt(format!("a stored duplicates run does not decode: {e}")))?;
    Ok(DuplicateRun {
        collection_id: r
            .try_get("", "collection_id")
            .map_err(db_err("collection_id"))?,
        min_similarity: min as f32,
        progress: settle(progress, saved, now),
    })
}

impl Store {
    /// Makes `progress` the collection's latest run, unless one is running
    /// (and within its lease): then that one's id. The previous run's
    /// groups go.
    #[tracing::instrument(name = "db.start_duplicate_run", skip_all)]
    pub async fn start_duplicate_run(
        &self,
        collection_id: i64,
        min_similarity: f32,
        progress: &pb::OperationProgress,
    ) -> Result<RunStart> {
        retried("starting a duplicates run", || {
            self.start_duplicate_run_once(collection_id, min_similarity, progress)
        })
        .await
    }

    async fn start_duplicate_run_once(
        &self,
        collection_id: i64,
        min_similarity: f32,
        progress: &pb::OperationProgress,
    ) -> Result<RunStart> {
        let tx = self.begin().await?;
        // The collection's row first, as every write to it (and on MySQL
        // the lock that makes the check and the insert below one step).
        let n = tx
            .execute(self.stmt(
                "UPDATE collections SET write_seq = write_seq WHERE id = ?",
                vec![collection_id.into()],
            ))
            .await
            .map_err(db_err("locking the collection"))?
            .rows_affected();
        let exists = n > 0
            || tx
                .query_one(self.stmt(
                    "SELECT id FROM collections WHERE id = ?",
                    vec![collection_id.into()],
                ))
                .await
                .map_err(db_err("reading the collection"))?
                .is_some();
        if !exists {
            return Err(Error::NotFound(
                "the collection was deleted meanwhile".into(),
            ));
        }
        let now = now_ms();
        if let Some(r) = tx
            .query_one(self.stmt(
                "SELECT collection_id, min_similarity, saved_at_ms, progress FROM duplicate_runs WHERE collection_id = ?",
                vec![collection_id.into()],
            ))
            .await
            .map_err(db_err("reading the duplicates run"))?
        {
            let run = run_from_row(&r, now)?;
            if running(run.progress.state) {
                return Ok(RunStart::Running(run.progress.operation_id));
            }
        }
        for sql in [
            "DELETE FROM duplicate_runs WHERE collection_id = ?",
            "DELETE FROM duplicate_members WHERE collection_id = ?",
        ] {
            tx.execute(self.stmt(sql, vec![collection_id.into()]))
                .await
                .map_err(db_err("replacing the duplicates run"))?;
        }
        tx.execute(self.stmt(
            "INSERT INTO duplicate_runs (collection_id, operation_id, state, min_similarity, started_at_ms, saved_at_ms, progress) VALUES (?, ?, ?, ?, ?, ?, ?)",
            vec![
                collection_id.into(),
                progress.operation_id.as_str().into(),
                progress.state.into(),
                f64::from(min_similarity).into(),
                progress.started_at_ms.into(),
                now.into(),
                progress.encode_to_vec().into(),
            ],
        ))
        .await
        .map_err(db_err("saving the duplicates run"))?;
        tx.commit().await.map_err(db_err("commit"))?;
        Ok(RunStart::Started)
    }

    /// Saves the progress of a run; with `groups` (when it succeeded) its
    /// groups too, in the same transaction, so that a reader who sees it
    /// succeeded sees its groups. False when the run is no longer the
    /// collection's latest (the collection was deleted, or the lease ran
    /// out and another run replaced it).
    #[tracing::instrument(name = "db.save_duplicate_run", skip_all)]
    pub async fn save_duplicate_run(
        &self,
        collection_id: i64,
        progress: &pb::OperationProgress,
        groups: Option<&[Group]>,
    ) -> Result<bool> {
        retried("saving a duplicates run", || {
            self.save_duplicate_run_once(collection_id, progress, groups)
        })
        .await
    }

    async fn save_duplicate_run_once(
        &self,
        collection_id: i64,
        progress: &pb::OperationProgress,
        groups: Option<&[Group]>,
    ) -> Result<bool> {
        let tx = self.begin().await?;
        let n = tx
            .execute(self.stmt(
                "UPDATE duplicate_runs SET state = ?, saved_at_ms = ?, progress = ? WHERE collection_id = ? AND operation_id = ?",
                vec![
                    progress.state.into(),
                    now_ms().into(),
                    progress.encode_to_vec().into(),
                    collection_id.into(),
                    progress.operation_id.as_str().into(),
                ],
            ))
            .await
            .map_err(db_err("saving the duplicates run"))?
            .rows_affected();
        if n == 0 {
            return Ok(false);
        }
        if let Some(groups) = groups {
            let rows: Vec<[Value; 5]> = groups
                .iter()
                .enumerate()
                .flat_map(|(g, group)| {
                    group.members.iter().enumerate().map(move |(m, (id, s))| {
                        [
                            collection_id.into(),
                            (g as i32).into(),
                            (m as i32).into(),
                            (*id as i64).into(),
                            f64::from(*s).into(),
                        ]
                    })
                })
                .collect();
            for chunk in rows.chunks(ROWS_PER_STATEMENT) {
                let marks = vec!["(?, ?, ?, ?, ?)"; chunk.len()].join(", ");
                tx.execute(self.stmt(
                    &format!("INSERT INTO duplicate_members (collection_id, group_no, member_no, image_id, similarity) VALUES {marks}"),
                    chunk.iter().flat_map(|r| r.iter().cloned()).collect(),
                ))
                .await
                .map_err(db_err("saving duplicate groups"))?;
            }
        }
        tx.commit().await.map_err(db_err("commit"))?;
        Ok(true)
    }

    pub async fn duplicate_run(&self, collection_id: i64) -> Result<Option<DuplicateRun>> {
        let row = self
            .db
            .query_one(self.stmt(
                "SELECT collection_id, min_similarity, saved_at_ms, progress FROM duplicate_runs WHERE collection_id = ?",
                vec![collection_id.into()],
            ))
            .await
            .map_err(db_err("reading the duplicates run"))?;
        let now = now_ms();
        row.map(|r| run_from_row(&r, now)).transpose()
    }

    pub async fn duplicate_run_by_operation(
        &self,
        operation_id: &str,
    ) -> Result<Option<DuplicateRun>> {
        let row = self
            .db
            .query_one(self.stmt(
                "SELECT collection_id, min_similarity, saved_at_ms, progress FROM duplicate_runs WHERE operation_id = ?",
                vec![operation_id.into()],
            ))
            .await
            .map_err(db_err("reading the duplicates run"))?;
        let now = now_ms();
        row.map(|r| run_from_row(&r, now)).transpose()
    }

    /// The groups of the collection's latest run, in their stored order
    /// (largest first), at most `max_groups` of them.
    pub async fn duplicate_groups(
        &self,
        collection_id: i64,
        max_groups: u32,
    ) -> Result<Vec<Group>> {
        let rows = self
            .db
            .query_all(self.stmt(
                "SELECT group_no, image_id, similarity FROM duplicate_members WHERE collection_id = ? AND group_no < ? ORDER BY group_no, member_no",
                vec![collection_id.into(), (max_groups as i64).into()],
            ))
            .await
            .map_err(db_err("reading duplicate groups"))?;
        let mut out: Vec<Group> = Vec::new();
        let mut current = -1;
        for r in &rows {
            let g: i32 = r.try_get("", "group_no").map_err(db_err("group_no"))?;
            let id: i64 = r.try_get("", "image_id").map_err(db_err("image_id"))?;
            let s: f64 = r.try_get("", "similarity").map_err(db_err("similarity"))?;
            if g != current {
                out.push(Group {
                    members: Vec::new(),
                });
                current = g;
            }
            if let Some(last) = out.last_mut() {
                last.members.push((id as u64, s as f32));
            }
        }
        Ok(out)
    }

    /// Metadata, creation time and thumbnail of images of a collection, by
    /// id (those that exist).
    pub async fn images_with_thumbnails(
        &self,
        collection_id: i64,
        ids: &[u64],
    ) -> Result<Vec<super::StoredImage>> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(ROWS_PER_STATEMENT) {
            let marks = vec!["?"; chunk.len()].join(",");
            let mut values: Vec<Value> = vec![collection_id.into()];
            values.extend(chunk.iter().map(|id| Value::from(*id as i64)));
            let rows = self
                .db
                .query_all(self.stmt(
                    &format!(
                        "SELECT i.id, i.predicted_class, i.content_hash, i.file_name, i.path, i.label, i.created_at_ms, b.thumbnail, \
                         COALESCE(b.source_bytes, 0) AS source_bytes \
                         FROM images i LEFT JOIN image_blobs b ON b.image_id = i.id \
                         WHERE i.collection_id = ? AND i.id IN ({marks})"
                    ),
                    values,
                ))
                .await
                .map_err(db_err("reading images"))?;
            for r in &rows {
                out.push(super::StoredImage {
                    image: super::LoadedImage {
                        id: r.try_get::<i64>("", "id").map_err(db_err("id"))? as u64,
                        predicted_class: r
                            .try_get("", "predicted_class")
                            .map_err(db_err("class"))?,
                        content_hash: r.try_get("", "content_hash").map_err(db_err("hash"))?,
                        file_name: r.try_get("", "file_name").map_err(db_err("file_name"))?,
                        path: r.try_get("", "path").map_err(db_err("path"))?,
                        label: r.try_get("", "label").map_err(db_err("label"))?,
                        feature: Vec::new(),
                        created_at_ms: r.try_get("", "created_at_ms").map_err(db_err("created"))?,
                    },
                    created_at_ms: r.try_get("", "created_at_ms").map_err(db_err("created"))?,
                    thumbnail: r.try_get("", "thumbnail").map_err(db_err("thumbnail"))?,
                    source: None,
                    has_source: r
                        .try_get::<i64>("", "source_bytes")
                        .map_err(db_err("source_bytes"))?
                        > 0,
                });
            }
        }
        Ok(out)
    }
}
