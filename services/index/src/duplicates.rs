//! Near-duplicates: a background operation that finds, for every image of
//! a collection, the images at least `min_similarity` similar to it (the
//! in-memory probe search, exact f32 distances), groups them, and stores
//! the groups in the database. The run's progress is saved there as it
//! goes, so that every replica answers `WatchOperation` and
//! `ListDuplicates` for it; at most one run per collection runs at a time.

pub mod grouping;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cbir_api::v1 as pb;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::index::{Collection, Index};
use crate::kernels::{distance_from_dot, similarity};
use crate::store::{now_ms, RunStart, StoredImage};
use grouping::{Group, Linkage, Options, Pair, Scan};

/// Images searched per step (one read lock, one progress update).
const STEP: usize = 256;
/// Progress is saved at most this often (and at the end); well within the
/// run's lease.
const SAVE_EVERY: Duration = Duration::from_millis(500);
/// How often a watcher reads the progress of a run again.
const WATCH_EVERY: Duration = Duration::from_millis(300);

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DuplicatesConfig {
    /// Two images are near-duplicates when their similarity 1/(1+d) is at
    /// least this, unless a request sets its own. Chosen from the gap
    /// between copies (resized, recompressed, cropped) and different
    /// images of one class; see docs/USAGE.md, "Near-duplicates".
    pub min_similarity: f32,
    /// Neighbours looked for per image; larger groups are still found
    /// whole, as their members' lists overlap.
    pub neighbours: usize,
    /// Groups `ListDuplicates` answers with at most, largest first.
    pub max_listed_groups: u32,
}

impl Default for DuplicatesConfig {
    fn default() -> Self {
        Self {
            min_similarity: 0.65,
            neighbours: 64,
            max_listed_groups: 500,
        }
    }
}

impl DuplicatesConfig {
    pub fn check(&self) -> Result<()> {
        if !(self.min_similarity > 0.0 && self.min_similarity <= 1.0) {
            return Err(Error::Config(format!(
                "duplicates.min_similarity must be above 0 and at most 1, got {}",
                self.min_similarity
            )));
        }
        if !(1..=1000).contains(&self.neighbours) {
            return Err(Error::Config(format!(
                "duplicates.neighbours must be 1 to 1000, got {}",
                self.neighbours
            )));
        }
        if !(1..=100_000).contains(&self.max_listed_groups) {
            return Err(Error::Config(format!(
                "duplicates.max_listed_groups must be 1 to 100000, got {}",
                self.max_listed_groups
            )));
        }
        Ok(())
    }
}

pub struct Duplicates {
    index: Arc<Index>,
    cfg: DuplicatesConfig,
}

fn is_running(state: i32) -> bool {
    use pb::operation_progress::State;
    state == State::Running as i32 || state == State::Pending as i32
}

impl Duplicates {
    pub fn new(index: Arc<Index>, cfg: DuplicatesConfig) -> Result<Self> {
        cfg.check()?;
        Ok(Self { index, cfg })
    }

    fn options(&self, min_similarity: f32) -> Options {
        Options {
            min_similarity,
            neighbours: self.cfg.neighbours,
            scan: Scan::Probe,
            // Measured on copies of shared photos (docs/USAGE.md): nearly
            // as precise as complete linkage and nearly the recall of
            // single linkage, which chains different images together.
            linkage: Linkage::Star,
        }
    }

    /// Starts a run on collection `name` (`min_similarity` 0: the
    /// default); answers its operation id. While a run of the collection
    /// is running, a second start answers that run's id (its threshold
    /// stays as it was started).
    pub async fn start(self: &Arc<Self>, name: &str, min_similarity: f32) -> Result<String> {
        let min_similarity = if min_similarity == 0.0 {
            self.cfg.min_similarity
        } else {
            min_similarity
        };
        if !(min_similarity > 0.0 && min_similarity <= 1.0) {
            return Err(Error::InvalidArgument(format!(
                "min_similarity must be above 0 and at most 1 (0 takes the default {}), got {min_similarity}",
                self.cfg.min_similarity
            )));
        }
        let coll = self.index.resolve(name)?;
        let sharded = !self.index.shard.is_whole();
        if sharded && self.index.peers.is_none() {
            return Err(Error::FailedPrecondition(format!(
                "near-duplicates of a sharded index need every shard's images: this is shard {} of {} without peers; set peers (INDEX_PEERS) on every shard, or run it on one unsharded index service of the same database",
                self.index.shard.id, self.index.shard.count
            )));
        }
        let total = if sharded {
            self.index.store().count(coll.row.id).await?
        } else {
            coll.mem.read().len() as u64
        };
        let id = uuid::Uuid::new_v4().to_string();
        let now = now_ms();
        let progress = pb::OperationProgress {
            operation_id: id.clone(),
            state: pb::operation_progress::State::Running as i32,
            total,
            started_at_ms: now,
            updated_at_ms: now,
            message: format!(
                "finding near-duplicates in {name} (similarity at least {min_similarity})"
            ),
            ..Default::default()
        };
        match self
            .index
            .store()
            .start_duplicate_run(coll.row.id, min_similarity, &progress)
            .await?
        {
            RunStart::Running(existing) => return Ok(existing),
            RunStart::Started => {}
        }
        let me = self.clone();
        let opts = self.options(min_similarity);
        let name = name.to_string();
        tokio::spawn(async move { me.run(coll, progress, opts, name).await });
        Ok(id)
    }

    async fn run(
        &self,
        coll: Arc<Collection>,
        mut progress: pb::OperationProgress,
        opts: Options,
        name: String,
    ) {
        use pb::operation_progress::State;
        let started = Instant::now();
        let found = self.find(&coll, &mut progress, &opts, started).await;
        progress.updated_at_ms = now_ms();
        let groups = match found {
            Ok(groups) => {
                let images: usize = groups.iter().map(|g| g.members.len()).sum();
                progress.state = State::Succeeded as i32;
                progress.message = format!(
                    "{} groups of near-duplicates ({images} images) in {name}",
                    groups.len()
                );
                tracing::info!(collection = %name, groups = groups.len(), images, took_ms = started.elapsed().as_millis() as u64, "near-duplicates found");
                Some(groups)
            }
            Err(e) => {
                progress.state = State::Failed as i32;
                progress.message = format!("finding near-duplicates failed: {e}");
                tracing::error!(collection = %name, error = %e, "finding near-duplicates failed");
                None
            }
        };
        let saved = self
            .index
            .store()
            .save_duplicate_run(coll.row.id, &progress, groups.as_deref())
            .await;
        match saved {
            Ok(true) => {}
            Ok(false) => {
                tracing::info!(collection = %name, "the collection was deleted or rebuilt during the near-duplicates run; its result is dropped")
            }
            Err(e) => {
                tracing::error!(collection = %name, error = %e, "saving the near-duplicates failed")
            }
        }
    }

    async fn find(
        &self,
        coll: &Arc<Collection>,
        progress: &mut pb::OperationProgress,
        opts: &Options,
        started: Instant,
    ) -> Result<Vec<Group>> {
        if let Some(peers) = self.index.peers.clone() {
            if !self.index.shard.is_whole() {
                return self
                    .find_sharded(coll, progress, opts, started, &peers)
                    .await;
            }
        }
        let mut ids = coll.mem.read().ids();
        ids.sort_unstable();
        progress.total = ids.len() as u64;
        let rule = self.index.probe;
        let mut pairs: Vec<Pair> = Vec::new();
        let mut saved_at = Instant::now();
        for step in ids.chunks(STEP) {
            let (c, step_ids, o) = (coll.clone(), step.to_vec(), *opts);
            // Searches take milliseconds each: off the runtime.
            let found = tokio::task::spawn_blocking(move || {
                let mem = c.mem.read();
                step_ids
                    .iter()
                    .flat_map(|id| grouping::pairs_of(&mem, *id, &o, rule))
                    .collect::<Vec<Pair>>()
            })
            .await
            .map_err(|e| Error::Internal(format!("near-duplicates task: {e}")))?;
            pairs.extend(found);
            self.advance(coll, progress, step.len(), started, &mut saved_at)
                .await?;
        }
        let pairs = grouping::dedup_pairs(pairs);
        let (c, o) = (coll.clone(), *opts);
        tokio::task::spawn_blocking(move || {
            let features = grouping::features_of(&c.mem.read(), &pairs);
            grouping::group(&pairs, &features, &o)
        })
        .await
        .map_err(|e| Error::Internal(format!("near-duplicates task: {e}")))
    }

    /// Counts `n` more images searched, and saves the progress at most
    /// every SAVE_EVERY; fails once the collection is gone.
    async fn advance(
        &self,
        coll: &Collection,
        progress: &mut pb::OperationProgress,
        n: usize,
        started: Instant,
        saved_at: &mut Instant,
    ) -> Result<()> {
        progress.done += n as u64;
        progress.items_per_second =
            progress.done as f64 / started.elapsed().as_secs_f64().max(1e-3);
        progress.updated_at_ms = now_ms();
        if saved_at.elapsed() >= SAVE_EVERY {
            *saved_at = Instant::now();
            let current = self
                .index
                .store()
                .save_duplicate_run(coll.row.id, progress, None)
                .await?;
            if !current {
                return Err(Error::NotFound(
                    "the collection was deleted or rebuilt meanwhile".into(),
                ));
            }
        }
        Ok(())
    }

    /// `find` on a sharded index: every image of the collection (read
    /// from the database page by page, as its shard holds it or not) is
    /// looked for among this shard's partitions and, through the peers,
    /// among every other shard's; candidates from other shards are judged
    /// by their exact stored features. Pairs and groups are those of one
    /// node holding every partition (its probe rule runs per shard, so the
    /// shards together read at least the cells one node would).
    async fn find_sharded(
        &self,
        coll: &Arc<Collection>,
        progress: &mut pb::OperationProgress,
        opts: &Options,
        started: Instant,
        peers: &crate::peers::Peers,
    ) -> Result<Vec<Group>> {
        let store = self.index.store();
        progress.total = store.count(coll.row.id).await?;
        let rule = self.index.probe;
        let mut pairs: Vec<Pair> = Vec::new();
        // The features of pair members, for the grouping.
        let mut features: HashMap<u64, Vec<f32>> = HashMap::new();
        let mut saved_at = Instant::now();
        let mut after = 0;
        loop {
            let page = store.load_page(coll.row.id, after, STEP as u64).await?;
            let Some(last) = page.last() else { break };
            after = last.id;
            let vectors: Vec<&[f32]> = page.iter().map(|i| i.feature.as_slice()).collect();
            let remote = peers
                .neighbours(coll.row.id, opts.neighbours, &vectors)
                .await?;
            // Candidates elsewhere within reach of the threshold by the
            // peer's distance, then judged by the stored features.
            let reach = opts.min_similarity - 0.01;
            let mut wanted: Vec<u64> = remote
                .iter()
                .flatten()
                .filter(|n| similarity(distance_from_dot(n.1)) >= reach)
                .map(|n| n.0)
                .collect();
            wanted.sort_unstable();
            wanted.dedup();

            let elsewhere: HashMap<u64, Vec<f32>> = if wanted.is_empty() {
                HashMap::new()
            } else {
                store
                    .features(coll.row.id, &wanted)
                    .await?
                    .into_iter()
                    .collect()
            };
            let (c, o) = (coll.clone(), *opts);
            let (found, page) = tokio::task::spawn_blocking(move || {
                let mem = c.mem.read();
                let mut found: Vec<Pair> = Vec::new();
                for (img, near) in page.iter().zip(&remote) {
                    found.extend(grouping::pairs_near(
                        &mem,
                        img.id,
                        img.predicted_class,
                        &img.feature,
                        &o,
                        rule,
                    ));
                    for n in near {
                        let Some(f) = elsewhere.get(&n.0) else {
                            continue;
                        };
                        let s = grouping::sim(&img.feature, f);
                        if n.0 != img.id && s >= o.min_similarity {
                            found.push(Pair {
                                a: img.id.min(n.0),
                                b: img.id.max(n.0),
                                similarity: s,
                            });
                        }
                    }
                }
                (found, page)
            })
            .await
            .map_err(|e| Error::Internal(format!("near-duplicates task: {e}")))?;
            let members: std::collections::HashSet<u64> =
                found.iter().flat_map(|p| [p.a, p.b]).collect();
            for img in page.iter().filter(|i| members.contains(&i.id)) {
                features.insert(img.id, img.feature.clone());
            }
            pairs.extend(found);
            self.advance(coll, progress, page.len(), started, &mut saved_at)
                .await?;
            if page.len() < STEP {
                break;
            }
        }
        let pairs = grouping::dedup_pairs(pairs);
        // Members on pages read before the pair was found from their side.
        let mut missing: Vec<u64> = pairs
            .iter()
            .flat_map(|p| [p.a, p.b])
            .filter(|id| !features.contains_key(id))
            .collect();
        missing.sort_unstable();
        missing.dedup();
        if !missing.is_empty() {
            features.extend(store.features(coll.row.id, &missing).await?);
        }
        let o = *opts;
        tokio::task::spawn_blocking(move || grouping::group(&pairs, &features, &o))
            .await
            .map_err(|e| Error::Internal(format!("near-duplicates task: {e}")))
    }

    /// The progress of a run, from the database (any replica's run).
    pub async fn progress(&self, operation_id: &str) -> Result<Option<pb::OperationProgress>> {
        Ok(self
            .index
            .store()
            .duplicate_run_by_operation(operation_id)
            .await?
            .map(|r| r.progress))
    }

    /// Follows a run until it ends: its progress now, then each change.
    pub fn watch(
        self: &Arc<Self>,
        first: pb::OperationProgress,
    ) -> impl futures::Stream<Item = Result<pb::OperationProgress>> + Send + 'static {
        let me = self.clone();
        async_stream::stream! {
            let id = first.operation_id.clone();
            let mut last = first;
            yield Ok(last.clone());
            while is_running(last.state) {
                tokio::time::sleep(WATCH_EVERY).await;
                match me.progress(&id).await {
                    Ok(Some(p)) => {
                        if p != last {
                            last = p;
                            yield Ok(last.clone());
                        }
                    }
                    Ok(None) => {
                        yield Err(Error::NotFound(format!(
                            "operation {id} is gone: its collection was deleted, or a newer run replaced it"
                        )));
                        break;
                    }
                    Err(e) => {
                        yield Err(e);
                        break;
                    }
                }
            }
        }
    }

    /// The groups of the latest run of collection `name`, largest first,
    /// without the images deleted since (a group left with one member is
    /// no group); similarities are to each group's first (oldest) member
    /// still there.
    pub async fn list(&self, name: &str) -> Result<pb::ListDuplicatesResponse> {
        let coll = self.index.resolve(name)?;
        let store = self.index.store();
        let Some(run) = store.duplicate_run(coll.row.id).await? else {
            return Ok(pb::ListDuplicatesResponse {
                operation: None,
                min_similarity: self.cfg.min_similarity,
                groups: Vec::new(),
                total_groups: 0,
            });
        };
        let stored = if run.progress.state == pb::operation_progress::State::Succeeded as i32 {
            store.duplicate_groups(coll.row.id, u32::MAX).await?
        } else {
            Vec::new()
        };
        // The members still stored, with their features: from memory, and
        // on a sharded index those of other shards' partitions from the
        // database.
        let mut features: HashMap<u64, Vec<f32>> = {
            let mem = coll.mem.read();
            stored
                .iter()
                .flat_map(|g| &g.members)
                .filter_map(|(id, _)| mem.feature(*id).map(|(_, f)| (*id, f)))
                .collect()
        };
        if !self.index.shard.is_whole() {
            let mut elsewhere: Vec<u64> = stored
                .iter()
                .flat_map(|g| g.members.iter().map(|m| m.0))
                .filter(|id| !features.contains_key(id))
                .collect();
            elsewhere.sort_unstable();
            elsewhere.dedup();
            if !elsewhere.is_empty() {
                features.extend(store.features(coll.row.id, &elsewhere).await?);
            }
        }
        let mut groups: Vec<Group> = {
            stored
                .into_iter()
                .filter_map(|g| {
                    let live: Vec<(u64, Vec<f32>)> = g
                        .members
                        .iter()
                        .filter_map(|(id, _)| features.get(id).map(|f| (*id, f.clone())))
                        .collect();
                    (live.len() >= 2).then(|| {
                        let first = &live[0].1;
                        Group {
                            members: live
                                .iter()
                                .enumerate()
                                .map(|(i, (id, f))| {
                                    let s = if i == 0 {
                                        1.0
                                    } else {
                                        crate::kernels::similarity(
                                            crate::kernels::distance_from_dot(crate::kernels::dot(
                                                first, f,
                                            )),
                                        )
                                    };
                                    (*id, s)
                                })
                                .collect(),
                        }
                    })
                })
                .collect()
        };
        grouping::sort_groups(&mut groups);
        let total_groups = groups.len() as u32;
        groups.truncate(self.cfg.max_listed_groups as usize);
        let ids: Vec<u64> = groups
            .iter()
            .flat_map(|g| g.members.iter().map(|m| m.0))
            .collect();
        let images: HashMap<u64, StoredImage> = store
            .images_with_thumbnails(coll.row.id, &ids)
            .await?
            .into_iter()
            .map(|s| (s.image.id, s))
            .collect();
        let groups = groups
            .into_iter()
            .map(|g| pb::DuplicateGroup {
                members: g
                    .members
                    .into_iter()
                    .filter_map(|(id, similarity)| {
                        let s = images.get(&id)?;
                        Some(pb::DuplicateMember {
                            image: Some(pb::ImageRecord {
                                id,
                                content_hash: s.image.content_hash.clone(),
                                file_name: s.image.file_name.clone(),
                                path: s.image.path.clone(),
                                label: s.image.label.clone(),
                                predicted_class: s.image.predicted_class,
                                thumbnail: s.thumbnail.clone().unwrap_or_default(),
                                created_at_ms: s.created_at_ms,
                                has_source: s.has_source,
                                ..Default::default()
                            }),
                            similarity,
                        })
                    })
                    .collect(),
            })
            .filter(|g| g.members.len() >= 2)
            .collect();
        Ok(pb::ListDuplicatesResponse {
            operation: Some(run.progress),
            min_similarity: run.min_similarity,
            groups,
            total_groups,
        })
    }
}
