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
