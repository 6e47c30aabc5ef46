//! A shard's calls to its peer shards for refined ranking's upkeep. An
//! augmented vector sums an image's nearest raw neighbours in the whole
//! collection, and on a sharded index some of them live on other shards:
//! the shard computing it asks one replica of every other shard for its
//! nearest (`Neighbours`), reads the vectors of those it sums from the
//! shared database, and tells every replica of a shard whose images a new
//! or deleted image changes (`MarkStale`), since each replica keeps its own
//! augmented vectors.

use std::time::Duration;

use cbir_api::v1 as pb;
use cbir_api::v1::index_service_client::IndexServiceClient;
use tonic::transport::Channel;

use crate::error::{Error, Result};
use cbir_common::shard::Shard;

/// One call to a peer, connecting included.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Vectors per `Neighbours` call: 1280-d f32 queries make about 5 KB each.
pub const MAX_QUERIES: usize = 1024;
/// Neighbours per query a peer answers at most.
pub const MAX_K: usize = 1000;

/// A raw neighbour another shard holds: (id, dot, that shard).
pub type Remote = (u64, f32, u32);

pub struct Peers {
    /// Shard i's replicas (URL, channel) at position i; this shard's own
    /// position is empty (its replicas follow the database).
    shards: Vec<Vec<(String, Channel)>>,
}

impl Peers {
    /// The peers of shard `own` from `lists` (every shard's replica URLs,
    /// shard i at position i, as the gateway's `index_shards`); None when
    /// `lists` is empty (an unsharded index, or shards whose augmented
    /// vectors stay within their own partitions).
    pub fn new(own: Shard, lists: &[Vec<String>]) -> Result<Option<Self>> {
        if lists.is_empty() {
            return Ok(None);
        }
        if lists.len() != own.count as usize {
            return Err(Error::Config(format!(
                "peers lists {} shards but this is shard {} of {}: list every shard's replica URLs, shard i at position i (the gateway's index_shards)",
                lists.len(),
                own.id,
                own.count
            )));
        }
        let mut shards = Vec::with_capacity(lists.len());
        for (i, list) in lists.iter().enumerate() {
            if i == own.id as usize {
                shards.push(Vec::new());
                continue;
            }
            if list.is_empty() {
                return Err(Error::Config(format!(
                    "peers: shard {i} has no URL; list its replicas"
                )));
            }
            let mut replicas = Vec::with_capacity(list.len());
            for url in list {
                let channel = cbir_common::tls::endpoint(url)
                    .map_err(|e| Error::Config(format!("peers: {e}")))?
                    .connect_timeout(CONNECT_TIMEOUT)
                    .timeout(CALL_TIMEOUT)
                    .connect_lazy();
                replicas.push((url.clone(), channel));
            }
            shards.push(replicas);
        }
        Ok(Some(Self { shards }))
    }

    fn others(&self) -> impl Iterator<Item = (u32, &[(String, Channel)])> {
        self.shards
            .iter()
            .enumerate()
            .filter(|(_, r)| !r.is_empty())
            .map(|(i, r)| (i as u32, r.as_slice()))
    }

    /// The `k` nearest raw neighbours of each of `vectors` on every other
    /// shard, from the first replica of each that answers: per vector, all
    /// shards' lists together (unordered).
    pub async fn neighbours(
        &self,
        collection_id: i64,
        k: usize,
        vectors: &[&[f32]],
    ) -> Result<Vec<Vec<Remote>>> {
        let mut out: Vec<Vec<Remote>> = vec![Vec::new(); vectors.len()];
        for chunk_start in (0..vectors.len()).step_by(MAX_QUERIES) {
            let chunk = &vectors[chunk_start..(chunk_start + MAX_QUERIES).min(vectors.len())];
            let req = pb::NeighboursRequest {
                collection_id,
                k: k.min(MAX_K) as u32,
                queries: chunk
                    .iter()
                    .map(|v| pb::NeighbourQuery { vector: v.to_vec() })
                    .collect(),
            };
            let calls = self.others().map(|(shard, replicas)| {
                let req = req.clone();
                async move {
                    let mut failed = Vec::new();
                    for (url, channel) in replicas {
                        match client(channel).neighbours(outgoing(req.clone())).await {
                            Ok(r) => return Ok((shard, r.into_inner())),
                            Err(s) => failed.push(format!("{url}: {}", s.message())),
                        }
                    }
                    Err(Error::Unavailable(format!(
                        "no replica of index shard {shard} answered for the neighbours of {} images ({}); their augmented vectors wait for a retry (check the peers setting and that shard)",
                        req.queries.len(),
                        failed.join("; ")
                    )))
                }
            });
            for (shard, answer) in futures::future::try_join_all(calls).await? {
                if answer.lists.len() != chunk.len() {
                    return Err(Error::Internal(format!(
                        "index shard {shard} answered {} neighbour lists for {} vectors",
                        answer.lists.len(),
                        chunk.len()
                    )));
                }
                for (slot, list) in out[chunk_start..].iter_mut().zip(answer.lists) {
                    slot.extend(list.neighbours.into_iter().map(|n| (n.id, n.dot, shard)));
                }
            }
        }
        Ok(out)
    }

    /// Tells every replica of the shards holding some of `changes`'
    /// neighbours (image id, its raw neighbours elsewhere) to mark the
    /// augmented vectors it changes stale. A replica that cannot be reached
    /// keeps its older vectors until its next full refresh (a restart
    /// computes every one), which is logged.
    pub async fn mark_stale(&self, collection_id: i64, changes: &[(u64, Vec<Remote>)]) {
        for part in changes.chunks(MAX_QUERIES) {
            self.mark_stale_part(collection_id, part).await;
        }
    }

    async fn mark_stale_part(&self, collection_id: i64, changes: &[(u64, Vec<Remote>)]) {
        let mut calls = Vec::new();
        for (shard, replicas) in self.others() {
            let changes: Vec<pb::StaleChange> = changes
                .iter()
                .filter_map(|(id, near)| {
                    let neighbours: Vec<pb::Neighbour> = near
                        .iter()
                        .filter(|n| n.2 == shard)
                        .map(|n| pb::Neighbour { id: n.0, dot: n.1 })
                        .collect();
                    (!neighbours.is_empty()).then_some(pb::StaleChange {
                        id: *id,
                        neighbours,
                    })
                })
                .collect();
            if changes.is_empty() {
                continue;
            }
            let req = pb::MarkStaleRequest {
                collection_id,
                changes,
            };
            for (url, channel) in replicas {
                let req = req.clone();
                calls.push(async move {
                    if let Err(s) = client(channel).mark_stale(outgoing(req)).await {
                        tracing::warn!(
                            shard,
                            replica = %url,
                            error = %s.message(),
                            "could not mark augmented vectors stale on a peer replica: its refined scores of images near this shard's new or deleted ones stay older until it restarts or refreshes"
                        );
                    }
                });
            }
        }
        futures::future::join_all(calls).await;
    }
}

fn client(channel: &Channel) -> IndexServiceClient<Channel> {
    IndexServiceClient::new(channel.clone())
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20)
}

fn outgoing<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    cbir_common::telemetry::inject_context(r.metadata_mut());
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lists(n: usize) -> Vec<Vec<String>> {
        (0..n)
            .map(|i| vec![format!("http://index-{i}:50052")])
            .collect()
    }

    #[tokio::test]
    async fn peers_list_every_shard_in_order() {
        let own = Shard { id: 1, count: 3 };
        assert!(Peers::new(own, &[]).expect("none").is_none());
        let p = Peers::new(own, &lists(3)).expect("valid").expect("peers");
        let others: Vec<u32> = p.others().map(|(i, _)| i).collect();
        assert_eq!(others, [0, 2], "a shard does not call itself");

        let e = Peers::new(own, &lists(2))
            .err()
            .expect("too few")
            .to_string();
        assert!(
            e.contains("lists 2 shards") && e.contains("shard 1 of 3"),
            "{e}"
        );
        let mut missing = lists(3);
        missing[2].clear();
        let e = Peers::new(own, &missing).err().expect("empty").to_string();
        assert!(e.contains("shard 2 has no URL"), "{e}");
        // Its own position may stay empty.
        let mut own_empty = lists(3);
        own_empty[1].clear();
        assert!(Peers::new(own, &own_empty).expect("valid").is_some());
        let mut bad = lists(3);
        bad[0] = vec!["not a url".into()];
        assert!(Peers::new(own, &bad).is_err());
    }

    /// A peer that does not answer fails the call with what to check, so
    /// that the augmented vectors wait for a retry instead of summing a
    /// part of the neighbours.
    #[tokio::test]
    async fn an_unreachable_peer_fails_the_call() {
        // A port nothing listens on: bound, then closed.
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", l.local_addr().expect("addr"));
        drop(l);
        let p = Peers::new(
            Shard { id: 0, count: 2 },
            &[vec!["http://unused:1".into()], vec![url.clone()]],
        )
        .expect("valid")
        .expect("peers");
        let v = [0.6f32, 0.8];
        let e = p
            .neighbours(1, 10, &[&v])
            .await
            .expect_err("no shard 1")
            .to_string();
        assert!(e.contains("index shard 1") && e.contains(&url), "{e}");
        // Marks to it are logged, not fatal.
        p.mark_stale(1, &[(5, vec![(7, 0.9, 1)])]).await;
    }
}
