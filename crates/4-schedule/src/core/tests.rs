//! The scheduling core under a virtual clock. `now` is a plain number the
//! tests move forward; nothing sleeps, so every test is deterministic and
//! takes microseconds.

use std::collections::BTreeMap;
use std::path::Path;

use ferrymail_spool::{EntryKey, Lane, Lease, MessageId, NodeId, QueueEntry, Routing};

use super::*;

const NODE: NodeId = NodeId(1);
const T0: UnixMillis = 1_700_000_000_000;
const SEC: u64 = 1000;
const MIN: u64 = 60 * SEC;

fn sched(toml: &str) -> Scheduler {
    let c = ferrymail_config::parse(toml, Path::new("test.toml")).expect("config");
    Scheduler::new(CoreSettings::from_config(&c.queue, NODE, 42))
}

/// A message id whose encoded arrival is `arrived`; `n` keeps ids apart.
fn mid(arrived: UnixMillis, n: u64) -> MessageId {
    MessageId((arrived << 22) | (n & 0x3f_ffff))
}

struct E {
    message: MessageId,
    rcpt: u32,
    queue: &'static str,
    route: &'static str,
    weight: i32,
    lane: Lane,
    due: UnixMillis,
}

impl E {
    fn new(message: MessageId, rcpt: u32) -> E {
        E {
            message,
            rcpt,
            queue: "default",
            route: "mx",
            weight: 0,
            lane: Lane::Pending,
            due: T0,
        }
    }
    fn entry(&self) -> QueueEntry {
        let mut e = QueueEntry::new(
            EntryKey {
                message: self.message,
                rcpt: self.rcpt,
            },
            Routing {
                queue: self.queue.into(),
                schedule: "default".into(),
                route: self.route.into(),
                weight: self.weight,
            },
            self.due,
        );
        e.lane = self.lane;
        e
    }
}

fn key(message: MessageId, rcpt: u32) -> EntryKey {
    EntryKey { message, rcpt }
}

/// Ends a job with one `Next` for all its entries.
fn finish(s: &mut Scheduler, d: &Dispatch, health: Health, next: Next, now: UnixMillis) {
    let report = JobReport {
        health,
        next: d.keys().into_iter().map(|k| (k, next)).collect(),
    };
    assert!(s.finish(d.job, report, now).is_empty());
}

// ---------------------------------------------------------------- routing

#[test]
fn entries_route_to_queues_and_destinations() {
    let mut s = sched(
        r#"
[queue.virtual.bulk]
concurrency = 4
[queue.route.relay1]
type = "relay"
address = "192.0.2.9"
"#,
    );
    // (queue, route, domain) -> (index queue, destination key)
    let table: &[(&str, &str, &str, &str, &str)] = &[
        ("default", "mx", "a.example", "default", "a.example"),
        ("default", "mx", "A.Example.", "default", "a.example"),
        ("bulk", "mx", "a.example", "bulk", "a.example"),
        ("bounce", "mx", "b.example", "bounce", "b.example"),
        (
            "dom-c.example",
            "mx",
            "c.example",
            "dom-c.example",
            "c.example",
        ),
        ("default", "relay1", "d.example", "default", "route:relay1"),
        ("default", "relay1", "e.example", "default", "route:relay1"),
        ("l<bad name>", "mx", "f.example", "default", "f.example"),
        ("", "mx", "g.example", "default", "g.example"),
        (
            "default",
            "no-such-route",
            "h.example",
            "default",
            "h.example",
        ),
    ];
    for (i, (queue, route, domain, want_q, want_dest)) in table.iter().enumerate() {
        let mut e = E::new(mid(T0, i as u64), 0);
        e.queue = queue;
        e.route = route;
        let k = key(e.message, 0);
        assert_eq!(
            s.insert(&e.entry(), domain, Origin::New, T0),
            Placement::Ready
        );
        assert_eq!(s.queue_of(k), Some(*want_q), "{queue} {route} {domain}");
        assert!(
            s.destination(want_q, want_dest).is_some(),
            "{queue} {route} {domain} -> {want_dest}"
        );
    }
    let notices = s.take_notices();
    assert_eq!(
        notices,
        vec![
            Notice::InvalidQueueName {
                name: "l<bad name>".into()
            },
            Notice::InvalidQueueName { name: "".into() }
        ]
    );
    assert_eq!(s.stats().dynamic_queues, 1);
    // Every job carries its queue, route and domain.
    let mut jobs: Vec<(String, String, String)> = s
        .poll(T0)
        .into_iter()
        .map(|d| (d.queue, d.route, d.domain))
        .collect();
    jobs.sort();
    assert!(jobs.contains(&("default".into(), "relay1".into(), "d.example".into())));
    assert!(jobs.contains(&("default".into(), "relay1".into(), "e.example".into())));
    assert!(jobs.contains(&("dom-c.example".into(), "mx".into(), "c.example".into())));
    assert_eq!(jobs.len(), table.len());
}

#[test]
fn recipients_of_one_message_share_a_job_per_destination() {
    let mut s = sched("[queue.route.relay1]\ntype = \"relay\"\naddress = \"192.0.2.9\"\n");
    let m = mid(T0, 1);
    let rcpts: &[(&str, &str)] = &[
        ("a.example", "mx"),
        ("b.example", "mx"),
        ("a.example", "mx"),
        ("A.EXAMPLE", "mx"),
        ("c.example", "relay1"),
        ("c.example", "relay1"),
        ("d.example", "relay1"),
    ];
    for (i, (domain, route)) in rcpts.iter().enumerate() {
        let mut e = E::new(m, i as u32);
        e.route = route;
        s.insert(&e.entry(), domain, Origin::New, T0);
    }
    let mut jobs: Vec<(String, String, Vec<u32>)> = s
        .poll(T0)
        .into_iter()
        .map(|d| (d.route, d.domain, d.rcpts))
        .collect();
    jobs.sort();
    assert_eq!(
        jobs,
        vec![
            ("mx".into(), "a.example".into(), vec![0, 2, 3]),
            ("mx".into(), "b.example".into(), vec![1]),
            // A relay route is one destination, but a job has one domain.
            ("relay1".into(), "c.example".into(), vec![4, 5]),
            ("relay1".into(), "d.example".into(), vec![6]),
        ]
    );
}

#[test]
fn jobs_hold_at_most_max_recipients() {
    let mut s = sched("");
    let m = mid(T0, 1);
    for r in 0..250 {
        s.insert(&E::new(m, r).entry(), "a.example", Origin::New, T0);
    }
    let jobs = s.poll(T0);
    assert_eq!(
        jobs.iter().map(|d| d.rcpts.len()).collect::<Vec<_>>(),
        vec![MAX_RCPTS_PER_JOB, MAX_RCPTS_PER_JOB],
        "two jobs: the slow-start window is 2"
    );
}

// ---------------------------------------------------------------- priority, lanes

/// One destination with one slot: the order of dispatch is the order of
/// service.
fn one_slot() -> Scheduler {
    sched("[queue.virtual.default]\nconcurrency = 1\n")
}

/// Serves one job at a time at `now`, finishing each as delivered, and
/// returns the messages in service order.
fn serve_all(s: &mut Scheduler, now: UnixMillis, max: usize) -> Vec<MessageId> {
    let mut order = Vec::new();
    for _ in 0..max {
        let jobs = s.poll(now);
        if jobs.is_empty() {
            break;
        }
        assert_eq!(jobs.len(), 1);
        order.push(jobs[0].message);
        finish(s, &jobs[0], Health::Answered, Next::Gone, now);
    }
    order
}

#[test]
fn priority_order_within_a_lane() {
    let mut s = one_slot();
    // (arrival offset in seconds before T0, weight) -> expected rank
    let table: &[(u64, i32)] = &[
        (0, 0),          // m0: fresh, normal
        (0, 9000),       // m1: MT-PRIORITY 9: first
        (0, -9000),      // m2: MT-PRIORITY -9: last
        (100, 0),        // m3: normal, 100 s older than m0
        (30_000, -2000), // m4: low priority, but 30,000 s old: effective +1000
        (0, 500),        // m5: queue.priority bonus
    ];
    let ids: Vec<MessageId> = table
        .iter()
        .enumerate()
        .map(|(i, (ago, _))| mid(T0 - ago * SEC, i as u64))
        .collect();
    // Block the single slot first so everything is ready before service.
    let blocker = mid(T0, 99);
    s.insert(&E::new(blocker, 0).entry(), "x.example", Origin::New, T0);
    let b = s.poll(T0);
    for (i, (_, w)) in table.iter().enumerate() {
        let mut e = E::new(ids[i], 0);
        e.weight = *w;
        s.insert(&e.entry(), "x.example", Origin::New, T0);
    }
    finish(&mut s, &b[0], Health::Answered, Next::Gone, T0);
    let order = serve_all(&mut s, T0, 100);
    let rank = |i: usize| order.iter().position(|m| *m == ids[i]).unwrap();
    // m1 (9000) > m4 (-2000 + 3000 = 1000) > m5 (500) > m3 (0 + 10) > m0 (0) > m2.
    let want = [1, 4, 5, 3, 0, 2];
    for (pos, i) in want.iter().enumerate() {
        assert_eq!(rank(*i), pos, "order {order:?}");
    }
}

#[test]
fn lanes_alternate_two_fresh_per_retry() {
    let mut s = one_slot();
    let mut lane_of = BTreeMap::new();
    for i in 0..12u64 {
        let m = mid(T0 - 1000, i);
        let mut e = E::new(m, 0);
        if i % 2 == 1 {
            e.lane = Lane::Deferred;
        }
        lane_of.insert(m, e.lane);
        s.insert(&e.entry(), "x.example", Origin::New, T0);
    }
    let order: Vec<Lane> = serve_all(&mut s, T0, 100)
        .into_iter()
        .map(|m| lane_of[&m])
        .collect();
    use Lane::{Deferred as R, Pending as P};
    assert_eq!(order, vec![P, P, R, P, P, R, P, P, R, R, R, R]);
}

/// Neither lane starves under a continuous stream of the other.
#[test]
fn no_starvation_under_continuous_streams() {
    for stream_lane in [Lane::Pending, Lane::Deferred] {
        let mut s = one_slot();
        let backlog_lane = match stream_lane {
            Lane::Pending => Lane::Deferred,
            Lane::Deferred => Lane::Pending,
        };
        let mut lane_of = BTreeMap::new();
        // A backlog of 100 older entries in one lane...
        for i in 0..100u64 {
            let m = mid(T0 - 3_600_000, i);
            let mut e = E::new(m, 0);
            e.lane = backlog_lane;
            lane_of.insert(m, backlog_lane);
            s.insert(&e.entry(), "x.example", Origin::New, T0);
        }
        // ...and a stream of newer, higher-priority entries in the other:
        // two new ones per job served.
        let mut served = Vec::new();
        let mut now = T0;
        for step in 0..300u64 {
            for j in 0..2 {
                let m = mid(now, 1000 + step * 2 + j);
                let mut e = E::new(m, 0);
                e.lane = stream_lane;
                e.weight = 5000;
                e.due = now;
                lane_of.insert(m, stream_lane);
                s.insert(&e.entry(), "x.example", Origin::New, now);
            }
            let jobs = s.poll(now);
            assert_eq!(jobs.len(), 1);
            served.push(lane_of[&jobs[0].message]);
            finish(&mut s, &jobs[0], Health::Answered, Next::Gone, now);
            now += 1000;
        }
        let backlog_served = served.iter().filter(|l| **l == backlog_lane).count();
        let want = match backlog_lane {
            Lane::Deferred => 100, // 1 in 3 of 300: the whole backlog
            Lane::Pending => 100,  // fresh backlog gets 2 in 3, all 100 served
        };
        assert_eq!(backlog_served, want, "{stream_lane:?} stream: {served:?}");
        // And within any window of three jobs the stream lane got at least one.
        assert!(
            served.windows(3).all(|w| w.contains(&stream_lane)),
            "{stream_lane:?}"
        );
    }
}

// ---------------------------------------------------------------- retry timeline

#[test]
fn a_stale_copy_does_not_undo_a_deferral() {
    // The start-up scan and the accept channel can both deliver the same
    // freshly accepted entry; the second copy arrives after the first was
    // already attempted and deferred.
    let mut s = sched("");
    let m = mid(T0, 1);
    let fresh = E::new(m, 0).entry();
    s.insert(&fresh, "x.example", Origin::Recovered, T0);
    let d = s.poll(T0);
    finish(
        &mut s,
        &d[0],
        Health::Answered,
        Next::Retry { due: T0 + HOUR_MS },
        T0 + 1,
    );
    for origin in [Origin::New, Origin::Recovered] {
        assert_eq!(
            s.insert(&fresh, "x.example", origin, T0 + 2),
            Placement::Waiting
        );
        assert_eq!(
            s.locate(key(m, 0)),
            Some(Location::Waiting { due: T0 + HOUR_MS }),
            "{origin:?}"
        );
        assert!(s.poll(T0 + 2).is_empty(), "not attempted again");
    }
    // A re-read after a change still replaces it.
    assert_eq!(
        s.insert(&fresh, "x.example", Origin::Refresh, T0 + 3),
        Placement::Ready
    );
}

#[test]
fn deferred_entries_wait_for_their_due_time() {
    let mut s = sched("");
    let m = mid(T0, 1);
    s.insert(&E::new(m, 0).entry(), "x.example", Origin::New, T0);
    let d = s.poll(T0);
    assert_eq!(s.locate(key(m, 0)), Some(Location::InFlight));
    finish(
        &mut s,
        &d[0],
        Health::Answered,
        Next::Retry { due: T0 + 5 * MIN },
        T0 + 1,
    );
    assert_eq!(
        s.locate(key(m, 0)),
        Some(Location::Waiting { due: T0 + 5 * MIN })
    );
    assert_eq!(s.next_wake(), Some(T0 + 5 * MIN));
    assert!(s.poll(T0 + 5 * MIN - 1).is_empty());
    let d = s.poll(T0 + 5 * MIN);
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].rcpts, vec![0]);
    assert_eq!(s.next_wake(), None);
    // A due-in-the-future entry inserted directly also waits.
    let mut e = E::new(mid(T0, 2), 0);
    e.lane = Lane::Deferred;
    e.due = T0 + HOUR_MS;
    assert_eq!(
        s.insert(&e.entry(), "y.example", Origin::New, T0),
        Placement::Waiting
    );
    assert_eq!(s.next_wake(), Some(T0 + HOUR_MS));
}

const HOUR_MS: u64 = 60 * MIN;

// ---------------------------------------------------------------- destinations

fn fill(s: &mut Scheduler, domain: &str, n: u64, base: u64) -> Vec<MessageId> {
    (0..n)
        .map(|i| {
            let m = mid(T0, base + i);
            s.insert(&E::new(m, 0).entry(), domain, Origin::New, T0);
            m
        })
        .collect()
}

#[test]
fn slow_start_grows_per_answer_and_halves_per_failure() {
    let mut s = sched(
        "[queue.virtual.default]\nconcurrency = 50\ndestination.concurrency = 6\ndestination.failure-limit = 100\n",
    );
    fill(&mut s, "x.example", 200, 0);
    let mut inflight = s.poll(T0);
    assert_eq!(inflight.len(), 2, "slow start begins at two");
    let mut windows = vec![s.destination("default", "x.example").unwrap().window];
    // Each answer grows the window by one, up to the limit.
    for _ in 0..6 {
        let d = inflight.remove(0);
        finish(&mut s, &d, Health::Answered, Next::Gone, T0);
        inflight.extend(s.poll(T0));
        let st = s.destination("default", "x.example").unwrap();
        windows.push(st.window);
        assert_eq!(st.in_flight as usize, inflight.len());
        assert_eq!(inflight.len() as u32, st.window.min(6));
    }
    assert_eq!(windows, vec![2, 3, 4, 5, 6, 6, 6]);
    // Connection failures halve it, never below one.
    let mut after = Vec::new();
    for _ in 0..4 {
        let d = inflight.remove(0);
        finish(
            &mut s,
            &d,
            Health::ConnectionFailed {
                reason: "connection refused".into(),
            },
            Next::Retry { due: T0 + HOUR_MS },
            T0,
        );
        after.push(s.destination("default", "x.example").unwrap().window);
    }
    assert_eq!(after, vec![3, 1, 1, 1]);
    assert!(s.poll(T0).is_empty(), "2 still in flight, window 1");
}

#[test]
fn dead_destination_is_suspended_then_probed_once() {
    let mut s = sched(
        "[queue.virtual.default]\ndestination.failure-limit = 3\ndestination.suspend = \"5m\"\n",
    );
    fill(&mut s, "dead.example", 20, 0);
    let fail = |s: &mut Scheduler, d: &Dispatch, now| {
        finish(
            s,
            d,
            Health::ConnectionFailed {
                reason: "connect to 192.0.2.1:25: timed out".into(),
            },
            Next::Retry { due: now + 2 * MIN },
            now,
        )
    };
    // Three connection failures in a row.
    let mut failures = 0;
    while failures < 3 {
        let jobs = s.poll(T0);
        assert!(!jobs.is_empty());
        for d in jobs.iter().filter(|d| d.mode == Mode::Deliver) {
            if failures < 3 {
                fail(&mut s, d, T0);
                failures += 1;
            }
        }
    }
    let st = s.destination("default", "dead.example").unwrap();
    assert_eq!(st.suspended_until, Some(T0 + 5 * MIN));
    assert!(
        s.take_notices()
            .iter()
            .any(|n| matches!(n, Notice::Suspended { until, .. } if *until == T0 + 5 * MIN))
    );
    // While suspended, ready entries are deferred without a connection...
    let jobs = s.poll(T0);
    assert!(!jobs.is_empty());
    for d in &jobs {
        match &d.mode {
            Mode::Suspended { reason, until } => {
                assert_eq!(*until, T0 + 5 * MIN);
                assert!(reason.contains("timed out"), "{reason}");
            }
            Mode::Deliver => panic!("delivery to a suspended destination"),
        }
        // ...and the driver defers them until the suspension ends.
        finish(
            &mut s,
            d,
            Health::NotAttempted,
            Next::Retry { due: T0 + 5 * MIN },
            T0,
        );
    }
    // ...and the suspended destination holds no slot.
    assert_eq!(
        s.destination("default", "dead.example").unwrap().in_flight,
        0
    );
    // When the suspension ends, exactly one probe goes out.
    let now = T0 + 5 * MIN;
    let probe = s.poll(now);
    assert_eq!(probe.len(), 1, "one probe");
    assert_eq!(probe[0].mode, Mode::Deliver);
    assert!(s.poll(now).is_empty(), "nothing else while probing");
    // The probe fails: suspended again.
    fail(&mut s, &probe[0], now);
    assert_eq!(
        s.destination("default", "dead.example")
            .unwrap()
            .suspended_until,
        Some(now + 5 * MIN)
    );
    for d in s.poll(now) {
        assert!(matches!(d.mode, Mode::Suspended { .. }));
        finish(
            &mut s,
            &d,
            Health::NotAttempted,
            Next::Retry { due: now + 5 * MIN },
            now,
        );
    }
    // The next probe is answered: the destination resumes with slow start.
    let now = now + 5 * MIN;
    let probe = s.poll(now);
    assert_eq!(probe.len(), 1);
    finish(&mut s, &probe[0], Health::Answered, Next::Gone, now);
    let st = s.destination("default", "dead.example").unwrap();
    assert_eq!(
        (st.suspended_until, st.probing, st.failures, st.window),
        (None, false, 0, 2)
    );
    assert!(
        s.take_notices()
            .iter()
            .any(|n| matches!(n, Notice::Resumed { .. }))
    );
    assert_eq!(s.poll(now).len(), 2);
}

/// A saturated (slow) or suspended destination does not reduce what another
/// destination of the same queue gets.
#[test]
fn one_destination_does_not_slow_another() {
    // How many jobs B runs per round when B is alone, with a slow A, and with
    // a suspended A.
    fn run(with: Option<&str>) -> Vec<usize> {
        let mut s = sched(
            "[queue.virtual.default]\nconcurrency = 20\ndestination.concurrency = 8\ndestination.failure-limit = 1\n",
        );
        fill(&mut s, "b.example", 400, 10_000);
        if with.is_some() {
            fill(&mut s, "a.example", 400, 0);
        }
        let mut per_round = Vec::new();
        let mut now = T0;
        // A's jobs: a connection failure (suspended), or slow: the first
        // few are answered (the window grows to its limit), then every job
        // hangs and holds its slot.
        let mut a_jobs = Vec::new();
        let mut a_answered = 0;
        for round in 0..30 {
            let jobs = s.poll(now);
            let (a, b): (Vec<_>, Vec<_>) = jobs.into_iter().partition(|d| d.domain == "a.example");
            for d in a {
                match (with, &d.mode) {
                    (Some("suspended"), Mode::Deliver) => finish(
                        &mut s,
                        &d,
                        Health::ConnectionFailed {
                            reason: "refused".into(),
                        },
                        Next::Retry {
                            due: now + 10 * MIN,
                        },
                        now,
                    ),
                    (_, Mode::Suspended { until, .. }) => finish(
                        &mut s,
                        &d,
                        Health::NotAttempted,
                        Next::Retry { due: *until },
                        now,
                    ),
                    _ if a_answered < 6 => {
                        a_answered += 1;
                        finish(&mut s, &d, Health::Answered, Next::Gone, now)
                    }
                    _ => a_jobs.push(d), // slow: holds its slot
                }
            }
            let running_b = s.destination("default", "b.example").unwrap().in_flight as usize;
            if round >= 10 {
                per_round.push(running_b);
            }
            // B answers everything quickly.
            for d in b {
                finish(&mut s, &d, Health::Answered, Next::Gone, now);
            }
            now += SEC;
        }
        let a = s.destination("default", "a.example");
        if with == Some("slow") {
            assert_eq!(a.unwrap().in_flight, 8, "A holds its own slots only");
        }
        per_round
    }
    let alone = run(None);
    assert!(alone.iter().all(|n| *n == 8), "{alone:?}");
    assert_eq!(run(Some("slow")), alone);
    assert_eq!(run(Some("suspended")), alone);
}

#[test]
fn headroom_leaves_a_slot_for_other_destinations() {
    let mut s = sched("[queue.virtual.default]\nconcurrency = 4\ndestination.concurrency = 100\n");
    fill(&mut s, "slow.example", 100, 0);
    let mut held = Vec::new();
    // Grow the slow destination's window: answer, but keep the slots busy.
    for _ in 0..10 {
        held.extend(s.poll(T0));
        if let Some(d) = held.pop() {
            finish(
                &mut s,
                &d,
                Health::Answered,
                Next::Retry { due: T0 + HOUR_MS },
                T0,
            );
        }
    }
    held.extend(s.poll(T0));
    assert_eq!(held.len(), 3, "capped at concurrency - 1");
    fill(&mut s, "other.example", 1, 1000);
    let jobs = s.poll(T0);
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].domain, "other.example");
}

// ---------------------------------------------------------------- queue limits

#[test]
fn queue_concurrency_and_rate() {
    let mut s = sched(
        "[queue.virtual.default]\nconcurrency = 3\n[queue.virtual.rated]\nrate = \"2/1s\"\nconcurrency = 100\n",
    );
    for (i, d) in ["a", "b", "c", "d", "e"].iter().enumerate() {
        fill(&mut s, &format!("{d}.example"), 2, i as u64 * 10);
    }
    let jobs = s.poll(T0);
    assert_eq!(jobs.len(), 3, "queue concurrency");
    let domains: std::collections::BTreeSet<_> = jobs.iter().map(|d| d.domain.clone()).collect();
    assert_eq!(domains.len(), 3, "round robin over destinations");
    finish(&mut s, &jobs[0], Health::Answered, Next::Gone, T0);
    assert_eq!(s.poll(T0).len(), 1, "a freed slot is reused at once");

    for i in 0..6u64 {
        let mut e = E::new(mid(T0, 100 + i), 0);
        e.queue = "rated";
        s.insert(&e.entry(), &format!("r{i}.example"), Origin::New, T0);
    }
    let rated = |jobs: Vec<Dispatch>| jobs.into_iter().filter(|d| d.queue == "rated").count();
    assert_eq!(rated(s.poll(T0)), 2, "burst of two");
    assert_eq!(rated(s.poll(T0 + 100)), 0);
    assert_eq!(s.next_wake(), Some(T0 + 500), "one token per 500 ms");
    assert_eq!(rated(s.poll(T0 + 500)), 1);
    assert_eq!(rated(s.poll(T0 + 1500)), 2);
    assert_eq!(rated(s.poll(T0 + 10_000)), 1, "only one left");
}

#[test]
fn shared_rate_spends_only_granted_tokens() {
    let c = ferrymail_config::parse(
        "[queue.virtual.rated]\nrate = \"4/1s\"\nconcurrency = 100\n",
        Path::new("test.toml"),
    )
    .unwrap();
    let mut s = Scheduler::new(CoreSettings {
        shared_rates: true,
        ..CoreSettings::from_config(&c.queue, NODE, 42)
    });
    let put = |s: &mut Scheduler, from: u64, n: u64| {
        for i in from..from + n {
            let mut e = E::new(mid(T0, 100 + i), 0);
            e.queue = "rated";
            s.insert(&e.entry(), &format!("r{i}.example"), Origin::New, T0);
        }
    };
    put(&mut s, 0, 6);
    assert!(
        s.poll(T0).is_empty(),
        "no tokens until the store grants some"
    );
    let asked = s.token_requests();
    assert_eq!(asked.len(), 1);
    assert_eq!(asked[0].0, "rated");
    assert_eq!(asked[0].1.count, 4);
    assert!(s.token_requests().is_empty(), "asked once per shortage");
    assert_eq!(s.next_wake(), None, "a grant wakes it, not the clock");
    assert!(s.poll(T0 + 60_000).is_empty(), "time alone adds nothing");
    s.grant("rated", 3);
    assert_eq!(s.poll(T0 + 60_000).len(), 3, "one job per granted token");
    assert_eq!(s.token_requests().len(), 1, "dry again, three entries wait");
    s.grant("nope", 5);
    s.grant("rated", 5);
    assert_eq!(s.poll(T0 + 60_000).len(), 3, "the rest");
    assert!(s.token_requests().is_empty(), "not dry: nothing waits");
    // One token was left (5 granted, held up to the burst of 4, 3 spent);
    // more grants never hold more than one burst.
    s.grant("rated", 10);
    put(&mut s, 10, 6);
    assert_eq!(s.poll(T0 + 60_000).len(), 4, "a burst at most");
}

#[test]
fn dynamic_queues_are_capped_and_freed() {
    let mut s = sched("[queue]\nmax-dynamic-queues = 2\n");
    let put = |s: &mut Scheduler, n: u64, q: &'static str| {
        let mut e = E::new(mid(T0, n), 0);
        e.queue = q;
        s.insert(&e.entry(), "x.example", Origin::New, T0);
        key(e.message, 0)
    };
    let a = put(&mut s, 1, "dom-a");
    put(&mut s, 2, "dom-b");
    let c = put(&mut s, 3, "dom-c");
    let d = put(&mut s, 4, "dom-d");
    assert_eq!(s.queue_of(a), Some("dom-a"));
    assert_eq!(s.queue_of(c), Some("default"), "beyond the cap");
    assert_eq!(s.queue_of(d), Some("default"));
    assert_eq!(
        s.take_notices(),
        vec![Notice::DynamicQueueCap {
            name: "dom-c".into(),
            cap: 2
        }],
        "said once"
    );
    assert_eq!(s.stats().dynamic_queues, 2);
    // Once dom-a is empty it goes away and a new name fits again.
    assert!(s.remove(a, T0));
    assert_eq!(s.stats().dynamic_queues, 1);
    assert!(!s.queue_names().contains(&"dom-a".to_string()));
    let e = put(&mut s, 5, "dom-e");
    assert_eq!(s.queue_of(e), Some("dom-e"));
    // Configured queues are never removed.
    let mut s2 = sched("[queue.virtual.fixed]\nconcurrency = 1\n");
    let mut e = E::new(mid(T0, 1), 0);
    e.queue = "fixed";
    s2.insert(&e.entry(), "x.example", Origin::New, T0);
    s2.remove(key(e.message, 0), T0);
    assert!(s2.queue_names().contains(&"fixed".to_string()));
}

// ---------------------------------------------------------------- held, in flight

#[test]
fn held_entries_are_never_dispatched() {
    let mut s = sched("");
    let m = mid(T0, 1);
    let mut e = E::new(m, 0).entry();
    e.held = true;
    assert_eq!(s.insert(&e, "x.example", Origin::New, T0), Placement::Held);
    for t in 0..10 {
        assert!(s.poll(T0 + t * HOUR_MS).is_empty());
    }
    assert_eq!(
        s.expedite(&Target::All, T0),
        0,
        "ETRN does not start held mail"
    );
    assert!(s.poll(T0).is_empty());
    // Held after being indexed: removed.
    let m2 = mid(T0, 2);
    let mut e2 = E::new(m2, 0).entry();
    e2.due = T0 + HOUR_MS;
    s.insert(&e2, "x.example", Origin::New, T0);
    e2.held = true;
    assert_eq!(
        s.insert(&e2, "x.example", Origin::Refresh, T0),
        Placement::Held
    );
    assert_eq!(s.locate(key(m2, 0)), None);
    assert!(s.poll(T0 + 2 * HOUR_MS).is_empty());
    // Released: dispatched.
    e.held = false;
    assert_eq!(
        s.insert(&e, "x.example", Origin::Refresh, T0),
        Placement::Ready
    );
    assert_eq!(s.poll(T0).len(), 1);
}

#[test]
fn changes_during_flight_are_reloaded_after() {
    let mut s = sched("");
    let m = mid(T0, 1);
    for r in 0..3 {
        s.insert(&E::new(m, r).entry(), "x.example", Origin::New, T0);
    }
    let d = s.poll(T0);
    assert_eq!(d[0].rcpts, vec![0, 1, 2]);
    // An operator holds rcpt 1 and cancels rcpt 2 meanwhile.
    let mut held = E::new(m, 1).entry();
    held.held = true;
    assert_eq!(
        s.insert(&held, "x.example", Origin::Refresh, T0),
        Placement::InFlight
    );
    assert!(!s.remove(key(m, 2), T0));
    let report = JobReport {
        health: Health::Answered,
        next: vec![
            (key(m, 0), Next::Retry { due: T0 + MIN }),
            (key(m, 1), Next::Retry { due: T0 + MIN }),
            // rcpt 2 not reported: reload
        ],
    };
    let mut reload = s.finish(d[0].job, report, T0);
    reload.sort();
    assert_eq!(reload, vec![key(m, 1), key(m, 2)]);
    assert_eq!(
        s.locate(key(m, 0)),
        Some(Location::Waiting { due: T0 + MIN })
    );
    assert_eq!(s.locate(key(m, 1)), None);
    // Finishing an unknown job is harmless.
    assert!(s.finish(JobId(999), report_none(), T0).is_empty());
}

fn report_none() -> JobReport {
    JobReport {
        health: Health::NotAttempted,
        next: Vec::new(),
    }
}

#[test]
fn leases_and_restart_recovery() {
    let mut s = sched("");
    let now = T0 + HOUR_MS;
    // Overdue retries are spread over the next minute; overdue first
    // attempts stay due now; this node's own lease is ignored; another
    // node's live lease is waited out.
    let mut dues = Vec::new();
    for i in 0..500u64 {
        let mut e = E::new(mid(T0, i), 0);
        e.lane = Lane::Deferred;
        e.due = T0 + i;
        let p = s.insert(&e.entry(), "x.example", Origin::Recovered, now);
        match s.locate(key(e.message, 0)).unwrap() {
            Location::Waiting { due } => dues.push(due),
            Location::Ready { .. } => {
                assert_eq!(p, Placement::Ready);
                dues.push(now)
            }
            Location::InFlight => unreachable!(),
        }
    }
    assert!(
        dues.iter()
            .all(|d| (now..now + RESTART_SPREAD_MS).contains(d))
    );
    let spread = dues.iter().max().unwrap() - dues.iter().min().unwrap();
    assert!(spread > RESTART_SPREAD_MS * 9 / 10, "{spread}");
    let mut fresh = E::new(mid(T0, 1000), 0).entry();
    fresh.lease = Some(Lease {
        owner: NODE,
        until: now + HOUR_MS,
    });
    assert_eq!(
        s.insert(&fresh, "y.example", Origin::Recovered, now),
        Placement::Ready,
        "own lease from before a restart"
    );
    let mut foreign = E::new(mid(T0, 1001), 0).entry();
    foreign.lease = Some(Lease {
        owner: NodeId(2),
        until: now + 5 * MIN,
    });
    assert_eq!(
        s.insert(&foreign, "y.example", Origin::Recovered, now),
        Placement::Waiting
    );
    assert_eq!(
        s.locate(foreign.key),
        Some(Location::Waiting { due: now + 5 * MIN })
    );
    // A new (not recovered) overdue retry is not spread.
    let mut e = E::new(mid(T0, 2000), 0);
    e.lane = Lane::Deferred;
    assert_eq!(
        s.insert(&e.entry(), "z.example", Origin::New, now),
        Placement::Ready
    );
}

// ---------------------------------------------------------------- ETRN

#[test]
fn etrn_arguments() {
    let table: &[(&str, Result<Target, TargetError>)] = &[
        ("example.org", Ok(Target::Domain("example.org".into()))),
        ("Example.ORG.", Ok(Target::Domain("example.org".into()))),
        ("@example.org", Ok(Target::Subdomains("example.org".into()))),
        (
            "#dom-example.org",
            Ok(Target::Queue("dom-example.org".into())),
        ),
        ("[192.0.2.1]", Ok(Target::Domain("[192.0.2.1]".into()))),
        ("", Err(TargetError::Empty)),
        ("@", Err(TargetError::Empty)),
        ("#", Err(TargetError::Empty)),
        ("a b", Err(TargetError::Invalid("a b".into()))),
        ("#a/b", Err(TargetError::Invalid("#a/b".into()))),
        ("x@y", Err(TargetError::Invalid("x@y".into()))),
    ];
    for (arg, want) in table {
        assert_eq!(&Target::parse(arg), want, "{arg}");
        // What a node passes on to the others reads back as the same target.
        if let Ok(t) = want {
            assert_eq!(Target::parse(&t.argument()).as_ref(), Ok(t), "{arg}");
        }
    }
    assert_eq!(Target::All.argument(), "");
}

#[test]
fn keys_of_lists_a_messages_indexed_entries_in_flight_included() {
    let mut s = sched("");
    for rcpt in 0..3 {
        let e = E::new(mid(T0, 1), rcpt);
        s.insert(&e.entry(), "a.example", Origin::New, T0);
    }
    s.insert(&E::new(mid(T0, 2), 0).entry(), "b.example", Origin::New, T0);
    let started = s.poll(T0);
    assert!(!started.is_empty());
    let mut keys = s.keys_of(mid(T0, 1));
    keys.sort();
    let want: Vec<EntryKey> = (0..3)
        .map(|rcpt| EntryKey {
            message: mid(T0, 1),
            rcpt,
        })
        .collect();
    assert_eq!(keys, want);
    assert!(s.keys_of(mid(T0, 3)).is_empty());
}

#[test]
fn etrn_starts_matching_mail_and_counts_messages() {
    let setup = || {
        let mut s = sched("[queue.virtual.q1]\nconcurrency = 1\n");
        let put = |s: &mut Scheduler, n: u64, rcpt: u32, domain: &str, queue: &'static str| {
            let mut e = E::new(mid(T0, n), rcpt);
            e.lane = Lane::Deferred;
            e.due = T0 + HOUR_MS;
            e.queue = queue;
            s.insert(&e.entry(), domain, Origin::New, T0);
        };
        put(&mut s, 1, 0, "a.example", "default");
        put(&mut s, 1, 1, "a.example", "default"); // same message
        put(&mut s, 2, 0, "a.example", "default");
        put(&mut s, 3, 0, "sub.a.example", "default");
        put(&mut s, 4, 0, "b.example", "default");
        put(&mut s, 5, 0, "notb.example", "q1");
        put(&mut s, 6, 0, "ba.example", "default");
        s
    };
    let table: &[(&str, usize, usize)] = &[
        // argument, messages counted, jobs started
        ("a.example", 2, 2),
        ("A.Example", 2, 2),
        ("@a.example", 3, 3),
        ("b.example", 1, 1),
        ("@example", 6, 6),
        ("#q1", 1, 1),
        ("#default", 5, 5),
        ("#nope", 0, 0),
        ("c.example", 0, 0),
    ];
    for (arg, msgs, jobs) in table {
        let mut s = setup();
        assert!(s.poll(T0).is_empty(), "nothing due yet");
        let t = Target::parse(arg).unwrap();
        assert_eq!(s.expedite(&t, T0), *msgs, "{arg}");
        // Two jobs at most per destination (slow start): count them all.
        let mut started = 0;
        let mut now = T0;
        loop {
            let d = s.poll(now);
            if d.is_empty() {
                break;
            }
            for j in &d {
                finish(&mut s, j, Health::Answered, Next::Gone, now);
            }
            started += d.len();
            now += 1;
        }
        assert_eq!(started, *jobs, "{arg}");
    }
    // Flush everything.
    let mut s = setup();
    assert_eq!(s.expedite(&Target::All, T0), 6);
    // A suspended destination is probed at once on ETRN.
    let (mut s, _) = dead_destination(3);
    assert!(
        s.destination("default", "dead.example")
            .unwrap()
            .suspended_until
            .is_some()
    );
    assert_eq!(
        s.expedite(&Target::Domain("dead.example".into()), T0 + 1),
        3
    );
    let probe = s.poll(T0 + 1);
    assert_eq!(probe.len(), 1);
    assert_eq!(probe[0].mode, Mode::Deliver);
}

/// `dead.example` with `n` entries, suspended by one connection failure
/// (`destination.failure-limit = 1`) at T0: every entry deferred for an
/// hour, none in flight.
fn dead_destination(n: u64) -> (Scheduler, Vec<MessageId>) {
    let mut s = sched("[queue.virtual.default]\ndestination.failure-limit = 1\n");
    let ids = fill(&mut s, "dead.example", n, 0);
    let d = s.poll(T0);
    finish(
        &mut s,
        &d[0],
        Health::ConnectionFailed {
            reason: "refused".into(),
        },
        Next::Retry { due: T0 + HOUR_MS },
        T0,
    );
    for j in s.poll(T0).into_iter().chain(d.into_iter().skip(1)) {
        finish(
            &mut s,
            &j,
            Health::NotAttempted,
            Next::Retry { due: T0 + HOUR_MS },
            T0,
        );
    }
    (s, ids)
}

/// A suspended destination's backlog is deferred in batches of at most
/// [`SUSPENDED_DRAIN_MAX`] jobs in flight, the next ones as those finish,
/// and another destination's mail goes out meanwhile.
#[test]
fn a_suspended_backlog_is_deferred_in_small_batches() {
    let mut s = sched("[queue.virtual.default]\ndestination.failure-limit = 1\n");
    fill(&mut s, "dead.example", 500, 0);
    // The first delivery fails at the connection: suspended.
    let first = s.poll(T0);
    let (probe, rest): (Vec<_>, Vec<_>) = first.into_iter().partition(|d| d.mode == Mode::Deliver);
    finish(
        &mut s,
        &probe[0],
        Health::ConnectionFailed {
            reason: "refused".into(),
        },
        Next::Retry { due: T0 + HOUR_MS },
        T0,
    );
    for d in probe.iter().skip(1).chain(&rest) {
        finish(
            &mut s,
            d,
            Health::NotAttempted,
            Next::Retry { due: T0 + HOUR_MS },
            T0,
        );
    }
    fill(&mut s, "alive.example", 1, 10_000);
    let mut deferred = 0;
    let mut rounds = 0;
    let mut alive_sent = false;
    loop {
        let jobs = s.poll(T0);
        if jobs.is_empty() {
            break;
        }
        rounds += 1;
        let draining = jobs
            .iter()
            .filter(|d| matches!(d.mode, Mode::Suspended { .. }))
            .count();
        assert!(draining as u32 <= SUSPENDED_DRAIN_MAX, "{draining} at once");
        for d in &jobs {
            if d.domain == "alive.example" {
                alive_sent = true;
                finish(&mut s, d, Health::Answered, Next::Gone, T0);
            } else {
                deferred += d.rcpts.len();
                finish(
                    &mut s,
                    d,
                    Health::NotAttempted,
                    Next::Retry { due: T0 + HOUR_MS },
                    T0,
                );
            }
        }
    }
    assert!(alive_sent, "the other destination was served");
    assert!(rounds > 1, "in batches");
    // Everything not in the first round was deferred without a connection.
    assert!(deferred >= 400, "{deferred}");
}

/// `queue retry` of entries whose destination is suspended probes that
/// destination now (as ETRN does), instead of the retried entries being
/// deferred again without a connection.
#[test]
fn retry_probes_a_suspended_destination() {
    // A suspended destination with three entries deferred for an hour, one
    // of which the operator retries (due now in the store, re-read).
    let setup = || {
        let (mut s, ids) = dead_destination(3);
        let until = s
            .destination("default", "dead.example")
            .unwrap()
            .suspended_until;
        assert!(until.is_some_and(|t| t > T0 + 1));
        assert!(s.poll(T0 + 1).is_empty());
        let mut e = E::new(ids[1], 0);
        e.due = T0 + 1;
        e.lane = Lane::Deferred;
        s.insert(&e.entry(), "dead.example", Origin::Refresh, T0 + 1);
        (s, key(ids[1], 0))
    };
    // A plain refresh: deferred again without a connection.
    let (mut s, _) = setup();
    let jobs = s.poll(T0 + 1);
    assert_eq!(jobs.len(), 1);
    assert!(matches!(jobs[0].mode, Mode::Suspended { .. }));
    // A retry: the destination is probed now.
    let (mut s, k) = setup();
    assert_eq!(s.probe_destinations_of(&[k], T0 + 1), 1);
    let probe = s.poll(T0 + 1);
    assert_eq!(probe.len(), 1, "one probe");
    assert_eq!(probe[0].mode, Mode::Deliver);
    assert_eq!(probe[0].message, k.message);
    // Not suspended any more: nothing to lift.
    assert_eq!(s.probe_destinations_of(&[k], T0 + 1), 0);
}

// ---------------------------------------------------------------- housekeeping

#[test]
fn removing_everything_frees_every_structure() {
    let mut s = sched("");
    let mut keys = Vec::new();
    for i in 0..100u64 {
        let m = mid(T0, i);
        for r in 0..3 {
            s.insert(
                &E::new(m, r).entry(),
                &format!("d{}.example", i % 7),
                Origin::New,
                T0,
            );
            keys.push(key(m, r));
        }
    }
    let st = s.stats();
    assert_eq!((st.entries, st.ready, st.destinations), (300, 300, 7));
    for k in keys {
        assert!(s.remove(k, T0));
    }
    let st = s.stats();
    assert_eq!(
        (st.entries, st.ready, st.destinations, st.waiting),
        (0, 0, 0, 0)
    );
    assert!(s.poll(T0).is_empty());
    assert_eq!(s.names.len(), 0, "no interned name left");
}

/// The per-entry record stays at 40 bytes: a million deferred recipients
/// must fit in 256 MB with everything else.
#[test]
fn slot_is_forty_bytes() {
    assert_eq!(std::mem::size_of::<Slot>(), 40);
}

#[test]
fn reconfigure_changes_limits_and_keeps_every_entry() {
    let mut s =
        sched("[queue.virtual.default]\nconcurrency = 2\n[queue.virtual.bulk]\nconcurrency = 1\n");
    for (i, d) in ["a", "b", "c", "d"].iter().enumerate() {
        fill(&mut s, &format!("{d}.example"), 1, i as u64 * 10);
    }
    let mut e = E::new(mid(T0, 100), 0);
    e.queue = "bulk";
    s.insert(&e.entry(), "bulk.example", Origin::New, T0);
    let first = s.poll(T0);
    assert_eq!(first.len(), 3, "two default jobs and one bulk job");
    let entries = s.stats().entries;
    let queues = s.stats().queues;

    // Reloaded: `default` allows four, `bulk` is gone, `fresh` is new.
    let c = ferrymail_config::parse(
        "[queue.virtual.default]\nconcurrency = 4\n[queue.virtual.fresh]\nconcurrency = 1\n",
        Path::new("test.toml"),
    )
    .expect("config");
    s.reconfigure(CoreSettings::from_config(&c.queue, NODE, 42));
    assert_eq!(s.stats().entries, entries, "no entry lost or added");
    assert_eq!(
        s.stats().dynamic_queues,
        1,
        "bulk lives on as a dynamic queue"
    );
    assert_eq!(s.stats().queues, queues + 1, "fresh added, bulk kept");
    assert_eq!(
        s.poll(T0).len(),
        2,
        "the two waiting default jobs start at once"
    );

    // Once its job ends, the dynamic leftover goes away.
    let bulk = first.iter().find(|d| d.queue == "bulk").unwrap();
    finish(&mut s, bulk, Health::Answered, Next::Gone, T0);
    assert_eq!(s.stats().dynamic_queues, 0);
    assert_eq!(s.stats().queues, queues, "bulk gone, fresh there");
}

#[test]
fn destination_rate_holds_one_destination_and_not_the_others() {
    let mut s = sched(
        "[queue.virtual.default]\nconcurrency = 100\ndestination.concurrency = 100\ndestination.rate = \"2/1s\"\n",
    );
    let slow = fill(&mut s, "limited.example", 6, 0);
    let other = fill(&mut s, "other.example", 6, 100);
    let jobs = s.poll(T0);
    let count = |jobs: &[Dispatch], d: &str| jobs.iter().filter(|j| j.domain == d).count();
    assert_eq!(count(&jobs, "limited.example"), 2, "a burst of two");
    assert_eq!(
        count(&jobs, "other.example"),
        2,
        "each destination its own bucket"
    );
    for j in &jobs {
        finish(&mut s, j, Health::Answered, Next::Gone, T0);
    }
    assert!(s.poll(T0).is_empty(), "both wait for a token");
    assert_eq!(s.next_wake(), Some(T0 + 500), "one token per 500 ms");
    assert_eq!(s.poll(T0 + 499).len(), 0);
    let jobs = s.poll(T0 + 500);
    assert_eq!(count(&jobs, "limited.example"), 1);
    assert_eq!(count(&jobs, "other.example"), 1);
    for j in &jobs {
        finish(&mut s, j, Health::Answered, Next::Gone, T0 + 500);
    }
    // Two seconds later the bucket is full again: a burst of two, not four.
    let jobs = s.poll(T0 + 2_500);
    assert_eq!(count(&jobs, "limited.example"), 2);
    assert_eq!(slow.len() + other.len(), 12);
}

#[test]
fn destination_rate_survives_an_empty_destination() {
    // A trickle to one destination must not get a fresh bucket with every
    // message: the ready queue stays, across sweeps, until its bucket is
    // full again.
    let mut s = sched("[queue.virtual.default]\ndestination.rate = \"1/5m\"\n");
    fill(&mut s, "limited.example", 1, 0);
    let jobs = s.poll(T0);
    assert_eq!(jobs.len(), 1);
    finish(&mut s, &jobs[0], Health::Answered, Next::Gone, T0);
    let later = T0 + SWEEP_EVERY_MS + 1;
    assert!(later < T0 + 5 * MIN);
    assert!(s.poll(later).is_empty(), "a sweep with nothing queued");
    fill(&mut s, "limited.example", 1, 10);
    assert!(s.poll(later).is_empty(), "the second message waits");
    let wake = s.next_wake().expect("a wake for the token");
    assert!((T0 + 5 * MIN..=T0 + 5 * MIN + 2).contains(&wake), "{wake}");
    assert_eq!(s.poll(wake).len(), 1);
}
