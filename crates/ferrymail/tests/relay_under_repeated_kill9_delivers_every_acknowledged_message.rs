//! `kill -9` while mail is both arriving and leaving loses nothing: eight
//! clients send to a relay route whose next hop is Postfix's smtp-sink,
//! and the server is killed at a seeded random moment, five times, each
//! time while messages are being received, committed, claimed, delivered,
//! completed and deleted at once. After the last restart the queue must
//! drain, and then:
//!
//! * every message a client got a 250 for reached smtp-sink at least once
//!   (the 250 promises durability; delivery is at least once);
//! * nothing reached smtp-sink that no client sent;
//! * a message arrived twice only because a kill fell between the next
//!   hop's 250 and the recording of the delivery, so duplicates are at most
//!   the deliveries in flight at the kills (`concurrency` each);
//! * the queue is empty, and a restart finds it empty again;
//! * with the `fs` blob store, the contents file of every message delivered
//!   after the last restart is gone once the 2 s delete grace is over; files
//!   left behind are only those of messages delivered before a kill (their
//!   unlink was pending when the process died; the hourly orphan sweep takes
//!   them).
//!
//! `durability_kill9.rs` kills a server that only accepts; this one kills
//! one whose delivery side is as busy as its receiving side.
//! `FERRYMAIL_KILL_SEED` picks other kill moments.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::peers::*;
use common::*;

const ROUNDS: usize = 5;
const CLIENTS: usize = 8;
/// The queue's `concurrency`: deliveries in flight at once.
const CONCURRENCY: usize = 8;

/// Starts the server in a directory of its own, relaying everything to
/// smtp-sink on `sink`; with `fs_blobs`, contents go to an `fs` blob store
/// at `<dir>/blobs`, which is returned.
fn start(sink: u16, fs_blobs: bool) -> (Server, Option<PathBuf>) {
    let dir = tempfile::tempdir().unwrap();
    let blobs = dir.path().join("blobs");
    let extra = format!(
        r#"[session.rcpt]
relay = "remote_ip == '127.0.0.1'"

[queue.schedule]
retry = "[1s]"

[queue.virtual.default]
concurrency = {CONCURRENCY}

{route}
[queue.strategy]
route = "'sink'"
"#,
        route = relay_route("sink", sink, "smtp"),
    );
    let store = fs_store(&blobs);
    let edit = move |base: String| match fs_blobs {
        true => with_storage(
            base,
            &format!("{store}[storage]\ndata = \"local\"\nblob = \"files\"\n"),
        ),
        false => base,
    };
    let mut s = Server::configured(dir, edit, &extra);
    s.spawn();
    (s, fs_blobs.then_some(blobs))
}

fn queued(s: &Server) -> usize {
    s.queue_json()["messages"].as_array().unwrap().len()
}

fn relay_survives_kills(fs_blobs: bool) {
    let seed = std::env::var("FERRYMAIL_KILL_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(7);
    let mut rng = Rng::new(seed);
    let sink = SmtpSink::start(&[]);
    let (mut s, blobs) = start(sink.port, fs_blobs);
    // token → queue id, for every 250 a client got.
    let acked: Arc<Mutex<BTreeMap<String, String>>> = Arc::default();
    // Every token a client sent any of, acknowledged or not.
    let sent: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    // What had reached the sink when the server was last killed.
    let mut delivered_before_kill = BTreeSet::new();
    for round in 0..ROUNDS {
        let stop = Arc::new(AtomicBool::new(false));
        let mut clients = Vec::new();
        for t in 0..CLIENTS {
            let (acked, sent, stop, addr) = (acked.clone(), sent.clone(), stop.clone(), s.smtp);
            clients.push(std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let token = format!("r{round}-c{t}-n{n}");
                    n += 1;
                    sent.lock().unwrap().insert(token.clone());
                    match try_send_token(addr, "x@far.test", &token) {
                        Some(id) => {
                            acked.lock().unwrap().insert(token, id);
                        }
                        None => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            }));
        }
        // Long enough for deliveries to be under way too (the first
        // reach smtp-sink within a few hundred milliseconds).
        let wait = 600 + rng.below(900) as u64;
        std::thread::sleep(Duration::from_millis(wait));
        let arrived_before = sink.dumped().len();
        s.kill9();
        stop.store(true, Ordering::Relaxed);
        for c in clients {
            c.join().unwrap();
        }
        // smtp-sink finishes the dumps of transactions that ended at the
        // kill; nothing can reach it from a dead server after that.
        std::thread::sleep(Duration::from_millis(300));
        delivered_before_kill = sink.arrivals_by_header("Subject").into_keys().collect();
        eprintln!(
            "round {round}: killed after {wait} ms; {} acknowledged so far, {arrived_before} at the sink",
            acked.lock().unwrap().len()
        );
        assert!(
            arrived_before > 0,
            "round {round}: nothing delivered before the kill; the delivery side was not under way"
        );
        s.spawn();
    }

    // Drain: everything left is due within the retry interval.
    let acked = acked.lock().unwrap().clone();
    let sent = sent.lock().unwrap().clone();
    let deadline = Instant::now() + Duration::from_secs(120);
    while queued(&s) > 0 {
        assert!(
            Instant::now() < deadline,
            "the queue did not drain: {}",
            serde_json::to_string_pretty(&s.queue_json()).unwrap()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Every acknowledged message is at the sink (a dump is complete only
    // once smtp-sink wrote all of it, so wait for the last few).
    let arrivals = wait_for(
        Duration::from_secs(30),
        "every acknowledged message at smtp-sink",
        || {
            let a = sink.arrivals_by_header("Subject");
            let missing: Vec<&String> = acked.keys().filter(|t| !a.contains_key(*t)).collect();
            format!(
                "{} of {} acknowledged messages missing, e.g. {:?}",
                missing.len(),
                acked.len(),
                &missing[..missing.len().min(10)]
            )
        },
        || {
            let a = sink.arrivals_by_header("Subject");
            acked.keys().all(|t| a.contains_key(t)).then_some(a)
        },
    );
    for token in acked.keys() {
        assert!(arrivals.contains_key(token), "acknowledged {token} lost");
    }
    for token in arrivals.keys() {
        assert!(sent.contains(token), "{token} arrived but nobody sent it");
    }
    let duplicates: usize = arrivals.values().map(|n| n - 1).sum();
    let unacked = arrivals.keys().filter(|t| !acked.contains_key(*t)).count();
    eprintln!(
        "{} acknowledged, {} arrived ({} of them never acknowledged: killed before the 250), {duplicates} delivered twice",
        acked.len(),
        arrivals.len(),
        unacked
    );
    assert!(
        acked.len() > 100 * ROUNDS,
        "load was running ({} acknowledged)",
        acked.len()
    );
    assert!(
        duplicates <= ROUNDS * CONCURRENCY,
        "{duplicates} duplicates: more than the deliveries in flight at {ROUNDS} kills"
    );

    if let Some(blobs) = &blobs {
        // Past the delete grace (2 s) of the last deliveries.
        std::thread::sleep(Duration::from_secs(4));
        let names: BTreeSet<String> = names_under(blobs).into_iter().collect();
        let left: Vec<&String> = acked
            .iter()
            .filter(|(_, id)| names.contains(*id))
            .map(|(token, _)| token)
            .collect();
        let after_restart: Vec<&&String> = left
            .iter()
            .filter(|t| !delivered_before_kill.contains(**t))
            .collect();
        eprintln!(
            "contents files left: {} of acknowledged messages ({} of them delivered after the last restart), {} files in all",
            left.len(),
            after_restart.len(),
            names.len()
        );
        assert!(
            after_restart.is_empty(),
            "contents of messages delivered after the last restart were not removed: {:?}",
            &after_restart[..after_restart.len().min(10)]
        );
    }

    // The empty queue is durable: a restart finds nothing to do.
    s.kill9();
    s.spawn();
    assert_eq!(queued(&s), 0, "the queue came back after a restart");
}

#[test]
fn embedded_store() {
    relay_survives_kills(false);
}

#[test]
fn fs_blob_store() {
    relay_survives_kills(true);
}
