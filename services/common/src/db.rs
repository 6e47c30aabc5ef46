//! What the services with a database share: connection settings, one
//! writer at a time on SQLite, and which errors are worth another try.
//!
//! SQLite allows one writer per database file. A transaction that reads
//! first and writes later (`BEGIN` is deferred) holds a snapshot; when
//! another connection commits in between, the upgrade to a writer fails at
//! once with `SQLITE_BUSY_SNAPSHOT`, whatever the busy timeout. So every
//! write transaction here takes its turn among the process's writers (an
//! async mutex per database), and its first statement writes: the write
//! lock is taken before any snapshot, and a writer in another process (a
//! second index replica on the same file) makes it wait in the busy
//! handler instead of failing. MariaDB has row locks, so writers run
//! concurrently there; a deadlock or lock wait timeout rolls the
//! transaction back, and the whole transaction is tried again.

use std::future::Future;
use std::ops::Deref;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sea_orm::{
    ConnectOptions, ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr,
    RuntimeErr, SqlxError, TransactionTrait,
};
use tokio::sync::{Mutex, OwnedMutexGuard};

/// How long a SQLite statement waits for another process's write lock.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a write waits for its turn among this process's writers.
pub const TURN_TIMEOUT: Duration = Duration::from_secs(30);
/// Attempts of a write that met a transient condition, and the time after
/// which no new attempt starts.
pub const ATTEMPTS: u32 = 8;
pub const RETRY_WINDOW: Duration = Duration::from_secs(30);

/// The message of a write that did not get its turn in [`TURN_TIMEOUT`].
const NO_TURN: &str = "other writes kept the database busy";

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

/// Whether `e` is a transient lock conflict that rolled the statement or
/// transaction back: SQLite's `SQLITE_BUSY` and `SQLITE_LOCKED` (with their
/// extended codes, `BUSY_SNAPSHOT` among them), MySQL's deadlock (1213) and
/// lock wait timeout (1205), or no turn among this process's writers. The
/// whole transaction may be run again.
pub fn busy(e: &DbErr) -> bool {
    match e {
        DbErr::Exec(RuntimeErr::SqlxError(SqlxError::Database(d)))
        | DbErr::Query(RuntimeErr::SqlxError(SqlxError::Database(d)))
        | DbErr::Conn(RuntimeErr::SqlxError(SqlxError::Database(d))) => {
            if let Some(m) = d.try_downcast_ref::<sea_orm::SqlxMySqlError>() {
                return matches!(m.number(), 1205 | 1213);
            }
            if d.try_downcast_ref::<sea_orm::SqlxSqliteError>().is_some() {
                // The extended code; its low byte is the primary one.
                let code = d.code().and_then(|c| c.parse::<i32>().ok()).unwrap_or(0);
                return matches!(code & 0xff, 5 | 6);
            }
            false
        }
        DbErr::Custom(m) => m.starts_with(NO_TURN),
        _ => false,
    }
}

/// Whether `e` is a unique-key violation (an insert that raced another
/// writer's insert of the same key, on MariaDB).
pub fn unique_violation(e: &DbErr) -> bool {
    matches!(
        e.sql_err(),
        Some(sea_orm::SqlErr::UniqueConstraintViolation(_))
    )
}

/// Pool settings, and on SQLite the settings every connection gets when it
/// opens (a `PRAGMA` through the pool would reach one connection only): WAL,
/// so that readers never block the writer; `synchronous=NORMAL`, durable
/// across process crashes; the busy timeout; foreign keys on; and
/// `sqlite_pragmas` of the caller (applied before the journal mode, as a
/// page size must be).
pub fn connect_options(
    url: String,
    max_connections: u32,
    sqlite_pragmas: &'static [(&'static str, &'static str)],
) -> ConnectOptions {
    let mut opts = ConnectOptions::new(url);
    opts.max_connections(max_connections.max(1))
        .min_connections(1)
        .connect_timeout(Duration::from_secs(10))
        .acquire_timeout(Duration::from_secs(30))
        .sqlx_logging(false)
        .map_sqlx_sqlite_opts(move |o| {
            let mut o = o;
            for (k, v) in sqlite_pragmas {
                o = o.pragma(*k, *v);
            }
            o.journal_mode(sea_orm::sqlx::sqlite::SqliteJournalMode::Wal)
                .synchronous(sea_orm::sqlx::sqlite::SqliteSynchronous::Normal)
                .busy_timeout(BUSY_TIMEOUT)
                .foreign_keys(true)
        });
    opts
}

/// Starts write transactions: on SQLite one at a time in this process, each
/// opening with `claim`, a statement that changes nothing but takes the
/// database's write lock (`UPDATE t SET c = c WHERE 0`).
#[derive(Clone)]
pub struct Writer {
    turn: Option<Arc<Mutex<()>>>,
    claim: String,
}

impl Writer {
    pub fn new(backend: DbBackend, claim: &str) -> Self {
        let sqlite = backend == DbBackend::Sqlite;
        Self {
            turn: sqlite.then(|| Arc::new(Mutex::new(()))),
            claim: if sqlite {
                claim.to_string()
            } else {
                String::new()
            },
        }
    }

    pub async fn begin(&self, db: &DatabaseConnection) -> Result<WriteTx, DbErr> {
        let turn = match &self.turn {
            Some(m) => Some(
                tokio::time::timeout(TURN_TIMEOUT, m.clone().lock_owned())
                    .await
                    .map_err(|_| {
                        DbErr::Custom(format!("{NO_TURN} for {} s", TURN_TIMEOUT.as_secs()))
                    })?,
            ),
            None => None,
        };
        let tx = db.begin().await?;
        if !self.claim.is_empty() {
            tx.execute_unprepared(&self.claim).await?;
        }
        Ok(WriteTx { tx, _turn: turn })
    }
}

/// A write transaction holding its turn until commit or drop (rollback).
pub struct WriteTx {
    tx: DatabaseTransaction,
    _turn: Option<OwnedMutexGuard<()>>,
}

impl Deref for WriteTx {
    type Target = DatabaseTransaction;

    fn deref(&self) -> &DatabaseTransaction {
        &self.tx
    }
}

impl WriteTx {
    pub async fn commit(self) -> Result<(), DbErr> {
        self.tx.commit().await
    }
}

/// Runs `attempt` until it succeeds, fails with an error `is_busy` does not
/// accept, or [`ATTEMPTS`] / [`RETRY_WINDOW`] run out (then its last error
/// is returned). Each attempt must be a whole transaction: a busy error
/// rolled it back. Waits grow from 10 ms to 1 s, with jitter so that
/// writers that collided do not collide again.
pub async fn retry<T, E, F, Fut>(
    what: &str,
    is_busy: impl Fn(&E) -> bool,
    mut attempt: F,
) -> Result<T, E>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let started = Instant::now();
    let mut wait = Duration::from_millis(10);
    let mut n = 1;
    loop {
        match attempt().await {
            Err(e) if is_busy(&e) && n < ATTEMPTS && started.elapsed() < RETRY_WINDOW => {
                tracing::debug!(what, attempt = n, error = %e, "database busy; trying the write again");
                tokio::time::sleep(wait + jitter(wait)).await;
                wait = (wait * 2).min(Duration::from_secs(1));
                n += 1;
            }
            Err(e) => {
                if is_busy(&e) {
                    tracing::warn!(what, attempts = n, error = %e, "database still busy; giving up");
                }
                return Err(e);
            }
            ok => return ok,
        }
    }
}

/// Up to `d` more, from the clock's nanoseconds (no random generator needed
/// for spreading retries).
fn jitter(d: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|t| t.subsec_nanos())
        .unwrap_or(0);
    let ms = d.as_millis().max(1) as u32;
    Duration::from_millis(u64::from(nanos.wrapping_mul(2_654_435_761) % ms))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    use sea_orm::{
        ConnAcquireErr, ConnectionTrait, Database, DbBackend, DbErr, RuntimeErr, SqlxError,
    };

    use super::*;

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
        assert!(!busy(&DbErr::Custom("x".into())));
        assert!(!busy(&DbErr::ConnectionAcquire(ConnAcquireErr::Timeout)));
    }

    fn sqlite_url(dir: &tempfile::TempDir) -> String {
        format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display())
    }

    /// A second process's writer (here a separate pool without the shared
    /// turn) holding the write lock makes a plain deferred transaction fail
    /// at its first write after a read with `SQLITE_BUSY_SNAPSHOT`: `busy`
    /// knows it. A transaction from `Writer` waits for the lock instead and
    /// succeeds.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_busy_errors_are_recognised_and_writers_wait() {
        let dir = tempfile::tempdir().expect("tmp");
        let url = sqlite_url(&dir);
        let a = Database::connect(connect_options(url.clone(), 2, &[]))
            .await
            .expect("a");
        a.execute_unprepared("CREATE TABLE t (id INTEGER PRIMARY KEY, x INTEGER NOT NULL)")
            .await
            .expect("create");
        a.execute_unprepared("INSERT INTO t VALUES (1, 0)")
            .await
            .expect("insert");
        let b = Database::connect(connect_options(url, 2, &[]))
            .await
            .expect("b");
        let mode = b
            .query_one(sea_orm::Statement::from_string(
                DbBackend::Sqlite,
                "PRAGMA journal_mode",
            ))
            .await
            .expect("pragma")
            .expect("row");
        assert_eq!(mode.try_get_by_index::<String>(0).expect("mode"), "wal");

        // A deferred transaction reads, another connection commits, the
        // upgrade fails at once.
        let stale = b.begin().await.expect("begin");
        stale
            .execute_unprepared("SELECT x FROM t")
            .await
            .expect("read");
        a.execute_unprepared("UPDATE t SET x = 1")
            .await
            .expect("a writes");
        let started = std::time::Instant::now();
        let err = stale
            .execute_unprepared("UPDATE t SET x = 2")
            .await
            .expect_err("stale snapshot");
        assert!(busy(&err), "{err:?}");
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(!unreachable(&err));
        drop(stale);

        // Another process holds the write lock for a while: a writer waits
        // for it rather than failing.
        let holder = a.begin().await.expect("begin");
        holder
            .execute_unprepared("UPDATE t SET x = 3")
            .await
            .expect("hold the lock");
        let writer = Writer::new(DbBackend::Sqlite, "UPDATE t SET x = x WHERE 0");
        let release = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            holder.commit().await.expect("commit");
        });
        let tx = writer.begin(&b).await.expect("waits for the lock");
        tx.execute_unprepared("UPDATE t SET x = x + 10")
            .await
            .expect("write");
        tx.commit().await.expect("commit");
        release.await.expect("release");
        let row = b
            .query_one(sea_orm::Statement::from_string(
                DbBackend::Sqlite,
                "SELECT x FROM t",
            ))
            .await
            .expect("read")
            .expect("row");
        assert_eq!(row.try_get_by_index::<i64>(0).expect("x"), 13);
    }

    #[tokio::test]
    async fn retry_repeats_busy_attempts_only() {
        let calls = AtomicU32::new(0);
        let r: Result<u32, String> = retry(
            "test",
            |e: &String| e == "busy",
            || async {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                if n < 3 {
                    Err("busy".to_string())
                } else {
                    Ok(n)
                }
            },
        )
        .await;
        assert_eq!(r, Ok(3));
        let calls = AtomicU32::new(0);
        let r: Result<u32, String> = retry(
            "test",
            |e: &String| e == "busy",
            || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err("broken".to_string())
            },
        )
        .await;
        assert_eq!(r, Err("broken".to_string()));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        let calls = AtomicU32::new(0);
        let r: Result<u32, String> = retry(
            "test",
            |e: &String| e == "busy",
            || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err("busy".to_string())
            },
        )
        .await;
        assert_eq!(r, Err("busy".to_string()));
        assert_eq!(calls.load(Ordering::SeqCst), ATTEMPTS);
    }
}
