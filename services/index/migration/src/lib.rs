//! The index store's schema. Written per backend in SQL, because MySQL's
//! table partitioning has no place in a portable schema builder: in MySQL the
//! image table is `PARTITION BY HASH(predicted_class)`, so a query for one
//! class reads one partition; SQLite gets an index on the class instead.

pub use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DatabaseBackend;

/// Hash partitions of the MySQL image table. Class c lives in partition
/// c mod this, so classes below it have a partition of their own.
pub const MYSQL_PARTITIONS: u32 = 128;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261128_000001_initial::Migration),
            Box::new(m20261128_000002_load_order::Migration),
            Box::new(m20261128_000003_write_seq::Migration),
            Box::new(m20261202_000004_index_jobs::Migration),
            Box::new(m20261202_000010_duplicates::Migration),
            Box::new(m20261202_000011_browse::Migration),
        ]
    }
}

mod m20261128_000001_initial {
    use super::*;

    pub struct Migration;

    impl MigrationName for Migration {
        fn name(&self) -> &str {
            "m20261128_000001_initial"
        }
    }

    const MYSQL: &[&str] = &[
        "CREATE TABLE collections (
            id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
            name VARCHAR(255) NOT NULL,
            model_name VARCHAR(255) NOT NULL,
            model_version VARCHAR(255) NOT NULL,
            dims INT NOT NULL,
            description TEXT NOT NULL,
            created_at_ms BIGINT NOT NULL,
            UNIQUE KEY uq_collections_name (name)
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
        "CREATE TABLE aliases (
            alias VARCHAR(255) NOT NULL PRIMARY KEY,
            collection_id BIGINT NOT NULL,
            updated_at_ms BIGINT NOT NULL
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
        // Every unique key of a partitioned table must hold the partition
        // column, hence predicted_class in the primary and hash keys; a
        // content hash always gets the same class from the same model.
        "CREATE TABLE images (
            id BIGINT NOT NULL AUTO_INCREMENT,
            collection_id BIGINT NOT NULL,
            predicted_class INT NOT NULL,
            content_hash CHAR(64) NOT NULL,
            file_name VARCHAR(1024) NOT NULL,
            path TEXT NOT NULL,
            label VARCHAR(512) NOT NULL,
            feature LONGBLOB NOT NULL,
            created_at_ms BIGINT NOT NULL,
            PRIMARY KEY (id, predicted_class),
            UNIQUE KEY uq_images_hash (collection_id, content_hash, predicted_class),
            KEY idx_images_class (collection_id, predicted_class, id)
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4
        PARTITION BY HASH(predicted_class) PARTITIONS 128",
        "CREATE TABLE image_blobs (
            image_id BIGINT NOT NULL PRIMARY KEY,
            collection_id BIGINT NOT NULL,
            thumbnail LONGBLOB NOT NULL,
            source LONGBLOB NOT NULL,
            KEY idx_blobs_collection (collection_id)
        ) ENGINE=InnoDB",
    ];

    const SQLITE: &[&str] = &[
        "CREATE TABLE collections (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            name TEXT NOT NULL UNIQUE,
            model_name TEXT NOT NULL,
            model_version TEXT NOT NULL,
            dims INTEGER NOT NULL,
            description TEXT NOT NULL,
            created_at_ms INTEGER NOT NULL
        )",
        "CREATE TABLE aliases (
            alias TEXT NOT NULL PRIMARY KEY,
            collection_id INTEGER NOT NULL,
            updated_at_ms INTEGER NOT NULL
        )",
        "CREATE TABLE images (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            collection_id INTEGER NOT NULL,
            predicted_class INTEGER NOT NULL,
            content_hash TEXT NOT NULL,
            file_name TEXT NOT NULL,
            path TEXT NOT NULL,
            label TEXT NOT NULL,
            feature BLOB NOT NULL,
            created_at_ms INTEGER NOT NULL
        )",
        "CREATE UNIQUE INDEX uq_images_hash ON images (collection_id, content_hash)",
        "CREATE INDEX idx_images_class ON images (collection_id, predicted_class, id)",
        "CREATE TABLE image_blobs (
            image_id INTEGER NOT NULL PRIMARY KEY,
            collection_id INTEGER NOT NULL,
            thumbnail BLOB NOT NULL,
            source BLOB NOT NULL
        )",
        "CREATE INDEX idx_blobs_collection ON image_blobs (collection_id)",
    ];

    #[async_trait::async_trait]
    impl MigrationTrait for Migration {
        async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
            let stmts = match manager.get_database_backend() {
                DatabaseBackend::MySql => MYSQL,
                DatabaseBackend::Sqlite => SQLITE,
                DatabaseBackend::Postgres => {
                    return Err(DbErr::Migration(
                        "PostgreSQL is not supported: use SQLite or MySQL/MariaDB".into(),
                    ))
                }
            };
            let db = manager.get_connection();
            for s in stmts {
                db.execute_unprepared(s).await?;
            }
            Ok(())
        }

        async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
            let db = manager.get_connection();
            for t in ["image_blobs", "images", "aliases", "collections"] {
                db.execute_unprepared(&format!("DROP TABLE IF EXISTS {t}"))
                    .await?;
            }
            Ok(())
        }
    }
}

/// Loading pages by id within a collection: without this index SQLite sorts
/// the whole collection for every page (quadratic at start-up).
mod m20261128_000002_load_order {
    use super::*;

    pub struct Migration;

    impl MigrationName for Migration {
        fn name(&self) -> &str {
            "m20261128_000002_load_order"
        }
    }

    #[async_trait::async_trait]
    impl MigrationTrait for Migration {
        async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
            manager
                .get_connection()
                .execute_unprepared("CREATE INDEX idx_images_load ON images (collection_id, id)")
                .await
                .map(|_| ())
        }

        async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
            let sql = match manager.get_database_backend() {
                DatabaseBackend::MySql => "DROP INDEX idx_images_load ON images",
                _ => "DROP INDEX IF EXISTS idx_images_load",
            };
            manager
                .get_connection()
                .execute_unprepared(sql)
                .await
                .map(|_| ())
        }
    }
}

mod m20261128_000003_write_seq {
    use super::*;

    pub struct Migration;

    impl MigrationName for Migration {
        fn name(&self) -> &str {
            "m20261128_000003_write_seq"
        }
    }

    /// A counter of committed writes per collection: index replicas on the
    /// same database reload a collection when it moves.
    #[async_trait::async_trait]
    impl MigrationTrait for Migration {
        async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
            manager
                .get_connection()
                .execute_unprepared(
                    "ALTER TABLE collections ADD COLUMN write_seq BIGINT NOT NULL DEFAULT 0",
                )
                .await
                .map(|_| ())
        }

        async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
            manager
                .get_connection()
                .execute_unprepared("ALTER TABLE collections DROP COLUMN write_seq")
                .await
                .map(|_| ())
        }
    }
}

/// The gateways' server-folder indexing jobs, shared by every gateway
/// replica: the job itself as an encoded `cbir.v1.IndexJob`, with the
/// columns the lease and the pruning need. `saved_at_ms` is the index's
/// clock at the last save, so that gateways with skewed clocks agree.
mod m20261202_000004_index_jobs {
    use super::*;

    pub struct Migration;

    impl MigrationName for Migration {
        fn name(&self) -> &str {
            "m20261202_000004_index_jobs"
        }
    }

    const MYSQL: &[&str] = &["CREATE TABLE index_jobs (
            id VARCHAR(64) NOT NULL PRIMARY KEY,
            state INT NOT NULL,
            started_at_ms BIGINT NOT NULL,
            saved_at_ms BIGINT NOT NULL,
            lease_ms BIGINT NOT NULL,
            job LONGBLOB NOT NULL,
            KEY idx_index_jobs_started (started_at_ms)
        ) ENGINE=InnoDB"];

    const SQLITE: &[&str] = &[
        "CREATE TABLE index_jobs (
            id TEXT NOT NULL PRIMARY KEY,
            state INTEGER NOT NULL,
            started_at_ms INTEGER NOT NULL,
            saved_at_ms INTEGER NOT NULL,
            lease_ms INTEGER NOT NULL,
            job BLOB NOT NULL
        )",
        "CREATE INDEX idx_index_jobs_started ON index_jobs (started_at_ms)",
    ];

    #[async_trait::async_trait]
    impl MigrationTrait for Migration {
        async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
            let stmts = match manager.get_database_backend() {
                DatabaseBackend::MySql => MYSQL,
                _ => SQLITE,
            };
            let db = manager.get_connection();
            for s in stmts {
                db.execute_unprepared(s).await?;
            }
            Ok(())
        }

        async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
            manager
                .get_connection()
                .execute_unprepared("DROP TABLE IF EXISTS index_jobs")
                .await
                .map(|_| ())
        }
    }
}

/// The latest near-duplicate run of each collection, shared by every index
/// replica: its progress (an encoded `cbir.v1.OperationProgress`, saved as
/// it goes, with `saved_at_ms` for the lease of a running one) and, once it
/// succeeded, its groups as member ids with their similarity to the
/// group's first member.
mod m20261202_000010_duplicates {
    use super::*;

    pub struct Migration;

    impl MigrationName for Migration {
        fn name(&self) -> &str {
            "m20261202_000010_duplicates"
        }
    }

    const MYSQL: &[&str] = &[
        "CREATE TABLE duplicate_runs (
            collection_id BIGINT NOT NULL PRIMARY KEY,
            operation_id VARCHAR(64) NOT NULL,
            state INT NOT NULL,
            min_similarity DOUBLE NOT NULL,
            started_at_ms BIGINT NOT NULL,
            saved_at_ms BIGINT NOT NULL,
            progress BLOB NOT NULL,
            UNIQUE KEY uq_duplicate_runs_op (operation_id)
        ) ENGINE=InnoDB",
        "CREATE TABLE duplicate_members (
            collection_id BIGINT NOT NULL,
            group_no INT NOT NULL,
            member_no INT NOT NULL,
            image_id BIGINT NOT NULL,
            similarity DOUBLE NOT NULL,
            PRIMARY KEY (collection_id, group_no, member_no)
        ) ENGINE=InnoDB",
    ];

    const SQLITE: &[&str] = &[
        "CREATE TABLE duplicate_runs (
            collection_id INTEGER NOT NULL PRIMARY KEY,
            operation_id TEXT NOT NULL UNIQUE,
            state INTEGER NOT NULL,
            min_similarity REAL NOT NULL,
            started_at_ms INTEGER NOT NULL,
            saved_at_ms INTEGER NOT NULL,
            progress BLOB NOT NULL
        )",
        "CREATE TABLE duplicate_members (
            collection_id INTEGER NOT NULL,
            group_no INTEGER NOT NULL,
            member_no INTEGER NOT NULL,
            image_id INTEGER NOT NULL,
            similarity REAL NOT NULL,
            PRIMARY KEY (collection_id, group_no, member_no)
        )",
    ];

    #[async_trait::async_trait]
    impl MigrationTrait for Migration {
        async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
            let stmts = match manager.get_database_backend() {
                DatabaseBackend::MySql => MYSQL,
                _ => SQLITE,
            };
            let db = manager.get_connection();
            for s in stmts {
                db.execute_unprepared(s).await?;
            }
            Ok(())
        }

        async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
            let db = manager.get_connection();
            for t in ["duplicate_members", "duplicate_runs"] {
                db.execute_unprepared(&format!("DROP TABLE IF EXISTS {t}"))
                    .await?;
            }
            Ok(())
        }
    }
}

/// Browsing a collection page by page (ListImages) in time, name or label
/// order: an index per order, so that a page is a range read, not a sort
/// of the whole collection; and the size of each kept source, so that a
/// listing tells which images have one without reading the blobs.
///
/// MySQL/MariaDB index at most 3072 bytes of a key and `file_name` holds
/// up to 4096 (1024 utf8mb4 characters): its indexes are prefix indexes,
/// which bound the range a page reads but cannot give its order, so name
/// and label pages sort what remains of the range after the cursor.
/// SQLite has no such limit and reads every order from its index.
mod m20261202_000011_browse {
    use super::*;

    pub struct Migration;

    impl MigrationName for Migration {
        fn name(&self) -> &str {
            "m20261202_000011_browse"
        }
    }

    const MYSQL: &[&str] = &[
        "CREATE INDEX idx_images_time ON images (collection_id, created_at_ms, id)",
        "CREATE INDEX idx_images_name ON images (collection_id, file_name(255), id)",
        "CREATE INDEX idx_images_label ON images (collection_id, label, file_name(200))",
        "ALTER TABLE image_blobs ADD COLUMN source_bytes BIGINT NOT NULL DEFAULT 0",
        "UPDATE image_blobs SET source_bytes = LENGTH(source)",
    ];

    const SQLITE: &[&str] = &[
        "CREATE INDEX idx_images_time ON images (collection_id, created_at_ms, id)",
        "CREATE INDEX idx_images_name ON images (collection_id, file_name, id)",
        "CREATE INDEX idx_images_label ON images (collection_id, label, file_name, id)",
        "ALTER TABLE image_blobs ADD COLUMN source_bytes INTEGER NOT NULL DEFAULT 0",
        "UPDATE image_blobs SET source_bytes = length(source)",
    ];

    #[async_trait::async_trait]
    impl MigrationTrait for Migration {
        async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
            let stmts = match manager.get_database_backend() {
                DatabaseBackend::MySql => MYSQL,
                _ => SQLITE,
            };
            let db = manager.get_connection();
            for s in stmts {
                db.execute_unprepared(s).await?;
            }
            Ok(())
        }

        async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
            let mysql = manager.get_database_backend() == DatabaseBackend::MySql;
            let db = manager.get_connection();
            for index in ["idx_images_time", "idx_images_name", "idx_images_label"] {
                let sql = if mysql {
                    format!("DROP INDEX {index} ON images")
                } else {
                    format!("DROP INDEX IF EXISTS {index}")
                };
                db.execute_unprepared(&sql).await?;
            }
            db.execute_unprepared("ALTER TABLE image_blobs DROP COLUMN source_bytes")
                .await
                .map(|_| ())
        }
    }
}
