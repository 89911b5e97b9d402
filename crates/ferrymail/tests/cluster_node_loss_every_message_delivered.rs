//! Node loss in a cluster: three `ferrymail serve` nodes on one PostgreSQL
//! database relay 5,000 messages from Postfix's smtp-source (spread over the
//! three) to one smtp-sink. One node is killed with SIGKILL while it is
//! delivering; every message still reaches the sink, and a message arrives
//! twice only if the dead node was delivering it at the kill (it held the
//! lease; the sink may have taken it before the node could record that).
//!
//! Then a fourth node joins an empty queue, the sink goes down, 600 more
//! messages are accepted by the two survivors and deferred, and both
//! survivors are killed. The newcomer, which learned of that mail only from
//! the change feed, delivers all of it once the sink is back, waiting out
//! the dead nodes' leases where it must.
//!
//! Node c relays to a second smtp-sink that holds each DATA for a second
//! (`-w 1`), so that it is sure to be delivering when it is killed: with
//! one fast sink, a and b (which see c's mail through the change feed) and
//! c itself could finish c's share before the kill. Arrivals are counted
//! over both sinks.
//!
//! Leases are 5 s here (`cluster.lease`) to keep the run short.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::peers::*;
use common::pg::*;
use common::*;

const TOTAL: usize = 5000;
const SECOND_WAVE: usize = 600;

fn config(relay: u16, delivery_log: &Path) -> String {
    cluster_node_config(
        relay,
        delivery_log,
        "500ms",
        r#"[queue.schedule]
retry = "[2s]"

[queue.virtual.default]
destination.suspend = "2s"
"#,
    )
}

/// A node named `name` (its `server.node-id`) relaying to 127.0.0.1:`relay`
/// and writing its delivery log in `logs`.
fn node(db: &TestDb, name: &str, relay: u16, logs: &Path) -> Server {
    Server::start_pg(
        db,
        &format!("node-id = \"{name}\""),
        &config(relay, &logs.join(format!("{name}.jsonl"))),
    )
}

/// smtp-source sending `count` messages to `server` over 10 sessions, with
/// recipients `<n><to>` (`-N`). Its Message-Id headers carry its process id,
/// so messages from different runs never share one.
fn source(server: &Server, count: usize, to: &str) -> Child {
    Command::new("smtp-source")
        .args(["-N", "-s", "10", "-l", "512", "-m", &count.to_string()])
        .args(["-f", "load@origin.test", "-t", to])
        .arg(format!("127.0.0.1:{}", server.smtp.port()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("smtp-source (run scripts/test-deps)")
}

/// Waits (bounded) for smtp-source to finish and checks that it succeeded:
/// every message it sent was accepted.
fn finish(mut child: Child, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            assert!(status.success(), "smtp-source {what}: {status}\n{err}");
            return;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("smtp-source {what} did not finish within 120 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Files in the sinks' dump directories: a cheap progress count.
fn dump_files(sinks: &[&SmtpSink]) -> usize {
    sinks
        .iter()
        .map(|s| std::fs::read_dir(s.dir.path()).map_or(0, |d| d.count()))
        .sum()
}

/// How often each Message-Id arrived, over all `sinks`.
fn arrivals(sinks: &[&SmtpSink]) -> BTreeMap<String, usize> {
    let mut all = BTreeMap::new();
    for s in sinks {
        for (id, n) in s.arrivals_by_header("Message-Id") {
            *all.entry(id).or_insert(0) += n;
        }
    }
    all
}

/// Waits (at most `limit`) until `n` distinct messages arrived at `sinks`.
fn wait_distinct(
    sinks: &[&SmtpSink],
    n: usize,
    limit: Duration,
    servers: &[&Server],
) -> BTreeMap<String, usize> {
    let deadline = Instant::now() + limit;
    loop {
        if dump_files(sinks) >= n {
            let seen = arrivals(sinks);
            if seen.len() >= n {
                return seen;
            }
        }
        if Instant::now() > deadline {
            let seen = arrivals(sinks);
            let logs: Vec<String> = servers.iter().map(|s| s.log_text()).collect();
            panic!(
                "only {} of {n} distinct messages arrived within {limit:?}\n{}",
                seen.len(),
                logs.join("\n-----\n")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The node id (lease owner) the registry holds for `name`.
fn node_id(db: &TestDb, name: &str) -> String {
    db.sql(&format!("SELECT node_id FROM node WHERE name = '{name}'"))
}

/// The Message-Id headers of the entries `owner` holds a lease on.
fn leased_by(db: &TestDb, owner: &str) -> BTreeSet<String> {
    db.sql(&format!(
        "SELECT DISTINCT substring(encode(b.contents, 'escape') from 'Message-Id: (<[^>]*>)')
           FROM entry e JOIN blob b ON b.message = e.message
          WHERE e.lease_owner = {owner}"
    ))
    .lines()
    .map(str::to_string)
    .collect()
}

/// Lines of a node's delivery log that say "delivered".
fn delivered(logs: &Path, name: &str) -> usize {
    delivery_log(&logs.join(format!("{name}.jsonl")))
        .iter()
        .filter(|l| l["outcome"] == "delivered")
        .count()
}

#[test]
fn cluster_survives_node_loss_and_a_new_node_takes_over() {
    require("smtp-source");
    let started = Instant::now();
    let db = TestDb::create();
    let logs = tempfile::tempdir().unwrap();
    let sink = SmtpSink::start(&[]);
    let relay = sink.port;
    // c's deliveries take a second each (see the module docs).
    let slow = SmtpSink::start(&["-w", "1"]);
    let a = node(&db, "a", relay, logs.path());
    let b = node(&db, "b", relay, logs.path());
    let mut c = node(&db, "c", slow.port, logs.path());
    let tags = db.sql("SELECT count(DISTINCT tag) FROM node");
    assert_eq!(tags, "3", "each node has a message-id tag of its own");

    // C's share first; A's and B's while C is delivering.
    let share = TOTAL / 3;
    finish(source(&c, share, "c@far.test"), "into c");
    let into_a = source(&a, share, "a@far.test");
    let into_b = source(&b, TOTAL - 2 * share, "b@far.test");

    // Kill C at a moment when it holds leases: it is delivering. C is
    // stopped (SIGSTOP) while its leases are read, so that what it held is
    // exactly what it holds when SIGKILL arrives.
    let c_id = node_id(&db, "c");
    let c_pid = c.child.as_ref().expect("running").id().to_string();
    let signal = |sig: &str| {
        let st = Command::new("kill").args([sig, &c_pid]).status().unwrap();
        assert!(st.success(), "kill {sig} {c_pid}");
    };
    let in_flight = wait_for(
        Duration::from_secs(60),
        "node c holding leases",
        || c.log_text(),
        || {
            signal("-STOP");
            let held = leased_by(&db, &c_id);
            if held.is_empty() {
                signal("-CONT");
                std::thread::sleep(Duration::from_millis(20));
                return None;
            }
            Some(held)
        },
    );
    c.kill9();
    let at_kill = dump_files(&[&sink, &slow]);
    eprintln!(
        "killed node c holding leases on {} messages, {at_kill} messages at the sink",
        in_flight.len()
    );

    finish(into_a, "into a");
    finish(into_b, "into b");
    eprintln!("{TOTAL} messages accepted after {:?}", started.elapsed());

    let seen = wait_distinct(&[&sink, &slow], TOTAL, Duration::from_secs(90), &[&a, &b]);
    eprintln!("all {TOTAL} delivered after {:?}", started.elapsed());
    assert_eq!(seen.len(), TOTAL, "every accepted message arrived");
    let twice: Vec<&String> = seen
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, _)| id)
        .collect();
    eprintln!(
        "duplicates: {} (messages c was delivering when killed: {}): {twice:?}",
        twice.len(),
        in_flight.len()
    );
    for id in &twice {
        assert!(
            in_flight.contains(*id),
            "{id} arrived {} times but c was not delivering it at the kill",
            seen[*id]
        );
        assert_eq!(seen[*id], 2, "{id}: at most one extra copy");
    }
    wait_for(
        Duration::from_secs(30),
        "an empty queue",
        || db.sql("SELECT count(*) FROM entry"),
        || (db.sql("SELECT count(*) FROM entry") == "0").then_some(()),
    );
    assert_eq!(db.sql("SELECT count(*) FROM blob"), "0");
    let per_node: Vec<(&str, usize)> = ["a", "b", "c"]
        .iter()
        .map(|n| (*n, delivered(logs.path(), n)))
        .collect();
    eprintln!("delivered per node: {per_node:?}");

    // ---- A new node takes over a cluster whose other nodes die.
    let phase_one: BTreeSet<String> = seen.into_keys().collect();
    drop(sink);
    drop(slow);
    let mut a = a;
    let mut b = b;
    // The queue is empty (checked above) when d starts: whatever it
    // delivers below, it learned of from the change feed.
    let d = node(&db, "d", relay, logs.path());
    let into_a = source(&a, SECOND_WAVE / 2, "a2@far.test");
    let into_b = source(&b, SECOND_WAVE / 2, "b2@far.test");
    finish(into_a, "second wave into a");
    finish(into_b, "second wave into b");
    a.kill9();
    b.kill9();
    let orphaned: usize = db.sql("SELECT count(*) FROM entry").parse().unwrap();
    eprintln!("a and b killed; {orphaned} entries queued, only d left");
    assert_eq!(
        orphaned, SECOND_WAVE,
        "the sink was down: nothing was delivered"
    );

    let sink = SmtpSink::start_on(relay, &[]);
    let seen = wait_distinct(&[&sink], SECOND_WAVE, Duration::from_secs(60), &[&d]);
    assert_eq!(seen.len(), SECOND_WAVE);
    assert!(
        seen.values().all(|n| *n == 1),
        "each exactly once: {seen:?}"
    );
    assert!(
        seen.keys().all(|id| !phase_one.contains(id)),
        "only the second wave"
    );
    assert_eq!(
        delivered(logs.path(), "d"),
        SECOND_WAVE,
        "d delivered all of it"
    );
    wait_for(
        Duration::from_secs(30),
        "an empty queue",
        || db.sql("SELECT count(*) FROM entry"),
        || (db.sql("SELECT count(*) FROM entry") == "0").then_some(()),
    );
    eprintln!("finished after {:?}", started.elapsed());
}
