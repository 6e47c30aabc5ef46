//! The connection pool of one backing service: every call has a deadline,
//! idempotent calls are retried on another endpoint when one is
//! unreachable, and calls are balanced over all the addresses a service's
//! URLs resolve to (a list of URLs, or one DNS name with several records,
//! as a Kubernetes headless service gives).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::error::{Error, Result, Upstream};

/// How long an endpoint that refused a connection is skipped, at first;
/// doubles with each further failure up to `MAX_BACKOFF`.
const BASE_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

pub struct PoolConfig {
    pub service: Upstream,
    pub urls: Vec<String>,
    /// Extra attempts of an idempotent call after a transport failure.
    pub retries: u32,
    pub connect_timeout: Duration,
    /// How often DNS names are resolved again.
    pub refresh: Duration,
}

pub struct Pool {
    service: Upstream,
    targets: Vec<Target>,
    retries: u32,
    connect_timeout: Duration,
    endpoints: RwLock<Vec<Arc<Ep>>>,
    next: AtomicUsize,
}

#[derive(Clone)]
struct Target {
    url: String,
    scheme: String,
    host: String,
    port: u16,
}

pub struct Ep {
    addr: SocketAddr,
    channel: Channel,
    in_flight: AtomicUsize,
    failures: AtomicU32,
    down_until: Mutex<Option<Instant>>,
}

impl Ep {
    fn is_down(&self, now: Instant) -> bool {
        self.down_until.lock().is_some_and(|t| t > now)
    }

    fn mark_down(&self) {
        let n = self.failures.fetch_add(1, Ordering::Relaxed).min(5);
        let backoff = (BASE_BACKOFF * 2u32.pow(n)).min(MAX_BACKOFF);
        *self.down_until.lock() = Some(Instant::now() + backoff);
    }

    fn mark_up(&self) {
        if self.failures.swap(0, Ordering::Relaxed) != 0 {
            *self.down_until.lock() = None;
        }
    }
}

struct InFlight<'a>(&'a Ep);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

fn parse_url(url: &str) -> Result<Target> {
    let uri: http::Uri = url.parse().map_err(|e| {
        Error::Config(format!(
            "bad service URL {url:?}: {e}; write it as http://host:port"
        ))
    })?;
    let scheme = uri.scheme_str().unwrap_or("http").to_string();
    let host = uri
        .host()
        .ok_or_else(|| Error::Config(format!("service URL {url:?} has no host")))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri
        .port_u16()
        .unwrap_or(if scheme == "https" { 443 } else { 80 });
    Ok(Target {
        url: url.to_string(),
        scheme,
        host,
        port,
    })
}

impl Pool {
    /// Resolves the URLs now (a failure is not fatal: the service may come
    /// up later) and keeps resolving them in the background.
    pub async fn new(cfg: PoolConfig) -> Result<Arc<Self>> {
        if cfg.urls.is_empty() {
            return Err(Error::Config(format!(
                "no URL configured for the {} service",
                cfg.service
            )));
        }
        let targets = cfg
            .urls
            .iter()
            .map(|u| parse_url(u))
            .collect::<Result<Vec<_>>>()?;
        let pool = Arc::new(Self {
            service: cfg.service,
            targets,
            retries: cfg.retries,
            connect_timeout: cfg.connect_timeout,
            endpoints: RwLock::new(Vec::new()),
            next: AtomicUsize::new(0),
        });
        pool.refresh().await;
        let weak = Arc::downgrade(&pool);
        let every = cfg.refresh;
        tokio::spawn(refresh_loop(weak, every));
        Ok(pool)
    }

    pub fn service(&self) -> Upstream {
        self.service
    }

    /// The addresses calls are balanced over now.
    pub fn addresses(&self) -> Vec<SocketAddr> {
        self.endpoints.read().iter().map(|e| e.addr).collect()
    }

    async fn refresh(&self) {
        let mut found: Vec<(SocketAddr, &Target)> = Vec::new();
        for t in &self.targets {
            match tokio::net::lookup_host((t.host.as_str(), t.port)).await {
                Ok(addrs) => {
                    for a in addrs {
                        if !found.iter().any(|(x, _)| *x == a) {
                            found.push((a, t));
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(service = %self.service, url = %t.url, error = %e, "cannot resolve service address; will retry");
                }
            }
        }
        if found.is_empty() {
            // Keep what worked last: a DNS hiccup must not empty the pool.
            return;
        }
        let mut eps = self.endpoints.write();
        let mut next: Vec<Arc<Ep>> = Vec::with_capacity(found.len());
        for (addr, t) in found {
            if let Some(e) = eps.iter().find(|e| e.addr == addr) {
                next.push(e.clone());
                continue;
            }
            let uri = format!("{}://{}", t.scheme, addr);
            match cbir_common::tls::endpoint_named(&uri, Some(&t.host)) {
                Ok(ep) => {
                    let channel = ep
                        .connect_timeout(self.connect_timeout)
                        .tcp_nodelay(true)
                        .http2_keep_alive_interval(Duration::from_secs(30))
                        .keep_alive_while_idle(true)
                        .connect_lazy();
                    tracing::info!(service = %self.service, %addr, "service endpoint added");
                    next.push(Arc::new(Ep {
                        addr,
                        channel,
                        in_flight: AtomicUsize::new(0),
                        failures: AtomicU32::new(0),
                        down_until: Mutex::new(None),
                    }));
                }
                Err(e) => {
                    tracing::warn!(service = %self.service, %uri, error = %e, "bad endpoint");
                }
            }
        }
        *eps = next;
    }

    /// The endpoint with the fewest calls in flight among those not known
    /// to be down; when all are down, the one that comes back first (it may
    /// have recovered).
    fn pick(&self, avoid: Option<SocketAddr>) -> Result<Arc<Ep>> {
        let eps = self.endpoints.read();
        if eps.is_empty() {
            return Err(Error::Unavailable {
                service: self.service,
                detail: format!(
                    "no address found for {}",
                    self.targets
                        .iter()
                        .map(|t| t.url.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
        let now = Instant::now();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let n = eps.len();
        let mut best: Option<&Arc<Ep>> = None;
        for i in 0..n {
            let e = &eps[(start + i) % n];
            if e.is_down(now) || (n > 1 && Some(e.addr) == avoid) {
                continue;
            }
            if best.is_none_or(|b| {
                e.in_flight.load(Ordering::Relaxed) < b.in_flight.load(Ordering::Relaxed)
            }) {
                best = Some(e);
            }
        }
        let chosen = best.unwrap_or_else(|| {
            eps.iter()
                .min_by_key(|e| e.down_until.lock().unwrap_or(now))
                .unwrap_or(&eps[0])
        });
        Ok(chosen.clone())
    }

    /// Runs `f` on a channel of the service with a deadline. Idempotent
    /// calls that fail in transport (refused connection, a server that went
    /// away) are tried again on another endpoint.
    pub async fn call<T, F, Fut>(
        &self,
        what: &str,
        timeout: Duration,
        idempotent: bool,
        f: F,
    ) -> Result<T>
    where
        F: Fn(Channel, Duration) -> Fut,
        Fut: Future<Output = std::result::Result<T, Status>>,
    {
        let attempts = if idempotent { self.retries + 1 } else { 1 };
        let deadline = Instant::now() + timeout;
        let mut last: Option<Status> = None;
        let mut avoid = None;
        for attempt in 0..attempts {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let ep = self.pick(avoid)?;
            ep.in_flight.fetch_add(1, Ordering::Relaxed);
            let _guard = InFlight(&ep);
            match tokio::time::timeout(left, f(ep.channel.clone(), left)).await {
                Ok(Ok(v)) => {
                    ep.mark_up();
                    return Ok(v);
                }
                Ok(Err(status)) if is_transport_failure(&status) => {
                    tracing::warn!(
                        service = %self.service, addr = %ep.addr, call = what, attempt,
                        error = %status.message(), "call failed in transport; trying another endpoint"
                    );
                    ep.mark_down();
                    avoid = Some(ep.addr);
                    last = Some(status);
                    // A pause before the next attempt only: after the last
                    // one it would only delay the failure.
                    if attempt + 1 < attempts {
                        let pause = Duration::from_millis(20 * (1 << attempt.min(4)));
                        tokio::time::sleep(
                            pause.min(deadline.saturating_duration_since(Instant::now())),
                        )
                        .await;
                    }
                }
                Ok(Err(status)) => return Err(Error::upstream(self.service, status)),
                Err(_) => {
                    return Err(Error::DeadlineExceeded {
                        service: self.service,
                        detail: format!("{what} took over {} ms", timeout.as_millis()),
                    })
                }
            }
        }
        Err(match last {
            Some(status) => Error::upstream(self.service, status),
            None => Error::DeadlineExceeded {
                service: self.service,
                detail: format!("{what} took over {} ms", timeout.as_millis()),
            },
        })
    }
}

async fn refresh_loop(pool: Weak<Pool>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(p) = pool.upgrade() else { return };
        p.refresh().await;
    }
}

/// A failure of the connection rather than an answer of the service: the
/// same call may succeed on another endpoint or a moment later.
fn is_transport_failure(status: &Status) -> bool {
    let m = status.message().to_ascii_lowercase();
    match status.code() {
        Code::Unavailable => true,
        // A stream cut when the server closes the connection (a replica
        // shutting down sends GOAWAY) comes back from hyper as CANCELLED;
        // tonic reports the caller's own deadline the same way.
        Code::Cancelled => !m.contains("timeout expired"),
        // Resets and protocol errors of a dying connection, with no answer
        // from the service.
        Code::Unknown | Code::Internal => [
            "transport",
            "connection",
            "h2 protocol",
            "canceled",
            "broken pipe",
            "reset",
        ]
        .iter()
        .any(|w| m.contains(w)),
        _ => false,
    }
}

/// A request carrying the caller's remaining time as its gRPC deadline and
/// the current trace context.
pub fn request<T>(msg: T, timeout: Duration) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.set_timeout(timeout);
    cbir_common::telemetry::inject_context(r.metadata_mut());
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_failures_are_told_from_answers() {
        assert!(is_transport_failure(&Status::unavailable(
            "tcp connect error"
        )));
        assert!(is_transport_failure(&Status::cancelled(
            "operation was canceled"
        )));
        assert!(!is_transport_failure(&Status::cancelled("Timeout expired")));
        assert!(is_transport_failure(&Status::internal(
            "h2 protocol error: error reading a body from connection"
        )));
        assert!(!is_transport_failure(&Status::internal("disk full")));
        assert!(!is_transport_failure(&Status::invalid_argument(
            "not an image"
        )));
    }

    #[test]
    fn urls_parse_with_default_ports() {
        let t = parse_url("http://inference:50051").expect("parses");
        assert_eq!((t.host.as_str(), t.port), ("inference", 50051));
        let t = parse_url("http://[::1]:7").expect("parses");
        assert_eq!((t.host.as_str(), t.port), ("::1", 7));
        assert!(parse_url("not a url at all").is_err());
    }

    #[tokio::test]
    async fn a_dns_name_becomes_every_address_it_resolves_to() {
        // `localhost` stands in for a headless service's name: each address
        // becomes an endpoint (127.0.0.1, and ::1 where it resolves).
        let pool = Pool::new(PoolConfig {
            service: Upstream::Index,
            urls: vec![
                "http://localhost:50999".into(),
                "http://127.0.0.1:50999".into(),
            ],
            retries: 0,
            connect_timeout: Duration::from_millis(100),
            refresh: Duration::from_secs(60),
        })
        .await
        .expect("pool");
        let addrs = pool.addresses();
        let resolved: Vec<SocketAddr> = tokio::net::lookup_host(("localhost", 50999))
            .await
            .expect("resolve")
            .collect();
        assert!(
            addrs.contains(&"127.0.0.1:50999".parse().expect("addr")),
            "{addrs:?}"
        );
        for a in &resolved {
            assert!(addrs.contains(a), "{a} missing from {addrs:?}");
        }
        // The same address from two URLs is one endpoint.
        assert_eq!(
            addrs.len(),
            resolved.len()
                + usize::from(!resolved.contains(&"127.0.0.1:50999".parse().expect("addr")))
        );
    }

    #[tokio::test]
    async fn unreachable_endpoints_are_skipped_then_retried() {
        // Two ports with nothing listening: both calls fail in transport,
        // the error names the service, and both endpoints end marked down.
        let a = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let b = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let urls = vec![
            format!("http://{}", a.local_addr().expect("addr")),
            format!("http://{}", b.local_addr().expect("addr")),
        ];
        drop((a, b));
        let pool = Pool::new(PoolConfig {
            service: Upstream::Inference,
            urls,
            retries: 2,
            connect_timeout: Duration::from_millis(500),
            refresh: Duration::from_secs(60),
        })
        .await
        .expect("pool");
        assert_eq!(pool.addresses().len(), 2);
        let tried = Mutex::new(Vec::new());
        let err = pool
            .call("GetModelInfo", Duration::from_secs(5), true, |ch, t| {
                let tried = &tried;
                async move {
                    let mut c =
                        cbir_api::v1::inference_service_client::InferenceServiceClient::new(ch);
                    let r = c
                        .get_model_info(request(cbir_api::v1::GetModelInfoRequest::default(), t))
                        .await;
                    tried.lock().push(());
                    r
                }
            })
            .await
            .expect_err("nothing listens");
        assert_eq!(tried.lock().len(), 3, "one try and two retries");
        assert!(
            matches!(
                err,
                Error::Unavailable {
                    service: Upstream::Inference,
                    ..
                }
            ),
            "{err}"
        );
        assert!(
            err.to_string().contains("inference service is unavailable"),
            "{err}"
        );
        let now = Instant::now();
        assert!(pool.endpoints.read().iter().all(|e| e.is_down(now)));
    }
}
