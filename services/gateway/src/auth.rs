//! API keys with roles, stored hashed, and a rate limit per key.
//!
//! With no key configured the gateway is open (the embedded, single-user
//! default). With keys, every call that changes data needs one: adding
//! images needs `index`, clearing and deleting need `admin`; searching is
//! open unless `search_requires_key`. A key is sent as `x-api-key` (HTTP
//! header or gRPC metadata) or `Authorization: Bearer <key>`.

use std::collections::HashMap;
use std::time::Instant;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Search,
    Index,
    Admin,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Search => "search",
            Role::Index => "index",
            Role::Admin => "admin",
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    /// Who holds the key (logs and metrics name it, never the key).
    pub name: String,
    /// Hex SHA-256 of the key (`cbir key new` prints both).
    pub sha256: String,
    /// The highest role: admin can do what index can, index what search can.
    pub role: Role,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Empty: no access control (every call allowed).
    pub keys: Vec<ApiKey>,
    /// Searching needs a key too (with keys configured).
    pub search_requires_key: bool,
    /// Requests per second per key (token bucket); 0 for no limit.
    pub rate_per_second: f64,
    /// Requests a key may send at once above the rate.
    pub burst: u32,
    /// Requests per second per client address without a valid key (token
    /// bucket; IPv6 clients per /64); 0 for no limit. A key holder that
    /// leaves its key out is held to this, not to its key's rate. Clients
    /// on the gateway's machine (loopback) are not limited.
    pub anonymous_rate_per_second: f64,
    /// Requests an address without a key may send at once above its rate.
    pub anonymous_burst: u32,
    /// Proxies (addresses or blocks such as 10.0.0.0/8) whose
    /// `X-Forwarded-For` names the client; from any other peer the header
    /// is ignored. A reverse proxy on the gateway's machine belongs here.
    /// Comma-separated in the environment.
    #[serde(deserialize_with = "crate::url_list")]
    pub trusted_proxies: Vec<String>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            keys: Vec::new(),
            search_requires_key: false,
            rate_per_second: 50.0,
            burst: 100,
            anonymous_rate_per_second: 20.0,
            anonymous_burst: 100,
            trusted_proxies: Vec::new(),
        }
    }
}

pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.trim().as_bytes()))
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

pub struct Auth {
    cfg: AuthConfig,
    by_hash: HashMap<String, usize>,
    buckets: Mutex<HashMap<usize, Bucket>>,
}

/// Who made a call: a key's name, or anonymous when access control is off
/// or the call needs none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller(pub Option<String>);

impl Auth {
    pub fn new(cfg: AuthConfig) -> Result<Self> {
        let mut by_hash = HashMap::new();
        for (i, k) in cfg.keys.iter().enumerate() {
            let h = k.sha256.trim().to_ascii_lowercase();
            if h.len() != 64 || !h.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(Error::Config(format!(
                    "auth key {:?}: sha256 must be 64 hex digits (run `cbir key new`)",
                    k.name
                )));
            }
            by_hash.insert(h, i);
        }
        Ok(Self {
            cfg,
            by_hash,
            buckets: Mutex::new(HashMap::new()),
        })
    }

    pub fn enabled(&self) -> bool {
        !self.cfg.keys.is_empty()
    }

    /// Whether `key` is one of the configured keys (its own rate limit
    /// then applies instead of the anonymous one).
    pub fn knows(&self, key: &str) -> bool {
        let key = key.trim();
        !key.is_empty() && self.by_hash.contains_key(&hash_key(key))
    }

    /// Checks `key` (as sent, if any) for a call that needs `role`.
    pub fn check(&self, key: Option<&str>, role: Role) -> Result<Caller> {
        if !self.enabled() {
            return Ok(Caller(None));
        }
        let needs_key = role > Role::Search || self.cfg.search_requires_key;
        let Some(key) = key.map(str::trim).filter(|k| !k.is_empty()) else {
            return if needs_key {
                Err(Error::Unauthenticated(format!(
                    "this needs an API key with the {role} role: send it as the x-api-key header"
                )))
            } else {
                Ok(Caller(None))
            };
        };
        let Some(&i) = self.by_hash.get(&hash_key(key)) else {
            return Err(Error::Unauthenticated(
                "unknown API key: check it, or ask an admin for one".into(),
            ));
        };
        let k = &self.cfg.keys[i];
        if k.role < role {
            return Err(Error::PermissionDenied(format!(
                "the key {:?} has the {} role; this needs {role}",
                k.name, k.role
            )));
        }
        self.take_token(i, &k.name)?;
        Ok(Caller(Some(k.name.clone())))
    }

    fn take_token(&self, key: usize, name: &str) -> Result<()> {
        let rate = self.cfg.rate_per_second;
        if rate <= 0.0 {
            return Ok(());
        }
        let burst = f64::from(self.cfg.burst.max(1));
        let now = Instant::now();
        let mut buckets = self.buckets.lock();
        let b = buckets.entry(key).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * rate).min(burst);
        b.at = now;
        if b.tokens < 1.0 {
            let wait = ((1.0 - b.tokens) / rate).ceil().max(1.0) as u64;
            return Err(Error::RateLimited {
                message: format!(
                    "the key {name:?} is over its rate of {rate} requests/s: slow down and retry in {wait} s"
                ),
                retry_after_s: wait,
            });
        }
        b.tokens -= 1.0;
        Ok(())
    }
}

/// The key sent with an HTTP request or gRPC call.
pub fn key_from_headers(headers: &http::HeaderMap) -> Option<&str> {
    if let Some(k) = headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
        return Some(k);
    }
    headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(search_requires_key: bool, rate: f64, burst: u32) -> Auth {
        Auth::new(AuthConfig {
            keys: vec![
                ApiKey {
                    name: "reader".into(),
                    sha256: hash_key("k-search"),
                    role: Role::Search,
                },
                ApiKey {
                    name: "indexer".into(),
                    sha256: hash_key("k-index"),
                    role: Role::Index,
                },
                ApiKey {
                    name: "root".into(),
                    sha256: hash_key("k-admin").to_uppercase(),
                    role: Role::Admin,
                },
            ],
            search_requires_key,
            rate_per_second: rate,
            burst,
            ..AuthConfig::default()
        })
        .expect("auth")
    }

    #[test]
    fn roles_nest_and_keys_are_checked_by_hash() {
        let a = auth(false, 0.0, 1);
        assert_eq!(a.check(None, Role::Search).expect("allowed"), Caller(None));
        assert!(matches!(
            a.check(None, Role::Index),
            Err(Error::Unauthenticated(_))
        ));
        assert!(matches!(
            a.check(Some("nope"), Role::Search),
            Err(Error::Unauthenticated(_))
        ));
        assert!(matches!(
            a.check(Some("k-search"), Role::Index),
            Err(Error::PermissionDenied(_))
        ));
        assert_eq!(
            a.check(Some("k-index"), Role::Index).expect("allowed"),
            Caller(Some("indexer".into()))
        );
        assert!(matches!(
            a.check(Some("k-index"), Role::Admin),
            Err(Error::PermissionDenied(_))
        ));
        assert_eq!(
            a.check(Some("k-admin"), Role::Search).expect("allowed"),
            Caller(Some("root".into()))
        );
        let closed = auth(true, 0.0, 1);
        assert!(matches!(
            closed.check(None, Role::Search),
            Err(Error::Unauthenticated(_))
        ));
        let open = Auth::new(AuthConfig::default()).expect("open");
        assert_eq!(
            open.check(None, Role::Admin).expect("allowed"),
            Caller(None)
        );
    }

    #[test]
    fn each_key_has_its_own_rate() {
        let a = auth(false, 1.0, 3);
        for _ in 0..3 {
            a.check(Some("k-index"), Role::Index)
                .expect("within the burst");
        }
        let err = a
            .check(Some("k-index"), Role::Index)
            .expect_err("over the rate");
        assert!(err.to_string().contains("over its rate"), "{err}");
        a.check(Some("k-admin"), Role::Admin)
            .expect("another key is not limited");
    }

    #[test]
    fn bad_hashes_are_refused_at_start() {
        let err = Auth::new(AuthConfig {
            keys: vec![ApiKey {
                name: "x".into(),
                sha256: "plain-text-key".into(),
                role: Role::Admin,
            }],
            ..AuthConfig::default()
        })
        .err()
        .expect("refused");
        assert!(err.to_string().contains("64 hex digits"));
    }
}
