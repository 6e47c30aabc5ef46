//! Bounds on the connections of every listener (the gateway's HTTP + gRPC
//! port, with or without TLS, and the tonic servers of inference, index and
//! training):
//! - a cap on open connections: over it, new ones wait in the accept queue
//!   until a slot frees;
//! - a deadline for a new connection's first request (its headers, and the
//!   TLS handshake before them): a slowloris client that sends headers byte
//!   by byte, or nothing at all, is dropped instead of holding a slot;
//! - an idle timeout: a connection with no request in flight for that long
//!   is closed (this also bounds the headers of a later request).
//!
//! The deadlines live in the connection's reader ([`GuardedIo`]), which
//! knows from [`Track`] whether a request is in flight: a long search, an
//! upload or a stream of events is never cut, however quiet.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ConnectionConfig {
    /// Most connections open at once; more wait to be accepted.
    pub max_connections: usize,
    /// A new connection must complete its first request's headers (and
    /// its TLS handshake) within this; 0 for no limit.
    pub header_read_timeout_ms: u64,
    /// A connection with no request in flight for this long is closed;
    /// 0 for never.
    pub idle_timeout_ms: u64,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            header_read_timeout_ms: 10_000,
            idle_timeout_ms: 120_000,
        }
    }
}

fn ms(v: u64) -> Option<Duration> {
    (v > 0).then(|| Duration::from_millis(v))
}

/// How often a busy connection looks at its deadlines again, so that one
/// that just went idle is closed on time.
const RECHECK: Duration = Duration::from_secs(5);

/// What a connection's reader and its requests share.
#[derive(Debug)]
struct ConnState {
    opened: Instant,
    in_flight: AtomicUsize,
    served: AtomicBool,
    /// When the last request in flight ended, in ms after `opened`.
    idle_since_ms: AtomicU64,
}

/// The connection a request arrived on: its peer, and the state its
/// deadlines are computed from. Every request of a guarded connection
/// carries it in its extensions.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub remote: SocketAddr,
    state: Arc<ConnState>,
}

/// Counts a request in flight on its connection until dropped (with the
/// answer's body, once it is sent).
struct InFlight(Arc<ConnState>);

impl InFlight {
    fn new(state: Arc<ConnState>) -> Self {
        state.in_flight.fetch_add(1, Ordering::SeqCst);
        state.served.store(true, Ordering::SeqCst);
        Self(state)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let now = self.0.opened.elapsed().as_millis() as u64;
        // Set before the count falls, so that a reader seeing no request in
        // flight sees this idle time.
        self.0.idle_since_ms.store(now, Ordering::SeqCst);
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A connection with the header-read and idle deadlines, holding its slot
/// of the connection cap.
pub struct GuardedIo {
    io: TcpStream,
    info: ConnInfo,
    header_timeout: Option<Duration>,
    idle_timeout: Option<Duration>,
    timer: Pin<Box<Sleep>>,
    _slot: OwnedSemaphorePermit,
}

impl GuardedIo {
    pub fn info(&self) -> ConnInfo {
        self.info.clone()
    }

    /// When the connection is to be closed, `None` while a request is in
    /// flight or when no deadline applies.
    fn deadline(&self) -> Option<Instant> {
        let s = &self.info.state;
        if s.in_flight.load(Ordering::SeqCst) > 0 {
            return None;
        }
        if !s.served.load(Ordering::SeqCst) {
            return self.header_timeout.map(|t| s.opened + t);
        }
        let idle_since = Duration::from_millis(s.idle_since_ms.load(Ordering::SeqCst));
        self.idle_timeout.map(|t| s.opened + idle_since + t)
    }

    /// Arms the timer for the next deadline; ready with the error that
    /// closes the connection once one has passed.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        if self.header_timeout.is_none() && self.idle_timeout.is_none() {
            return Poll::Pending;
        }
        loop {
            let now = Instant::now();
            let target = match self.deadline() {
                Some(d) if d <= now => {
                    let what = if self.info.state.served.load(Ordering::SeqCst) {
                        "idle connection closed (idle_timeout_ms)"
                    } else {
                        "no complete request in time (header_read_timeout_ms)"
                    };
                    tracing::debug!(peer = %self.info.remote, what, "closing a connection");
                    return Poll::Ready(io::Error::new(io::ErrorKind::TimedOut, what));
                }
                Some(d) => d,
                None if self.timer.deadline() > now => self.timer.deadline(),
                None => now + RECHECK,
            };
            if self.timer.deadline() != target {
                self.timer.as_mut().reset(target);
            }
            if self.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
    }
}

impl AsyncRead for GuardedIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Pending => this.poll_deadline(cx).map(Err),
            ready => ready,
        }
    }
}

impl AsyncWrite for GuardedIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for GuardedIo {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info()
    }
}

/// A connection type whose [`ConnInfo`] can be read: plain or under TLS.
pub trait HasConnInfo {
    fn conn_info(&self) -> ConnInfo;
}

impl HasConnInfo for GuardedIo {
    fn conn_info(&self) -> ConnInfo {
        self.info()
    }
}

impl HasConnInfo for tokio_rustls::server::TlsStream<GuardedIo> {
    fn conn_info(&self) -> ConnInfo {
        self.get_ref().0.info()
    }
}

/// A TCP listener that accepts at most `max_connections` at once and
/// hands out [`GuardedIo`] connections (Nagle off: small replies otherwise
/// wait for the peer's delayed ACK).
pub struct Listener {
    inner: TcpListener,
    slots: Arc<Semaphore>,
    cfg: ConnectionConfig,
}

impl Listener {
    pub fn new(inner: TcpListener, cfg: &ConnectionConfig) -> Self {
        Self {
            inner,
            slots: Arc::new(Semaphore::new(cfg.max_connections.max(1))),
            cfg: cfg.clone(),
        }
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    /// The next connection, once a slot is free. Accept errors (out of
    /// file descriptors and the like) are logged and retried after a pause
    /// instead of spinning.
    pub async fn next(&self) -> GuardedIo {
        let slot = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        loop {
            match self.inner.accept().await {
                Ok((tcp, remote)) => {
                    let _ = tcp.set_nodelay(true);
                    let now = Instant::now();
                    return GuardedIo {
                        io: tcp,
                        info: ConnInfo {
                            remote,
                            state: Arc::new(ConnState {
                                opened: now,
                                in_flight: AtomicUsize::new(0),
                                served: AtomicBool::new(false),
                                idle_since_ms: AtomicU64::new(0),
                            }),
                        },
                        header_timeout: ms(self.cfg.header_read_timeout_ms),
                        idle_timeout: ms(self.cfg.idle_timeout_ms),
                        timer: Box::pin(tokio::time::sleep_until(now + RECHECK)),
                        _slot: slot,
                    };
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// The accepted connections as a stream, for tonic's
    /// `serve_with_incoming_shutdown`.
    pub fn into_stream(
        self,
    ) -> impl futures::Stream<Item = io::Result<GuardedIo>> + Send + 'static {
        futures::stream::unfold(self, |l| async move {
            let io = l.next().await;
            Some((Ok(io), l))
        })
    }
}

impl axum::serve::Listener for Listener {
    type Io = GuardedIo;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let io = self.next().await;
        let remote = io.info.remote;
        (io, remote)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A tower layer that counts each request in flight on its connection
/// (from the [`ConnInfo`] tonic puts in the request's extensions), so that
/// the connection's deadlines pause while it is answered.
#[derive(Debug, Clone, Copy, Default)]
pub struct TrackLayer;

impl<S> tower::Layer<S> for TrackLayer {
    type Service = Track<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Track { inner, conn: None }
    }
}

#[derive(Debug, Clone)]
pub struct Track<S> {
    inner: S,
    /// The connection, when the server does not put it in the extensions.
    conn: Option<ConnInfo>,
}

/// Longest `grpc-message` a server sends: a longer one (an error quoting
/// a huge input) would not fit in the peer's header limit, and the call
/// would fail as a protocol error instead of with its status.
const MAX_GRPC_MESSAGE: usize = 2048;

fn bound_grpc_message(headers: &mut http::HeaderMap) {
    let Some(v) = headers.get("grpc-message") else {
        return;
    };
    if v.len() <= MAX_GRPC_MESSAGE {
        return;
    }
    // Percent-encoded: cut before an escape that would be split.
    let bytes = &v.as_bytes()[..MAX_GRPC_MESSAGE];
    let cut = match bytes.iter().rposition(|&b| b == b'%') {
        Some(i) if i + 3 > bytes.len() => i,
        _ => bytes.len(),
    };
    let mut short = bytes[..cut].to_vec();
    short.extend_from_slice(b"%E2%80%A6");
    if let Ok(v) = http::HeaderValue::from_bytes(&short) {
        headers.insert("grpc-message", v);
    }
}

impl<S, ReqB, ResB> tower::Service<http::Request<ReqB>> for Track<S>
where
    S: tower::Service<http::Request<ReqB>, Response = http::Response<ResB>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<TrackedBody<ResB>>;
    type Error = S::Error;
    type Future =
        Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<ReqB>) -> Self::Future {
        let conn = match &self.conn {
            Some(c) => {
                req.extensions_mut().insert(c.clone());
                Some(c.clone())
            }
            None => req.extensions().get::<ConnInfo>().cloned(),
        };
        let in_flight = conn.map(|c| InFlight::new(c.state));
        let fut = self.inner.call(req);
        Box::pin(async move {
            let mut resp = fut.await?;
            bound_grpc_message(resp.headers_mut());
            Ok(resp.map(|body| TrackedBody {
                body,
                _in_flight: in_flight,
            }))
        })
    }
}

/// An answer's body that keeps its request counted until it is sent.
pub struct TrackedBody<B> {
    body: B,
    _in_flight: Option<InFlight>,
}

impl<B: http_body::Body + Unpin> http_body::Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

fn into_axum(r: http::Response<TrackedBody<axum::body::Body>>) -> axum::response::Response {
    r.map(axum::body::Body::new)
}

/// The per-connection service of an axum app served on a [`Listener`] (or
/// a TLS listener over one): each request carries its [`ConnInfo`] and is
/// counted in flight.
#[derive(Clone)]
pub struct MakeTracked {
    app: axum::Router,
}

pub fn make_tracked(app: axum::Router) -> MakeTracked {
    MakeTracked { app }
}

type TrackedApp = tower::util::MapResponse<
    Track<axum::Router>,
    fn(http::Response<TrackedBody<axum::body::Body>>) -> axum::response::Response,
>;

impl<'a, L> tower::Service<axum::serve::IncomingStream<'a, L>> for MakeTracked
where
    L: axum::serve::Listener,
    L::Io: HasConnInfo,
{
    type Response = TrackedApp;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, incoming: axum::serve::IncomingStream<'a, L>) -> Self::Future {
        use tower::ServiceExt;
        let track = Track {
            inner: self.app.clone(),
            conn: Some(incoming.io().conn_info()),
        };
        let to_axum: fn(_) -> _ = into_axum;
        std::future::ready(Ok(ServiceExt::<axum::extract::Request>::map_response(
            track, to_axum,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn app_server(cfg: ConnectionConfig) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let app = axum::Router::new()
            .route("/", axum::routing::get(|| async { "hello" }))
            .route(
                "/slow",
                axum::routing::get(|| async {
                    tokio::time::sleep(Duration::from_millis(1500)).await;
                    "done"
                }),
            );
        tokio::spawn(async move {
            axum::serve(Listener::new(l, &cfg), make_tracked(app))
                .await
                .expect("serve");
        });
        addr
    }

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        out
    }

    /// Reads until the peer closes; the time it took.
    async fn closed_after(s: &mut TcpStream) -> Duration {
        let t = std::time::Instant::now();
        let mut buf = [0u8; 256];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return t.elapsed(),
                Ok(_) => {}
            }
        }
    }

    #[tokio::test]
    async fn slow_headers_are_dropped_and_slow_answers_are_not() {
        let cfg = ConnectionConfig {
            max_connections: 8,
            header_read_timeout_ms: 400,
            idle_timeout_ms: 700,
        };
        let addr = app_server(cfg).await;
        // Headers byte by byte, for longer than the deadline.
        let mut slow = TcpStream::connect(addr).await.expect("connect");
        let writer = {
            let (mut r, mut w) = slow.into_split();
            let task = tokio::spawn(async move {
                for b in b"GET / HTTP/1.1\r\nhost: x\r\nx-pad: aaaaaaaaaaaaaaaaaaaaaaaa".iter() {
                    if w.write_all(&[*b]).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            });
            let t = std::time::Instant::now();
            let mut buf = [0u8; 64];
            while let Ok(n) = r.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
            let took = t.elapsed();
            assert!(took < Duration::from_millis(1500), "dropped after {took:?}");
            task
        };
        writer.abort();
        // Nothing at all: dropped at the deadline too.
        slow = TcpStream::connect(addr).await.expect("connect");
        let took = closed_after(&mut slow).await;
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_millis(1500),
            "{took:?}"
        );
        // A request that takes longer than both deadlines is answered.
        assert!(get(addr, "/slow").await.ends_with("done"));
        // An idle keep-alive connection is closed after the idle timeout.
        let mut ka = TcpStream::connect(addr).await.expect("connect");
        ka.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .expect("write");
        let mut buf = [0u8; 512];
        let n = ka.read(&mut buf).await.expect("answer");
        assert!(String::from_utf8_lossy(&buf[..n]).contains("hello"));
        let took = closed_after(&mut ka).await;
        assert!(
            took >= Duration::from_millis(500) && took < Duration::from_millis(2500),
            "{took:?}"
        );
    }

    #[tokio::test]
    async fn connections_over_the_cap_wait_for_a_slot() {
        let cfg = ConnectionConfig {
            max_connections: 2,
            header_read_timeout_ms: 600,
            idle_timeout_ms: 600,
        };
        let addr = app_server(cfg).await;
        let _a = TcpStream::connect(addr).await.expect("connect");
        let _b = TcpStream::connect(addr).await.expect("connect");
        // Both slots are held by silent clients: the third waits until the
        // first two are dropped at their deadline, then is answered.
        let t = std::time::Instant::now();
        let answer = tokio::time::timeout(Duration::from_secs(5), get(addr, "/"))
            .await
            .expect("answered within the deadline");
        assert!(answer.ends_with("hello"), "{answer}");
        assert!(
            t.elapsed() >= Duration::from_millis(400),
            "{:?}",
            t.elapsed()
        );
    }

    #[test]
    fn long_grpc_messages_are_cut() {
        let mut h = http::HeaderMap::new();
        let long = "%22".repeat(2000);
        h.insert("grpc-message", long.parse().expect("value"));
        bound_grpc_message(&mut h);
        let v = h["grpc-message"].to_str().expect("ascii");
        assert!(v.len() <= MAX_GRPC_MESSAGE + 9, "{}", v.len());
        assert!(v.ends_with("%22%E2%80%A6"), "{v}");
        let mut h = http::HeaderMap::new();
        h.insert("grpc-message", "short".parse().expect("value"));
        bound_grpc_message(&mut h);
        assert_eq!(h["grpc-message"], "short");
    }
}
