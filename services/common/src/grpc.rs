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

/// Default limit on one gRPC message; images arrive inside messages.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// The accepted-connection stream of a gRPC server on `listener`, with
/// Nagle off: small replies otherwise wait for the peer's delayed ACK
/// (tens of milliseconds per call).
pub fn incoming(listener: tokio::net::TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// Asks the gRPC health service at `addr` (host:port) whether `service` is
/// SERVING: the container health check of every service binary
/// (`--probe`). A listen address of 0.0.0.0 is probed on loopback.
pub async fn probe(addr: &str, service: &str) -> Result<(), String> {
    let addr = addr
        .replace("0.0.0.0", "127.0.0.1")
        .replace("[::]", "[::1]");
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| format!("bad address {addr}: {e}"))?
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
