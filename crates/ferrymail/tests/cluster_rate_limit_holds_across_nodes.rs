//! A virtual queue's `rate` holds for the whole cluster, not per node.
//!
//! Two nodes on one PostgreSQL database, `rate = "5/1s"` on the default
//! queue, 30 messages (15 accepted by each node) for a sink that takes them
//! as fast as they come. With one bucket for the cluster, the first five go
//! at once and the other 25 take five seconds more. Were the rate per node
//! (as it is with an embedded store), each node would send its fifteen in
//! about two seconds (checked by hand: the test then fails).

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::peers::*;
use common::pg::*;
use common::*;

const PER_NODE: usize = 15;

fn config(relay: u16, delivery_log: &Path) -> String {
    cluster_node_config(
        relay,
        delivery_log,
        "200ms",
        r#"[queue.virtual.default]
rate = "5/1s"
"#,
    )
}

#[test]
fn rate_is_shared_by_the_nodes_of_a_cluster() {
    let db = TestDb::create();
    let logs = tempfile::tempdir().unwrap();
    let sink = SmtpSink::start(&[]);
    let log_of = |n: &str| logs.path().join(format!("{n}.jsonl"));
    let a = Server::start_pg(&db, "node-id = \"a\"", &config(sink.port, &log_of("a")));
    let b = Server::start_pg(&db, "node-id = \"b\"", &config(sink.port, &log_of("b")));

    let started = Instant::now();
    for (name, node) in [("a", &a), ("b", &b)] {
        let mut c = node.client();
        c.ehlo();
        for i in 0..PER_NODE {
            let body = format!("Subject: {name} {i}\r\n\r\nrated\r\n");
            queued_id(&c.send_message(
                "sender@origin.test",
                &[&format!("r{i}@far.test")],
                body.as_bytes(),
            ));
        }
        c.cmd("QUIT");
    }
    let accepted = started.elapsed();
    let dumped = sink.wait_dumped(2 * PER_NODE, Duration::from_secs(30));
    let took = started.elapsed();
    let per_node: Vec<usize> = ["a", "b"]
        .iter()
        .map(|n| {
            delivery_log(&log_of(n))
                .iter()
                .filter(|l| l["outcome"] == "delivered")
                .count()
        })
        .collect();
    eprintln!(
        "30 messages accepted in {accepted:?}, all delivered after {took:?}; delivered by a, b: {per_node:?}"
    );
    // 5 at once, then 5 a second: the 30th token is 5 s after the first.
    assert!(
        took >= Duration::from_millis(4800),
        "30 messages at 5/s (burst 5) for the cluster need 5 s, took {took:?}"
    );
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for d in &dumped {
        let text = String::from_utf8_lossy(&d.body).to_string();
        let subject = text
            .lines()
            .find_map(|l| l.strip_prefix("Subject: "))
            .unwrap()
            .to_string();
        *seen.entry(subject).or_default() += 1;
    }
    assert_eq!(seen.len(), 2 * PER_NODE);
    assert!(seen.values().all(|n| *n == 1), "{seen:?}");
}
