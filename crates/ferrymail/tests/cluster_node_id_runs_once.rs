//! One process per node name on a shared PostgreSQL queue. Two processes
//! started with the same `server.node-id` would hold the same leases and
//! deliver each other's mail; the second one refuses to start instead,
//! naming the problem (exit status 1). A node that crashed (kill -9) is not
//! mistaken for a running one: it starts again at once with its name.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::pg::*;
use common::*;

#[test]
fn a_second_process_with_the_same_node_id_refuses_to_start() {
    let db = TestDb::create();
    let mut a = Server::start_pg(&db, "node-id = \"twin\"", "");

    // The same configuration on other ports, in a directory of its own.
    let text = std::fs::read_to_string(&a.config).unwrap();
    let (smtp, mgmt) = (free_port(), free_port());
    let text = text
        .replace(&format!(":{}\"", a.smtp.port()), &format!(":{smtp}\""))
        .replace(&format!(":{}\"", a.mgmt.port()), &format!(":{mgmt}\""));
    assert!(text.contains(&format!(":{smtp}\"")), "{text}");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ferrymail.toml");
    std::fs::write(&config, text).unwrap();
    let t0 = Instant::now();
    let out = run_bounded(
        Command::new(bin())
            .args(["serve", "-c"])
            .arg(&config)
            .current_dir(dir.path()),
        Duration::from_secs(60),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("node 'twin' is already running"),
        "the refusal should name the node and the problem:\n{stderr}"
    );
    assert!(
        t0.elapsed() < Duration::from_secs(20),
        "took {:?}",
        t0.elapsed()
    );
    // The first one is untouched.
    let mut c = a.client();
    assert_eq!(c.ehlo().code, 250);
    c.cmd("QUIT");

    // A crash leaves no claim behind: the node starts again at once.
    a.kill9();
    let t0 = Instant::now();
    a.spawn_in_dir();
    assert!(
        t0.elapsed() < Duration::from_secs(15),
        "restart after kill -9 took {:?}",
        t0.elapsed()
    );
    assert_eq!(a.started_as(), vec!["twin".to_string(), "twin".to_string()]);
    a.terminate();
}

/// A node whose claim another process takes (here a psql session: it ends
/// the node's claim session, as a claimant does with one it finds silent
/// after a network cut, and takes the claim's lock) stops, saying why, and
/// exits with status 1: two processes running as one node would take each
/// other's leases and deliver the same mail.
#[test]
fn a_node_whose_claim_is_taken_stops() {
    let db = TestDb::create();
    let mut a = Server::start_pg(&db, "node-id = \"twin\"", "");
    let tag = db.sql("SELECT tag FROM node WHERE name = 'twin'");
    let key = format!("hashtextextended('ferrymail node ' || current_schema() || ' ' || {tag}, 0)");
    let bin = std::env::var("FERRYMAIL_TEST_PG_BIN")
        .unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".to_string());
    // One psql session: end the holder's session, take the lock, keep it.
    let mut taker = Command::new(format!("{bin}/psql"))
        .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", &db.url])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("psql");
    {
        use std::io::Write;
        let stdin = taker.stdin.as_mut().unwrap();
        writeln!(
            stdin,
            "SELECT pg_terminate_backend(l.pid) FROM pg_locks l \
             WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 \
             AND (l.classid::bigint << 32 | l.objid::bigint) = {key};\n\
             SELECT pg_advisory_lock({key});"
        )
        .unwrap();
        stdin.flush().unwrap();
    }
    let child = a.child.as_mut().unwrap();
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "still running:\n{}",
            a.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    a.child = None;
    let log = a.log_text();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains("another process holds this node's claim"),
        "{log}"
    );
    let _ = taker.kill();
    let _ = taker.wait();
}
