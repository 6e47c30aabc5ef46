use std::path::PathBuf;

use sea_orm::{ConnectionTrait, Database};

/// A fresh database for one test; dropped (MySQL) or deleted (SQLite) at
/// the end.
pub struct TestDb {
    pub url: String,
    mysql_name: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

pub fn mysql_base() -> String {
    std::env::var("CBIR_TEST_MYSQL_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".into())
}

impl TestDb {
    pub async fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let path: PathBuf = dir.path().join("index.db");
        Self {
            url: format!("sqlite://{}", path.display()),
            mysql_name: None,
            _dir: Some(dir),
        }
    }

    pub async fn mysql() -> Self {
        let base = mysql_base();
        let admin = Database::connect(format!("{base}/mysql"))
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "MariaDB at {base} is not reachable ({e}): scripts/test.sh starts it; \
                     or set CBIR_TEST_MYSQL_URL"
                )
            });
        let name = format!("cbir_test_{}", uuid::Uuid::new_v4().simple());
        admin
            .execute_unprepared(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create database");
        Self {
            url: format!("{base}/{name}"),
            mysql_name: Some(name),
            _dir: None,
        }
    }

    pub async fn drop_db(self) {
        if let Some(name) = &self.mysql_name {
            if let Ok(admin) = Database::connect(format!("{}/mysql", mysql_base())).await {
                let _ = admin
                    .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name}"))
                    .await;
            }
        }
    }
}

/// Runs `$body(url)` once on SQLite, once on MariaDB, and once through a
/// Spider head whose image table is sharded over three MariaDB backends
/// (`crate::spider`; after the body, each class is on one backend).
#[macro_export]
macro_rules! both_backends {
    ($name:ident, $body:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let db = $crate::db::TestDb::sqlite().await;
                super::$body(&db.url).await;
                db.drop_db().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn mysql() {
                let db = $crate::db::TestDb::mysql().await;
                super::$body(&db.url).await;
                db.drop_db().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn spider() {
                let Some(spider) = $crate::spider::Spider::start().await else {
                    return;
                };
                let url = spider.sharded("cbir", &[]).await;
                super::$body(&url).await;
                spider.placement("cbir").await;
            }
        }
    };
}
