//! ETRN and `queue flush` given to one node of a cluster make the other
//! node deliver too.
//!
//! Two nodes on one PostgreSQL database; mail for x.test and y.test waits in
//! the deferred lane with its next try an hour away (the relay was down at
//! the first attempt). The relay comes up as an smtp-sink that takes a
//! second per message, and each node may have one delivery in flight to it
//! (`destination.concurrency = 1`), so one node alone would need eight
//! seconds for eight messages. Then:
//!
//! * `ETRN x.test` over SMTP to node a: node b delivers some of the x.test
//!   mail as well (nothing else would make it try before the hour is up),
//!   and no y.test mail moves;
//! * `ferrymail queue flush` on node b: node a delivers some of the y.test
//!   mail as well.
//!
//! Every message arrives exactly once.

mod common;

use std::path::Path;
use std::time::Duration;

use common::peers::*;
use common::pg::*;
use common::*;

const WAIT: Duration = Duration::from_secs(30);
const PER_DOMAIN: usize = 8;

fn config(relay: u16, delivery_log: &Path) -> String {
    cluster_node_config(
        relay,
        delivery_log,
        "500ms",
        r#"[queue.schedule]
retry = "[1h]"

[queue.virtual.default]
destination.concurrency = 1
"#,
    )
}

/// How many `domain` recipients a node's delivery log says it delivered.
fn delivered(log: &Path, domain: &str) -> usize {
    delivery_log(log)
        .iter()
        .filter(|l| l["outcome"] == "delivered" && l["domain"] == domain)
        .count()
}

#[test]
fn etrn_and_flush_on_one_node_make_the_other_deliver() {
    let db = TestDb::create();
    let logs = tempfile::tempdir().unwrap();
    let (log_a, log_b) = (logs.path().join("a.jsonl"), logs.path().join("b.jsonl"));
    let relay = free_port();
    let a = Server::start_pg(&db, "node-id = \"a\"", &config(relay, &log_a));
    let b = Server::start_pg(&db, "node-id = \"b\"", &config(relay, &log_b));

    let mut ids = Vec::new();
    for (domain, node) in [("x.test", &a), ("y.test", &b)] {
        let mut c = node.client();
        c.ehlo();
        for i in 0..PER_DOMAIN {
            let body = format!("Subject: {domain} {i}\r\n\r\nfor {domain}\r\n");
            ids.push(queued_id(&c.send_message(
                "sender@origin.test",
                &[&format!("r{i}@{domain}")],
                body.as_bytes(),
            )));
        }
        c.cmd("QUIT");
    }
    // Every first attempt failed (nothing listens), or met the destination
    // suspended after those failures: next try in an hour.
    let hour_away = ferrymail_spool::now_millis() + 30 * 60 * 1000;
    for id in &ids {
        let m = a.wait_deferred(id, WAIT);
        let r = &m["recipients"][0];
        assert_eq!(r["lane"], "deferred", "{m}");
        assert!(r["due"].as_u64().unwrap() > hour_away, "{m}");
    }
    // Both nodes hear of every deferral (the feed is read every 500 ms).
    std::thread::sleep(Duration::from_secs(2));

    let sink = SmtpSink::start_on(relay, &["-w", "1"]);
    let mut c = a.client();
    c.ehlo();
    let r = c.cmd("ETRN x.test");
    assert_eq!(r.code, 253, "ETRN answered {r:?}");
    c.cmd("QUIT");

    let x_subjects: Vec<String> = (0..PER_DOMAIN).map(|i| format!("x.test {i}")).collect();
    wait_for(
        WAIT,
        "the x.test mail at the sink",
        || {
            format!(
                "{:?}\n{}\n-----\n{}",
                sink.arrivals_by_header("Subject"),
                a.log_text(),
                b.log_text()
            )
        },
        || {
            let seen = sink.arrivals_by_header("Subject");
            x_subjects
                .iter()
                .all(|s| seen.contains_key(s))
                .then_some(())
        },
    );
    // The sink has a message before the node that sent it has its reply
    // and writes the delivery log line: wait for the lines too.
    let (xa, xb) = wait_for(
        WAIT,
        "a delivery log line for each x.test message",
        || format!("{}\n-----\n{}", a.log_text(), b.log_text()),
        || {
            let (xa, xb) = (delivered(&log_a, "x.test"), delivered(&log_b, "x.test"));
            (xa + xb >= PER_DOMAIN).then_some((xa, xb))
        },
    );
    eprintln!("x.test delivered by a: {xa}, by b: {xb}");
    assert!(xb > 0, "node b delivered x.test mail after ETRN on node a");
    assert_eq!(xa + xb, PER_DOMAIN);
    assert!(
        sink.arrivals_by_header("Subject")
            .keys()
            .all(|s| s.starts_with("x.test")),
        "ETRN x.test moved nothing else"
    );

    let out = b.cli(&["queue", "flush"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    a.wait_queue_empty(WAIT);
    let seen = sink.arrivals_by_header("Subject");
    let (ya, yb) = (delivered(&log_a, "y.test"), delivered(&log_b, "y.test"));
    eprintln!("y.test delivered by a: {ya}, by b: {yb}");
    assert!(
        ya > 0,
        "node a delivered y.test mail after a flush on node b"
    );
    assert_eq!(seen.len(), 2 * PER_DOMAIN, "{seen:?}");
    assert!(seen.values().all(|n| *n == 1), "each once: {seen:?}");
}
