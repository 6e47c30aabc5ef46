//! Clients of the internal services (inference, index, training): one
//! [`Pool`] per service and one way to call each of them, with its
//! deadline, retries and message limits.

mod pool;
mod shards;

use std::future::Future;
use std::time::Duration;

use cbir_api::v1 as pb;
use cbir_api::v1::index_service_client::IndexServiceClient;
use cbir_api::v1::inference_service_client::InferenceServiceClient;
use cbir_api::v1::training_service_client::TrainingServiceClient;
use tonic::transport::Channel;
use tonic::Status;

pub use pool::{request, Pool, PoolConfig};
pub use shards::IndexShards;

use crate::error::{Error, Result};
use crate::gateway::Gateway;

pub(crate) type InferenceClient = InferenceServiceClient<Channel>;
pub(crate) type IndexClient = IndexServiceClient<Channel>;
pub(crate) type TrainingClient = TrainingServiceClient<Channel>;

/// A generated client on one channel, bounded by the services' message limit.
pub(crate) trait Client {
    fn on(ch: Channel, max: usize) -> Self;
}

macro_rules! bounded_client {
    ($($client:ty),*) => {$(
        impl Client for $client {
            fn on(ch: Channel, max: usize) -> Self {
                <$client>::new(ch)
                    .max_decoding_message_size(max)
                    .max_encoding_message_size(max)
            }
        }
    )*};
}

bounded_client!(InferenceClient, IndexClient, TrainingClient);

/// What a generated client's method returns.
pub(crate) trait Answer<Resp>:
    Future<Output = std::result::Result<tonic::Response<Resp>, Status>>
{
}

impl<Resp, F> Answer<Resp> for F where
    F: Future<Output = std::result::Result<tonic::Response<Resp>, Status>>
{
}

/// `Gateway::inference_rpc` and its kin: [`Gateway::rpc`] on one service's
/// pool with its client.
macro_rules! service_rpcs {
    ($($name:ident => $pool:ident, $client:ty;)*) => {
        impl Gateway {$(
            pub(crate) async fn $name<Req: Clone, Resp, F, Fut>(
                &self,
                what: &str,
                timeout: Duration,
                msg: Req,
                rpc: F,
            ) -> Result<Resp>
            where
                F: Fn($client, tonic::Request<Req>) -> Fut,
                Fut: Answer<Resp>,
            {
                self.rpc(&self.$pool, what, timeout, msg, rpc).await
            }
        )*}
    };
}

service_rpcs! {
    inference_rpc => inference, InferenceClient;
    training_rpc => training, TrainingClient;
}

impl Gateway {
    /// A call any index shard answers alike (it reads the shared
    /// database): tried on the shards in turn while one is unavailable.
    pub(crate) async fn index_rpc<Req: Clone, Resp, F, Fut>(
        &self,
        what: &str,
        timeout: Duration,
        msg: Req,
        rpc: F,
    ) -> Result<Resp>
    where
        F: Fn(IndexClient, tonic::Request<Req>) -> Fut,
        Fut: Answer<Resp>,
    {
        let mut last = None;
        for shard in self.index.rotation() {
            match self.index_on(shard, what, timeout, msg.clone(), &rpc).await {
                Err(e @ Error::Unavailable { .. }) => last = Some(e),
                done => return done,
            }
        }
        Err(last.unwrap_or_else(|| Error::Internal("no index shard".into())))
    }

    /// A call of index shard `shard` (any of its replicas).
    pub(crate) async fn index_on<Req: Clone, Resp, F, Fut>(
        &self,
        shard: usize,
        what: &str,
        timeout: Duration,
        msg: Req,
        rpc: F,
    ) -> Result<Resp>
    where
        F: Fn(IndexClient, tonic::Request<Req>) -> Fut,
        Fut: Answer<Resp>,
    {
        self.rpc(self.index.pool(shard), what, timeout, msg, rpc)
            .await
    }

    /// The same call on every index shard at once, answers in shard order;
    /// the first failure fails it all.
    pub(crate) async fn index_each<Req: Clone, Resp, F, Fut>(
        &self,
        what: &str,
        timeout: Duration,
        msg: Req,
        rpc: F,
    ) -> Result<Vec<Resp>>
    where
        F: Fn(IndexClient, tonic::Request<Req>) -> Fut,
        Fut: Answer<Resp>,
    {
        let rpc = &rpc;
        futures::future::try_join_all(
            (0..self.index.count())
                .map(|shard| self.index_on(shard, what, timeout, msg.clone(), rpc)),
        )
        .await
    }

    pub(crate) fn max_msg(&self) -> usize {
        self.cfg.max_message_bytes
    }

    pub(crate) fn t(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    pub(crate) fn admin_timeout(&self) -> Duration {
        Self::t(self.cfg.timeouts.admin_ms)
    }

    /// One idempotent call of a backing service, with its deadline and
    /// retries; the message is cloned for each attempt.
    async fn rpc<C: Client, Req: Clone, Resp, F, Fut>(
        &self,
        pool: &Pool,
        what: &str,
        timeout: Duration,
        msg: Req,
        rpc: F,
    ) -> Result<Resp>
    where
        F: Fn(C, tonic::Request<Req>) -> Fut,
        Fut: Answer<Resp>,
    {
        let max = self.max_msg();
        pool.call(what, timeout, true, |ch, t| {
            let fut = rpc(C::on(ch, max), request(msg.clone(), t));
            async move { fut.await.map(tonic::Response::into_inner) }
        })
        .await
    }

    pub async fn model_info(&self, timeout: Duration) -> Result<pb::GetModelInfoResponse> {
        let msg = pb::GetModelInfoRequest {
            include_class_names: false,
        };
        self.inference_rpc("GetModelInfo", timeout, msg, |mut c, r| async move {
            c.get_model_info(r).await
        })
        .await
    }
}
