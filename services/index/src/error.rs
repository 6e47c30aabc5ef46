use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid request: {0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Unavailable(String),
    /// A transient lock conflict in the database that outlasted the retries.
    #[error("{0}")]
    Busy(String),
    #[error("database error: {0}")]
    Database(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("internal error: {0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<Error> for Status {
    fn from(err: Error) -> Self {
        match &err {
            Error::InvalidArgument(_) => Status::new(Code::InvalidArgument, err.to_string()),
            Error::NotFound(_) => Status::new(Code::NotFound, err.to_string()),
            Error::AlreadyExists(_) => Status::new(Code::AlreadyExists, err.to_string()),
            Error::FailedPrecondition(_) | Error::Config(_) => {
                Status::new(Code::FailedPrecondition, err.to_string())
            }
            Error::Unavailable(_) | Error::Busy(_) => {
                Status::new(Code::Unavailable, err.to_string())
            }
            Error::Database(_) | Error::Corrupt(_) | Error::Internal(_) => {
                cbir_common::error::internal(&err)
            }
        }
    }
}
