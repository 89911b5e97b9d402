//! The queue manager against the real embedded store (a temporary
//! directory) and a scripted transport.
//!
//! The transport here is a test double on purpose: these tests are about
//! what the driver does with each kind of outcome (defer, complete, delete
//! contents, lease, recover), so they need outcomes chosen per recipient and
//! per attempt, which a real SMTP peer cannot give on cue. The real SMTP
//! client is tested against real peers in the delivery crate and end to end.
//!
//! Time is real but short: schedules in milliseconds, and every wait is
//! bounded by [`WAIT`].

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use ferrymail_deliver::{Job, Outcome, RecipientOutcome, Remote, RemoteReply, Transport};
use ferrymail_schedule::{Event, EventKind, ManagerSettings, QueueManager, Running};
use ferrymail_spool::embedded::EmbeddedStore;
use ferrymail_spool::{
    AdminAction, Claim, ClaimedJob, DataStore, Deferral, Discharge, EntryKey, Envelope, FeedBatch,
    FeedCursor, Lane, MessageId, NodeId, OwedNotice, QueueEntry, Queued, Removal, Routing, Spool,
    StoreError, UnixMillis, conformance::sample_envelope, now_millis,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The longest any test waits for something to happen.
const WAIT: Duration = Duration::from_secs(10);

const CONFIG: &str = r#"
[queue.schedule]
retry = "[300ms]"
notify = "[]"
expire = "1h"
"#;

fn config(text: &str) -> ferrymail_config::Config {
    ferrymail_config::parse(text, Path::new("test.toml")).unwrap()
}

/// What the scripted transport answers, per recipient index, attempt by
/// attempt; when a recipient's script runs out it is delivered.
#[derive(Default)]
struct Script {
    plan: Mutex<HashMap<(MessageId, u32), VecDeque<Outcome>>>,
    /// Every job seen: (message, recipients, node tag).
    calls: Mutex<Vec<(MessageId, Vec<u32>)>>,
    /// How long each delivery takes: the wait for the next hop's reply
    /// after the message was sent (the job's gate is entered first).
    delay: Duration,
    /// Never sends the message's end (the gate stays open) and never
    /// returns: a next hop that never greets.
    stall: bool,
    /// Panics instead of delivering: a bug in the transport.
    panics: bool,
}

impl Script {
    fn with_delay(delay: Duration) -> Arc<Script> {
        Arc::new(Script {
            delay,
            ..Script::default()
        })
    }
    fn stalled() -> Arc<Script> {
        Arc::new(Script {
            stall: true,
            ..Script::default()
        })
    }
    fn plan(&self, m: MessageId, rcpt: u32, outcomes: Vec<Outcome>) {
        self.plan.lock().unwrap().insert((m, rcpt), outcomes.into());
    }
    fn deliveries(&self, m: MessageId, rcpt: u32) -> usize {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|(mm, r)| *mm == m && r.contains(&rcpt))
            .count()
    }
}

fn remote() -> Remote {
    Remote {
        host: "mx.test".into(),
        ip: "192.0.2.25".parse().unwrap(),
        port: 25,
        tls: None,
        dsn: true,
        lmtp: false,
        source: None,
    }
}

fn reply(code: u16, status: &str, text: &str) -> RemoteReply {
    RemoteReply {
        code,
        status: Some(status.into()),
        text: text.into(),
    }
}

#[async_trait]
impl Transport for Script {
    async fn deliver(&self, job: Job) -> Vec<RecipientOutcome> {
        self.calls
            .lock()
            .unwrap()
            .push((job.envelope.id, job.recipients.clone()));
        if self.stall {
            std::future::pending::<()>().await;
        }
        if self.panics {
            panic!("scripted transport bug");
        }
        // The job's destination is its recipients' domain, whether the
        // manager read it from the envelope or got it with the entries.
        for &rcpt in &job.recipients {
            assert_eq!(
                job.envelope.rcpt_domain(rcpt),
                job.domain,
                "recipient {rcpt} in a job for another domain"
            );
        }
        assert!(
            job.gate.enter(),
            "the gate was closed before the message went out"
        );
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        let mut plan = self.plan.lock().unwrap();
        job.recipients
            .iter()
            .map(|&rcpt| {
                let outcome = plan
                    .get_mut(&(job.envelope.id, rcpt))
                    .and_then(VecDeque::pop_front)
                    .unwrap_or(Outcome::Delivered {
                        reply: reply(250, "2.0.0", "ok"),
                    });
                RecipientOutcome {
                    rcpt,
                    outcome,
                    remote: Some(remote()),
                    answered: false,
                }
            })
            .collect()
    }
}

/// A message with `n` recipients (rcpt{i}@dest{i%3}.example) that arrived
/// now, and its entries.
fn message(seq: u64, n: u32) -> (Envelope, Vec<QueueEntry>) {
    let now = now_millis();
    let mut env = sample_envelope(seq, n);
    env.id = MessageId((now << 22) | (seq & 0xfff));
    env.arrived = now;
    let entries = (0..n)
        .map(|rcpt| {
            QueueEntry::new(
                EntryKey {
                    message: env.id,
                    rcpt,
                },
                Routing::default_with_weight(0),
                now,
            )
        })
        .collect();
    (env, entries)
}

struct Rig {
    _dir: tempfile::TempDir,
    store: Arc<EmbeddedStore>,
    spool: Spool,
}

fn rig() -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    Rig {
        spool: Spool {
            data: store.clone(),
            blob: store.clone(),
            unified: true,
        },
        store,
        _dir: dir,
    }
}

/// Whether every remaining entry of message `id` has had one attempt.
async fn attempted_once(r: &Rig, id: MessageId) -> bool {
    r.store
        .entries(id)
        .await
        .unwrap()
        .iter()
        .all(|e| e.attempts == 1)
}

/// A spool of one embedded store, data and contents together.
fn spool_of(store: &Arc<EmbeddedStore>) -> Spool {
    Spool {
        data: store.clone(),
        blob: store.clone(),
        unified: true,
    }
}

/// Opens the store in `dir` again, once the one that wrote it is gone.
async fn reopen(dir: &Path) -> Arc<EmbeddedStore> {
    tokio::time::sleep(Duration::from_millis(200)).await; // the writer thread ends
    EmbeddedStore::open(dir).unwrap()
}

async fn accept(spool: &Spool, env: &Envelope, entries: &[QueueEntry]) {
    spool
        .accept(
            env,
            entries,
            Bytes::from_static(b"Subject: t\r\n\r\nbody\r\n"),
        )
        .await
        .unwrap();
}

fn settings(node: u64) -> ManagerSettings {
    ManagerSettings {
        lease: Duration::from_secs(2),
        renew_every: Duration::from_millis(200),
        shutdown_grace: Duration::from_secs(5),
        seed: node,
        ..ManagerSettings::new(NodeId(node))
    }
}

struct Started {
    running: Running,
    queued: mpsc::UnboundedSender<Queued>,
    shutdown: CancellationToken,
}

fn start(cfg: &str, spool: &Spool, t: Arc<Script>, s: ManagerSettings) -> Started {
    let (queued, rx) = mpsc::unbounded_channel();
    let shutdown = CancellationToken::new();
    let running = QueueManager::start(&config(cfg), spool.clone(), t, s, rx, shutdown.clone());
    Started {
        running,
        queued,
        shutdown,
    }
}

impl Started {
    async fn stop(self) -> mpsc::UnboundedReceiver<Event> {
        self.shutdown.cancel();
        tokio::time::timeout(WAIT, self.running.task)
            .await
            .expect("manager stops within the grace period")
            .unwrap();
        self.running.events
    }
}

/// Polls `f` until it is true or [`WAIT`] passes.
async fn until<F: AsyncFnMut() -> bool>(what: &str, mut f: F) {
    let end = tokio::time::Instant::now() + WAIT;
    while !f().await {
        assert!(
            tokio::time::Instant::now() < end,
            "timed out waiting: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn next_event(events: &mut mpsc::UnboundedReceiver<Event>) -> Event {
    tokio::time::timeout(WAIT, events.recv())
        .await
        .expect("an event in time")
        .expect("the manager is running")
}

/// A panic in the transport ends neither the job nor the manager: every
/// recipient of the job is deferred with the panic's message, like any
/// transient failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_transport_defers_the_job() {
    let r = rig();
    let t = Arc::new(Script {
        panics: true,
        ..Script::default()
    });
    let (env, entries) = message(2, 2);
    accept(&r.spool, &env, &entries).await;
    let config = CONFIG.replace("[300ms]", "[1h]");
    let m = start(&config, &r.spool, t.clone(), settings(1));
    m.queued.send(entries.clone().into()).unwrap();
    until("the failed attempts are recorded", async || {
        attempted_once(&r, env.id).await
    })
    .await;
    for e in r.store.entries(env.id).await.unwrap() {
        assert_eq!(e.lane, Lane::Deferred);
        assert_eq!(
            e.last_error.as_deref(),
            Some("delivery failed internally: panicked: scripted transport bug")
        );
        assert_eq!(e.lease, None);
    }
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_then_success_updates_the_store() {
    let r = rig();
    let t = Script::with_delay(Duration::ZERO);
    let (env, entries) = message(1, 1);
    t.plan(
        env.id,
        0,
        vec![Outcome::Transient {
            reason: "ignored".into(),
            reply: Some(reply(451, "4.3.0", "busy")),
        }],
    );
    accept(&r.spool, &env, &entries).await;
    // A retry interval long enough that a loaded machine still sees the
    // deferred state before the second attempt.
    let config = CONFIG.replace("[300ms]", "[2s]");
    let mut m = start(&config, &r.spool, t.clone(), settings(1));
    // With its domains, as receive sends it (the others send none, so the
    // manager reads the envelope).
    m.queued
        .send(Queued::with_envelope(entries.clone(), &env))
        .unwrap();

    // After the first attempt: deferred, attempt counted, error kept.
    until("the first attempt is recorded", async || {
        r.store.entries(env.id).await.unwrap()[0].attempts == 1
    })
    .await;
    let e = &r.store.entries(env.id).await.unwrap()[0];
    assert_eq!(e.lane, Lane::Deferred);
    assert_eq!(e.last_error.as_deref(), Some("451 4.3.0 busy"));
    assert_eq!(e.lease, None, "the lease is released");
    let now = now_millis();
    assert!(
        e.due > now.saturating_sub(2_000) && e.due <= now + 2_200,
        "{} vs {now}",
        e.due
    );

    // The retry succeeds: entry, envelope and contents are gone.
    let ev = next_event(&mut m.running.events).await;
    assert!(
        matches!(ev.kind, EventKind::Delivered { lmtp: false, .. }),
        "{:?}",
        ev.kind
    );
    assert_eq!((ev.rcpt, ev.attempts, ev.queue.as_str()), (0, 2, "default"));
    assert_eq!(ev.remote, Some(remote()));
    assert!(r.store.entries(env.id).await.unwrap().is_empty());
    assert_eq!(r.store.envelope(env.id).await.unwrap(), None);
    assert_eq!(r.spool.blob.get(env.id).await.unwrap(), None);
    assert_eq!(t.deliveries(env.id, 0), 2);
    m.stop().await;
}

/// An entry whose route is not configured (a reload removed it, or a
/// computed route name has a typo) waits: the transport is not called, no
/// attempt is counted (so neither `max-attempts` nor the destination's
/// health is touched), and its error says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_whose_route_is_gone_waits_without_an_attempt() {
    let r = rig();
    let t = Script::with_delay(Duration::ZERO);
    let (env, mut entries) = message(1, 1);
    entries[0].route = "gone".into();
    accept(&r.spool, &env, &entries).await;
    let m = start(
        &CONFIG.replace("expire = \"1h\"", "max-attempts = 1"),
        &r.spool,
        t.clone(),
        settings(1),
    );
    m.queued
        .send(Queued::with_envelope(entries.clone(), &env))
        .unwrap();
    until("the entry is deferred", async || {
        r.store.entries(env.id).await.unwrap()[0]
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("route 'gone' is not configured"))
    })
    .await;
    let e = &r.store.entries(env.id).await.unwrap()[0];
    assert_eq!((e.attempts, e.lane), (0, Lane::Deferred));
    assert_eq!(t.deliveries(env.id, 0), 0, "the transport was not called");
    m.stop().await;
}

/// Contents missing from the blob store (an `fs` path not mounted, a blob
/// store that is not shared by the nodes) are the stores' fault, not the
/// mail's: the entry is deferred without an attempt, not bounced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_contents_defer_the_entry_without_a_bounce() {
    let r = rig();
    let t = Script::with_delay(Duration::ZERO);
    let (env, entries) = message(3, 2);
    // The envelope and entries only: no contents.
    r.store.insert(&env, &entries).await.unwrap();
    let mut m = start(CONFIG, &r.spool, t.clone(), settings(1));
    m.queued.send(entries.clone().into()).unwrap();
    until("both entries are deferred", async || {
        r.store.entries(env.id).await.unwrap().iter().all(|e| {
            e.lane == Lane::Deferred
                && e.last_error
                    .as_deref()
                    .is_some_and(|e| e.contains("contents are missing"))
        })
    })
    .await;
    assert_eq!(r.store.entries(env.id).await.unwrap().len(), 2, "kept");
    assert!(r.store.envelope(env.id).await.unwrap().is_some());
    assert_eq!(t.deliveries(env.id, 0), 0, "the transport was not called");
    assert!(
        m.running.events.try_recv().is_err(),
        "no failure (or any other) event"
    );
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_failure_removes_entry_and_contents() {
    let r = rig();
    let t = Script::with_delay(Duration::ZERO);
    let (env, entries) = message(2, 2);
    t.plan(
        env.id,
        1,
        vec![Outcome::Permanent {
            reason: "rejected".into(),
            reply: Some(reply(550, "5.1.1", "no such user")),
        }],
    );
    t.plan(
        env.id,
        0,
        vec![Outcome::Transient {
            reason: "greylisted".into(),
            reply: Some(reply(450, "4.2.0", "greylisted")),
        }],
    );
    accept(&r.spool, &env, &entries).await;
    let mut m = start(CONFIG, &r.spool, t.clone(), settings(1));
    m.queued.send(entries.clone().into()).unwrap();
    let ev = next_event(&mut m.running.events).await;
    assert_eq!(ev.rcpt, 1);
    assert_eq!(
        ev.kind,
        EventKind::Failed {
            reason: "rejected".into(),
            reply: Some(reply(550, "5.1.1", "no such user"))
        }
    );
    assert_eq!(ev.status(), "5.1.1");
    assert_eq!(ev.action(), "failed");
    // The other recipient keeps the message (and its contents) alive...
    let left = r.store.entries(env.id).await.unwrap();
    assert_eq!(left.len(), 1);
    assert!(r.spool.blob.get(env.id).await.unwrap().is_some());
    // ...until it is delivered.
    let ev = next_event(&mut m.running.events).await;
    assert_eq!(ev.rcpt, 0);
    assert!(matches!(ev.kind, EventKind::Delivered { .. }));
    until("contents deleted", async || {
        r.spool.blob.get(env.id).await.unwrap().is_none()
    })
    .await;
    assert_eq!(r.store.envelope(env.id).await.unwrap(), None);
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_after_reopening_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let (fresh, fresh_e) = message(10, 2);
    let (deferred, mut deferred_e) = message(11, 1);
    let (held, mut held_e) = message(12, 1);
    let (mine, mine_e) = message(13, 1);
    {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let spool = spool_of(&store);
        accept(&spool, &fresh, &fresh_e).await;
        deferred_e[0].lane = Lane::Deferred;
        deferred_e[0].attempts = 3;
        deferred_e[0].due = now_millis() + 3_600_000;
        accept(&spool, &deferred, &deferred_e).await;
        held_e[0].held = true;
        accept(&spool, &held, &held_e).await;
        accept(&spool, &mine, &mine_e).await;
        // Leased by this node (NodeId 1) for an hour, as if it crashed
        // mid-delivery.
        let now = now_millis();
        let got = store
            .claim_keys(NodeId(1), &[mine_e[0].key], now, now + 3_600_000)
            .await
            .unwrap();
        assert_eq!(got.len(), 1);
    }
    let store = reopen(dir.path()).await;
    let spool = spool_of(&store);
    let t = Script::with_delay(Duration::ZERO);
    let mut m = start(CONFIG, &spool, t.clone(), settings(1));
    // The fresh message and the one leased by this node are delivered; the
    // deferred one waits for its due time; the held one stays.
    let mut delivered = Vec::new();
    for _ in 0..3 {
        delivered.push(next_event(&mut m.running.events).await.key());
    }
    delivered.sort();
    let mut want = vec![fresh_e[0].key, fresh_e[1].key, mine_e[0].key];
    want.sort();
    assert_eq!(delivered, want);
    // An event is emitted while its job is still being booked; the index
    // settles right after.
    let handle = m.running.handle.clone();
    until("only the deferred entry left in the index", async || {
        let stats = handle.stats().await.unwrap();
        (stats.entries, stats.waiting, stats.in_flight) == (1, 1, 0)
    })
    .await;
    assert_eq!(t.deliveries(deferred.id, 0), 0);
    assert_eq!(t.deliveries(held.id, 0), 0);
    // A flush starts the deferred one now; the held one still never goes.
    assert_eq!(m.running.handle.flush(None).await.unwrap(), 1);
    assert_eq!(
        next_event(&mut m.running.events).await.key(),
        deferred_e[0].key
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(t.deliveries(held.id, 0), 0);
    assert_eq!(store.entries(held.id).await.unwrap().len(), 1);
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_mail_waits_until_released() {
    let r = rig();
    let t = Script::with_delay(Duration::ZERO);
    let (env, mut entries) = message(20, 1);
    entries[0].held = true;
    accept(&r.spool, &env, &entries).await;
    let mut m = start(CONFIG, &r.spool, t.clone(), settings(1));
    m.queued.send(entries.clone().into()).unwrap();
    // Even an ETRN for its domain does not start it.
    assert_eq!(m.running.handle.etrn("dest0.example").await.unwrap(), 0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(t.deliveries(env.id, 0), 0);
    // The operator releases it (the management API does the store action
    // and then tells the manager).
    r.store
        .admin(&[entries[0].key], AdminAction::Release)
        .await
        .unwrap();
    m.running
        .handle
        .reread(vec![entries[0].key], false)
        .await
        .unwrap();
    let ev = next_event(&mut m.running.events).await;
    assert_eq!(ev.key(), entries[0].key);
    // A hold that reaches the store before the index still stops delivery:
    // claim_keys refuses held entries.
    let (env2, entries2) = message(21, 1);
    accept(&r.spool, &env2, &entries2).await;
    r.store
        .admin(&[entries2[0].key], AdminAction::Hold)
        .await
        .unwrap();
    let mut visible = entries2.clone();
    visible[0].held = false; // the index was not told about the hold
    m.queued.send(visible.into()).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(t.deliveries(env2.id, 0), 0);
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etrn_starts_deferred_mail_and_counts_messages() {
    let r = rig();
    let t = Script::with_delay(Duration::ZERO);
    let (env, entries) = message(30, 3); // dest0, dest1, dest2
    for rcpt in 0..3 {
        t.plan(
            env.id,
            rcpt,
            vec![Outcome::Transient {
                reason: "connection refused".into(),
                reply: None,
            }],
        );
    }
    accept(&r.spool, &env, &entries).await;
    let cfg = "[queue.schedule]\nretry = \"[1h]\"\nnotify = \"[]\"\nexpire = \"1d\"\n";
    let mut m = start(cfg, &r.spool, t.clone(), settings(1));
    m.queued.send(entries.clone().into()).unwrap();
    until("three deferrals", async || attempted_once(&r, env.id).await).await;
    let h = &m.running.handle;
    // The store has the deferrals; the engine's index learns of them when
    // the jobs report back, a moment later.
    until("the jobs are back in the index", async || {
        let s = h.stats().await.unwrap();
        s.in_flight == 0 && s.jobs == 0
    })
    .await;
    assert_eq!(h.etrn("nowhere.example").await.unwrap(), 0);
    assert!(h.etrn("bad name").await.is_err());
    assert_eq!(h.etrn("dest1.example").await.unwrap(), 1);
    let ev = next_event(&mut m.running.events).await;
    assert_eq!(ev.rcpt, 1);
    assert_eq!(
        h.etrn("#default").await.unwrap(),
        1,
        "one message, two recipients"
    );
    let mut rcpts = vec![
        next_event(&mut m.running.events).await.rcpt,
        next_event(&mut m.running.events).await.rcpt,
    ];
    rcpts.sort();
    assert_eq!(rcpts, vec![0, 2]);
    m.stop().await;
}

/// Two nodes sharing one store: the lease decides, every entry is delivered
/// exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_managers_never_deliver_one_entry_twice() {
    let r = rig();
    let mut keys = Vec::new();
    for seq in 0..40 {
        let (env, entries) = message(100 + seq, 2);
        accept(&r.spool, &env, &entries).await;
        keys.extend(entries.iter().map(|e| e.key));
    }
    let t1 = Script::with_delay(Duration::from_millis(20));
    let t2 = Script::with_delay(Duration::from_millis(20));
    // Both recover the same 80 entries at start and race for them.
    let m1 = start(CONFIG, &r.spool, t1.clone(), settings(1));
    let m2 = start(CONFIG, &r.spool, t2.clone(), settings(2));
    until("every entry delivered", async || {
        r.store.scan(None, 1000).await.unwrap().is_empty()
    })
    .await;
    let count = |t: &Script| {
        let mut c: HashMap<EntryKey, usize> = HashMap::new();
        for (m, rcpts) in t.calls.lock().unwrap().iter() {
            for r in rcpts {
                *c.entry(EntryKey {
                    message: *m,
                    rcpt: *r,
                })
                .or_default() += 1;
            }
        }
        c
    };
    let (c1, c2) = (count(&t1), count(&t2));
    // Both nodes took part (they race from the first millisecond), so the
    // exclusivity above was exercised, not avoided.
    assert!(
        !c1.is_empty() && !c2.is_empty(),
        "{} / {}",
        c1.len(),
        c2.len()
    );
    for k in &keys {
        let n = c1.get(k).copied().unwrap_or(0) + c2.get(k).copied().unwrap_or(0);
        assert_eq!(n, 1, "{k:?} delivered {n} times");
    }
    m1.stop().await;
    m2.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_deliveries_renew_their_lease_and_finish_at_shutdown() {
    let r = rig();
    let t = Script::with_delay(Duration::from_millis(1500));
    let (env, entries) = message(40, 1);
    accept(&r.spool, &env, &entries).await;
    let started = now_millis();
    let m = start(CONFIG, &r.spool, t.clone(), settings(1));
    m.queued.send(entries.clone().into()).unwrap();
    until("delivery started", async || t.deliveries(env.id, 0) == 1).await;
    // The 2 s lease is renewed every 200 ms while the delivery runs.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let e = &r.store.entries(env.id).await.unwrap()[0];
    let lease = e.lease.expect("leased while in flight");
    assert_eq!(lease.owner, NodeId(1));
    assert!(
        lease.until > started + 2_000 + 300,
        "renewed: {} vs claimed at {started}",
        lease.until
    );
    // Shutdown waits for the delivery in flight, which completes.
    let mut events = m.stop().await;
    assert!(matches!(
        events.try_recv().unwrap().kind,
        EventKind::Delivered { .. }
    ));
    assert!(r.store.entries(env.id).await.unwrap().is_empty());
}

/// A delivery that has not sent the message's end does not hold up the
/// shutdown (the grace period here is 5 s): it is dropped at once, records
/// nothing, and the recipient is still queued, not attempted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drops_deliveries_that_sent_nothing() {
    let r = rig();
    let t = Script::stalled();
    let (env, entries) = message(41, 1);
    accept(&r.spool, &env, &entries).await;
    let m = start(CONFIG, &r.spool, t.clone(), settings(1));
    m.queued.send(entries.clone().into()).unwrap();
    until("delivery started", async || t.deliveries(env.id, 0) == 1).await;
    let t0 = std::time::Instant::now();
    let mut events = m.stop().await;
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "shutdown waited {:?} for a delivery that sent nothing",
        t0.elapsed()
    );
    assert!(events.try_recv().is_err(), "no outcome may be recorded");
    let left = r.store.entries(env.id).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].attempts, 0, "{:?}", left[0]);
}

/// Delay notices reach the event channel with the data RFC 3464 needs, and
/// expiry ends the recipient.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delay_notice_and_expiry_events() {
    let r = rig();
    let t = Script::with_delay(Duration::ZERO);
    let (env, entries) = message(50, 1);
    let busy = Outcome::Transient {
        reason: "busy".into(),
        reply: Some(reply(421, "4.7.0", "try later")),
    };
    t.plan(env.id, 0, vec![busy.clone(); 100]);
    accept(&r.spool, &env, &entries).await;
    let cfg = "[queue.schedule]\nretry = \"[100ms]\"\nnotify = \"[250ms]\"\nexpire = \"600ms\"\n";
    let mut m = start(cfg, &r.spool, t.clone(), settings(1));
    m.queued.send(entries.clone().into()).unwrap();
    let ev = next_event(&mut m.running.events).await;
    match &ev.kind {
        EventKind::Delayed {
            notify_num,
            will_retry_until,
            reason,
            reply: Some(rep),
        } => {
            assert_eq!(*notify_num, 1);
            assert_eq!(*will_retry_until, Some(env.arrived + 600));
            assert_eq!(reason, "421 4.7.0 try later");
            assert_eq!(rep.code, 421);
        }
        other => panic!("{other:?}"),
    }
    assert!(ev.attempt_at >= env.arrived + 250);
    assert_eq!(ev.status(), "4.7.0");
    let ev = next_event(&mut m.running.events).await;
    assert!(
        matches!(ev.kind, EventKind::Expired { .. }),
        "{:?}",
        ev.kind
    );
    assert_eq!(ev.status(), "4.4.7");
    assert!(ev.attempt_at >= env.arrived + 600);
    // The expiry owes a failure notice (NOTIFY=SUCCESS,FAILURE), recorded
    // with it: the entry stays, finished, with the contents, until the DSN
    // layer discharges the notice. (The delay owed nothing: no DELAY.)
    let kept = r.store.entries(env.id).await.unwrap();
    assert_eq!(kept.len(), 1);
    assert!(kept[0].is_notice_owed());
    assert_eq!(kept[0].notice, Some(ev.owed_notice()));
    assert!(r.spool.blob.get(env.id).await.unwrap().is_some());
    assert_eq!(
        r.store.discharge(&[ev.discharge()]).await.unwrap(),
        vec![env.id]
    );
    assert!(r.store.entries(env.id).await.unwrap().is_empty());
    m.stop().await;
}

/// Notices a crash left owed are handed to the DSN layer at start, as the
/// events they recorded, with the envelope and contents read back: a
/// finished recipient is never delivered again, and one with a delay notice
/// owed is also scheduled as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owed_notices_are_handed_over_at_restart() {
    use ferrymail_spool::conformance::sample_notice;
    use ferrymail_spool::{Deferral, Lease};
    let r = rig();
    let t = Script::with_delay(Duration::ZERO);
    let (env, entries) = message(60, 3);
    accept(&r.spool, &env, &entries).await;
    let node = NodeId(1);
    let k = |rcpt| EntryKey {
        message: env.id,
        rcpt,
    };
    let now = now_millis();
    // As a crashed node left them: rcpt 0 failed with its notice owed,
    // rcpt 1 deferred (due now) with a delay notice owed, rcpt 2 untouched.
    r.store
        .claim_keys(node, &[k(0), k(1)], now, now + 60_000)
        .await
        .unwrap();
    let failed = sample_notice(None, 1);
    r.store.complete(node, k(0), Some(&failed)).await.unwrap();
    let delayed = sample_notice(Some(1), 1);
    r.store
        .defer(
            node,
            k(1),
            &Deferral {
                due: now,
                last_error: "452 full".into(),
                notify_count: 1,
                notice: Some(delayed.clone()),
                attempted: true,
            },
        )
        .await
        .unwrap();

    let mut m = start(CONFIG, &r.spool, t.clone(), settings(1));
    let mut got = HashMap::new();
    while got.len() < 3 {
        let ev = next_event(&mut m.running.events).await;
        let action = ev.action();
        got.insert((ev.rcpt, action), ev);
    }
    // The overdue retry of rcpt 1 is spread over the restart; start it now.
    assert_eq!(m.running.handle.flush(None).await.unwrap(), 1);
    let ev = next_event(&mut m.running.events).await;
    got.insert((ev.rcpt, ev.action()), ev);
    let ev = &got[&(0, "failed")];
    assert_eq!(ev.owed_notice(), failed, "the recorded event, unchanged");
    assert_eq!(*ev.envelope, env);
    assert_eq!(
        ev.contents.as_deref(),
        Some(&b"Subject: t\r\n\r\nbody\r\n"[..])
    );
    assert_eq!(got[&(1, "delayed")].owed_notice(), delayed);
    // rcpt 1 and 2 are delivered (their scripts are empty); rcpt 0 never.
    assert!(got.contains_key(&(1, "delivered")), "{:?}", got.keys());
    assert!(got.contains_key(&(2, "delivered")), "{:?}", got.keys());
    assert_eq!(t.deliveries(env.id, 0), 0, "a finished recipient");
    // What is left is the finished recipient, its lease free, until its
    // notice is discharged. (rcpt 1's entry went with its delivery, which
    // owed nothing: the next hop has DSN; see `DataStore::complete` on a
    // delay notice its final outcome supersedes.)
    let left = r.store.entries(env.id).await.unwrap();
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0].key, k(0));
    assert_eq!(left[0].lease, None::<Lease>);
    assert_eq!(
        r.store.discharge(&[ev.discharge()]).await.unwrap(),
        vec![env.id]
    );
    m.stop().await;
}

/// The embedded store whose calls fail on cue: the first `scans` scans,
/// the first `envelopes` envelope reads and the first `completes` writes
/// of a final outcome, as in a store outage. A wrapper because no real
/// store fails exactly these calls on demand; every other call goes to the
/// real embedded store.
struct Flaky {
    inner: Arc<EmbeddedStore>,
    scans: AtomicUsize,
    envelopes: AtomicUsize,
    completes: AtomicUsize,
}

impl Flaky {
    fn fails(counter: &AtomicUsize) -> bool {
        counter
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }
}

fn outage() -> StoreError {
    StoreError::Engine("injected outage".into())
}

#[async_trait]
impl DataStore for Flaky {
    async fn insert(&self, envelope: &Envelope, entries: &[QueueEntry]) -> Result<(), StoreError> {
        self.inner.insert(envelope, entries).await
    }
    async fn insert_with_contents(
        &self,
        envelope: &Envelope,
        entries: &[QueueEntry],
        contents: Bytes,
    ) -> Result<(), StoreError> {
        self.inner
            .insert_with_contents(envelope, entries, contents)
            .await
    }
    async fn claim(&self, claim: &Claim) -> Result<Vec<QueueEntry>, StoreError> {
        self.inner.claim(claim).await
    }
    async fn claim_keys(
        &self,
        owner: NodeId,
        keys: &[EntryKey],
        now: UnixMillis,
        lease_until: UnixMillis,
    ) -> Result<Vec<QueueEntry>, StoreError> {
        self.inner.claim_keys(owner, keys, now, lease_until).await
    }
    async fn claim_job(
        &self,
        owner: NodeId,
        message: MessageId,
        keys: &[EntryKey],
        now: UnixMillis,
        lease_until: UnixMillis,
        contents: bool,
    ) -> Result<ClaimedJob, StoreError> {
        self.inner
            .claim_job(owner, message, keys, now, lease_until, contents)
            .await
    }
    async fn renew(
        &self,
        owner: NodeId,
        keys: &[EntryKey],
        until: UnixMillis,
    ) -> Result<usize, StoreError> {
        self.inner.renew(owner, keys, until).await
    }
    async fn complete(
        &self,
        owner: NodeId,
        key: EntryKey,
        notice: Option<&OwedNotice>,
    ) -> Result<Removal, StoreError> {
        if Self::fails(&self.completes) {
            return Err(outage());
        }
        self.inner.complete(owner, key, notice).await
    }
    async fn defer(
        &self,
        owner: NodeId,
        key: EntryKey,
        deferral: &Deferral,
    ) -> Result<(), StoreError> {
        self.inner.defer(owner, key, deferral).await
    }
    async fn reroute(
        &self,
        owner: NodeId,
        key: EntryKey,
        routing: &Routing,
        due: UnixMillis,
    ) -> Result<(), StoreError> {
        self.inner.reroute(owner, key, routing, due).await
    }
    async fn discharge(&self, notices: &[Discharge]) -> Result<Vec<MessageId>, StoreError> {
        self.inner.discharge(notices).await
    }
    async fn envelope(&self, id: MessageId) -> Result<Option<Envelope>, StoreError> {
        if Self::fails(&self.envelopes) {
            return Err(outage());
        }
        self.inner.envelope(id).await
    }
    async fn entries(&self, id: MessageId) -> Result<Vec<QueueEntry>, StoreError> {
        self.inner.entries(id).await
    }
    async fn scan(
        &self,
        after: Option<EntryKey>,
        limit: usize,
    ) -> Result<Vec<QueueEntry>, StoreError> {
        if Self::fails(&self.scans) {
            return Err(outage());
        }
        self.inner.scan(after, limit).await
    }
    async fn admin(&self, keys: &[EntryKey], action: AdminAction) -> Result<usize, StoreError> {
        self.inner.admin(keys, action).await
    }
    async fn cancel(&self, keys: &[EntryKey]) -> Result<Vec<MessageId>, StoreError> {
        self.inner.cancel(keys).await
    }
    async fn register_node(&self, name: &str, node: NodeId) -> Result<Option<u16>, StoreError> {
        self.inner.register_node(name, node).await
    }
    async fn feed_start(&self) -> Result<Option<FeedCursor>, StoreError> {
        self.inner.feed_start().await
    }
    async fn feed_read(
        &self,
        cursor: &mut FeedCursor,
        limit: usize,
    ) -> Result<FeedBatch, StoreError> {
        self.inner.feed_read(cursor, limit).await
    }
    async fn announce_expedite(&self, argument: &str) -> Result<(), StoreError> {
        self.inner.announce_expedite(argument).await
    }
    fn shared(&self) -> bool {
        self.inner.shared()
    }
    async fn take_tokens(
        &self,
        queue: &str,
        capacity: u64,
        period: Duration,
        want: u32,
    ) -> Result<u32, StoreError> {
        self.inner.take_tokens(queue, capacity, period, want).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_errors_at_start_up_delay_recovery_but_strand_nothing() {
    // Three queued messages; at start-up the store refuses the first two
    // scans and the first two envelope reads. Before, the scan gave up (no
    // message scheduled until the next start) and an envelope that did not
    // read left its message out the same way.
    let dir = tempfile::tempdir().unwrap();
    let msgs: Vec<_> = (20..23).map(|seq| message(seq, 1)).collect();
    {
        let spool = spool_of(&EmbeddedStore::open(dir.path()).unwrap());
        for (env, entries) in &msgs {
            accept(&spool, env, entries).await;
        }
    }
    let store = reopen(dir.path()).await;
    let flaky = Arc::new(Flaky {
        inner: store.clone(),
        scans: AtomicUsize::new(2),
        envelopes: AtomicUsize::new(2),
        completes: AtomicUsize::new(0),
    });
    let spool = Spool {
        data: flaky.clone(),
        blob: store.clone(),
        unified: true,
    };
    let t = Script::with_delay(Duration::ZERO);
    let mut m = start(CONFIG, &spool, t.clone(), settings(1));
    let mut delivered = Vec::new();
    for _ in 0..3 {
        delivered.push(next_event(&mut m.running.events).await.key());
    }
    delivered.sort();
    let mut want: Vec<EntryKey> = msgs.iter().map(|(_, e)| e[0].key).collect();
    want.sort();
    assert_eq!(delivered, want);
    assert_eq!(
        flaky.scans.load(Ordering::SeqCst),
        0,
        "both failures were met"
    );
    assert_eq!(flaky.envelopes.load(Ordering::SeqCst), 0);
    m.stop().await;
}

/// A delivery whose outcome the store at first fails to record is not
/// delivered again: the write is tried again (the store came back within
/// a few seconds), the transport is called once. Before, the entry was
/// retried as a delivery a minute later and the next hop got the message
/// twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_final_outcome_the_store_fails_to_record_is_written_again_not_delivered_again() {
    let r = rig();
    let (env, entries) = message(30, 1);
    accept(&r.spool, &env, &entries).await;
    let flaky = Arc::new(Flaky {
        inner: r.store.clone(),
        scans: AtomicUsize::new(0),
        envelopes: AtomicUsize::new(0),
        completes: AtomicUsize::new(2),
    });
    let spool = Spool {
        data: flaky.clone(),
        blob: r.store.clone(),
        unified: true,
    };
    let t = Script::with_delay(Duration::ZERO);
    let mut m = start(CONFIG, &spool, t.clone(), settings(1));
    m.queued
        .send(Queued::with_envelope(entries.clone(), &env))
        .unwrap();
    let ev = next_event(&mut m.running.events).await;
    assert!(
        matches!(ev.kind, EventKind::Delivered { .. }),
        "{:?}",
        ev.kind
    );
    assert!(r.store.entries(env.id).await.unwrap().is_empty());
    assert_eq!(
        flaky.completes.load(Ordering::SeqCst),
        0,
        "both failures seen"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(t.deliveries(env.id, 0), 1, "delivered once");
    m.stop().await;
}
