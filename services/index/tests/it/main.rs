//! Index service tests. Storage tests run on SQLite and on the real MariaDB
//! (`CBIR_TEST_MYSQL_URL`, default mysql://root@127.0.0.1:3306; a fresh
//! database per test): `scripts/test.sh` starts MariaDB when it is down.

mod db;
mod durability;
mod service;
mod storage;
