//! The gateways' server-folder indexing jobs, kept in the index's database
//! so that every gateway replica answers for every job. The gateway that
//! accepted a job runs it and saves it as it goes, with a lease: a job
//! still running but not saved within its lease is answered as failed, its
//! gateway having stopped. Finished jobs are kept bounded.

use cbir_api::prost::Message;
use cbir_api::v1 as pb;
use sea_orm::{ConnectionTrait, DbBackend, Value};

use crate::error::{Error, Result};
use crate::store::{db_err, now_ms, retried, Store};

/// Finished jobs kept, newest first, and the longest any job is kept.
pub const KEEP_FINISHED: usize = 100;
pub const KEEP_FOR_MS: i64 = 7 * 24 * 3600 * 1000;
/// Bounds of a job's lease.
pub const MIN_LEASE_MS: u64 = 1_000;
pub const MAX_LEASE_MS: u64 = 24 * 3600 * 1000;
/// Largest encoded job (its failure list is bounded by the gateway).
pub const MAX_JOB_BYTES: usize = 1 << 20;
/// Jobs a list answers with at most.
const LIST_LIMIT: u64 = 500;

fn running(state: i32) -> bool {
    use pb::operation_progress::State;
    state == State::Running as i32 || state == State::Pending as i32
}

/// The job as clients see it at `now`: a running job whose lease ran out
/// is failed, and says why.
pub fn settle(mut job: pb::IndexJob, saved_at_ms: i64, lease_ms: i64, now: i64) -> pb::IndexJob {
    if running(job.state) && now - saved_at_ms > lease_ms {
        job.state = pb::operation_progress::State::Failed as i32;
        job.message = format!(
            "the gateway running this job stopped reporting {} s ago (stopped, restarted or \
             crashed) after {} of {} images: start the job again to index the rest (images \
             indexed already are kept once)",
            (now - saved_at_ms) / 1000,
            job.done + job.failed,
            job.total
        );
        job.updated_at_ms = saved_at_ms + lease_ms;
    }
    job
}

/// Checks a job a gateway saves.
pub fn validate(job: &pb::IndexJob, lease_ms: u64) -> Result<()> {
    let id_ok = !job.id.is_empty()
        && job.id.len() <= 64
        && job
            .id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !id_ok {
        return Err(Error::InvalidArgument(
            "a job id needs 1 to 64 letters, digits, '-' or '_'".into(),
        ));
    }
    if pb::operation_progress::State::try_from(job.state).is_err() {
        return Err(Error::InvalidArgument(format!(
            "unknown job state {}",
            job.state
        )));
    }
    if !(MIN_LEASE_MS..=MAX_LEASE_MS).contains(&lease_ms) {
        return Err(Error::InvalidArgument(format!(
            "lease_ms must be {MIN_LEASE_MS} to {MAX_LEASE_MS}, got {lease_ms}"
        )));
    }
    let len = job.encoded_len();
    if len > MAX_JOB_BYTES {
        return Err(Error::InvalidArgument(format!(
            "the job is {len} bytes encoded, the limit is {MAX_JOB_BYTES}: list fewer failures"
        )));
    }
    Ok(())
}

fn decode(row: &sea_orm::QueryResult, now: i64) -> Result<pb::IndexJob> {
    let bytes: Vec<u8> = row.try_get("", "job").map_err(db_err("job"))?;
    let saved: i64 = row
        .try_get("", "saved_at_ms")
        .map_err(db_err("saved_at_ms"))?;
    let lease: i64 = row.try_get("", "lease_ms").map_err(db_err("lease_ms"))?;
    let job = pb::IndexJob::decode(bytes.as_slice())
        .map_err(|e| Error::Corrupt(format!("a stored indexing job does not decode: {e}")))?;
    Ok(settle(job, saved, lease, now))
}

impl Store {
    /// Inserts or replaces the job, and prunes old finished ones.
    #[tracing::instrument(name = "db.save_job", skip_all)]
    pub async fn save_job(&self, job: &pb::IndexJob, lease_ms: u64) -> Result<()> {
        let bytes = job.encode_to_vec();
        retried("saving an indexing job", || {
            self.save_job_once(job, &bytes, lease_ms)
        })
        .await
    }

    async fn save_job_once(&self, job: &pb::IndexJob, bytes: &[u8], lease_ms: u64) -> Result<()> {
        let now = now_ms();
        let sql = match self.backend() {
            DbBackend::MySql => {
                "INSERT INTO index_jobs (id, state, started_at_ms, saved_at_ms, lease_ms, job) \
                 VALUES (?, ?, ?, ?, ?, ?) ON DUPLICATE KEY UPDATE state = VALUES(state), \
                 started_at_ms = VALUES(started_at_ms), saved_at_ms = VALUES(saved_at_ms), \
                 lease_ms = VALUES(lease_ms), job = VALUES(job)"
            }
            _ => {
                "INSERT INTO index_jobs (id, state, started_at_ms, saved_at_ms, lease_ms, job) \
                 VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET state = excluded.state, \
                 started_at_ms = excluded.started_at_ms, saved_at_ms = excluded.saved_at_ms, \
                 lease_ms = excluded.lease_ms, job = excluded.job"
            }
        };
        let tx = self.begin().await?;
        tx.execute(self.stmt(
            sql,
            vec![
                job.id.as_str().into(),
                job.state.into(),
                job.started_at_ms.into(),
                now.into(),
                (lease_ms as i64).into(),
                bytes.to_vec().into(),
            ],
        ))
        .await
        .map_err(db_err("saving an indexing job"))?;
        tx.execute(self.stmt(
            "DELETE FROM index_jobs WHERE saved_at_ms < ?",
            vec![(now - KEEP_FOR_MS).into()],
        ))
        .await
        .map_err(db_err("pruning indexing jobs"))?;
        // Finished (or abandoned) jobs beyond the newest KEEP_FINISHED go.
        let rows = tx
            .query_all(self.stmt(
                "SELECT id, state, saved_at_ms, lease_ms FROM index_jobs ORDER BY started_at_ms DESC, id",
                vec![],
            ))
            .await
            .map_err(db_err("listing indexing jobs"))?;
        let mut finished = 0;
        let mut prune: Vec<Value> = Vec::new();
        for r in &rows {
            let state: i32 = r.try_get("", "state").map_err(db_err("state"))?;
            let saved: i64 = r.try_get("", "saved_at_ms").map_err(db_err("saved"))?;
            let lease: i64 = r.try_get("", "lease_ms").map_err(db_err("lease"))?;
            if running(state) && now - saved <= lease {
                continue;
            }
            finished += 1;
            if finished > KEEP_FINISHED {
                let id: String = r.try_get("", "id").map_err(db_err("id"))?;
                prune.push(id.into());
            }
        }
        for chunk in prune.chunks(200) {
            let marks = vec!["?"; chunk.len()].join(",");
            tx.execute(self.stmt(
                &format!("DELETE FROM index_jobs WHERE id IN ({marks})"),
                chunk.to_vec(),
            ))
            .await
            .map_err(db_err("pruning indexing jobs"))?;
        }
        tx.commit().await.map_err(db_err("commit"))
    }

    pub async fn load_job(&self, id: &str) -> Result<Option<pb::IndexJob>> {
        let row = self
            .connection()
            .query_one(self.stmt(
                "SELECT job, saved_at_ms, lease_ms FROM index_jobs WHERE id = ?",
                vec![id.into()],
            ))
            .await
            .map_err(db_err("reading an indexing job"))?;
        let now = now_ms();
        row.map(|r| decode(&r, now)).transpose()
    }

    /// Newest first.
    pub async fn list_jobs(&self) -> Result<Vec<pb::IndexJob>> {
        let rows = self
            .connection()
            .query_all(self.stmt(
                "SELECT job, saved_at_ms, lease_ms FROM index_jobs ORDER BY started_at_ms DESC, id LIMIT ?",
                vec![(LIST_LIMIT as i64).into()],
            ))
            .await
            .map_err(db_err("listing indexing jobs"))?;
        let now = now_ms();
        rows.iter().map(|r| decode(r, now)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(state: pb::operation_progress::State) -> pb::IndexJob {
        pb::IndexJob {
            id: "j1".into(),
            state: state as i32,
            done: 5,
            total: 10,
            message: "indexing".into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_running_job_past_its_lease_is_failed() {
        use pb::operation_progress::State;
        let fresh = settle(job(State::Running), 10_000, 3_000, 12_000);
        assert_eq!(fresh.state, State::Running as i32);
        let stale = settle(job(State::Running), 10_000, 3_000, 14_000);
        assert_eq!(stale.state, State::Failed as i32);
        assert!(
            stale.message.contains("stopped reporting 4 s ago"),
            "{}",
            stale.message
        );
        assert!(
            stale.message.contains("after 5 of 10 images"),
            "{}",
            stale.message
        );
        // Finished jobs are left as they are.
        let done = settle(job(State::Succeeded), 10_000, 3_000, 99_000);
        assert_eq!(done.state, State::Succeeded as i32);
        assert_eq!(done.message, "indexing");
    }

    #[test]
    fn saved_jobs_are_checked() {
        use pb::operation_progress::State;
        assert!(validate(&job(State::Running), 3_000).is_ok());
        assert!(validate(&job(State::Running), 10).is_err());
        let mut bad = job(State::Running);
        bad.id = "../x".into();
        assert!(validate(&bad, 3_000).is_err());
        bad = job(State::Running);
        bad.state = 99;
        assert!(validate(&bad, 3_000).is_err());
    }
}
