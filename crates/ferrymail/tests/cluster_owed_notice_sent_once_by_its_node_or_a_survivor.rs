//! In a cluster, a notice owed is sent once: by the node that recorded it
//! while that node lives, and by another node once it has died.
//!
//! Nodes `a` and `b` share one queue in the real PostgreSQL 15 that
//! `scripts/test` starts. Postfix's smtp-sink refuses the recipient with
//! 550 5.1.1. Node `a` records the failure with its notice owed and holds
//! the notice back for batching (`batch-quiet` 8 s). Node `b` starts while
//! `a` holds it, and must not send it: before, a starting node handed every
//! owed notice in the database to its DSN layer, and the sender got two.
//! Then `a` is killed with SIGKILL before it sends. Once `a`'s hold lapses
//! (its lease, 3 s, plus its batching window, 8 s), `b` takes the notice
//! over: the sender gets it exactly once, through `b`'s bounce queue, and
//! the message leaves the queue.

mod common;
mod dsn_support;

use std::time::{Duration, Instant};

use common::pg::*;
use common::*;
use dsn_support::*;

/// What both nodes add to the scenario's configuration: short leases, so
/// that a dead node's notices lapse within the test, and a quick feed.
const CLUSTER: &str = "\n[cluster]\nlease = \"3s\"\npoll-interval = \"500ms\"\n";

#[test]
fn a_notice_owed_is_sent_by_its_live_node_or_taken_over_once_it_dies() {
    let db = TestDb::create();
    let hop = Hop::start(&[
        "-f",
        "RCPT",
        "-B",
        "550 5.1.1 Recipient address rejected: User unknown",
    ]);
    let sink = Sink::start();
    let keys = Keys::generate();
    let node = |dsn: &str| {
        config(
            &Setup {
                hop: hop.port,
                dsn,
                ..Setup::default()
            },
            &sink,
            &keys,
        ) + CLUSTER
    };
    let mut a = Server::start_pg(
        &db,
        "node-id = \"a\"",
        &node("batch-quiet = \"8s\"\nbatch-max-hold = \"8s\""),
    );
    let id = send(
        &a,
        "sender@sender.test",
        "",
        &[("a@dest.test", "")],
        &original("Owed in a cluster"),
    );
    wait_notice_owed(&a, &id, "a@dest.test", "failed", Duration::from_secs(30));
    let recorded = Instant::now();

    // b starts while a is alive and batching the notice.
    let b = Server::start_pg(
        &db,
        "node-id = \"b\"",
        &node("batch-quiet = \"200ms\"\nbatch-max-hold = \"1s\""),
    );
    // b's start-up and at least one of its sweeps (every lease / 3).
    std::thread::sleep(Duration::from_secs(3).saturating_sub(recorded.elapsed()));
    assert!(
        sink.received().is_empty(),
        "a notice a live node holds was sent by the node that started:\n--- b:\n{}",
        plain_log(&b)
    );
    wait_notice_owed(&b, &id, "a@dest.test", "failed", Duration::from_secs(5));

    // a dies before its batching window ends: the notice is still owed.
    assert!(
        recorded.elapsed() < Duration::from_secs(7),
        "the machine was too slow to kill a inside its batching window"
    );
    a.kill9();

    let got = sink.wait(1, Duration::from_secs(40), &b);
    let after = recorded.elapsed();
    assert!(
        after >= Duration::from_secs(9),
        "taken over only once a's hold lapsed (3 s lease + 8 s batching), not after {after:?}"
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(sink.received().len(), 1, "exactly one notification");
    let dsn = &got[0];
    assert_envelope(dsn, "sender@sender.test");
    let text = String::from_utf8_lossy(&dsn.data);
    assert!(
        text.contains("Final-Recipient: rfc822; a@dest.test") && text.contains("Action: failed"),
        "a failure notice about a@dest.test:\n{text}"
    );
    assert!(
        !log_lines(&b, "took over owed notices").is_empty(),
        "b says it took the notice over:\n{}",
        plain_log(&b)
    );
    assert_bounce_queue(&b, &id);
    wait_queue(&b, Duration::from_secs(15), "the message gone", |l| {
        !queue_ids(l).contains(&id)
    });
}
