//! The index service as shards: shard i owns the class partitions that
//! `cbir_common::shard::shard_of(class, n)` gives it, and has its own pool
//! of replicas. One shard (the default) is the unsharded index.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::{Pool, PoolConfig};
use crate::error::{Error, Result};

pub struct IndexShards {
    pools: Vec<Arc<Pool>>,
    next: AtomicUsize,
}

impl IndexShards {
    /// One pool per shard, from each shard's URL list.
    pub async fn new(
        shards: &[Vec<String>],
        config: impl Fn(&[String]) -> PoolConfig,
    ) -> Result<Self> {
        if shards.is_empty() {
            return Err(Error::Config("no index shard configured".into()));
        }
        if shards.len() > cbir_common::shard::MAX_SHARDS as usize {
            return Err(Error::Config(format!(
                "{} index shards configured, at most {} are supported",
                shards.len(),
                cbir_common::shard::MAX_SHARDS
            )));
        }
        let mut pools = Vec::with_capacity(shards.len());
        for (i, urls) in shards.iter().enumerate() {
            if urls.is_empty() {
                return Err(Error::Config(format!(
                    "index shard {i} has no URL: give each shard in index_shards at least one"
                )));
            }
            pools.push(Pool::new(config(urls)).await?);
        }
        Ok(Self {
            pools,
            next: AtomicUsize::new(0),
        })
    }

    pub fn count(&self) -> usize {
        self.pools.len()
    }

    pub fn is_sharded(&self) -> bool {
        self.pools.len() > 1
    }

    pub fn pool(&self, shard: usize) -> &Arc<Pool> {
        &self.pools[shard]
    }

    /// The shard that owns partition `class`.
    pub fn owner(&self, class: i32) -> usize {
        cbir_common::shard::shard_of(class, self.pools.len() as u32) as usize
    }

    /// Every shard, starting at a rotating one: the order to try a call
    /// that any shard answers alike (it reads the shared database).
    pub fn rotation(&self) -> impl Iterator<Item = usize> {
        let n = self.pools.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        (0..n).map(move |i| (start + i) % n)
    }

    /// An operation id as clients see it: the shard that runs it in front,
    /// so that watching it reaches that shard.
    pub fn operation_id(&self, shard: usize, id: String) -> String {
        if !self.is_sharded() || id.is_empty() {
            return id;
        }
        format!("{shard}.{id}")
    }

    /// The shard and the index's own id of an operation id from
    /// `operation_id`.
    pub fn parse_operation_id<'a>(&self, id: &'a str) -> Result<(usize, &'a str)> {
        if !self.is_sharded() {
            return Ok((0, id));
        }
        let bad = || {
            Error::NotFound(format!(
                "no operation {id:?}: operation ids of a sharded index start with the shard number (\"2.abc\")"
            ))
        };
        let (shard, inner) = id.split_once('.').ok_or_else(bad)?;
        let shard: usize = shard.parse().map_err(|_| bad())?;
        if shard >= self.pools.len() {
            return Err(bad());
        }
        Ok((shard, inner))
    }
}
