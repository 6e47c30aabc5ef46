//! Index service tests. Storage tests run on SQLite, on the real MariaDB
//! (`CBIR_TEST_MYSQL_URL`, default mysql://root@127.0.0.1:3306; a fresh
//! database per test): `scripts/test.sh` starts MariaDB when it is down,
//! and through a Spider head sharding the image table over three private
//! MariaDB servers (`spider`).
// Helpers shared by macro-generated tests are not #[test] functions.
#![allow(clippy::unwrap_used, clippy::field_reassign_with_default)]

mod browse;
mod concurrency;
mod db;
mod duplicates;
mod durability;
mod filters;
mod jobs;
mod labels;
mod layout;
mod mariadb;
mod mysql_restart;
mod names;
mod refined;
mod reupload;
mod service;
mod spider;
mod storage;
mod transfer;
