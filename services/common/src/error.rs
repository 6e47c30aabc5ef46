//! The error codes of the whole system, each written once with its HTTP
//! status and its gRPC code (the model is meilisearch's
//! `make_error_codes!`), and the errors of the shared plumbing.

use tonic::Status;

/// Writes the [`Code`] enum and its three mappings from one table.
macro_rules! make_error_codes {
    ($($(#[$doc:meta])* $code:ident => $name:literal, $http:ident, $grpc:ident;)*) => {
        /// What kind of failure an error is: every crate's `Error` maps each
        /// of its variants to one, and the answer (HTTP status, REST code,
        /// gRPC code) follows from it.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Code {
            $($(#[$doc])* $code,)*
        }

        impl Code {
            pub const ALL: &'static [Code] = &[$(Code::$code,)*];

            /// Snake-case name: the `code` of the REST error body.
            pub fn name(self) -> &'static str {
                match self {
                    $(Code::$code => $name,)*
                }
            }

            pub fn http(self) -> http::StatusCode {
                match self {
                    $(Code::$code => http::StatusCode::$http,)*
                }
            }

            pub fn grpc(self) -> tonic::Code {
                match self {
                    $(Code::$code => tonic::Code::$grpc,)*
                }
            }
        }
    };
}

make_error_codes! {
    InvalidArgument => "invalid_argument", BAD_REQUEST, InvalidArgument;
    NotFound => "not_found", NOT_FOUND, NotFound;
    AlreadyExists => "already_exists", CONFLICT, AlreadyExists;
    FailedPrecondition => "failed_precondition", CONFLICT, FailedPrecondition;
    /// A model swap in the middle of a request: the caller retries it.
    Aborted => "aborted", CONFLICT, Aborted;
    /// A training job the user cancelled.
    Cancelled => "cancelled", CONFLICT, Cancelled;
    PayloadTooLarge => "payload_too_large", PAYLOAD_TOO_LARGE, InvalidArgument;
    UnsupportedMediaType => "unsupported_media_type", UNSUPPORTED_MEDIA_TYPE, InvalidArgument;
    /// Refused for where the request comes from or what it touches (an
    /// origin, a folder outside the allowed roots).
    Forbidden => "forbidden", FORBIDDEN, PermissionDenied;
    Unauthenticated => "unauthenticated", UNAUTHORIZED, Unauthenticated;
    /// Refused for who the caller is (its role).
    PermissionDenied => "permission_denied", FORBIDDEN, PermissionDenied;
    /// Busy or over a rate limit: retrying later helps.
    ResourceExhausted => "resource_exhausted", TOO_MANY_REQUESTS, ResourceExhausted;
    /// The request names a host that is not this gateway (DNS rebinding).
    MisdirectedRequest => "misdirected_request", MISDIRECTED_REQUEST, PermissionDenied;
    /// The client stopped sending its request.
    RequestTimeout => "request_timeout", REQUEST_TIMEOUT, DeadlineExceeded;
    /// Out of a disk quota: freeing space helps, retrying does not.
    InsufficientStorage => "insufficient_storage", INSUFFICIENT_STORAGE, ResourceExhausted;
    Unavailable => "unavailable", SERVICE_UNAVAILABLE, Unavailable;
    DeadlineExceeded => "deadline_exceeded", GATEWAY_TIMEOUT, DeadlineExceeded;
    /// A bug, a database or file failure: the cause goes to the log only.
    Internal => "internal", INTERNAL_SERVER_ERROR, Internal;
}

impl Code {
    /// Seconds a client should wait before trying again, for the answers
    /// that mean "not now" (429 and 503): the `Retry-After` header.
    pub fn retry_after_s(self) -> Option<u64> {
        match self {
            Code::ResourceExhausted | Code::Unavailable => Some(1),
            _ => None,
        }
    }

    /// The gRPC status of an error with this code: its message, except for
    /// internal errors (logged, a generic message instead); out-of-quota
    /// carries [`QUOTA_HEADER`](crate::grpc::QUOTA_HEADER) so that the
    /// gateway can tell it from busy.
    pub fn status(self, err: &dyn std::fmt::Display) -> Status {
        match self {
            Code::Internal => internal(err),
            Code::InsufficientStorage => {
                let mut s = Status::new(self.grpc(), err.to_string());
                s.metadata_mut().insert(
                    crate::grpc::QUOTA_HEADER,
                    tonic::metadata::AsciiMetadataValue::from_static("disk"),
                );
                s
            }
            _ => Status::new(self.grpc(), err.to_string()),
        }
    }
}

/// Errors of the shared plumbing (configuration, telemetry, servers).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("config file {path} does not exist: pass an existing file or leave the option out")]
    ConfigFileMissing { path: String },
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("telemetry setup failed: {0}")]
    Telemetry(String),
    #[error("server failed: {0}")]
    Server(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn error_code(&self) -> Code {
        match self {
            Error::ConfigFileMissing { .. } | Error::Config(_) => Code::FailedPrecondition,
            Error::Telemetry(_) | Error::Server(_) => Code::Internal,
        }
    }
}

impl From<Error> for Status {
    fn from(err: Error) -> Self {
        err.error_code().status(&err)
    }
}

/// An INTERNAL status whose cause goes to the log, not to the client.
pub fn internal(err: &dyn std::fmt::Display) -> Status {
    tracing::error!(error = %err, "internal error");
    Status::internal("internal error; see the service log")
}

#[cfg(test)]
mod tests {
    use super::Code;

    #[test]
    fn names_are_unique_and_snake_case() {
        let mut names: Vec<_> = Code::ALL.iter().map(|c| c.name()).collect();
        assert!(names
            .iter()
            .all(|n| n.chars().all(|c| c.is_ascii_lowercase() || c == '_')));
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Code::ALL.len());
    }

    #[test]
    fn internal_statuses_hide_the_cause() {
        let s = Code::Internal.status(&"disk on fire at /srv/x");
        assert_eq!(s.code(), tonic::Code::Internal);
        assert!(!s.message().contains("/srv/x"));
        let s = Code::InsufficientStorage.status(&"over the quota");
        assert_eq!(s.code(), tonic::Code::ResourceExhausted);
        assert!(s.metadata().contains_key(crate::grpc::QUOTA_HEADER));
    }
}
