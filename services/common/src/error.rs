use tonic::{Code, Status};

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

impl From<Error> for Status {
    fn from(err: Error) -> Self {
        match err {
            Error::ConfigFileMissing { .. } | Error::Config(_) => {
                Status::new(Code::FailedPrecondition, err.to_string())
            }
            Error::Telemetry(_) | Error::Server(_) => internal(&err),
        }
    }
}

/// An INTERNAL status whose cause goes to the log, not to the client.
pub fn internal(err: &dyn std::fmt::Display) -> Status {
    tracing::error!(error = %err, "internal error");
    Status::internal("internal error; see the service log")
}
