//! A dynamic batcher in the spirit of Triton's.
//!
//! Requests wait in two bounded queues (interactive ahead of bulk). A worker
//! thread forms a batch as soon as `max_batch_size` items wait, or a
//! preferred batch size can be formed, or the oldest item has waited
//! `max_queue_delay_us`; it then runs the forward pass on its own OS thread,
//! never on the async runtime. Each worker owns its model instance (libtorch
//! tensors are not `Sync`); a model swap hands every worker a new instance
//! that it picks up at its next batch boundary, so nothing in flight fails.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::error::{Error, Result};
use crate::priority::Priority;

/// Everything about a model that answers need besides raw numbers.
#[derive(Debug, Clone)]
pub struct ModelMeta {
    pub name: String,
    pub version: String,
    pub architecture: String,
    pub class_names: Arc<Vec<String>>,
    pub embedding_dim: usize,
    pub device: String,
    pub dtype: String,
    /// The engine running it: `tch` or `onnxruntime`.
    pub backend: String,
    pub source: String,
    /// Hex SHA-256 of the weights bytes the network was built from.
    pub weights_sha256: String,
    pub loaded_at_ms: i64,
}

/// The network's answer for one image.
#[derive(Debug, Clone)]
pub struct RawOutput {
    /// L2-normalised pooled feature.
    pub feature: Vec<f32>,
    /// Softmax over the classes.
    pub probabilities: Vec<f32>,
}

impl RawOutput {
    /// One output per image from a pass's row-major features and
    /// probabilities of `n` images.
    pub fn split(features: &[f32], probabilities: &[f32], n: usize) -> Vec<RawOutput> {
        let d = features.len() / n.max(1);
        let c = probabilities.len() / n.max(1);
        (0..n)
            .map(|i| RawOutput {
                feature: features[i * d..(i + 1) * d].to_vec(),
                probabilities: probabilities[i * c..(i + 1) * c].to_vec(),
            })
            .collect()
    }
}

/// Checks that each input is one 224x224 RGB crop.
pub(crate) fn check_inputs(inputs: &[&[u8]]) -> std::result::Result<(), String> {
    let side = cbir_imaging::INPUT_SIZE as usize;
    let per = side * side * 3;
    match inputs.iter().position(|i| i.len() != per) {
        Some(i) => Err(format!(
            "input {i} has {} bytes, expected {per}",
            inputs[i].len()
        )),
        None => Ok(()),
    }
}

/// A model instance owned by one worker thread.
pub trait Backend: Send + 'static {
    /// Runs one forward pass over `inputs` (each 224x224x3 RGB bytes).
    fn infer(&mut self, inputs: &[&[u8]]) -> std::result::Result<Vec<RawOutput>, String>;
    fn meta(&self) -> Arc<ModelMeta>;
    /// The largest batch that still raises throughput on this engine and
    /// device; the batcher forms no larger ones. None: only the
    /// configuration's `max_batch_size` bounds them.
    fn useful_batch(&self) -> Option<usize> {
        None
    }
    /// Runs the batch sizes a batcher of `max_batch` forms once, where an
    /// engine prepares each new shape slowly (cuDNN on CUDA). Called by the
    /// worker thread that then serves the instance, before its first batch.
    /// Nothing to do by default.
    fn warm_up(&mut self, _max_batch: usize) -> std::result::Result<(), String> {
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BatcherConfig {
    pub max_batch_size: usize,
    /// How long the oldest request may wait for a fuller batch.
    pub max_queue_delay_us: u64,
    /// Batch sizes the batcher forms at once when enough requests wait,
    /// without waiting for the delay (e.g. sizes the device runs best).
    #[serde(deserialize_with = "cbir_common::config::list")]
    pub preferred_batch_sizes: Vec<usize>,
    /// Queue bounds; a request that does not fit gets RESOURCE_EXHAUSTED.
    pub max_queue_interactive: usize,
    pub max_queue_bulk: usize,
    /// Worker threads, each with its own model instance.
    pub workers: usize,
}

impl Default for BatcherConfig {
    fn default() -> Self {
        Self {
            max_batch_size: 32,
            max_queue_delay_us: 2_000,
            preferred_batch_sizes: Vec::new(),
            max_queue_interactive: 1024,
            max_queue_bulk: 4096,
            workers: 1,
        }
    }
}

pub type Reply = std::result::Result<(RawOutput, Arc<ModelMeta>), Error>;

struct Item {
    input: Vec<u8>,
    enqueued: Instant,
    /// The submitting request's span: the forward pass joins its trace.
    span: tracing::Span,
    reply: oneshot::Sender<Reply>,
}

struct Queues {
    interactive: VecDeque<Item>,
    bulk: VecDeque<Item>,
    closed: bool,
}

impl Queues {
    fn len(&self) -> usize {
        self.interactive.len() + self.bulk.len()
    }

    fn oldest(&self) -> Option<Instant> {
        let a = self.interactive.front().map(|i| i.enqueued);
        let b = self.bulk.front().map(|i| i.enqueued);
        match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Interactive items first, then bulk, up to `n`.
    fn take(&mut self, n: usize) -> Vec<Item> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            match self
                .interactive
                .pop_front()
                .or_else(|| self.bulk.pop_front())
            {
                Some(i) => out.push(i),
                None => break,
            }
        }
        out
    }

    /// Drops the items whose caller has gone (cancelled, or its deadline
    /// passed and tonic dropped the request); returns how many. A forward
    /// pass for them would only delay the callers still waiting.
    fn drop_abandoned(&mut self) -> usize {
        let before = self.len();
        self.interactive.retain(|i| !i.reply.is_closed());
        self.bulk.retain(|i| !i.reply.is_closed());
        before - self.len()
    }
}

#[derive(Default)]
struct Counters {
    batches: AtomicU64,
    images: AtomicU64,
    abandoned: AtomicU64,
}

struct Slot {
    generation: u64,
    pending: Option<Box<dyn Backend>>,
}

struct Shared {
    cfg: BatcherConfig,
    queues: Mutex<Queues>,
    wake: Condvar,
    slots: Vec<Mutex<Slot>>,
    meta: Mutex<Arc<ModelMeta>>,
    counters: Counters,
}

/// Snapshot of the batcher for ModelInfo and metrics.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub queued_interactive: usize,
    pub queued_bulk: usize,
    pub batches: u64,
    pub images: u64,
    /// Images skipped because their caller had gone before the forward pass.
    pub abandoned: u64,
}

pub struct Batcher {
    shared: Arc<Shared>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

impl Batcher {
    /// Starts one worker thread per backend (`backends.len()` overrides
    /// `cfg.workers`).
    pub fn start(mut cfg: BatcherConfig, backends: Vec<Box<dyn Backend>>) -> Result<Self> {
        if backends.is_empty() {
            return Err(Error::Config(
                "the batcher needs at least one model instance".into(),
            ));
        }
        if cfg.max_batch_size == 0 {
            return Err(Error::Config(
                "batcher.max_batch_size must be at least 1".into(),
            ));
        }
        cfg.workers = backends.len();
        if let Some(limit) = backends[0].useful_batch() {
            if limit < cfg.max_batch_size {
                tracing::info!(
                    configured = cfg.max_batch_size,
                    limit,
                    backend = %backends[0].meta().backend,
                    "batches capped where this engine stops gaining throughput"
                );
                cfg.max_batch_size = limit.max(1);
            }
        }
        cfg.preferred_batch_sizes
            .retain(|&s| s > 0 && s <= cfg.max_batch_size);
        cfg.preferred_batch_sizes.sort_unstable();
        cfg.preferred_batch_sizes.dedup();
        let meta = backends[0].meta();
        let shared = Arc::new(Shared {
            queues: Mutex::new(Queues {
                interactive: VecDeque::new(),
                bulk: VecDeque::new(),
                closed: false,
            }),
            wake: Condvar::new(),
            slots: (0..backends.len())
                .map(|_| {
                    Mutex::new(Slot {
                        generation: 0,
                        pending: None,
                    })
                })
                .collect(),
            meta: Mutex::new(meta),
            counters: Counters::default(),
            cfg,
        });
        let mut threads = Vec::new();
        for (i, backend) in backends.into_iter().enumerate() {
            let shared = shared.clone();
            let t = std::thread::Builder::new()
                .name(format!("inference-worker-{i}"))
                .spawn(move || worker(shared, i, backend))
                .map_err(|e| Error::Config(format!("cannot start a worker thread: {e}")))?;
            threads.push(t);
        }
        Ok(Self {
            shared,
            threads: Mutex::new(threads),
        })
    }

    pub fn config(&self) -> &BatcherConfig {
        &self.shared.cfg
    }

    pub fn workers(&self) -> usize {
        self.shared.slots.len()
    }

    /// The model new batches run on.
    pub fn meta(&self) -> Arc<ModelMeta> {
        self.shared.meta.lock().clone()
    }

    pub fn stats(&self) -> Stats {
        let q = self.shared.queues.lock();
        Stats {
            queued_interactive: q.interactive.len(),
            queued_bulk: q.bulk.len(),
            batches: self.shared.counters.batches.load(Ordering::Relaxed),
            images: self.shared.counters.images.load(Ordering::Relaxed),
            abandoned: self.shared.counters.abandoned.load(Ordering::Relaxed),
        }
    }

    /// Queues all `inputs` or none of them (RESOURCE_EXHAUSTED when they do
    /// not fit), and returns one receiver per input.
    pub fn submit(
        &self,
        inputs: Vec<Vec<u8>>,
        priority: Priority,
    ) -> Result<Vec<oneshot::Receiver<Reply>>> {
        let now = Instant::now();
        let mut q = self.shared.queues.lock();
        if q.closed {
            return Err(Error::ShuttingDown);
        }
        let room = |q: &Queues| match priority {
            Priority::Interactive => (q.interactive.len(), self.shared.cfg.max_queue_interactive),
            Priority::Bulk => (q.bulk.len(), self.shared.cfg.max_queue_bulk),
        };
        let (mut len, cap) = room(&q);
        if len + inputs.len() > cap {
            // Abandoned items must not keep live callers out.
            let gone = q.drop_abandoned();
            self.shared
                .counters
                .abandoned
                .fetch_add(gone as u64, Ordering::Relaxed);
            len = room(&q).0;
        }
        if len + inputs.len() > cap {
            return Err(Error::QueueFull {
                priority,
                queued: len,
                capacity: cap,
            });
        }
        let mut rxs = Vec::with_capacity(inputs.len());
        for input in inputs {
            let (tx, rx) = oneshot::channel();
            let item = Item {
                input,
                enqueued: now,
                span: tracing::Span::current(),
                reply: tx,
            };
            match priority {
                Priority::Interactive => q.interactive.push_back(item),
                Priority::Bulk => q.bulk.push_back(item),
            }
            rxs.push(rx);
        }
        drop(q);
        self.shared.wake.notify_all();
        Ok(rxs)
    }

    /// Hands each worker its new model instance; each switches at its next
    /// batch. `instances.len()` must equal the number of workers.
    pub fn swap(&self, instances: Vec<Box<dyn Backend>>) -> Result<()> {
        if instances.len() != self.shared.slots.len() {
            return Err(Error::Config(format!(
                "model swap needs {} instances, got {}",
                self.shared.slots.len(),
                instances.len()
            )));
        }
        let meta = instances[0].meta();
        for (slot, inst) in self.shared.slots.iter().zip(instances) {
            let mut s = slot.lock();
            s.generation += 1;
            s.pending = Some(inst);
        }
        *self.shared.meta.lock() = meta;
        self.shared.wake.notify_all();
        Ok(())
    }

    /// Stops accepting work, lets the workers finish what is queued, and
    /// joins them.
    pub fn shutdown(&self) {
        self.shared.queues.lock().closed = true;
        self.shared.wake.notify_all();
        let threads = std::mem::take(&mut *self.threads.lock());
        for t in threads {
            let _ = t.join();
        }
    }
}

impl Drop for Batcher {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Waits for and forms the next batch of items whose callers still wait;
/// `None` once closed and drained.
fn next_batch(shared: &Shared) -> Option<Vec<Item>> {
    let cfg = &shared.cfg;
    let delay = Duration::from_micros(cfg.max_queue_delay_us);
    let mut q = shared.queues.lock();
    loop {
        let gone = q.drop_abandoned();
        if gone > 0 {
            shared
                .counters
                .abandoned
                .fetch_add(gone as u64, Ordering::Relaxed);
            tracing::debug!(
                images = gone,
                "skipped queued images whose callers have gone"
            );
        }
        let n = q.len();
        if n == 0 {
            if q.closed {
                return None;
            }
            shared.wake.wait(&mut q);
            continue;
        }
        if n >= cfg.max_batch_size || q.closed {
            return Some(q.take(cfg.max_batch_size));
        }
        if let Some(&p) = cfg.preferred_batch_sizes.iter().rev().find(|&&p| p <= n) {
            return Some(q.take(p));
        }
        let deadline = q.oldest().map_or_else(Instant::now, |t| t + delay);
        let now = Instant::now();
        if now >= deadline {
            return Some(q.take(n));
        }
        shared.wake.wait_for(&mut q, deadline - now);
    }
}

/// Warms `backend` up on the calling (serving) thread; a failure is logged
/// and the instance serves anyway (its batches then fail or succeed alone).
fn warm_up(shared: &Shared, backend: &mut dyn Backend) {
    let started = Instant::now();
    match backend.warm_up(shared.cfg.max_batch_size) {
        Ok(()) => tracing::debug!(
            took_ms = started.elapsed().as_millis() as u64,
            "model instance warmed up"
        ),
        Err(e) => tracing::warn!(
            error = %e,
            "warming the model instance up failed; its first batches of each size will be slow"
        ),
    }
}

fn worker(shared: Arc<Shared>, index: usize, mut backend: Box<dyn Backend>) {
    let mut generation = 0;
    warm_up(&shared, backend.as_mut());
    while let Some(batch) = next_batch(&shared) {
        let next = {
            let mut slot = shared.slots[index].lock();
            let mut next = None;
            if slot.generation != generation {
                next = slot.pending.take();
                generation = slot.generation;
            }
            next
        };
        if let Some(mut next) = next {
            // Outside the slot's lock: on CUDA this takes seconds.
            warm_up(&shared, next.as_mut());
            backend = next;
        }
        let meta = backend.meta();
        let inputs: Vec<&[u8]> = batch.iter().map(|i| i.input.as_slice()).collect();
        let started = Instant::now();
        let oldest_wait = batch
            .iter()
            .map(|i| started.duration_since(i.enqueued))
            .max()
            .unwrap_or_default();
        // One span per forward pass, in the trace of the batch's first
        // request and linked from the others.
        let forward = tracing::info_span!(parent: batch.first().and_then(|i| i.span.id()), "forward_pass", batch_size = batch.len());
        for item in batch.iter().skip(1) {
            forward.follows_from(item.span.id());
        }
        let _forward = forward.enter();
        // A libtorch error surfaces as a panic in tch's infallible API; it
        // must fail this batch, not kill the worker.
        let result =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| backend.infer(&inputs)))
                .unwrap_or_else(|p| {
                    Err(p
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_string()))
                        .unwrap_or_else(|| "forward pass panicked".into()))
                });
        shared.counters.batches.fetch_add(1, Ordering::Relaxed);
        shared
            .counters
            .images
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        tracing::debug!(
            size = batch.len(),
            wait_us = oldest_wait.as_micros() as u64,
            forward_us = started.elapsed().as_micros() as u64,
            "batch"
        );
        match result {
            Ok(outputs) if outputs.len() == batch.len() => {
                for (item, out) in batch.into_iter().zip(outputs) {
                    let _ = item.reply.send(Ok((out, meta.clone())));
                }
            }
            Ok(outputs) => {
                let msg = format!(
                    "model returned {} outputs for a batch of {}",
                    outputs.len(),
                    batch.len()
                );
                tracing::error!("{msg}");
                for item in batch {
                    let _ = item.reply.send(Err(Error::Inference(msg.clone())));
                }
            }
            Err(msg) => {
                tracing::error!(error = %msg, "forward pass failed");
                for item in batch {
                    let _ = item.reply.send(Err(Error::Inference(msg.clone())));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
