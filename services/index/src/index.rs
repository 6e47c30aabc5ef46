//! The index domain: named collections (aliases of physical collections),
//! write-through upserts (database first, then memory) and searches from
//! memory. No tonic types here.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::RwLock;

use crate::error::{Error, Result};
use crate::kernels;
use crate::mem::{Entry, Hit, MemIndex, Meta, Mode, ProbeRule, Query, Stats};
use crate::store::{CollectionRow, NewImage, Store, StoredImage, Upserted};

/// Limits on what one request may carry.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub max_records_per_upsert: usize,
    pub max_top_k: usize,
    pub max_thumbnail_bytes: usize,
    pub max_source_bytes: usize,
    pub max_name_len: usize,
    pub max_path_len: usize,
    pub max_label_len: usize,
    pub max_dims: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_records_per_upsert: 1000,
            max_top_k: 10_000,
            max_thumbnail_bytes: 1 << 20,
            max_source_bytes: 16 << 20,
            max_name_len: cbir_common::records::DEFAULT_TEXT_LIMITS.max_file_name,
            max_path_len: cbir_common::records::DEFAULT_TEXT_LIMITS.max_path,
            max_label_len: cbir_common::records::DEFAULT_TEXT_LIMITS.max_label,
            max_dims: 8192,
        }
    }
}

pub struct Collection {
    pub row: CollectionRow,
    pub mem: RwLock<MemIndex>,
    /// Serialises writers so that memory applies commits in commit order.
    write: tokio::sync::Mutex<()>,
    /// The collection's write counter in the database that memory reflects
    /// (replicas reload a collection whose counter moved).
    seen_seq: std::sync::atomic::AtomicI64,
    /// Set (under `write`) once no name may write here any more: the
    /// collection was deleted, or a rebuild replaced it. A writer that
    /// waited for `write` looks the name up again instead of writing into
    /// a collection about to be dropped.
    retired: std::sync::atomic::AtomicBool,
}

impl Collection {
    fn new(row: CollectionRow, mem: MemIndex) -> Self {
        Self {
            row,
            mem: RwLock::new(mem),
            write: tokio::sync::Mutex::new(()),
            seen_seq: std::sync::atomic::AtomicI64::new(0),
            retired: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn retired(&self) -> bool {
        self.retired.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn retire(&self) {
        self.retired
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

#[derive(Default)]
struct Catalog {
    aliases: HashMap<String, i64>,
    collections: HashMap<i64, Arc<Collection>>,
}

pub struct Index {
    store: Store,
    catalog: RwLock<Catalog>,
    pub limits: Limits,
    pub probe: ProbeRule,
    pub default_mode: Mode,
    /// Changes to the set of collections and names, one at a time: the
    /// existence check and the insert of a create must not interleave, and
    /// the follow loop must not sync the catalog from a snapshot taken
    /// before a local change. Taken before any collection's `write`.
    creating: tokio::sync::Mutex<()>,
}

/// A record to upsert, as the API gives it.
#[derive(Debug, Clone)]
pub struct Record {
    pub content_hash: String,
    pub file_name: String,
    pub path: String,
    pub label: String,
    pub predicted_class: i32,
    pub feature: Vec<f32>,
    pub thumbnail: Vec<u8>,
    pub source: Vec<u8>,
}

pub struct SearchRequest {
    pub collection: String,
    pub vector: Vec<f32>,
    pub predicted_class: Option<i32>,
    pub top_k: usize,
    pub mode: Option<Mode>,
    pub min_similarity: f32,
    pub exclude_id: Option<u64>,
    /// `(name, version)` of the model that made `vector`: a collection bound
    /// to another model refuses the search (its name may have switched to a
    /// rebuild for a new model since the caller looked).
    pub model: Option<(String, String)>,
}

pub struct SearchResult {
    pub hits: Vec<Hit>,
    pub stats: Stats,
    pub mode: Mode,
    pub took_us: u64,
}

pub struct PartitionStat {
    pub class: i32,
    pub count: u64,
    pub bytes: u64,
}

pub struct CollectionStats {
    pub row: CollectionRow,
    pub alias: String,
    pub count: u64,
    pub bytes: u64,
    pub partitions: Vec<PartitionStat>,
}

/// Rows per page when loading a collection into memory.
const LOAD_PAGE: u64 = 5_000;
/// Parallel readers when loading a collection.
const LOAD_READERS: usize = 2;

/// Longest description, model name or model version of a collection.
const MAX_TEXT_LEN: usize = 4096;

fn valid_name(name: &str) -> Result<()> {
    cbir_api::names::check_new(name).map_err(Error::InvalidArgument)
}

impl Index {
    /// Loads every collection from the store into memory.
    pub async fn open(store: Store, limits: Limits, probe: ProbeRule) -> Result<Self> {
        let index = Self {
            store,
            catalog: RwLock::new(Catalog::default()),
            limits,
            probe,
            default_mode: Mode::Probe,
            creating: tokio::sync::Mutex::new(()),
        };
        let started = Instant::now();
        // Counters first: a write during the load shows as a moved counter.
        let seqs = index.store.write_seqs().await?;
        let rows = index.store.collections().await?;
        let aliases = index.store.aliases().await?;
        let mut total = 0;
        for row in rows {
            let seq = seqs.get(&row.id).copied().unwrap_or(0);
            let coll = index.load_collection(row).await?;
            coll.seen_seq
                .store(seq, std::sync::atomic::Ordering::SeqCst);
            total += coll.mem.read().len();
            index.catalog.write().collections.insert(coll.row.id, coll);
        }
        index.catalog.write().aliases = aliases;
        tracing::info!(
            vectors = total,
            took_ms = started.elapsed().as_millis() as u64,
            "index loaded from the database"
        );
        Ok(index)
    }

    /// Brings memory up to date with what other replicas on the same
    /// database committed: new collections are loaded, collections whose
    /// write counter moved are reloaded (then swapped in at once), deleted
    /// ones dropped, aliases replaced.
    pub async fn follow_once(&self) -> Result<()> {
        use std::sync::atomic::Ordering;
        let _catalog = self.creating.lock().await;
        let seqs = self.store.write_seqs().await?;
        let rows = self.store.collections().await?;
        let aliases = self.store.aliases().await?;
        let live: std::collections::HashSet<i64> = rows.iter().map(|r| r.id).collect();
        for row in rows {
            let seq = seqs.get(&row.id).copied().unwrap_or(0);
            let known = self.catalog.read().collections.get(&row.id).cloned();
            match known {
                None => {
                    let coll = self.load_collection(row).await?;
                    coll.seen_seq.store(seq, Ordering::SeqCst);
                    tracing::info!(collection = %coll.row.name, vectors = coll.mem.read().len(), "loaded a collection another replica created");
                    self.catalog.write().collections.insert(coll.row.id, coll);
                }
                Some(coll) if coll.seen_seq.load(Ordering::SeqCst) != seq => {
                    let _w = coll.write.lock().await;
                    // Our own write may have been the change.
                    if coll.seen_seq.load(Ordering::SeqCst) == seq {
                        continue;
                    }
                    let fresh = self.load_collection(coll.row.clone()).await?;
                    let dims = coll.row.dims as usize;
                    let mem = std::mem::replace(&mut *fresh.mem.write(), MemIndex::new(dims));
                    let n = mem.len();
                    *coll.mem.write() = mem;
                    coll.seen_seq.store(seq, Ordering::SeqCst);
                    tracing::info!(collection = %coll.row.name, vectors = n, "reloaded a collection other replicas changed");
                }
                Some(_) => {}
            }
        }
        let mut cat = self.catalog.write();
        cat.collections.retain(|id, _| live.contains(id));
        cat.aliases = aliases;
        Ok(())
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    async fn load_collection(&self, row: CollectionRow) -> Result<Arc<Collection>> {
        let dims = row.dims as usize;
        let mut mem = MemIndex::new(dims);
        let Some((lo, hi)) = self.store.id_range(row.id).await? else {
            return Ok(Arc::new(Collection::new(row, mem)));
        };
        // Readers over disjoint id ranges run in parallel (one connection
        // each), each decoding into its own index; the parts are merged.
        let readers = LOAD_READERS as u64;
        let span = (hi - lo) / readers + 1;
        let mut parts = Vec::new();
        for r in 0..readers {
            let start = lo - 1 + r * span;
            let upto = (start + span).min(hi);
            if start >= upto {
                continue;
            }
            let store = self.store.clone();
            let id = row.id;
            parts.push(tokio::spawn(async move {
                let mut part = MemIndex::new(dims);
                let mut after = start;
                let mut pending = Some(tokio::spawn({
                    let store = store.clone();
                    async move { store.load_range(id, after, upto, LOAD_PAGE).await }
                }));
                while let Some(task) = pending.take() {
                    let page = task
                        .await
                        .map_err(|e| Error::Internal(format!("load task: {e}")))??;
                    let Some(last) = page.last() else { break };
                    after = last.id;
                    if page.len() as u64 == LOAD_PAGE {
                        let store = store.clone();
                        pending = Some(tokio::spawn(async move {
                            store.load_range(id, after, upto, LOAD_PAGE).await
                        }));
                    }
                    part = tokio::task::spawn_blocking(move || {
                        let entries: Vec<Entry> = page
                            .into_iter()
                            .filter(|img| img.feature.len() == dims)
                            .map(|img| Entry {
                                id: img.id,
                                class: img.predicted_class,
                                feature: img.feature,
                                meta: Arc::new(Meta {
                                    content_hash: img.content_hash,
                                    file_name: img.file_name,
                                    path: img.path,
                                    label: img.label,
                                }),
                            })
                            .collect();
                        part.upsert(&entries);
                        part
                    })
                    .await
                    .map_err(|e| Error::Internal(format!("load task: {e}")))?;
                }
                Ok::<MemIndex, Error>(part)
            }));
        }
        for p in parts {
            let part = p
                .await
                .map_err(|e| Error::Internal(format!("load task: {e}")))??;
            // The first part becomes the index; later ones are appended.
            if mem.is_empty() {
                mem = part;
                continue;
            }
            mem = tokio::task::spawn_blocking(move || {
                mem.merge(part);
                mem
            })
            .await
            .map_err(|e| Error::Internal(format!("load task: {e}")))?;
        }
        let mem = tokio::task::spawn_blocking(move || {
            mem.refresh();
            mem
        })
        .await
        .map_err(|e| Error::Internal(format!("load task: {e}")))?;
        Ok(Arc::new(Collection::new(row, mem)))
    }

    /// The physical collection a name points at.
    pub fn resolve(&self, name: &str) -> Result<Arc<Collection>> {
        // A name of any length may arrive; none longer than the limit exists.
        cbir_api::names::check_lookup(name).map_err(Error::InvalidArgument)?;
        let cat = self.catalog.read();
        cat.aliases
            .get(name)
            .and_then(|id| cat.collections.get(id))
            .cloned()
            .ok_or_else(|| {
                Error::NotFound(format!(
                    "collection {} does not exist: create it first",
                    cbir_api::names::quoted(name)
                ))
            })
    }

    pub async fn create_collection(
        &self,
        name: &str,
        model_name: &str,
        model_version: &str,
        dims: u32,
        description: &str,
        if_not_exists: bool,
    ) -> Result<Arc<Collection>> {
        valid_name(name)?;
        if model_name.trim().is_empty() || model_version.trim().is_empty() {
            return Err(Error::InvalidArgument(
                "a collection needs its model's name and version".into(),
            ));
        }
        for (what, len) in [
            ("description", description.len()),
            ("model name", model_name.len()),
            ("model version", model_version.len()),
        ] {
            if len > MAX_TEXT_LEN {
                return Err(Error::InvalidArgument(format!(
                    "the collection's {what} is {len} bytes, the limit is {MAX_TEXT_LEN}"
                )));
            }
        }
        if dims == 0 || dims > self.limits.max_dims {
            return Err(Error::InvalidArgument(format!(
                "dims must be 1 to {}, got {dims}",
                self.limits.max_dims
            )));
        }
        let _creating = self.creating.lock().await;
        if let Ok(existing) = self.resolve(name) {
            let same = existing.row.model_name == model_name
                && existing.row.model_version == model_version
                && existing.row.dims == dims;
            return if if_not_exists && same {
                Ok(existing)
            } else {
                Err(Error::AlreadyExists(format!(
                    "collection {name:?} exists already (model {} {}, {} dims)",
                    existing.row.model_name, existing.row.model_version, existing.row.dims
                )))
            };
        }
        let row = self
            .store
            .create_collection(name, name, model_name, model_version, dims, description)
            .await?;
        let coll = Arc::new(Collection::new(row, MemIndex::new(dims as usize)));
        let mut cat = self.catalog.write();
        cat.collections.insert(coll.row.id, coll.clone());
        cat.aliases.insert(name.to_string(), coll.row.id);
        Ok(coll)
    }

    pub fn collections(&self) -> Vec<(String, Arc<Collection>)> {
        let cat = self.catalog.read();
        let mut out: Vec<(String, Arc<Collection>)> = cat
            .aliases
            .iter()
            .filter_map(|(a, id)| cat.collections.get(id).map(|c| (a.clone(), c.clone())))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    pub async fn delete_collection(&self, name: &str) -> Result<()> {
        let _catalog = self.creating.lock().await;
        let coll = self.resolve(name)?;
        let _w = coll.write.lock().await;
        self.store.delete_collection(coll.row.id).await?;
        coll.retire();
        let mut cat = self.catalog.write();
        cat.aliases.retain(|_, id| *id != coll.row.id);
        cat.collections.remove(&coll.row.id);
        Ok(())
    }

    pub fn validate(&self, coll: &Collection, r: &mut Record) -> Result<()> {
        let l = &self.limits;
        let hex =
            r.content_hash.len() == 64 && r.content_hash.chars().all(|c| c.is_ascii_hexdigit());
        if !hex {
            return Err(Error::InvalidArgument(format!(
                "content_hash of {:?} must be the 64 hex digits of the file's SHA-256",
                r.file_name
            )));
        }
        r.content_hash.make_ascii_lowercase();
        if r.feature.len() != coll.row.dims as usize {
            return Err(Error::InvalidArgument(format!(
                "feature of {:?} has {} dimensions, collection {} holds {}",
                r.file_name,
                r.feature.len(),
                coll.row.name,
                coll.row.dims
            )));
        }
        if !kernels::normalize(&mut r.feature) {
            return Err(Error::InvalidArgument(format!(
                "feature of {:?} is zero or not finite",
                r.file_name
            )));
        }
        // The same check as the gateway's, per file before its Upsert.
        cbir_common::records::check_text(
            &r.file_name,
            &r.path,
            &r.label,
            &cbir_common::records::TextLimits {
                max_file_name: l.max_name_len,
                max_path: l.max_path_len,
                max_label: l.max_label_len,
            },
        )
        .map_err(Error::InvalidArgument)?;
        for (what, len, max) in [
            ("thumbnail", r.thumbnail.len(), l.max_thumbnail_bytes),
            ("source image", r.source.len(), l.max_source_bytes),
        ] {
            if len > max {
                return Err(Error::InvalidArgument(format!(
                    "{what} of {:?} is {len} bytes, the limit is {max}",
                    r.file_name
                )));
            }
        }
        if r.predicted_class < 0 {
            return Err(Error::InvalidArgument(format!(
                "predicted_class of {:?} is negative",
                r.file_name
            )));
        }
        Ok(())
    }

    /// Validates all records (nothing is written if one is bad), commits them
    /// in one transaction, then applies them to memory. Returns once both
    /// are done: an acknowledged upsert is durable and searchable. An image
    /// the collection holds already keeps its stored entry unless `replace`.
    pub async fn upsert(
        &self,
        name: &str,
        records: Vec<Record>,
        replace: bool,
    ) -> Result<Vec<Upserted>> {
        let mut model: Option<(String, String)> = None;
        loop {
            let coll = self.resolve(name)?;
            let now = (coll.row.model_name.clone(), coll.row.model_version.clone());
            if let Some(before) = model.as_ref().filter(|m| **m != now) {
                return Err(Error::FailedPrecondition(format!(
                    "collection {name:?} was rebuilt for model {}:{} while these images of \
                     model {}:{} were being added: embed them with {}:{} and send them again",
                    now.0, now.1, before.0, before.1, now.0, now.1
                )));
            }
            model = Some(now);
            let mut records = records.clone();
            self.check_batch(&coll, &mut records)?;
            let _w = coll.write.lock().await;
            if coll.retired() {
                // A rebuild switched the name (or the collection went) while
                // we waited: write where the name points now.
                continue;
            }
            return self.upsert_locked(&coll, records, replace).await;
        }
    }

    /// `upsert` on a physical collection (rebuilds write to one that no
    /// name points at yet).
    pub async fn upsert_into(
        &self,
        coll: &Arc<Collection>,
        mut records: Vec<Record>,
    ) -> Result<Vec<Upserted>> {
        self.check_batch(coll, &mut records)?;
        let _w = coll.write.lock().await;
        if coll.retired() {
            return Err(Error::NotFound(format!(
                "collection {} was dropped while writing to it",
                coll.row.name
            )));
        }
        self.upsert_locked(coll, records, false).await
    }

    fn check_batch(&self, coll: &Collection, records: &mut [Record]) -> Result<()> {
        if records.is_empty() {
            return Err(Error::InvalidArgument("no records to upsert".into()));
        }
        if records.len() > self.limits.max_records_per_upsert {
            return Err(Error::InvalidArgument(format!(
                "{} records in one upsert, the limit is {}: send smaller batches",
                records.len(),
                self.limits.max_records_per_upsert
            )));
        }
        for r in records.iter_mut() {
            self.validate(coll, r)?;
        }
        Ok(())
    }

    async fn upsert_locked(
        &self,
        coll: &Arc<Collection>,
        records: Vec<Record>,
        replace: bool,
    ) -> Result<Vec<Upserted>> {
        let new: Vec<NewImage> = records
            .iter()
            .map(|r| NewImage {
                content_hash: r.content_hash.clone(),
                predicted_class: r.predicted_class,
                file_name: r.file_name.clone(),
                path: r.path.clone(),
                label: r.label.clone(),
                feature: r.feature.clone(),
                thumbnail: r.thumbnail.clone(),
                source: r.source.clone(),
            })
            .collect();
        let outcome = self.store.upsert(coll.row.id, &new, replace).await?;
        coll.seen_seq
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        // Entries that existed and were kept stay as memory has them.
        let entries: Vec<Entry> = records
            .into_iter()
            .zip(&outcome)
            .filter(|(_, o)| o.created || replace)
            .map(|(r, o)| Entry {
                id: o.id,
                class: r.predicted_class,
                feature: r.feature,
                meta: Arc::new(Meta {
                    content_hash: r.content_hash,
                    file_name: r.file_name,
                    path: r.path,
                    label: r.label,
                }),
            })
            .collect();
        let c = coll.clone();
        tokio::task::spawn_blocking(move || {
            // A short write lock per batch: append and refresh centroids.
            let split = {
                let mut mem = c.mem.write();
                mem.upsert(&entries);
                mem.refresh_centroids();
                mem.needs_split()
            };
            // Splitting a grown partition runs k-means: under the read lock,
            // so searches go on; only the redistribution takes the write
            // lock. The collection's writer mutex keeps other writes out.
            if split {
                let plans = c.mem.read().plan_splits();
                let mut mem = c.mem.write();
                mem.apply_splits(plans);
                mem.refresh_centroids();
            }
        })
        .await
        .map_err(|e| Error::Internal(format!("memory update task: {e}")))?;
        Ok(outcome)
    }

    pub async fn delete(&self, name: &str, ids: &[u64]) -> Result<u64> {
        let coll = self.resolve(name)?;
        if ids.is_empty() {
            return Ok(0);
        }
        let _w = coll.write.lock().await;
        if coll.retired() {
            // Ids belong to one physical collection: after a rebuild the
            // same images have other ids.
            self.resolve(name)?;
            return Err(Error::FailedPrecondition(format!(
                "collection {name:?} was rebuilt while deleting, and its image ids changed: look the images up again"
            )));
        }
        self.delete_locked(&coll, ids).await
    }

    async fn delete_locked(&self, coll: &Arc<Collection>, ids: &[u64]) -> Result<u64> {
        let gone = self.store.delete(coll.row.id, ids).await?;
        coll.seen_seq
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let mut mem = coll.mem.write();
        for (id, _) in &gone {
            mem.remove(*id);
        }
        mem.refresh_centroids();
        Ok(gone.len() as u64)
    }

    pub async fn clear(&self, name: &str) -> Result<u64> {
        loop {
            let coll = self.resolve(name)?;
            let _w = coll.write.lock().await;
            if coll.retired() {
                continue;
            }
            let n = self.store.clear(coll.row.id).await?;
            coll.seen_seq
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            coll.mem.write().clear();
            return Ok(n);
        }
    }

    pub async fn search(&self, req: SearchRequest) -> Result<SearchResult> {
        let coll = self.resolve(&req.collection)?;
        if let Some((name, version)) = &req.model {
            if *name != coll.row.model_name || *version != coll.row.model_version {
                return Err(Error::FailedPrecondition(format!(
                    "collection {:?} holds features of model {}:{}, not of {name}:{version}: it \
                     was rebuilt for another model; embed the query with {}:{}",
                    req.collection,
                    coll.row.model_name,
                    coll.row.model_version,
                    coll.row.model_name,
                    coll.row.model_version
                )));
            }
        }
        if req.top_k == 0 || req.top_k > self.limits.max_top_k {
            return Err(Error::InvalidArgument(format!(
                "top_k must be 1 to {}, got {}",
                self.limits.max_top_k, req.top_k
            )));
        }
        if !(0.0..=1.0).contains(&req.min_similarity) {
            return Err(Error::InvalidArgument(format!(
                "min_similarity must be between 0 and 1, got {}",
                req.min_similarity
            )));
        }
        let mut vector = req.vector;
        if vector.len() != coll.row.dims as usize {
            return Err(Error::InvalidArgument(format!(
                "query vector has {} dimensions, collection {} holds {}",
                vector.len(),
                req.collection,
                coll.row.dims
            )));
        }
        if !kernels::normalize(&mut vector) {
            return Err(Error::InvalidArgument(
                "query vector is zero or not finite".into(),
            ));
        }
        let mode = req.mode.unwrap_or(self.default_mode);
        if mode == Mode::Partition && req.predicted_class.is_none() {
            return Err(Error::InvalidArgument(
                "partition mode needs the query's predicted class".into(),
            ));
        }
        let rule = self.probe;
        let (top_k, min_similarity, predicted_class, exclude_id) = (
            req.top_k,
            req.min_similarity,
            req.predicted_class,
            req.exclude_id,
        );
        // Scans take milliseconds on large collections: off the runtime.
        let span = tracing::info_span!(
            "partition_scan",
            mode = ?mode,
            top_k,
            partitions_searched = tracing::field::Empty,
            vectors_scanned = tracing::field::Empty,
        );
        tokio::task::spawn_blocking(move || {
            let _span = span.enter();
            let started = Instant::now();
            let mem = coll.mem.read();
            let (hits, stats) = mem.search(
                &Query {
                    vector: &vector,
                    predicted_class,
                    top_k,
                    mode,
                    min_similarity,
                    exclude_id,
                },
                rule,
            );
            span.record("partitions_searched", stats.partitions_searched);
            span.record("vectors_scanned", stats.vectors_scanned);
            SearchResult {
                hits,
                stats,
                mode,
                took_us: started.elapsed().as_micros() as u64,
            }
        })
        .await
        .map_err(|e| Error::Internal(format!("search task: {e}")))
    }

    pub async fn get_image(&self, name: &str, id: u64, with_blobs: bool) -> Result<StoredImage> {
        let coll = self.resolve(name)?;
        self.store
            .get_image(coll.row.id, id, with_blobs)
            .await?
            .ok_or_else(|| {
                Error::NotFound(format!(
                    "image {id} is not in collection {}",
                    cbir_api::names::quoted(name)
                ))
            })
    }

    /// A collection no name points at yet (the target of a rebuild).
    pub async fn create_physical(
        &self,
        physical: &str,
        model_name: &str,
        model_version: &str,
        dims: u32,
        description: &str,
    ) -> Result<Arc<Collection>> {
        let _catalog = self.creating.lock().await;
        let row = self
            .store
            .create_collection("", physical, model_name, model_version, dims, description)
            .await?;
        let coll = Arc::new(Collection::new(row, MemIndex::new(dims as usize)));
        self.catalog
            .write()
            .collections
            .insert(coll.row.id, coll.clone());
        Ok(coll)
    }

    /// Drops a physical collection (and any name pointing at it).
    pub async fn drop_physical(&self, coll: &Arc<Collection>) -> Result<()> {
        let _catalog = self.creating.lock().await;
        let _w = coll.write.lock().await;
        self.store.delete_collection(coll.row.id).await?;
        coll.retire();
        let mut cat = self.catalog.write();
        cat.aliases.retain(|_, id| *id != coll.row.id);
        cat.collections.remove(&coll.row.id);
        Ok(())
    }

    /// Finishes a rebuild: with writes to `old` held, copies what changed
    /// since `copied` (old id -> new id) was taken, then points `alias` at
    /// `new` in one database transaction and in memory. Searches see either
    /// the old collection or the complete new one.
    pub async fn finish_rebuild<F, Fut>(
        &self,
        alias: &str,
        old: &Arc<Collection>,
        new: &Arc<Collection>,
        copied: &mut HashMap<u64, u64>,
        copy_missing: F,
    ) -> Result<()>
    where
        F: FnOnce(Vec<u64>) -> Fut,
        Fut: std::future::Future<Output = Result<Vec<(u64, Record)>>>,
    {
        let _catalog = self.creating.lock().await;
        let _w = old.write.lock().await;
        let live: Vec<u64> = {
            let mem = old.mem.read();
            let mut ids: Vec<u64> = copied
                .keys()
                .copied()
                .filter(|id| mem.contains(*id))
                .collect();
            ids.sort_unstable();
            ids
        };
        // Deleted from the old collection while the rebuild ran.
        let gone: Vec<u64> = copied
            .iter()
            .filter(|(old_id, _)| live.binary_search(old_id).is_err())
            .map(|(_, new_id)| *new_id)
            .collect();
        // Added to the old collection while the rebuild ran.
        let missing: Vec<u64> = {
            let mut all = Vec::new();
            let mut after = 0;
            loop {
                let page = self.store.load_page(old.row.id, after, LOAD_PAGE).await?;
                let Some(last) = page.last() else { break };
                after = last.id;
                all.extend(
                    page.iter()
                        .map(|i| i.id)
                        .filter(|id| !copied.contains_key(id)),
                );
                if (page.len() as u64) < LOAD_PAGE {
                    break;
                }
            }
            all
        };
        if !missing.is_empty() {
            let records = copy_missing(missing).await?;
            for chunk in records.chunks(self.limits.max_records_per_upsert) {
                let (ids, recs): (Vec<u64>, Vec<Record>) = chunk.iter().cloned().unzip();
                let mut recs = recs;
                for r in &mut recs {
                    self.validate(new, r)?;
                }
                let _nw = new.write.lock().await;
                let out = self.upsert_locked(new, recs, false).await?;
                for (old_id, o) in ids.into_iter().zip(out) {
                    copied.insert(old_id, o.id);
                }
            }
        }
        if !gone.is_empty() {
            let _nw = new.write.lock().await;
            self.delete_locked(new, &gone).await?;
        }
        self.store.switch_alias(alias, new.row.id).await?;
        old.retire();
        self.catalog
            .write()
            .aliases
            .insert(alias.to_string(), new.row.id);
        Ok(())
    }

    pub fn stats(&self, name: &str) -> Result<CollectionStats> {
        let coll = self.resolve(name)?;
        let mem = coll.mem.read();
        let mut partitions: Vec<PartitionStat> = mem
            .partitions()
            .into_iter()
            .map(|p| PartitionStat {
                class: p.class,
                count: p.len as u64,
                bytes: p.bytes as u64,
            })
            .collect();
        partitions.sort_by_key(|p| p.class);
        Ok(CollectionStats {
            alias: name.to_string(),
            count: mem.len() as u64,
            bytes: mem.bytes() as u64,
            partitions,
            row: coll.row.clone(),
        })
    }
}
