use cbir_common::Code;
use tonic::Status;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid request: {0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    Unavailable(String),
    /// A transient lock conflict in the database that outlasted the retries.
    #[error("{0}")]
    Busy(String),
    /// The datasets' disk quota (`max_datasets_bytes`).
    #[error("{0}")]
    QuotaExceeded(String),
    #[error("the job was cancelled")]
    Cancelled,
    #[error("training failed: {0}")]
    Training(String),
    #[error("file error: {0}")]
    Io(String),
    #[error("database error: {0}")]
    Database(String),
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("internal error: {0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<cbir_dataset::Error> for Error {
    fn from(e: cbir_dataset::Error) -> Self {
        match e {
            cbir_dataset::Error::InvalidArgument(m) => Error::InvalidArgument(m),
            cbir_dataset::Error::Io(m) => Error::Io(m),
        }
    }
}

impl From<sea_orm::DbErr> for Error {
    fn from(e: sea_orm::DbErr) -> Self {
        if cbir_common::db::unreachable(&e) {
            Error::Unavailable(format!(
                "the database is unreachable ({e}); retry when it is back"
            ))
        } else if cbir_common::db::busy(&e) {
            Error::Busy(format!(
                "the database is busy with other writes ({e}); retry in a moment"
            ))
        } else {
            Error::Database(e.to_string())
        }
    }
}

impl From<tch::TchError> for Error {
    fn from(e: tch::TchError) -> Self {
        Error::Training(e.to_string())
    }
}

impl Error {
    /// What a client may read, as a failed job's message: file, database
    /// and internal causes (which may name server paths) stay in the log.
    pub fn public_message(&self) -> String {
        match self {
            Error::Io(_) | Error::Database(_) | Error::Internal(_) => {
                "the training service failed on its side (a file or database error); its log has the cause".into()
            }
            other => other.to_string(),
        }
    }
}

impl Error {
    pub fn error_code(&self) -> Code {
        match self {
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::NotFound(_) => Code::NotFound,
            Error::FailedPrecondition(_) | Error::Config(_) => Code::FailedPrecondition,
            Error::PermissionDenied(_) => Code::PermissionDenied,
            Error::Unavailable(_) | Error::Busy(_) => Code::Unavailable,
            // Out of disk, not busy: the gateway answers 507.
            Error::QuotaExceeded(_) => Code::InsufficientStorage,
            Error::Cancelled => Code::Cancelled,
            Error::Training(_) | Error::Io(_) | Error::Database(_) | Error::Internal(_) => {
                Code::Internal
            }
        }
    }
}

impl From<Error> for Status {
    fn from(err: Error) -> Self {
        err.error_code().status(&err)
    }
}
