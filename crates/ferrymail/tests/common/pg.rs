//! PostgreSQL for the end-to-end scenarios: a database of its own per test
//! on the PostgreSQL 15 that `scripts/test` starts (`FERRYMAIL_TEST_PG_URL`,
//! see `scripts/postgres-test-server`), and `ferrymail serve` with its queue
//! and contents there.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use super::{Server, strip_ansi};

/// The configuration the cluster scenarios give every node: relaying from
/// loopback to one sink at 127.0.0.1:`relay`, a delivery log per node, a
/// 5 s lease so a dead node's work is taken over within the test, and the
/// feed read every `poll_interval`. `specific` is the scenario's own
/// `[queue.schedule]` and `[queue.virtual.default]` settings.
#[allow(dead_code)]
pub fn cluster_node_config(
    relay: u16,
    delivery_log: &std::path::Path,
    poll_interval: &str,
    specific: &str,
) -> String {
    format!(
        r#"[session.rcpt]
local-domains = ["local.test"]
relay = "remote_ip == '127.0.0.1'"

{specific}
[queue.outbound]
delivery-log = "{log}"

[cluster]
lease = "5s"
poll-interval = "{poll_interval}"

{route}
[queue.strategy]
route = "'sink'"
"#,
        log = delivery_log.display(),
        route = super::peers::relay_route("sink", relay, "smtp"),
    )
}

/// The test server's URL; fails (never skips) when it is not there.
pub fn pg_url() -> String {
    std::env::var("FERRYMAIL_TEST_PG_URL").unwrap_or_else(|_| {
        panic!(
            "FERRYMAIL_TEST_PG_URL is not set: this test needs the PostgreSQL 15 that \
             scripts/test starts. Run scripts/test (e.g. scripts/test -E 'test(postgres) | binary(/postgres/)'), or \
             start one with `eval \"$(scripts/postgres-test-server start /tmp/ferry-pg)\"` and \
             run cargo nextest in that shell."
        )
    })
}

/// Runs SQL with psql against `url`; returns its unaligned output.
pub fn psql(url: &str, sql: &str) -> String {
    let bin = std::env::var("FERRYMAIL_TEST_PG_BIN")
        .unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".to_string());
    let out = Command::new(format!("{bin}/psql"))
        .args([
            "-X",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            url,
            "-c",
            sql,
        ])
        .output()
        .expect("psql (scripts/test-deps installs postgresql-15)");
    assert!(
        out.status.success(),
        "psql {sql:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `url` with its database replaced by `db`.
fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let host_part = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    format!("{host_part}/{db}{query}")
}

/// A database of its own on the test server, dropped with this value.
pub struct TestDb {
    /// Its name.
    pub name: String,
    /// Its URL.
    pub url: String,
}

impl TestDb {
    pub fn create() -> TestDb {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let admin = pg_url();
        let name = format!(
            "ferry_{}_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_micros()
        );
        psql(&admin, &format!("CREATE DATABASE {name}"));
        let url = with_database(&admin, &name);
        TestDb { name, url }
    }

    /// Runs SQL in this database.
    pub fn sql(&self, sql: &str) -> String {
        psql(&self.url, sql)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let _ = Command::new(format!(
            "{}/psql",
            std::env::var("FERRYMAIL_TEST_PG_BIN")
                .unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".to_string())
        ))
        .args(["-X", "-q", "-d", &pg_url(), "-c"])
        .arg(format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ))
        .output();
    }
}

impl Server {
    /// Starts `ferrymail serve` with `[store.pg]` (type `postgresql`, in
    /// `db`) as both data and blob store, `server_keys` added to `[server]`
    /// (e.g. `node-id = "a"`), and `extra` as in [`Server::start`].
    ///
    /// The process runs in its own directory: without a local store its
    /// state directory (node id, self-signed certificate) is `./data`.
    pub fn start_pg(db: &TestDb, server_keys: &str, extra: &str) -> Server {
        Self::start_pg_url(&db.url, server_keys, extra)
    }

    /// Like [`Server::start_pg`], with the store's URL given.
    pub fn start_pg_url(url: &str, server_keys: &str, extra: &str) -> Server {
        let edit = |base: String| {
            let text = base
                .replacen("[server]\n", &format!("[server]\n{server_keys}\n"), 1)
                .replacen(
                    "[storage]\ndata = \"local\"\nblob = \"local\"\n",
                    &format!(
                        "[store.pg]\ntype = \"postgresql\"\nurl = \"{}\"\npool-size = 8\n\n\
                         [storage]\ndata = \"pg\"\nblob = \"pg\"\n",
                        url
                    ),
                    1,
                );
            assert!(text.contains("data = \"pg\""), "base config changed shape");
            text
        };
        let mut s = Server::configured(tempfile::tempdir().unwrap(), edit, extra);
        s.spawn_in_dir();
        s
    }

    /// (Re)starts the process with the same config, in its own directory.
    pub fn spawn_in_dir(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(super::bin())
            .arg("serve")
            .arg("-c")
            .arg(&self.config)
            .current_dir(self.dir.path())
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn ferrymail");
        self.child = Some(child);
        self.wait_ready();
    }

    /// The node names this server's log reported at each start, in order.
    pub fn started_as(&self) -> Vec<String> {
        strip_ansi(&self.log_text())
            .lines()
            .filter(|l| l.contains("ferrymail started"))
            .filter_map(|l| {
                let rest = &l[l.find("node=")? + 5..];
                Some(rest.split_whitespace().next()?.to_string())
            })
            .collect()
    }
}
