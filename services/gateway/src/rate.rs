//! Rate limits of callers without a valid API key: a token bucket per
//! client address, separate from (and by default stricter than) the bucket
//! of each key, so that a key holder cannot escape its own limit by leaving
//! the key out, and an anonymous flood from one address slows only that
//! address.
//!
//! The client address is the connection's peer; when that peer is one of
//! `auth.trusted_proxies`, the address that proxy (and any trusted proxy
//! before it) names in `X-Forwarded-For`. The header is never read from an
//! untrusted peer, who could put anything in it.
//!
//! Clients on the gateway's own machine (loopback) are not limited: the
//! CLI and local scripts of `cbir up`, whose owner they are. A reverse
//! proxy on the same machine is therefore listed in `trusted_proxies`, so
//! that the clients it forwards are limited by their own addresses.
//!
//! The map of buckets is bounded: idle buckets (full again) are dropped
//! when it fills, and while it is full of active ones, new addresses share
//! one overflow bucket.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use parking_lot::Mutex;

use crate::auth::AuthConfig;
use crate::error::{Error, Result};
use crate::gateway::Gateway;

/// Most client addresses with a bucket of their own.
pub const MAX_TRACKED_CLIENTS: usize = 65_536;

/// Seconds between sweeps of idle buckets while the map is full.
const SWEEP_EVERY_S: f64 = 1.0;

/// An address block: `10.0.0.0/8`, `fd00::/8`, or one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    bits: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Option<Self> {
        let (addr, bits) = match s.trim().split_once('/') {
            Some((a, b)) => (a, Some(b.parse::<u8>().ok()?)),
            None => (s.trim(), None),
        };
        let net: IpAddr = addr.parse().ok()?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let bits = bits.unwrap_or(max);
        (bits <= max).then_some(Self { net, bits })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, canonical(ip)) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.bits)).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.bits))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// IPv4 addresses that arrive mapped into IPv6 are IPv4 addresses.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// One `X-Forwarded-For` entry: an address, with or without a port.
fn forwarded_ip(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    s.parse::<SocketAddr>().ok().map(|a| canonical(a.ip()))
}

/// The address a request comes from: the peer, or, through trusted
/// proxies, the nearest address in `X-Forwarded-For` that is not one.
pub fn client_ip(peer: IpAddr, headers: &http::HeaderMap, trusted: &[Cidr]) -> IpAddr {
    let mut ip = canonical(peer);
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    if !is_trusted(ip) {
        return ip;
    }
    // The last entry was added by the nearest proxy.
    let values: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    for part in values.iter().rev().flat_map(|v| v.rsplit(',')) {
        let Some(hop) = forwarded_ip(part) else {
            // Garbage: the last trusted hop is the best we know.
            return ip;
        };
        ip = hop;
        if !is_trusted(ip) {
            return ip;
        }
    }
    ip
}

/// The bucket key of an address: IPv6 clients get a /64 each (one host
/// owns a whole /64 and could rotate through it).
fn bucket_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !(u64::MAX as u128)).into()),
        v4 => v4,
    }
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Token buckets of anonymous callers by address.
pub struct AnonymousLimiter {
    rate: f64,
    burst: f64,
    trusted: Vec<Cidr>,
    max_clients: usize,
    /// The buckets, and when idle ones were last dropped.
    buckets: Mutex<(HashMap<IpAddr, Bucket>, Instant)>,
    /// Shared by new addresses while the map is full of active ones.
    overflow: Mutex<Bucket>,
}

impl AnonymousLimiter {
    pub fn new(cfg: &AuthConfig) -> Result<Self> {
        Self::with_capacity(cfg, MAX_TRACKED_CLIENTS)
    }

    fn with_capacity(cfg: &AuthConfig, max_clients: usize) -> Result<Self> {
        let mut trusted = Vec::new();
        for p in &cfg.trusted_proxies {
            trusted.push(Cidr::parse(p).ok_or_else(|| {
                Error::Config(format!(
                    "auth.trusted_proxies: {p:?} is not an address or address block (10.0.0.0/8)"
                ))
            })?);
        }
        let burst = f64::from(cfg.anonymous_burst.max(1));
        Ok(Self {
            rate: cfg.anonymous_rate_per_second,
            burst,
            trusted,
            max_clients,
            buckets: Mutex::new((HashMap::new(), Instant::now())),
            overflow: Mutex::new(Bucket {
                tokens: burst,
                at: Instant::now(),
            }),
        })
    }

    pub fn client_ip(&self, peer: IpAddr, headers: &http::HeaderMap) -> IpAddr {
        client_ip(peer, headers, &self.trusted)
    }

    /// Takes one token of `ip`'s bucket, or says how long to wait.
    pub fn admit(&self, ip: IpAddr) -> Result<()> {
        if self.rate <= 0.0 {
            return Ok(());
        }
        let now = Instant::now();
        let key = bucket_key(ip);
        let mut guard = self.buckets.lock();
        let (buckets, swept) = &mut *guard;
        // Drop the buckets that have refilled (those clients are idle), at
        // most once a second: under a flood of new addresses a sweep per
        // request would cost more than the requests.
        if !buckets.contains_key(&key)
            && buckets.len() >= self.max_clients
            && now.duration_since(*swept).as_secs_f64() >= SWEEP_EVERY_S
        {
            let (rate, burst) = (self.rate, self.burst);
            buckets.retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * rate < burst);
            *swept = now;
        }
        if !buckets.contains_key(&key) && buckets.len() >= self.max_clients {
            drop(guard);
            return self.take(&mut self.overflow.lock(), now, ip);
        }
        let b = buckets.entry(key).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        self.take(b, now, ip)
    }

    fn take(&self, b: &mut Bucket, now: Instant, ip: IpAddr) -> Result<()> {
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * self.rate).min(self.burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            return Ok(());
        }
        let wait = ((1.0 - b.tokens) / self.rate).ceil().max(1.0) as u64;
        Err(Error::RateLimited {
            message: format!(
                "too many requests without an API key from {ip} (over {} per second): retry in {wait} s, or send a key",
                self.rate
            ),
            retry_after_s: wait,
        })
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.buckets.lock().0.len()
    }
}

/// What the rate-limit middleware needs.
pub struct RateState {
    pub gateway: Arc<Gateway>,
    pub anonymous: AnonymousLimiter,
}

#[derive(serde::Deserialize)]
struct KeyQuery {
    api_key: Option<String>,
}

/// Requests without a valid API key take a token of their address's
/// bucket; requests with one are limited by the key's bucket in the
/// handler (one token per request either way).
pub async fn limit(State(st): State<Arc<RateState>>, req: Request, next: Next) -> Response {
    let query_key = axum::extract::Query::<KeyQuery>::try_from_uri(req.uri())
        .ok()
        .and_then(|q| q.0.api_key);
    let key = crate::auth::key_from_headers(req.headers()).or(query_key.as_deref());
    if key.is_some_and(|k| st.gateway.auth.knows(k)) {
        return next.run(req).await;
    }
    // In-process callers (tests through `Router::oneshot`) have no peer.
    let peer = req
        .extensions()
        .get::<cbir_common::conn::ConnInfo>()
        .map_or(IpAddr::from([0, 0, 0, 0]), |c| c.remote.ip());
    let ip = st.anonymous.client_ip(peer, req.headers());
    if ip.is_loopback() {
        return next.run(req).await;
    }
    match st.anonymous.admit(ip) {
        Ok(()) => next.run(req).await,
        Err(e) => crate::guard::refuse(req.headers(), e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(rate: f64, burst: u32, trusted: &[&str]) -> AuthConfig {
        AuthConfig {
            anonymous_rate_per_second: rate,
            anonymous_burst: burst,
            trusted_proxies: trusted.iter().map(|s| s.to_string()).collect(),
            ..AuthConfig::default()
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn each_address_has_its_own_bucket_and_429_says_when() {
        let l = AnonymousLimiter::new(&cfg(0.5, 3, &[])).expect("limiter");
        for _ in 0..3 {
            l.admit(ip("203.0.113.1")).expect("within the burst");
        }
        let e = l.admit(ip("203.0.113.1")).expect_err("over");
        assert_eq!(e.http_status(), http::StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(e.retry_after_s(), Some(2));
        assert!(e.to_string().contains("without an API key"), "{e}");
        l.admit(ip("203.0.113.2")).expect("another address");
        // One IPv6 host cannot rotate through its /64.
        for i in 0..3 {
            l.admit(ip(&format!("2001:db8::{i}"))).expect("burst");
        }
        l.admit(ip("2001:db8::ffff")).expect_err("same /64");
        l.admit(ip("2001:db8:0:1::1")).expect("another /64");
        let off = AnonymousLimiter::new(&cfg(0.0, 1, &[])).expect("off");
        for _ in 0..100 {
            off.admit(ip("203.0.113.1")).expect("no limit");
        }
    }

    #[test]
    fn the_map_of_buckets_is_bounded() {
        let l = AnonymousLimiter::with_capacity(&cfg(1000.0, 2, &[]), 100).expect("limiter");
        for i in 0..10_000u32 {
            let _ = l.admit(IpAddr::from((0x0a00_0000 + i).to_be_bytes()));
        }
        assert!(l.tracked() <= 100, "{}", l.tracked());
        // Once a second, the idle ones make room for new clients.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        l.admit(ip("192.0.2.200")).expect("room again");
        assert!(l.tracked() < 10, "{}", l.tracked());
        // Active buckets fill it: newcomers share the overflow bucket.
        let busy = AnonymousLimiter::with_capacity(&cfg(0.001, 2, &[]), 10).expect("limiter");
        for i in 0..10u8 {
            busy.admit(ip(&format!("10.0.0.{i}"))).expect("own bucket");
        }
        busy.admit(ip("10.0.1.1")).expect("overflow");
        busy.admit(ip("10.0.1.2")).expect("overflow");
        busy.admit(ip("10.0.1.3"))
            .expect_err("the overflow bucket is shared");
        assert_eq!(busy.tracked(), 10);
    }

    #[test]
    fn forwarded_addresses_are_read_only_from_trusted_proxies() {
        let trusted = [
            Cidr::parse("10.0.0.0/8").expect("cidr"),
            Cidr::parse("::1").expect("cidr"),
        ];
        let mut h = http::HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            "198.51.100.9, 203.0.113.7, 10.1.2.3"
                .parse()
                .expect("value"),
        );
        assert_eq!(client_ip(ip("10.0.0.5"), &h, &trusted), ip("203.0.113.7"));
        assert_eq!(client_ip(ip("::1"), &h, &trusted), ip("203.0.113.7"));
        assert_eq!(
            client_ip(ip("192.0.2.1"), &h, &trusted),
            ip("192.0.2.1"),
            "an untrusted peer's header is ignored"
        );
        assert_eq!(
            client_ip(ip("::ffff:192.0.2.1"), &h, &trusted),
            ip("192.0.2.1")
        );
        h.insert(
            "x-forwarded-for",
            "nonsense, 10.1.2.3".parse().expect("value"),
        );
        assert_eq!(client_ip(ip("10.0.0.5"), &h, &trusted), ip("10.1.2.3"));
        h.insert(
            "x-forwarded-for",
            "[2001:db8::1]:443".parse().expect("value"),
        );
        assert_eq!(client_ip(ip("10.0.0.5"), &h, &trusted), ip("2001:db8::1"));
        assert!(Cidr::parse("10.0.0.0/33").is_none());
        assert!(Cidr::parse("nope").is_none());
        assert!(Cidr::parse("0.0.0.0/0")
            .expect("all")
            .contains(ip("8.8.8.8")));
    }
}
