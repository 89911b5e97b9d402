//! `queue hold`, `queue retry` and `queue release` given to one node of a
//! cluster act on the whole cluster.
//!
//! Two nodes on one PostgreSQL database; nine messages wait in the deferred
//! lane with their next try an hour away (the relay was down). One of them
//! is held through node a. The relay comes up as an smtp-sink that takes a
//! second per message, each node with one delivery at a time. Then:
//!
//! * `queue retry --all` on node a: node b delivers some of the eight (it
//!   can only know they are due now from the change feed), and nobody
//!   delivers the held one;
//! * `queue release` of the held one on node b: it is delivered.
//!
//! Every message arrives exactly once.

mod common;

use std::path::Path;
use std::time::Duration;

use common::peers::*;
use common::pg::*;
use common::*;

const WAIT: Duration = Duration::from_secs(30);

fn config(relay: u16, delivery_log: &Path) -> String {
    cluster_node_config(
        relay,
        delivery_log,
        "500ms",
        r#"[queue.schedule]
retry = "[1h]"

# Not suspended by the failed first attempts: `queue retry` does not lift
# a suspension (flush does), and this test is about the retry.
[queue.virtual.default]
destination.concurrency = 1
destination.failure-limit = 100
"#,
    )
}

fn delivered(log: &Path) -> usize {
    delivery_log(log)
        .iter()
        .filter(|l| l["outcome"] == "delivered")
        .count()
}

#[test]
fn hold_retry_and_release_on_one_node_act_on_the_cluster() {
    let db = TestDb::create();
    let logs = tempfile::tempdir().unwrap();
    let (log_a, log_b) = (logs.path().join("a.jsonl"), logs.path().join("b.jsonl"));
    let relay = free_port();
    let a = Server::start_pg(&db, "node-id = \"a\"", &config(relay, &log_a));
    let b = Server::start_pg(&db, "node-id = \"b\"", &config(relay, &log_b));

    let mut ids = Vec::new();
    let mut c = a.client();
    c.ehlo();
    for i in 0..9 {
        let body = format!("Subject: msg {i}\r\n\r\nwaiting\r\n");
        ids.push(queued_id(&c.send_message(
            "sender@origin.test",
            &[&format!("r{i}@x.test")],
            body.as_bytes(),
        )));
    }
    c.cmd("QUIT");
    let hour_away = ferrymail_spool::now_millis() + 30 * 60 * 1000;
    for id in &ids {
        let m = a.wait_deferred(id, WAIT);
        assert_eq!(m["recipients"][0]["lane"], "deferred", "{m}");
        assert!(
            m["recipients"][0]["due"].as_u64().unwrap() > hour_away,
            "{m}"
        );
    }
    let held = ids[8].clone();
    let out = a.cli(&["queue", "hold", &held]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Both nodes hear of every deferral and of the hold.
    std::thread::sleep(Duration::from_secs(2));

    let sink = SmtpSink::start_on(relay, &["-w", "1"]);
    let out = a.cli(&["queue", "retry", "--all"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let want: Vec<String> = (0..8).map(|i| format!("msg {i}")).collect();
    wait_for(
        WAIT,
        "the eight released messages at the sink",
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
            want.iter().all(|s| seen.contains_key(s)).then_some(())
        },
    );
    let (da, db_) = (delivered(&log_a), delivered(&log_b));
    eprintln!("after retry on a: delivered by a {da}, by b {db_}");
    assert!(db_ > 0, "node b delivered after `queue retry` on node a");
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        !sink.arrivals_by_header("Subject").contains_key("msg 8"),
        "the held message stays"
    );
    let m = b.show(&held).expect("still queued");
    assert_eq!(m["recipients"][0]["held"], true, "{m}");

    let out = b.cli(&["queue", "release", &held]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    a.wait_queue_empty(WAIT);
    sink.wait_dumped(9, WAIT);
    let seen = sink.arrivals_by_header("Subject");
    assert_eq!(seen.len(), 9, "{seen:?}");
    assert!(seen.values().all(|n| *n == 1), "each once: {seen:?}");
}
