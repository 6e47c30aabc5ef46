//! A private MariaDB server for the tests that kill, restart or shard
//! one: `mariadbd` from the machine (or `CBIR_TEST_MARIADBD`) with its own
//! data folder in a temporary directory and a free port on loopback, so
//! that the shared server the other tests use is never disturbed.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sea_orm::{ConnectionTrait, Database};

use crate::durability::free_port;

/// The first of `names` found on `PATH`, `/usr/sbin` or `/usr/bin`.
pub fn find(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path).chain(["/usr/sbin".into(), "/usr/bin".into()]);
    for d in dirs {
        for n in names {
            let p = d.join(n);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// The server binary, if the machine has one.
pub fn server_binary() -> Option<PathBuf> {
    std::env::var_os("CBIR_TEST_MARIADBD")
        .map(PathBuf::from)
        .or_else(|| find(&["mariadbd", "mysqld"]))
}

pub struct Mariadb {
    dir: tempfile::TempDir,
    pub port: u16,
    /// More server options, given at every start.
    pub args: Vec<String>,
    server: PathBuf,
    child: Option<Child>,
}

impl Mariadb {
    pub fn new() -> Self {
        let server = server_binary().expect(
            "no MariaDB server binary (mariadbd): install the mariadb-server package \
             or set CBIR_TEST_MARIADBD",
        );
        let install = find(&["mariadb-install-db", "mysql_install_db"])
            .expect("no mariadb-install-db: install the mariadb-server package");
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        // Its own temporary folder: servers set up at the same moment
        // otherwise trip over each other's temporary tables in /tmp.
        let tmp = dir.path().join("tmp");
        std::fs::create_dir(&tmp).expect("tmpdir");
        let mut cmd = Command::new(install);
        cmd.arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--tmpdir={}", tmp.display()))
            .arg("--auth-root-authentication-method=normal")
            .arg("--skip-test-db");
        if is_root() {
            cmd.arg("--user=root");
        }
        let out = cmd.output().expect("run mariadb-install-db");
        assert!(
            out.status.success(),
            "mariadb-install-db failed in {}: {}{}",
            data.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Self {
            dir,
            port: free_port(),
            args: Vec::new(),
            server,
            child: None,
        }
    }

    pub fn url(&self, db: &str) -> String {
        format!("mysql://root@127.0.0.1:{}/{db}", self.port)
    }

    /// The server's error log, for failure messages.
    pub fn log(&self) -> PathBuf {
        self.dir.path().join("error.log")
    }

    /// The last `n` lines of the server's log.
    pub fn log_tail(&self, n: usize) -> String {
        let log = std::fs::read_to_string(self.log()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    pub async fn start(&mut self) {
        let d: &Path = self.dir.path();
        let mut cmd = Command::new(&self.server);
        cmd.arg("--no-defaults")
            .arg(format!("--datadir={}", d.join("data").display()))
            .arg(format!("--tmpdir={}", d.join("tmp").display()))
            .arg(format!("--socket={}", d.join("sock").display()))
            .arg(format!("--pid-file={}", d.join("pid").display()))
            .arg(format!("--port={}", self.port))
            .arg("--bind-address=127.0.0.1")
            .arg("--skip-grant-tables")
            .arg("--innodb-buffer-pool-size=32M")
            .arg("--innodb-log-file-size=16M")
            .arg("--skip-log-bin")
            .arg(format!("--log-error={}", self.log().display()))
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if is_root() {
            cmd.arg("--user=root");
        }
        self.child = Some(cmd.spawn().expect("start mariadbd"));
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(db) = Database::connect(self.url("mysql")).await {
                if db.execute_unprepared("SELECT 1").await.is_ok() {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the private MariaDB did not start: see {}",
                self.log().display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().expect("SIGKILL mariadbd");
            c.wait().expect("reap mariadbd");
        }
    }
}

impl Drop for Mariadb {
    fn drop(&mut self) {
        self.kill();
        // A failing test shows the end of the server's log, which goes
        // with its temporary folder.
        if std::thread::panicking() {
            eprintln!(
                "--- the end of the log of the MariaDB on port {}:\n{}",
                self.port,
                self.log_tail(40)
            );
        }
    }
}
