//! Pieces every gRPC server of the system mounts: health and reflection.

use tonic_health::server::HealthReporter;

/// The standard `grpc.health.v1` service and its reporter. Services start
/// NOT_SERVING and switch to SERVING when they are ready.
pub fn health() -> (
    HealthReporter,
    tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
) {
    tonic_health::server::health_reporter()
}

/// gRPC reflection over the cbir.v1 contract and the health service, so that
/// `grpcurl` works against any service.
pub fn reflection() -> Result<
    tonic_reflection::server::v1::ServerReflectionServer<
        impl tonic_reflection::server::v1::ServerReflection,
    >,
    tonic_reflection::server::Error,
> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(cbir_api::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
}

/// Set on a RESOURCE_EXHAUSTED status that means out of a disk quota (not
/// busy: retrying will not help): the gateway answers 507.
pub const QUOTA_HEADER: &str = "x-cbir-quota";

/// When the caller's deadline (`grpc-timeout`) passes, measured from now.
pub fn deadline_of(metadata: &tonic::metadata::MetadataMap) -> Option<std::time::Instant> {
    let v = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (n, unit) = v.split_at(v.len().checked_sub(1)?);
    let n: u64 = n.parse().ok()?;
    let d = match unit {
        "H" => std::time::Duration::from_secs(n.saturating_mul(3600)),
        "M" => std::time::Duration::from_secs(n.saturating_mul(60)),
        "S" => std::time::Duration::from_secs(n),
        "m" => std::time::Duration::from_millis(n),
        "u" => std::time::Duration::from_micros(n),
        "n" => std::time::Duration::from_nanos(n),
        _ => return None,
    };
    std::time::Instant::now().checked_add(d)
}

/// Default limit on one gRPC message; images arrive inside messages.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// The accepted-connection stream of a gRPC server on `listener`, within
/// the connection cap and deadlines of `cfg` (see [`crate::conn`]), with
/// Nagle off: small replies otherwise wait for the peer's delayed ACK
/// (tens of milliseconds per call).
pub fn incoming(
    listener: tokio::net::TcpListener,
    cfg: &crate::conn::ConnectionConfig,
) -> impl futures::Stream<Item = std::io::Result<crate::conn::GuardedIo>> + Send + 'static {
    crate::conn::Listener::new(listener, cfg).into_stream()
}

/// Asks the gRPC health service at `addr` (host:port) whether `service` is
/// SERVING: the container health check of every service binary
/// (`--probe`). A listen address of 0.0.0.0 is probed on loopback. With TLS
/// on, the probe speaks TLS, presents the client certificate and checks
/// the server's certificate for the name `localhost`.
pub async fn probe(addr: &str, service: &str, tls: &crate::tls::TlsConfig) -> Result<(), String> {
    let addr = addr
        .replace("0.0.0.0", "127.0.0.1")
        .replace("[::]", "[::1]");
    let endpoint = if tls.serves_tls() {
        tls.install_client()?;
        crate::tls::endpoint_named(&format!("https://{addr}"), Some("localhost"))?
    } else {
        crate::tls::endpoint(&format!("http://{addr}"))?
    };
    let channel = endpoint
        .connect_timeout(std::time::Duration::from_secs(2))
        .timeout(std::time::Duration::from_secs(3))
        .connect()
        .await
        .map_err(|e| format!("nothing answers at {addr}: {e}"))?;
    let status = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: service.to_string(),
        })
        .await
        .map_err(|e| {
            format!(
                "health check of {service} at {addr} failed: {}",
                e.message()
            )
        })?
        .into_inner()
        .status;
    if status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32 {
        Ok(())
    } else {
        Err(format!(
            "{service} at {addr} is not serving yet (status {status})"
        ))
    }
}

/// The shared secret internal calls carry (`x-internal-token`), set once per
/// process from the service's `internal_token` setting; the gateway, the
/// training service and the index (rebuilds) send it to the services behind
/// them.
static OUTGOING_TOKEN: std::sync::OnceLock<tonic::metadata::AsciiMetadataValue> =
    std::sync::OnceLock::new();

pub const INTERNAL_TOKEN_HEADER: &str = "x-internal-token";

/// Makes every call this process sends carry `token` (the first one set
/// wins: the services of one process share the secret).
pub fn set_outgoing_internal_token(token: Option<&str>) -> Result<(), String> {
    if let Some(t) = token.map(str::trim).filter(|t| !t.is_empty()) {
        let v = t
            .parse()
            .map_err(|_| "internal_token must be printable ASCII".to_string())?;
        let _ = OUTGOING_TOKEN.set(v);
    }
    Ok(())
}

/// Adds the internal token, when one is set, to outgoing metadata.
pub fn attach_internal_token(metadata: &mut tonic::metadata::MetadataMap) {
    if let Some(v) = OUTGOING_TOKEN.get() {
        metadata.insert(INTERNAL_TOKEN_HEADER, v.clone());
    }
}

/// Refuses to serve an internal service (inference, index, training) where
/// anyone could call it: bound beyond loopback (0.0.0.0, ::, a LAN address,
/// a host name that resolves to one) with neither an internal token nor
/// mutual TLS. `addr` is the bound address, so a host name is judged by
/// what it resolved to. Loopback without either stays allowed: tests and
/// a laptop's `cbir up` reach nothing from outside.
pub fn require_closed(
    service: &str,
    env_prefix: &str,
    addr: std::net::SocketAddr,
    internal_token: Option<&str>,
    tls: &crate::tls::TlsConfig,
) -> Result<(), String> {
    let token = internal_token.is_some_and(|t| !t.trim().is_empty());
    let mutual_tls = tls.client_ca.is_some() && tls.cert.is_some();
    if addr.ip().to_canonical().is_loopback() || token || mutual_tls {
        return Ok(());
    }
    Err(format!(
        "the {service} service would listen on {addr} open to anyone who reaches it (clear \
         collections, read originals, load weights): set {env_prefix}_INTERNAL_TOKEN \
         (internal_token in its config; the same random value in every service, e.g. \
         `openssl rand -hex 32`), or mutual TLS (tls.client_ca with tls.cert and tls.key), \
         or listen on 127.0.0.1"
    ))
}

/// A tonic interceptor for an internal service: with `token` set, calls
/// without it (or with another) are refused as UNAUTHENTICATED, so only the
/// gateway and the other cbir services reach it. Health checks are separate
/// services and stay open.
pub fn internal_auth(
    token: Option<String>,
) -> impl FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Clone {
    let token: Option<std::sync::Arc<[u8]>> = token
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .map(|t| t.into_bytes().into());
    move |req: tonic::Request<()>| {
        let Some(expected) = &token else {
            return Ok(req);
        };
        let got = req
            .metadata()
            .get(INTERNAL_TOKEN_HEADER)
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        if crate::token::same(got, expected) {
            Ok(req)
        } else {
            Err(tonic::Status::unauthenticated(
                "this internal service accepts only calls from the gateway and the other cbir services: \
                 x-internal-token is missing or wrong (set the same internal_token in every service)",
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{deadline_of, require_closed};
    use crate::tls::TlsConfig;

    #[test]
    fn open_listeners_beyond_loopback_are_refused_naming_the_setting() {
        let none = TlsConfig::default();
        for addr in [
            "127.0.0.1:1",
            "127.8.9.1:1",
            "[::1]:1",
            "[::ffff:127.0.0.1]:1",
        ] {
            require_closed("index", "INDEX", addr.parse().unwrap(), None, &none)
                .unwrap_or_else(|e| panic!("{addr}: {e}"));
        }
        for addr in [
            "0.0.0.0:50052",
            "[::]:50052",
            "192.168.1.20:50052",
            "10.0.0.1:1",
        ] {
            let e = require_closed("index", "INDEX", addr.parse().unwrap(), None, &none)
                .expect_err(addr);
            assert!(e.contains("INDEX_INTERNAL_TOKEN"), "{e}");
            assert!(e.contains("tls.client_ca"), "{e}");
            let e = require_closed("index", "INDEX", addr.parse().unwrap(), Some("  "), &none)
                .expect_err("a blank token is none");
            assert!(e.contains("internal_token"), "{e}");
            require_closed(
                "index",
                "INDEX",
                addr.parse().unwrap(),
                Some("t0ken"),
                &none,
            )
            .expect("with a token");
        }
        let mutual = TlsConfig {
            cert: Some("c.pem".into()),
            key: Some("k.pem".into()),
            client_ca: Some("ca.pem".into()),
            ..Default::default()
        };
        require_closed(
            "index",
            "INDEX",
            "0.0.0.0:1".parse().unwrap(),
            None,
            &mutual,
        )
        .expect("mutual TLS");
        let server_only = TlsConfig {
            client_ca: None,
            ..mutual
        };
        require_closed(
            "index",
            "INDEX",
            "0.0.0.0:1".parse().unwrap(),
            None,
            &server_only,
        )
        .expect_err("TLS without client certificates authenticates nobody");
    }

    #[test]
    fn grpc_timeouts_give_deadlines() {
        let mut m = tonic::metadata::MetadataMap::new();
        assert!(deadline_of(&m).is_none());
        m.insert("grpc-timeout", "1500m".parse().expect("ascii"));
        let left = deadline_of(&m).expect("deadline") - std::time::Instant::now();
        assert!(
            left <= std::time::Duration::from_millis(1500)
                && left > std::time::Duration::from_millis(1000)
        );
        m.insert("grpc-timeout", "2S".parse().expect("ascii"));
        assert!(deadline_of(&m).is_some());
        m.insert("grpc-timeout", "x".parse().expect("ascii"));
        assert!(deadline_of(&m).is_none());
    }
}
