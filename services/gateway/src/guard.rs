//! What every HTTP request passes before its handler, and what every answer
//! carries:
//! - the `Host` it names is one of this gateway's names (`allowed_hosts`),
//!   so that a page whose DNS name was rebound to the gateway's address
//!   cannot use the gateway as its own origin;
//! - a state-changing request from a browser comes from the gateway's own
//!   origin or an `allowed_origins` one: no cross-site writes;
//! - JSON bodies are taken only as `application/json` (`http::extract::JsonBody`),
//!   so a cross-site form cannot post JSON as `text/plain`;
//! - every answer carries the security headers (CSP, framing, sniffing,
//!   referrer) and every error answer the JSON error shape, whatever
//!   produced it (an extractor, the router, a body limit).
//!
//! Clients that are not browsers send neither `Origin` nor
//! `Sec-Fetch-Site` and are not affected by the origin check.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::{Error, Result};
use crate::Config;

/// The Content-Security-Policy of the UI and the API: scripts, styles and
/// connections only from the gateway itself (the UI has no inline script
/// or style), images also as `blob:` (upload previews) and `data:` (the
/// favicon), and no framing by any page.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
img-src 'self' blob: data:; connect-src 'self'; font-src 'self'; object-src 'none'; \
base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// Longest URL (path and query) taken; every route fits in far less.
pub const MAX_URL_BYTES: usize = 8192;

/// At most this much of what a client sent is quoted back in a message.
const QUOTED: usize = 100;

fn quoted(s: &str) -> String {
    let mut end = s.len().min(QUOTED);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    if end < s.len() {
        format!("{:?}…", &s[..end])
    } else {
        format!("{s:?}")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct HostRule {
    host: String,
    /// `None`: any port.
    port: Option<u16>,
}

/// Splits `host[:port]` (IPv6 in brackets) into a lowercase host without a
/// trailing dot, and its port.
fn split_host(s: &str) -> Option<(String, Option<u16>)> {
    let s = s.trim();
    let (host, port) = if s.starts_with('[') {
        let end = s.find(']')?;
        let port = match &s[end + 1..] {
            "" => None,
            rest => Some(rest.strip_prefix(':')?.parse().ok()?),
        };
        (&s[..=end], port)
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') => (h, Some(p.parse().ok()?)),
            Some(_) => return None,
            None => (s, None),
        }
    };
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let valid = if let Some(inner) = host.strip_prefix('[') {
        inner
            .strip_suffix(']')
            .is_some_and(|a| a.parse::<std::net::Ipv6Addr>().is_ok())
    } else {
        !host.is_empty()
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
    };
    valid.then_some((host, port))
}

/// A configured host: `name`, `name:port`, an IP address (IPv6 with or
/// without brackets), with or without a port.
fn parse_rule(s: &str) -> Option<HostRule> {
    let s = s.trim();
    if let Ok(IpAddr::V6(v6)) = s.parse::<IpAddr>() {
        return Some(HostRule {
            host: format!("[{v6}]"),
            port: None,
        });
    }
    let (host, port) = split_host(s)?;
    Some(HostRule { host, port })
}

fn ip_host(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

/// The Host and origin checks, from the configuration.
#[derive(Debug)]
pub struct Guard {
    /// `None`: any host (`allowed_hosts = ["*"]`).
    hosts: Option<Vec<HostRule>>,
    /// Origins allowed besides the gateway's own, as `scheme://host[:port]`.
    origins: Vec<String>,
    /// The port a Host without one means.
    default_port: u16,
}

impl Guard {
    /// `local` is the address the gateway listens on: by default the Host
    /// must be it, `localhost`, `127.0.0.1` or `[::1]`, with its port.
    pub fn new(cfg: &Config, local: Option<SocketAddr>) -> Result<Self> {
        let default_port = if cfg.tls.serves_tls() { 443 } else { 80 };
        let hosts = if cfg.allowed_hosts.iter().any(|h| h.trim() == "*") {
            None
        } else if cfg.allowed_hosts.is_empty() {
            let listen = split_host(&cfg.listen);
            let port = local
                .map(|a| a.port())
                .or_else(|| listen.as_ref().and_then(|(_, p)| *p));
            let mut names: Vec<String> =
                vec!["localhost".into(), "127.0.0.1".into(), "[::1]".into()];
            if let Some(ip) = local.map(|a| a.ip()).filter(|ip| !ip.is_unspecified()) {
                names.push(ip_host(ip));
            }
            if let Some((host, _)) = listen {
                let unspecified = host
                    .trim_matches(|c| c == '[' || c == ']')
                    .parse::<IpAddr>()
                    .is_ok_and(|ip| ip.is_unspecified());
                if !unspecified {
                    names.push(host);
                }
            }
            names.dedup();
            Some(
                names
                    .into_iter()
                    .map(|host| HostRule { host, port })
                    .collect(),
            )
        } else {
            let mut rules = Vec::new();
            for h in &cfg.allowed_hosts {
                rules.push(parse_rule(h).ok_or_else(|| {
                    Error::Config(format!(
                        "allowed_hosts: {h:?} is not a host name or address (host, host:port, or * for any)"
                    ))
                })?);
            }
            Some(rules)
        };
        let mut origins = Vec::new();
        for o in &cfg.allowed_origins {
            let norm = o.trim().trim_end_matches('/').to_ascii_lowercase();
            let valid = norm.split_once("://").is_some_and(|(scheme, rest)| {
                matches!(scheme, "http" | "https") && split_host(rest).is_some()
            });
            if !valid {
                return Err(Error::Config(format!(
                    "allowed_origins: {o:?} is not an origin such as https://app.example.com"
                )));
            }
            origins.push(norm);
        }
        Ok(Self {
            hosts,
            origins,
            default_port,
        })
    }

    fn host_allowed(&self, host: &str) -> bool {
        let Some(rules) = &self.hosts else {
            return true;
        };
        let Some((name, port)) = split_host(host) else {
            return false;
        };
        let port = port.unwrap_or(self.default_port);
        rules
            .iter()
            .any(|r| r.host == name && r.port.is_none_or(|p| p == port))
    }

    /// The origin is the page the request was sent from: the gateway's own
    /// (its host as the request names it) or a configured one.
    fn origin_allowed(&self, origin: &str, host: Option<&str>) -> bool {
        let origin = origin.trim().to_ascii_lowercase();
        if self.origins.contains(&origin) {
            return true;
        }
        let Some((scheme, authority)) = origin.split_once("://") else {
            return false;
        };
        let scheme_port = match scheme {
            "http" => 80,
            "https" => 443,
            _ => return false,
        };
        let (Some((o_host, o_port)), Some((h_host, h_port))) =
            (split_host(authority), host.and_then(split_host))
        else {
            return false;
        };
        // Behind a proxy that ends TLS the gateway cannot tell the scheme:
        // a Host without a port matches an origin on its scheme's default.
        o_host == h_host
            && match h_port {
                Some(p) => p == o_port.unwrap_or(scheme_port),
                None => o_port.is_none(),
            }
    }

    /// Checks one request; `Err` is the answer to send instead.
    pub fn check(&self, method: &Method, uri: &http::Uri, headers: &HeaderMap) -> Result<()> {
        let url_len = uri.path_and_query().map_or(0, |p| p.as_str().len());
        if url_len > MAX_URL_BYTES {
            return Err(Error::InvalidArgument(format!(
                "the URL has {url_len} bytes; the limit is {MAX_URL_BYTES}"
            )));
        }
        let host_header = headers
            .get(header::HOST)
            .map(|v| v.to_str().unwrap_or("\u{0}"));
        let authority = uri.authority().map(|a| a.as_str());
        for host in [host_header, authority].into_iter().flatten() {
            if !self.host_allowed(host) {
                return Err(Error::WrongHost(format!(
                    "this gateway does not answer to the host {}: use one of its names, or add this one to allowed_hosts (GATEWAY_ALLOWED_HOSTS) if it is yours",
                    quoted(host)
                )));
            }
        }
        if matches!(
            *method,
            Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
        ) {
            return Ok(());
        }
        if let Some(origin) = headers.get(header::ORIGIN) {
            let origin = origin.to_str().unwrap_or("");
            if !self.origin_allowed(origin, host_header.or(authority)) {
                return Err(Error::Forbidden(format!(
                    "cross-site request refused: this {method} comes from a page at {}, not from this gateway; add that origin to allowed_origins if it is yours",
                    quoted(origin)
                )));
            }
        } else if let Some(site) = headers.get("sec-fetch-site") {
            if matches!(site.as_bytes(), b"cross-site" | b"same-site") {
                return Err(Error::Forbidden(format!(
                    "cross-site request refused: a browser sent this {method} from another site"
                )));
            }
        }
        Ok(())
    }
}

fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The answer refusing a request: a gRPC status to a gRPC call, the JSON
/// error otherwise; `Retry-After` on both when the refusal is "not now".
pub fn refuse(request_headers: &HeaderMap, err: Error) -> Response {
    if !is_grpc(request_headers) {
        return err.into_response();
    }
    let retry = err.retry_after_s();
    let mut resp: Response = tonic::Status::from(err).into_http();
    if let Some(s) = retry {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(s));
    }
    resp
}

/// The Host, origin and URL checks as a middleware.
pub async fn check(
    axum::extract::State(guard): axum::extract::State<std::sync::Arc<Guard>>,
    req: Request,
    next: Next,
) -> Response {
    match guard.check(req.method(), req.uri(), req.headers()) {
        Ok(()) => next.run(req).await,
        Err(e) => refuse(req.headers(), e),
    }
}

/// Adds the security headers to every answer but gRPC ones.
pub async fn security_headers(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    if is_grpc(resp.headers()) {
        return resp;
    }
    let h = resp.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        // Older browsers that ignore frame-ancestors.
        (header::X_FRAME_OPTIONS, "DENY"),
        // Thumbnail URLs may carry an API key in their query.
        (header::REFERRER_POLICY, "no-referrer"),
    ] {
        h.entry(name).or_insert(HeaderValue::from_static(value));
    }
    resp
}

/// The snake-case code of an HTTP error status, as `Error::code` gives it.
fn code_for(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 => "unauthenticated",
        403 => "forbidden",
        404 => "not_found",
        405 => "method_not_allowed",
        408 => "request_timeout",
        409 => "failed_precondition",
        413 => "payload_too_large",
        415 => "unsupported_media_type",
        421 => "misdirected_request",
        429 => "resource_exhausted",
        503 => "unavailable",
        504 => "deadline_exceeded",
        400..=499 => "invalid_argument",
        _ => "internal",
    }
}

/// Turns every error answer that is not JSON yet (extractor rejections,
/// 405 from the router, body-limit and timeout answers) into the JSON
/// error shape `{"error": {"code", "message", "service"}}`, and gives every
/// 429 and 503 a `Retry-After`.
pub async fn json_errors(req: Request, next: Next) -> Response {
    if is_grpc(req.headers()) {
        return next.run(req).await;
    }
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let resp = next.run(req).await;
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) || is_grpc(resp.headers()) {
        return resp;
    }
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    let mut resp = if is_json {
        resp
    } else {
        let (mut parts, body) = resp.into_parts();
        let text = axum::body::to_bytes(body, 4096)
            .await
            .map(|b| String::from_utf8_lossy(&b).trim().to_string())
            .unwrap_or_default();
        let message = match status {
            StatusCode::METHOD_NOT_ALLOWED => format!(
                "{method} is not allowed on {}: see /api/openapi.json for the methods of each route",
                quoted(&path)
            ),
            StatusCode::PAYLOAD_TOO_LARGE => {
                "the request body is over the size limit (limits.max_request_bytes): send fewer or smaller files".into()
            }
            StatusCode::REQUEST_TIMEOUT => {
                "the request was not sent in time: the client paused too long".into()
            }
            _ if text.is_empty() => status
                .canonical_reason()
                .unwrap_or("request failed")
                .to_ascii_lowercase(),
            _ => text,
        };
        parts.headers.remove(header::CONTENT_LENGTH);
        parts.headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let body = serde_json::json!({
            "error": { "code": code_for(status), "message": message, "service": null }
        });
        Response::from_parts(parts, axum::body::Body::from(body.to_string()))
    };
    if matches!(
        status,
        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
    ) {
        resp.headers_mut()
            .entry(header::RETRY_AFTER)
            .or_insert(HeaderValue::from_static("1"));
    }
    resp
}

/// Whether a Content-Type names JSON: `application/json` or an
/// `application/*+json` type, with any parameters.
pub fn is_json_type(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// The error of a request body whose client stopped sending it.
#[derive(Debug)]
pub struct BodyTimedOut(pub Duration);

impl std::fmt::Display for BodyTimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the request body stopped arriving for {} s (timeouts.request_body_ms)",
            self.0.as_secs_f64()
        )
    }
}

impl std::error::Error for BodyTimedOut {}

/// Whether `e`, or what caused it, is a `T`.
pub fn caused_by<T: std::error::Error + 'static>(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.is::<T>() {
            return true;
        }
        cur = err.source();
    }
    false
}

/// Whether `e` comes from a [`BodyTimedOut`].
pub fn timed_out(e: &(dyn std::error::Error + 'static)) -> bool {
    caused_by::<BodyTimedOut>(e)
}

/// A request body that fails when its client pauses longer than `limit`
/// between two pieces (a slow-POST client holding a handler and its
/// buffers). Only pauses while the handler waits for data count.
struct TimedBody {
    body: axum::body::Body,
    limit: Duration,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Set when the limit passed, for [`body_timeout`]'s answer.
    fired: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl http_body::Body for TimedBody {
    type Data = axum::body::Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<std::result::Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.body).poll_frame(cx) {
            this.sleep = None;
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let limit = this.limit;
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => {
                this.fired.store(true, std::sync::atomic::Ordering::Relaxed);
                Poll::Ready(Some(Err(Box::new(BodyTimedOut(limit)))))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// Gives every request body the pause limit of [`TimedBody`]; a request
/// whose body stalled is answered 408 whatever error its handler made of
/// the broken body.
pub async fn body_timeout(
    axum::extract::State(limit): axum::extract::State<Duration>,
    req: Request,
    next: Next,
) -> Response {
    if limit.is_zero() {
        return next.run(req).await;
    }
    let grpc = is_grpc(req.headers());
    let fired = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let resp = next
        .run(req.map(|body| {
            axum::body::Body::new(TimedBody {
                body,
                limit,
                sleep: None,
                fired: fired.clone(),
            })
        }))
        .await;
    let failed = resp.status().is_client_error() || resp.status().is_server_error();
    if !grpc && failed && fired.load(std::sync::atomic::Ordering::Relaxed) {
        return Error::ClientTimeout(BodyTimedOut(limit).to_string()).into_response();
    }
    resp
}

#[cfg(test)]
mod tests;
