//! Two `ferrymail serve` nodes on one PostgreSQL database: both accept mail,
//! their node ids differ, `queue list` on either node shows the whole
//! cluster's queue, and every message reaches the relay exactly once.
//!
//! (Each node delivers what it accepted and what it found at start-up; a
//! node picking up another node's entries while running, and flush reaching
//! every node, are the cluster part of the PostgreSQL issue.)

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::peers::*;
use common::pg::*;
use common::*;

const WAIT: Duration = Duration::from_secs(60);

#[test]
fn two_nodes_accept_and_deliver_each_message_once() {
    let db = TestDb::create();
    let relay = free_port();
    let a = Server::start_pg(&db, "", &relay_all_to(relay));
    let b = Server::start_pg(&db, "", &relay_all_to(relay));
    let (na, nb) = (a.started_as(), b.started_as());
    assert_ne!(na, nb, "each node has its own id");

    let mut sent = BTreeMap::new();
    for i in 0..12 {
        let node = if i % 2 == 0 { &a } else { &b };
        let subject = format!("two-nodes-{i}");
        let body = format!("Subject: {subject}\r\n\r\nmessage {i}\r\n");
        let mut c = node.client();
        c.ehlo();
        let id = queued_id(&c.send_message(
            "sender@origin.test",
            &[&format!("r{i}@far.test")],
            body.as_bytes(),
        ));
        c.cmd("QUIT");
        sent.insert(id, subject);
    }
    let all: Vec<String> = sent.keys().cloned().collect();
    for node in [&a, &b] {
        let mut ids = queue_ids(&node.queue_json());
        ids.sort();
        assert_eq!(ids, all, "queue list on either node shows the cluster");
    }
    for id in &all {
        a.wait_deferred(id, WAIT);
    }

    let sink = SmtpSink::start_on(relay, &[]);
    for node in [&a, &b] {
        assert!(node.cli(&["queue", "flush"]).status.success());
    }
    a.wait_queue_empty(WAIT);
    b.wait_queue_empty(WAIT);
    sink.wait_dumped(sent.len(), WAIT);
    std::thread::sleep(Duration::from_secs(1));
    let dumped = sink.dumped();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for d in &dumped {
        let text = String::from_utf8_lossy(&d.body).to_string();
        let subject = text
            .lines()
            .find_map(|l| l.strip_prefix("Subject: "))
            .unwrap_or_else(|| panic!("no subject: {d:?}"))
            .to_string();
        *seen.entry(subject).or_default() += 1;
    }
    let want: BTreeMap<String, usize> = sent.values().map(|s| (s.clone(), 1)).collect();
    assert_eq!(seen, want, "every message delivered exactly once");
    assert_eq!(db.sql("SELECT count(*) FROM entry"), "0");
    assert_eq!(db.sql("SELECT count(*) FROM blob"), "0");
}
