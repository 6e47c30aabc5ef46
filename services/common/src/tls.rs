//! TLS for every listener (the internal gRPC services and the gateway's
//! HTTP + gRPC port) and for the calls between services. Off unless a
//! certificate is configured; mutual TLS when a client CA is.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

/// A handshake that takes longer is dropped, so that idle or slow peers
/// cannot hold accept slots.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// Serve TLS with this certificate chain (PEM), together with `key`.
    pub cert: Option<PathBuf>,
    /// The private key of `cert` (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
    /// Require every client to present a certificate signed by this CA
    /// (PEM): mutual TLS, so that only the system's own services connect.
    pub client_ca: Option<PathBuf>,
    /// CA (PEM) trusted for the `https://` service URLs this process calls;
    /// the public web roots when unset.
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM) presented to `https://` services that ask
    /// for one, together with `client_key`.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

fn read(what: &str, path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| {
        format!(
            "cannot read the TLS {what} {}: {e} (fix the tls.* setting)",
            path.display()
        )
    })
}

fn pair<'a>(
    what: &str,
    cert: &'a Option<PathBuf>,
    key: &'a Option<PathBuf>,
) -> Result<Option<(&'a Path, &'a Path)>, String> {
    match (cert, key) {
        (Some(c), Some(k)) => Ok(Some((c, k))),
        (None, None) => Ok(None),
        _ => Err(format!(
            "tls: {what} certificate and key go together; set both or neither"
        )),
    }
}

impl TlsConfig {
    pub fn serves_tls(&self) -> bool {
        self.cert.is_some()
    }

    /// Checks the settings and reads every file once, so that a typo fails
    /// at start, not at the first connection.
    pub fn validate(&self) -> Result<(), String> {
        self.rustls_server()?;
        self.client()?;
        Ok(())
    }

    /// The tonic server settings, `None` when TLS is off.
    pub fn tonic_server(&self) -> Result<Option<ServerTlsConfig>, String> {
        let Some((cert, key)) = pair("server", &self.cert, &self.key)? else {
            if self.client_ca.is_some() {
                return Err("tls.client_ca needs tls.cert and tls.key".into());
            }
            return Ok(None);
        };
        // `prepare` parsed these files already and named any bad one (tonic
        // only says "invalid certificate" at the first handshake).
        let mut tls = ServerTlsConfig::new()
            .identity(Identity::from_pem(
                read("certificate", cert)?,
                read("key", key)?,
            ))
            .timeout(HANDSHAKE_TIMEOUT);
        if let Some(ca) = &self.client_ca {
            tls = tls.client_ca_root(Certificate::from_pem(read("client CA", ca)?));
        }
        Ok(Some(tls))
    }

    /// A rustls server config (HTTP/2 and HTTP/1.1 by ALPN) for listeners
    /// that tonic does not drive: the gateway's HTTP + gRPC port.
    pub fn rustls_server(&self) -> Result<Option<Arc<rustls::ServerConfig>>, String> {
        let Some((cert, key)) = pair("server", &self.cert, &self.key)? else {
            return Ok(None);
        };
        let chain = certs("certificate", cert)?;
        let key = PrivateKeyDer::from_pem_slice(&read("key", key)?).map_err(|e| {
            format!(
                "tls.key {}: no PEM private key in it ({e})",
                self.key.as_deref().unwrap_or(Path::new("")).display()
            )
        })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("tls: {e}"))?;
        let builder = match &self.client_ca {
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in certs("client CA", ca)? {
                    roots
                        .add(c)
                        .map_err(|e| format!("tls.client_ca {}: {e}", ca.display()))?;
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .map_err(|e| format!("tls.client_ca {}: {e}", ca.display()))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_single_cert(chain, key).map_err(|e| {
            format!("tls.cert and tls.key do not make a usable server identity: {e}")
        })?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Some(Arc::new(config)))
    }

    /// The client settings for `https://` URLs.
    pub fn client(&self) -> Result<ClientTlsConfig, String> {
        let mut tls = ClientTlsConfig::new().timeout(HANDSHAKE_TIMEOUT);
        tls = match &self.ca {
            Some(ca) => {
                let pem = read("CA", ca)?;
                parse_certs("CA", ca, &pem)?;
                tls.ca_certificate(Certificate::from_pem(pem))
            }
            None => tls.with_webpki_roots(),
        };
        if let Some((cert, key)) = pair("client", &self.client_cert, &self.client_key)? {
            tls = tls.identity(Identity::from_pem(
                read("client certificate", cert)?,
                read("client key", key)?,
            ));
        }
        Ok(tls)
    }

    /// Makes this process's calls to `https://` service URLs use these
    /// settings (the first call wins: the services of one process share
    /// them, as they share the internal token).
    pub fn install_client(&self) -> Result<(), String> {
        let tls = self.client()?;
        let _ = CLIENT_TLS.set(tls);
        Ok(())
    }
}

fn certs(what: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    parse_certs(what, path, &read(what, path)?)
}

fn parse_certs(
    what: &str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("TLS {what} {}: bad PEM ({e})", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "TLS {what} {}: no PEM certificate in it",
            path.display()
        ));
    }
    Ok(certs)
}

/// Checks the settings (so that a typo fails at start, naming the file),
/// installs the client side for this process's calls to other services,
/// and gives the server config for listeners tonic does not drive: the
/// first thing each service's `serve` does.
pub fn prepare(tls: &TlsConfig) -> Result<Option<Arc<rustls::ServerConfig>>, String> {
    let server = tls.rustls_server()?;
    tls.install_client()?;
    Ok(server)
}

/// The server side of an HTTP/2 keep-alive: a ping after this much
/// silence, and the connection closed when its answer does not come in
/// `KEEPALIVE_TIMEOUT` (a peer that went away without closing).
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// A tonic server builder with TLS when `tls` configures it, HTTP/2
/// keep-alive, and each request counted on its connection for the
/// connection deadlines of [`crate::conn`] (serve it with
/// [`crate::grpc::incoming`]).
pub fn server_builder(
    tls: &TlsConfig,
) -> Result<
    tonic::transport::Server<
        tower::layer::util::Stack<crate::conn::TrackLayer, tower::layer::util::Identity>,
    >,
    String,
> {
    let builder = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .layer(crate::conn::TrackLayer);
    match tls.tonic_server()? {
        Some(t) => builder
            .tls_config(t)
            .map_err(|e| format!("TLS server settings: {e}")),
        None => Ok(builder),
    }
}

static CLIENT_TLS: OnceLock<ClientTlsConfig> = OnceLock::new();

/// An endpoint for a service URL: `https://` uses TLS with the installed
/// client settings (public roots when none were installed).
pub fn endpoint(url: &str) -> Result<Endpoint, String> {
    endpoint_named(url, None)
}

/// As [`endpoint`], for a URL whose host was resolved to an address:
/// `server_name` is the name the certificate is checked against.
pub fn endpoint_named(url: &str, server_name: Option<&str>) -> Result<Endpoint, String> {
    let endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|e| format!("bad service url {url:?}: {e}"))?;
    if !url.starts_with("https://") {
        return Ok(endpoint);
    }
    let mut tls = match CLIENT_TLS.get() {
        Some(t) => t.clone(),
        None => ClientTlsConfig::new().with_webpki_roots(),
    };
    if let Some(name) = server_name {
        tls = tls.domain_name(name);
    }
    endpoint
        .tls_config(tls)
        .map_err(|e| format!("TLS settings for {url}: {e}"))
}

/// A listener whose connections arrive TLS-decrypted, for `axum::serve`,
/// within the connection cap and deadlines of its [`crate::conn::Listener`]
/// (a handshake counts against the header-read deadline). Handshakes run in
/// their own tasks (with a deadline), so one slow client does not stall the
/// accept loop; failed handshakes are logged and dropped.
pub struct TlsListener {
    rx: tokio::sync::mpsc::Receiver<(TlsStream, SocketAddr)>,
    local: SocketAddr,
}

type TlsStream = tokio_rustls::server::TlsStream<crate::conn::GuardedIo>;

impl TlsListener {
    pub fn new(
        listener: crate::conn::Listener,
        config: Arc<rustls::ServerConfig>,
    ) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let tcp = tokio::select! {
                    // The server is gone: stop accepting.
                    _ = tx.closed() => return,
                    io = listener.next() => io,
                };
                let peer = tcp.info().remote;
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(Self { rx, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(conn) => conn,
            // The accept task only ends once this receiver is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_by_default_and_pairs_are_checked() {
        let off = TlsConfig::default();
        assert!(off.tonic_server().expect("off").is_none());
        assert!(off.rustls_server().expect("off").is_none());
        let half = TlsConfig {
            cert: Some("/nonexistent.pem".into()),
            ..Default::default()
        };
        let e = half.validate().expect_err("cert without key");
        assert!(e.contains("set both or neither"), "{e}");
        let missing = TlsConfig {
            cert: Some("/nonexistent/cert.pem".into()),
            key: Some("/nonexistent/key.pem".into()),
            ..Default::default()
        };
        let e = missing.validate().expect_err("missing files");
        assert!(e.contains("/nonexistent/cert.pem"), "{e}");
        let ca_alone = TlsConfig {
            client_ca: Some("/x.pem".into()),
            ..Default::default()
        };
        assert!(ca_alone.tonic_server().is_err());
    }

    #[test]
    fn garbage_files_are_named() {
        let dir = std::env::temp_dir().join(format!("cbir-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let junk = dir.join("junk.pem");
        std::fs::write(&junk, b"not a certificate").expect("write");
        let cfg = TlsConfig {
            cert: Some(junk.clone()),
            key: Some(junk.clone()),
            ..Default::default()
        };
        let e = cfg.validate().expect_err("junk");
        assert!(e.contains("junk.pem"), "{e}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
