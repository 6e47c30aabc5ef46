use cbir_common::Code;
use tonic::Status;

use crate::priority::Priority;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Image(#[from] cbir_imaging::Error),
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error(
        "the {priority:?} queue is full ({queued} of {capacity} waiting): retry later or send fewer images at once"
    )]
    QueueFull {
        priority: Priority,
        queued: usize,
        capacity: usize,
    },
    #[error("the inference service is shutting down")]
    ShuttingDown,
    #[error("cannot load model: {0}")]
    ModelLoad(String),
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("{0}")]
    Forbidden(String),
    /// A swap in the middle of a request sent this image through another
    /// model than the rest: the caller retries it.
    #[error("{0}")]
    ModelChanged(String),
    #[error("forward pass failed: {0}")]
    Inference(String),
    #[error("internal error: {0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<Error> for Status {
    fn from(err: Error) -> Self {
        err.error_code().status(&err)
    }
}

impl Error {
    pub fn error_code(&self) -> Code {
        match self {
            // The decode budget: full now (retry), or the image alone is
            // over it.
            Error::Image(e) if e.is_budget() => Code::ResourceExhausted,
            Error::Image(_) | Error::InvalidRequest(_) | Error::ModelLoad(_) => {
                Code::InvalidArgument
            }
            Error::QueueFull { .. } => Code::ResourceExhausted,
            Error::ShuttingDown => Code::Unavailable,
            Error::Config(_) => Code::FailedPrecondition,
            Error::Forbidden(_) => Code::Forbidden,
            Error::ModelChanged(_) => Code::Aborted,
            Error::Inference(_) | Error::Internal(_) => Code::Internal,
        }
    }

    /// The google.rpc.Code of this error, for per-item errors in a batch.
    pub fn code(&self) -> tonic::Code {
        self.error_code().grpc()
    }
}
