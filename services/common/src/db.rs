//! What the services with a database share about its errors.

use sea_orm::{DbErr, RuntimeErr, SqlxError};

/// Whether `e` says the database could not be reached (down, restarting,
/// connection lost) rather than that a statement failed: callers get
/// UNAVAILABLE and may retry, and the pool reconnects by itself.
pub fn unreachable(e: &DbErr) -> bool {
    match e {
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => true,
        DbErr::Exec(RuntimeErr::SqlxError(s)) | DbErr::Query(RuntimeErr::SqlxError(s)) => {
            matches!(
                s,
                SqlxError::Io(_)
                    | SqlxError::PoolTimedOut
                    | SqlxError::PoolClosed
                    | SqlxError::Protocol(_)
                    | SqlxError::WorkerCrashed
            )
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use sea_orm::{ConnAcquireErr, DbErr, RuntimeErr, SqlxError};

    use super::unreachable;

    #[test]
    fn lost_connections_are_unreachable_failed_statements_are_not() {
        assert!(unreachable(&DbErr::ConnectionAcquire(
            ConnAcquireErr::Timeout
        )));
        assert!(unreachable(&DbErr::Conn(RuntimeErr::Internal(
            "refused".into()
        ))));
        assert!(unreachable(&DbErr::Exec(RuntimeErr::SqlxError(
            SqlxError::PoolTimedOut
        ))));
        assert!(unreachable(&DbErr::Query(RuntimeErr::SqlxError(
            SqlxError::Io(std::io::Error::from(std::io::ErrorKind::ConnectionReset))
        ))));
        assert!(!unreachable(&DbErr::Exec(RuntimeErr::Internal(
            "syntax error".into()
        ))));
        assert!(!unreachable(&DbErr::RecordNotFound("x".into())));
        assert!(!unreachable(&DbErr::Custom("x".into())));
    }
}
