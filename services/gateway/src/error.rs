use axum::http::StatusCode;
use cbir_common::Code as ErrorCode;
use tonic::{Code, Status};

/// The backing service a failure came from, named in every message so
/// that a user knows which process to look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Upstream {
    Inference,
    Index,
    Training,
}

impl std::fmt::Display for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Upstream::Inference => "inference",
            Upstream::Index => "index",
            Upstream::Training => "training",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    ResourceExhausted(String),
    /// Over a rate limit: the answer says when to come back.
    #[error("{message}")]
    RateLimited { message: String, retry_after_s: u64 },
    /// The request names a host that is not this gateway (DNS rebinding).
    #[error("{0}")]
    WrongHost(String),
    /// The client stopped sending its request.
    #[error("{0}")]
    ClientTimeout(String),
    /// Out of a disk quota (training datasets): freeing space helps,
    /// retrying does not.
    #[error("{0}")]
    InsufficientStorage(String),
    #[error("the {service} service is unavailable: {detail}")]
    Unavailable { service: Upstream, detail: String },
    #[error("the {service} service did not answer in time: {detail}")]
    DeadlineExceeded { service: Upstream, detail: String },
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("internal error: {0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Translates a status from a backing service: client errors pass
    /// through with their message, transport failures name the service.
    pub fn upstream(service: Upstream, status: Status) -> Self {
        let msg = status.message().to_string();
        // tonic reports its own client-side deadline as CANCELLED.
        if status.code() == Code::Cancelled && msg.contains("Timeout expired") {
            return Error::DeadlineExceeded {
                service,
                detail: "the call's deadline passed; the service is overloaded or stuck".into(),
            };
        }
        match status.code() {
            Code::InvalidArgument | Code::OutOfRange => Error::InvalidArgument(msg),
            Code::NotFound => Error::NotFound(msg),
            Code::AlreadyExists => Error::AlreadyExists(msg),
            Code::FailedPrecondition => Error::FailedPrecondition(msg),
            // A backing service refusing what the caller may not touch (a
            // server folder outside the allowed roots).
            Code::PermissionDenied => Error::Forbidden(msg),
            Code::ResourceExhausted
                if status
                    .metadata()
                    .contains_key(cbir_common::grpc::QUOTA_HEADER) =>
            {
                Error::InsufficientStorage(msg)
            }
            Code::ResourceExhausted => Error::ResourceExhausted(format!(
                "the {service} service is overloaded ({msg}); retry shortly"
            )),
            Code::Unavailable | Code::Unknown | Code::Cancelled | Code::Aborted => {
                Error::Unavailable {
                    service,
                    detail: unavailable_detail(service, &msg),
                }
            }
            Code::DeadlineExceeded => Error::DeadlineExceeded {
                service,
                detail: msg,
            },
            Code::Ok
            | Code::Unauthenticated
            | Code::Unimplemented
            | Code::Internal
            | Code::DataLoss => Error::Internal(format!("the {service} service failed: {msg}")),
        }
    }

    /// The one place each variant gets its code: HTTP status, REST code
    /// and gRPC code follow from it.
    pub fn error_code(&self) -> ErrorCode {
        match self {
            Error::InvalidArgument(_) => ErrorCode::InvalidArgument,
            Error::NotFound(_) => ErrorCode::NotFound,
            Error::AlreadyExists(_) => ErrorCode::AlreadyExists,
            Error::FailedPrecondition(_) => ErrorCode::FailedPrecondition,
            Error::TooLarge(_) => ErrorCode::PayloadTooLarge,
            Error::UnsupportedMediaType(_) => ErrorCode::UnsupportedMediaType,
            Error::Forbidden(_) => ErrorCode::Forbidden,
            Error::Unauthenticated(_) => ErrorCode::Unauthenticated,
            Error::PermissionDenied(_) => ErrorCode::PermissionDenied,
            Error::ResourceExhausted(_) | Error::RateLimited { .. } => ErrorCode::ResourceExhausted,
            Error::WrongHost(_) => ErrorCode::MisdirectedRequest,
            Error::ClientTimeout(_) => ErrorCode::RequestTimeout,
            Error::InsufficientStorage(_) => ErrorCode::InsufficientStorage,
            Error::Unavailable { .. } => ErrorCode::Unavailable,
            Error::DeadlineExceeded { .. } => ErrorCode::DeadlineExceeded,
            Error::Config(_) | Error::Internal(_) => ErrorCode::Internal,
        }
    }

    /// Snake-case code of the REST error body.
    pub fn code(&self) -> &'static str {
        self.error_code().name()
    }

    pub fn service(&self) -> Option<Upstream> {
        match self {
            Error::Unavailable { service, .. } | Error::DeadlineExceeded { service, .. } => {
                Some(*service)
            }
            _ => None,
        }
    }

    /// Seconds a client should wait before trying again, for the answers
    /// that mean "not now" (429 and 503): the `Retry-After` header.
    pub fn retry_after_s(&self) -> Option<u64> {
        match self {
            Error::RateLimited { retry_after_s, .. } => Some((*retry_after_s).max(1)),
            _ => self.error_code().retry_after_s(),
        }
    }

    pub fn http_status(&self) -> StatusCode {
        self.error_code().http()
    }
}

fn unavailable_detail(service: Upstream, msg: &str) -> String {
    let hint = match service {
        Upstream::Inference => {
            "start it (cbir up, or cbir-inference) or check GATEWAY_INFERENCE_URLS"
        }
        Upstream::Index => {
            "start it (cbir up, or cbir-index) or check GATEWAY_INDEX_URLS (GATEWAY_INDEX_SHARDS when sharded)"
        }
        Upstream::Training => "start it (cbir up, or cbir-training) or check GATEWAY_TRAINING_URLS",
    };
    if msg.is_empty() {
        hint.to_string()
    } else {
        format!("{msg}; {hint}")
    }
}

impl From<Error> for Status {
    fn from(err: Error) -> Self {
        err.error_code().status(&err)
    }
}

impl axum::response::IntoResponse for Error {
    fn into_response(self) -> axum::response::Response {
        let status = self.http_status();
        let message = if self.error_code() == ErrorCode::Internal {
            tracing::error!(error = %self, "internal error");
            "internal error; see the gateway log".to_string()
        } else {
            self.to_string()
        };
        let body = serde_json::json!({
            "error": { "code": self.code(), "message": message, "service": self.service() }
        });
        let mut resp = (status, axum::Json(body)).into_response();
        if let Some(s) = self.retry_after_s() {
            resp.headers_mut()
                .insert(http::header::RETRY_AFTER, http::HeaderValue::from(s));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_statuses_map_to_clear_errors() {
        let e = Error::upstream(
            Upstream::Inference,
            Status::unavailable("tcp connect error"),
        );
        assert_eq!(e.http_status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(e.service(), Some(Upstream::Inference));
        assert!(
            e.to_string()
                .starts_with("the inference service is unavailable: tcp connect error; start it"),
            "{e}"
        );
        let e = Error::upstream(Upstream::Index, Status::cancelled("Timeout expired"));
        assert_eq!(e.http_status(), StatusCode::GATEWAY_TIMEOUT);
        assert!(
            e.to_string()
                .contains("index service did not answer in time"),
            "{e}"
        );
        let mut quota = Status::resource_exhausted("over max_datasets_bytes: delete datasets");
        quota.metadata_mut().insert(
            cbir_common::grpc::QUOTA_HEADER,
            tonic::metadata::AsciiMetadataValue::from_static("datasets"),
        );
        let e = Error::upstream(Upstream::Training, quota);
        assert_eq!(e.http_status(), StatusCode::INSUFFICIENT_STORAGE);
        assert_eq!(e.to_string(), "over max_datasets_bytes: delete datasets");
        let e = Error::upstream(
            Upstream::Inference,
            Status::invalid_argument("not an image"),
        );
        assert_eq!(e.http_status(), StatusCode::BAD_REQUEST);
        assert_eq!(Status::from(e).code(), Code::InvalidArgument);
        let r = axum::response::IntoResponse::into_response(Error::upstream(
            Upstream::Index,
            Status::unavailable("database is locked"),
        ));
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[http::header::RETRY_AFTER], "1");
        let r = axum::response::IntoResponse::into_response(Error::RateLimited {
            message: "slow down".into(),
            retry_after_s: 7,
        });
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[http::header::RETRY_AFTER], "7");
        let e = Error::upstream(Upstream::Index, Status::internal("disk on fire"));
        assert_eq!(
            Status::from(e).message(),
            "internal error; see the service log"
        );
    }
}
