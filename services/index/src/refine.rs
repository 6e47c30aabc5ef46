//! Upkeep of refined ranking: a background loop that brings augmented
//! vectors up to date. New images get theirs at insert time; the vectors of
//! their neighbours (and of a deleted image's neighbours) go stale and are
//! recomputed by a refresh once a collection changed by
//! `refined.refresh_share` of its images, after a load or a rebuild (every
//! vector), or on request. A refresh is an operation of the replica that
//! runs it (each replica keeps its own augmented vectors), with progress
//! for `WatchOperation`. Searches go on during a refresh, each vector with
//! its old or its new augmented copy.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use cbir_api::v1 as pb;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::error::{Error, Result};
use crate::index::{Collection, Index};
use crate::store::now_ms;

/// Stale vectors recomputed per step (one read lock, one write lock).
const STEP: usize = 128;
/// Passes of one refresh over what went stale while it ran (see `refresh`).
const PASSES: usize = 3;
/// How often the loop looks for collections to refresh.
const CHECK_EVERY: Duration = Duration::from_millis(250);
/// The pause after a failed pass (a peer shard unreachable, the database
/// down) before the loop tries again.
const RETRY_AFTER: Duration = Duration::from_secs(2);
/// Finished refreshes whose progress stays watchable.
const KEEP_FINISHED: usize = 64;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RefinedConfig {
    /// Nearest neighbours summed into each image's augmented vector, the
    /// image itself included (database-side augmentation); 1 turns it off.
    pub dba_k: usize,
    /// Weight of a neighbour in that sum: its cosine similarity to this power.
    pub dba_alpha: f32,
    /// Nearest augmented vectors added to the query (alpha query
    /// expansion); 0 turns it off.
    pub qe_k: usize,
    /// Weight of each in the expanded query: cosine similarity to this power.
    pub qe_alpha: f32,
    /// A refresh starts once this share of a collection's images has a
    /// stale augmented vector (new images' neighbours, deleted images'
    /// neighbours).
    pub refresh_share: f32,
}

impl Default for RefinedConfig {
    fn default() -> Self {
        let r = crate::mem::Refine::default();
        Self {
            dba_k: r.dba_k,
            dba_alpha: r.dba_alpha,
            qe_k: r.qe_k,
            qe_alpha: r.qe_alpha,
            refresh_share: 0.05,
        }
    }
}

impl RefinedConfig {
    pub fn check(&self) -> Result<()> {
        let bad = |what: &str| Err(Error::Config(format!("refined.{what}")));
        if !(1..=100).contains(&self.dba_k) {
            return bad(&format!("dba_k must be 1 to 100, got {}", self.dba_k));
        }
        if self.qe_k > 100 {
            return bad(&format!("qe_k must be 0 to 100, got {}", self.qe_k));
        }
        for (name, a) in [("dba_alpha", self.dba_alpha), ("qe_alpha", self.qe_alpha)] {
            if !(0.0..=100.0).contains(&a) {
                return bad(&format!("{name} must be 0 to 100, got {a}"));
            }
        }
        if !(self.refresh_share > 0.0 && self.refresh_share <= 1.0) {
            return bad(&format!(
                "refresh_share must be above 0 and at most 1, got {}",
                self.refresh_share
            ));
        }
        Ok(())
    }

    pub fn params(&self) -> crate::mem::Refine {
        crate::mem::Refine {
            dba_k: self.dba_k,
            dba_alpha: self.dba_alpha,
            qe_k: self.qe_k,
            qe_alpha: self.qe_alpha,
        }
    }
}

#[derive(Default)]
struct Ops {
    by_id: HashMap<String, watch::Sender<pb::OperationProgress>>,
    /// Collection id -> its running refresh.
    running: HashMap<i64, String>,
    /// Requested full refreshes (collection ids) the loop has not started.
    wanted: Vec<i64>,
    /// Collections asked for a full refresh while one ran: the running one
    /// goes on until it has covered what the request marked.
    again: std::collections::HashSet<i64>,
    finished: std::collections::VecDeque<String>,
}

pub struct Refresher {
    index: Weak<Index>,
    share: f32,
    ops: Mutex<Ops>,
}

impl Refresher {
    /// Starts the upkeep loop; it ends when the index is dropped.
    pub fn start(index: &Arc<Index>, cfg: &RefinedConfig) -> Arc<Self> {
        let me = Arc::new(Self {
            index: Arc::downgrade(index),
            share: cfg.refresh_share,
            ops: Mutex::new(Ops::default()),
        });
        let weak = Arc::downgrade(&me);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(CHECK_EVERY).await;
                let Some(me) = weak.upgrade() else { return };
                if let Err(e) = me.once().await {
                    tracing::warn!(error = %e, retry_in_s = RETRY_AFTER.as_secs(), "refreshing augmented vectors failed; retrying");
                    tokio::time::sleep(RETRY_AFTER).await;
                }
            }
        });
        me
    }

    /// The running refresh of collection `coll_id`, if any.
    pub fn running(&self, coll_id: i64) -> Option<String> {
        self.ops.lock().running.get(&coll_id).cloned()
    }

    pub fn watch(&self, id: &str) -> Option<watch::Receiver<pb::OperationProgress>> {
        self.ops.lock().by_id.get(id).map(watch::Sender::subscribe)
    }

    /// Asks for every augmented vector of `name` to be recomputed; answers
    /// the operation id (the running one when a refresh runs).
    pub async fn request(&self, name: &str) -> Result<String> {
        let index = self
            .index
            .upgrade()
            .ok_or_else(|| Error::Unavailable("the index service is shutting down".into()))?;
        let coll = index.resolve(name)?;
        // Marked first, also when a refresh runs (the upkeep's own, started
        // by the writes just before): the caller joins that refresh and
        // expects every vector done when it ends, not only those stale when
        // it began.
        coll.mem.write().mark_all_stale();
        {
            let mut ops = self.ops.lock();
            if let Some(id) = ops.running.get(&coll.row.id).cloned() {
                ops.again.insert(coll.row.id);
                return Ok(id);
            }
        }
        let id = self.begin(&coll, name);
        Ok(id)
    }

    /// Registers a refresh of `coll` as running; answers its id.
    fn begin(&self, coll: &Collection, name: &str) -> String {
        // Read before the ops lock: no memory lock is ever taken under it.
        let total = coll.mem.read().refine_state().stale as u64;
        let mut ops = self.ops.lock();
        if let Some(id) = ops.running.get(&coll.row.id) {
            return id.clone();
        }
        let id = uuid::Uuid::new_v4().to_string();
        let now = now_ms();
        let (tx, _) = watch::channel(pb::OperationProgress {
            operation_id: id.clone(),
            state: pb::operation_progress::State::Running as i32,
            total,
            started_at_ms: now,
            updated_at_ms: now,
            message: format!("refreshing the augmented vectors of {name} (refined ranking)"),
            ..Default::default()
        });
        ops.by_id.insert(id.clone(), tx);
        ops.running.insert(coll.row.id, id.clone());
        ops.wanted.push(coll.row.id);
        id
    }

    /// One pass of the loop: new images of followed writes get their
    /// vectors; collections past the share (or asked for) are refreshed.
    async fn once(self: &Arc<Self>) -> Result<()> {
        let Some(index) = self.index.upgrade() else {
            return Ok(());
        };
        let collections = index.collections();
        // A refresh asked for a collection deleted (or rebuilt) since ends.
        let gone: Vec<(i64, String)> = {
            let ops = self.ops.lock();
            ops.wanted
                .iter()
                .filter(|id| !collections.iter().any(|(_, c)| c.row.id == **id))
                .filter_map(|id| ops.running.get(id).map(|op| (*id, op.clone())))
                .collect()
        };
        for (coll_id, op) in gone {
            self.finish(
                coll_id,
                &op,
                "the collection",
                Err(Error::NotFound(
                    "it was deleted or rebuilt before the refresh started".into(),
                )),
            );
        }
        for (name, coll) in collections {
            let (state, len) = {
                let mem = coll.mem.read();
                (mem.refine_state(), mem.len())
            };
            let wanted = self.ops.lock().wanted.contains(&coll.row.id);
            // Stale vectors left over count too: one marked again while a
            // refresh read it stays stale without counting as a change, and
            // by changes alone a collection could stay over its share.
            let due = state.stale > 0
                && (state.changed.max(state.stale) as f64)
                    >= f64::from(self.share) * len.max(1) as f64;
            if !(wanted || due || state.fresh > 0) {
                continue;
            }
            if !wanted && !due {
                // Images another replica added: their own vectors, as an
                // insert here would have computed them.
                let ids = coll.mem.read().stale_ids(STEP);
                index.augment_ids(&coll, &ids).await?;
                continue;
            }
            let id = self.begin(&coll, &name);
            let r = self.refresh(&index, &coll, &id).await;
            let failed = r.as_ref().err().map(ToString::to_string);
            self.finish(coll.row.id, &id, &name, r);
            if let Some(e) = failed {
                // Tried again after RETRY_AFTER (a peer shard down, say).
                return Err(Error::Unavailable(format!("refreshing {name}: {e}")));
            }
        }
        Ok(())
    }

    /// Recomputes every stale vector of `coll` (those marked while it runs
    /// wait for the next refresh).
    async fn refresh(&self, index: &Arc<Index>, coll: &Arc<Collection>, id: &str) -> Result<u64> {
        let started = Instant::now();
        let tx = self.ops.lock().by_id.get(id).cloned();
        let (mut done, mut total) = (0u64, 0u64);
        let mut last_report = Instant::now();
        // What is stale now, then what went stale meanwhile (a write that
        // ended just as this refresh began marks its neighbours while it
        // runs, and whoever asked for the refresh expects them done), up
        // to PASSES times, more while a request joined it; later marks
        // wait for the next refresh.
        let mut passes = 0;
        loop {
            let ids = {
                let mut mem = coll.mem.write();
                mem.reset_changed();
                mem.stale_ids(usize::MAX)
            };
            if ids.is_empty() {
                break;
            }
            passes += 1;
            total += ids.len() as u64;
            self.refresh_ids(
                index,
                coll,
                &ids,
                tx.as_ref(),
                &mut done,
                total,
                &mut last_report,
            )
            .await?;
            if passes >= PASSES && !self.ops.lock().again.remove(&coll.row.id) {
                break;
            }
        }
        let took_ms = started.elapsed().as_millis() as u64;
        // Small refreshes follow every few batches of a bulk add.
        if done >= 1000 || took_ms >= 1000 {
            tracing::info!(collection = %coll.row.name, vectors = done, took_ms, "augmented vectors refreshed");
        } else {
            tracing::debug!(collection = %coll.row.name, vectors = done, took_ms, "augmented vectors refreshed");
        }
        Ok(done)
    }

    /// One pass of `refresh` over `ids`, reporting progress.
    #[allow(clippy::too_many_arguments)]
    async fn refresh_ids(
        &self,
        index: &Arc<Index>,
        coll: &Arc<Collection>,
        ids: &[u64],
        tx: Option<&watch::Sender<pb::OperationProgress>>,
        done: &mut u64,
        total: u64,
        last_report: &mut Instant,
    ) -> Result<()> {
        for chunk in ids.chunks(STEP) {
            if coll.is_retired() {
                break;
            }
            index.augment_ids(coll, chunk).await?;
            *done += chunk.len() as u64;
            if let Some(tx) = tx {
                if last_report.elapsed() >= Duration::from_millis(200) {
                    *last_report = Instant::now();
                    let (done, total) = (*done, total);
                    tx.send_modify(|p| {
                        p.done = done.min(total);
                        p.total = total.max(done);
                        p.updated_at_ms = now_ms();
                    });
                }
            }
        }
        Ok(())
    }

    fn finish(&self, coll_id: i64, id: &str, name: &str, r: Result<u64>) {
        let mut ops = self.ops.lock();
        ops.running.remove(&coll_id);
        ops.wanted.retain(|c| *c != coll_id);
        // A request joined after the last pass read what was stale: what it
        // marked is refreshed next.
        if ops.again.remove(&coll_id) {
            ops.wanted.push(coll_id);
        }
        if let Some(tx) = ops.by_id.get(id) {
            tx.send_modify(|p| {
                p.updated_at_ms = now_ms();
                match &r {
                    Ok(n) => {
                        p.state = pb::operation_progress::State::Succeeded as i32;
                        p.done = *n;
                        p.total = *n;
                        p.message = format!("{n} augmented vectors of {name} refreshed");
                    }
                    Err(e) => {
                        p.state = pb::operation_progress::State::Failed as i32;
                        p.message = format!(
                            "refreshing {name} failed: {e}; refined searches keep the older vectors"
                        );
                    }
                }
            });
        }
        ops.finished.push_back(id.to_string());
        while ops.finished.len() > KEEP_FINISHED {
            if let Some(old) = ops.finished.pop_front() {
                ops.by_id.remove(&old);
            }
        }
    }
}
