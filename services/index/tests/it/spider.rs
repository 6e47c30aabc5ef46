//! The image table sharded over three MariaDB servers with the Spider
//! engine: three private backends and a Spider head on loopback, the
//! database sharded by `deploy/spider/shard-images.sh` (the operators'
//! procedure, run as it is), the index talking to the head alone. Every
//! storage test runs through such a head (`both_backends!`'s `spider`
//! case, the SIGKILL test among them) and checks afterwards that each
//! class lives on one backend; the test here shows which backend a
//! one-class read goes to (`EXPLAIN PARTITIONS` and the backends' logs),
//! the move of rows written before the sharding, and a head killed and
//! started again.
//!
//! Needs `mariadbd`, the client (`mariadb`, `mariadb-dump`) and the Spider
//! plugin (`ha_spider.so`, Debian package `mariadb-plugin-spider`).
//! Without them the tests say so and pass, unless `CBIR_REQUIRE_SPIDER=1`
//! (set by `scripts/test.sh`, which installs them), where they fail.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use cbir_index::store::{NewImage, Store};
use sea_orm::{
    ConnectionTrait, Database, DatabaseConnection, DbBackend, Statement, TransactionTrait,
};

use crate::mariadb::{find, server_binary, Mariadb};
use crate::storage::image;

const BACKENDS: usize = 3;

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/spider/shard-images.sh")
}

/// What the machine lacks to run the test, if anything.
fn missing_tools() -> Option<&'static str> {
    if server_binary().is_none() {
        return Some("no mariadbd: install mariadb-server");
    }
    if find(&["mariadb", "mysql"]).is_none() || find(&["mariadb-dump", "mysqldump"]).is_none() {
        return Some("no mariadb client or mariadb-dump: install mariadb-client");
    }
    None
}

/// The server's compiled-in plugin folder (`mariadbd --verbose --help`).
fn plugin_dir() -> Option<PathBuf> {
    let out = Command::new(server_binary()?)
        .args(["--no-defaults", "--verbose", "--help"])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
        let mut words = l.split_whitespace();
        (words.next() == Some("plugin-dir")).then(|| PathBuf::from(words.next().unwrap_or("")))
    })
}

/// Passes with a message, or fails where the test command requires it.
fn cannot_run(why: &str) {
    let why = format!(
        "{why}; the Spider test needs the Debian package mariadb-plugin-spider \
         (the same version as mariadb-server), which scripts/test.sh installs"
    );
    assert!(
        std::env::var("CBIR_REQUIRE_SPIDER").as_deref() != Ok("1"),
        "CBIR_REQUIRE_SPIDER=1: {why}"
    );
    eprintln!("SKIPPED spider: {why}");
}

async fn query(conn: &DatabaseConnection, sql: &str) -> Vec<sea_orm::QueryResult> {
    conn.query_all(Statement::from_string(DbBackend::MySql, sql))
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

pub struct Spider {
    head: Mariadb,
    backends: Vec<Mariadb>,
}

impl Spider {
    /// Three backends and a head with Spider loaded; `None` where the
    /// machine cannot run them.
    pub async fn start() -> Option<Self> {
        if let Some(why) = missing_tools() {
            cannot_run(why);
            return None;
        }
        if let Some(dir) = plugin_dir().filter(|d| !d.join("ha_spider.so").is_file()) {
            cannot_run(&format!("no ha_spider.so in {}", dir.display()));
            return None;
        }
        // mariadb-install-db takes seconds: the four in parallel.
        let mut servers: Vec<Mariadb> = std::thread::scope(|s| {
            let made: Vec<_> = (0..=BACKENDS).map(|_| s.spawn(Mariadb::new)).collect();
            made.into_iter()
                .map(|h| h.join().expect("mariadb-install-db"))
                .collect()
        });
        // Configured as docs/OPERATIONS.md says: backends that give up a
        // lock wait after 5 s; a head that loads Spider as Debian's
        // mariadb-plugin-spider configures it (spider.cnf:
        // plugin-load-add), at every start, and runs READ COMMITTED.
        for b in &mut servers[..BACKENDS] {
            b.args = vec!["--innodb-lock-wait-timeout=5".into()];
        }
        servers[BACKENDS].args = vec![
            "--plugin-load-add=ha_spider".into(),
            "--transaction-isolation=READ-COMMITTED".into(),
        ];
        for s in &mut servers {
            s.start().await;
        }
        let head = servers.pop().expect("head");
        let admin = Database::connect(head.url("mysql")).await.expect("head");
        let spider: Option<String> = query(
            &admin,
            "SELECT SUPPORT FROM information_schema.ENGINES WHERE ENGINE = 'SPIDER'",
        )
        .await
        .first()
        .map(|r| r.try_get("", "SUPPORT").expect("SUPPORT"));
        if spider.as_deref() != Some("YES") {
            cannot_run(&format!(
                "the head did not load the Spider engine; its log ends:\n{}",
                head.log_tail(10)
            ));
            return None;
        }
        Some(Self {
            head,
            backends: servers,
        })
    }

    fn addr(m: &Mariadb) -> String {
        format!("127.0.0.1:{}", m.port)
    }

    /// A database on the head as an operator makes one: created, migrated
    /// by the index, then `images` sharded by the script. `before` runs
    /// on the migrated, unsharded database (rows the script must move).
    pub async fn sharded(&self, name: &str, before: &[NewImage]) -> String {
        Database::connect(self.head.url("mysql"))
            .await
            .expect("head")
            .execute_unprepared(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create database");
        let url = self.head.url(name);
        {
            let store = Store::connect(&url, 2).await.expect("migrate on the head");
            if !before.is_empty() {
                let c = store
                    .create_collection("before", "before", "m", "v", 8, "")
                    .await
                    .expect("create");
                store.upsert(c.id, before, false).await.expect("upsert");
            }
        }
        self.shard(name);
        url
    }

    /// Runs `deploy/spider/shard-images.sh` on database `name`.
    fn shard(&self, name: &str) {
        let out = Command::new("bash")
            .arg(script())
            .arg(Self::addr(&self.head))
            .arg(name)
            .args(self.backends.iter().map(Self::addr))
            .output()
            .expect("run shard-images.sh");
        assert!(
            out.status.success(),
            "shard-images.sh failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The backends that `read` (queries through the head) sent a
    /// statement on database `name`'s images to: their general logs.
    async fn backends_read<F: std::future::Future<Output = ()>>(
        &self,
        name: &str,
        read: F,
    ) -> Vec<usize> {
        let mut conns = Vec::new();
        for b in &self.backends {
            let conn = Database::connect(b.url("mysql")).await.expect("backend");
            for sql in [
                "SET GLOBAL log_output = 'TABLE'",
                "SET GLOBAL general_log = OFF",
                "TRUNCATE TABLE mysql.general_log",
                "SET GLOBAL general_log = ON",
            ] {
                conn.execute_unprepared(sql).await.expect(sql);
            }
            conns.push(conn);
        }
        read.await;
        let mut read_by = Vec::new();
        for (i, conn) in conns.iter().enumerate() {
            conn.execute_unprepared("SET GLOBAL general_log = OFF")
                .await
                .expect("log off");
            let n: i64 = query(
                conn,
                &format!(
                    "SELECT COUNT(*) AS n FROM mysql.general_log WHERE command_type = 'Query' \
                     AND argument LIKE 'select %from `{name}`.`images`%'"
                ),
            )
            .await[0]
                .try_get("", "n")
                .expect("n");
            if n > 0 {
                read_by.push(i);
            }
        }
        read_by
    }

    /// Each class's backend and rows, checked: every class on exactly one
    /// backend, backend c mod 3, and the backends' rows are the head's.
    pub async fn placement(&self, name: &str) -> BTreeMap<i32, (usize, i64)> {
        let mut classes: BTreeMap<i32, (usize, i64)> = BTreeMap::new();
        for (i, b) in self.backends.iter().enumerate() {
            let conn = Database::connect(b.url(name)).await.expect("backend");
            let rows = query(
                &conn,
                "SELECT predicted_class, COUNT(*) AS n FROM images GROUP BY predicted_class",
            )
            .await;
            for r in rows {
                let class: i32 = r.try_get("", "predicted_class").expect("class");
                let n: i64 = r.try_get("", "n").expect("n");
                if let Some((other, _)) = classes.insert(class, (i, n)) {
                    panic!("class {class} is on backends {other} and {i}");
                }
                assert_eq!(
                    class.rem_euclid(BACKENDS as i32) as usize,
                    i,
                    "class {class} is on backend {i}"
                );
            }
        }
        let head = Database::connect(self.head.url(name)).await.expect("head");
        let r = &query(
            &head,
            "SELECT (SELECT COUNT(*) FROM images) AS n, \
             (SELECT ENGINE FROM information_schema.TABLES \
              WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'images') AS engine",
        )
        .await[0];
        let engine: String = r.try_get("", "engine").expect("engine");
        assert_eq!(engine.to_uppercase(), "SPIDER", "the head's images table");
        let n: i64 = r.try_get("", "n").expect("n");
        assert_eq!(
            n,
            classes.values().map(|(_, n)| n).sum::<i64>(),
            "the head reads the backends' rows, no more, no less"
        );
        classes
    }
}

/// The partitions the head's plan for `sql` reads. Spider answers a
/// whole query pushed down to a backend ("Storage engine handles GROUP
/// BY"), whose plan names no partitions; with that pushdown off for this
/// session, the plan shows the head's partition pruning, which the pushed
/// down query follows too (`backends_read` shows it).
async fn partitions(head: &DatabaseConnection, sql: &str) -> String {
    let tx = head.begin().await.expect("begin");
    tx.execute_unprepared("SET SESSION spider_disable_group_by_handler = ON")
        .await
        .expect("set");
    let plan = tx
        .query_all(Statement::from_string(
            DbBackend::MySql,
            format!("EXPLAIN PARTITIONS {sql}"),
        ))
        .await
        .expect("explain");
    let extra: Option<String> = plan[0].try_get("", "Extra").ok().flatten();
    plan[0]
        .try_get::<Option<String>>("", "partitions")
        .expect("partitions column")
        .unwrap_or_else(|| panic!("no partitions in the plan of {sql}: {extra:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_class_lives_on_one_backend() {
    let Some(mut spider) = Spider::start().await else {
        return;
    };
    // Rows written before the sharding are moved to their class's backend;
    // rows written through the head after it land there too.
    let before: Vec<NewImage> = (0..100).map(|i| image(i, (i % 20) as i32, 8)).collect();
    let url = spider.sharded("placement", &before).await;
    let store = Store::connect(&url, 2).await.expect("connect");
    let c = store
        .create_collection("after", "after", "m", "v", 8, "")
        .await
        .expect("create");
    let after: Vec<NewImage> = (100..300).map(|i| image(i, (i % 20) as i32, 8)).collect();
    store.upsert(c.id, &after, false).await.expect("upsert");
    let classes = spider.placement("placement").await;
    assert_eq!(classes.len(), 20);
    assert!(classes.values().all(|(_, n)| *n == 15), "{classes:?}");
    println!("class -> (backend, rows): {classes:?}");

    // A one-class query goes to its class's backend alone; without the
    // class, to every backend.
    let head = store.connection();
    for class in 0..20 {
        let sql = format!(
            "SELECT id FROM images WHERE collection_id = {} AND predicted_class = {class} ORDER BY id",
            c.id
        );
        let backend = class as usize % BACKENDS;
        assert_eq!(partitions(head, &sql).await, format!("b{backend}"), "{sql}");
        let read_by = spider
            .backends_read("placement", async {
                let ids = store.ids_in_class(c.id, class).await.expect("class");
                assert_eq!(ids.len(), 10);
            })
            .await;
        assert_eq!(
            read_by,
            vec![backend],
            "the backends class {class} was read from"
        );
    }
    let sql = format!("SELECT id FROM images WHERE collection_id = {}", c.id);
    assert_eq!(partitions(head, &sql).await, "b0,b1,b2");
    let read_by = spider
        .backends_read("placement", async {
            assert_eq!(store.count(c.id).await.expect("count"), 200);
        })
        .await;
    assert_eq!(read_by, vec![0, 1, 2]);

    // Running the script again changes nothing.
    spider.shard("placement");
    assert_eq!(spider.placement("placement").await, classes);

    // The head killed and started again numbers new images after the
    // ones the backends hold (its counter lives in memory).
    let max_id = store
        .load_page(c.id, 0, 1000)
        .await
        .expect("page")
        .iter()
        .map(|p| p.id)
        .max()
        .expect("ids");
    drop(store);
    spider.head.kill();
    spider.head.start().await;
    let store = Store::connect(&url, 2)
        .await
        .expect("connect after the restart");
    let more: Vec<NewImage> = (300..360).map(|i| image(i, (i % 20) as i32, 8)).collect();
    let out = store
        .upsert(c.id, &more, false)
        .await
        .expect("upsert after the restart");
    assert!(out.iter().all(|o| o.created && o.id > max_id), "{out:?}");
    assert_eq!(store.count(c.id).await.expect("count"), 260);
    let classes = spider.placement("placement").await;
    assert!(classes.values().all(|(_, n)| *n == 18), "{classes:?}");
}
