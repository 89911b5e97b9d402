//! Schedule sequences with a virtual clock: every attempt happens exactly at
//! its due time, so retry, notify and expire ages can be asserted to the
//! millisecond.

use std::path::Path;

use ferrymail_deliver::{Outcome, Remote, RemoteReply};
use ferrymail_spool::conformance::sample_envelope;
use ferrymail_spool::{EntryKey, Envelope, Lane, QueueEntry, Routing};

use super::*;
use crate::rng::Rng;

const MIN: u64 = 60_000;
const HOUR: u64 = 60 * MIN;

fn policy(toml: &str) -> Policy {
    let c = ferrymail_config::parse(toml, Path::new("test.toml")).expect("config");
    Policy::from_config(&c.queue)
}

fn entry(env: &Envelope, rcpt: u32, schedule: &str) -> QueueEntry {
    QueueEntry::new(
        EntryKey {
            message: env.id,
            rcpt,
        },
        Routing {
            queue: "default".into(),
            schedule: schedule.into(),
            route: "mx".into(),
            weight: 0,
        },
        env.arrived,
    )
}

fn transient(reason: &str) -> Outcome {
    Outcome::Transient {
        reason: reason.into(),
        reply: None,
    }
}

fn reply(code: u16, status: &str) -> RemoteReply {
    RemoteReply {
        code,
        status: Some(status.into()),
        text: "text".into(),
    }
}

/// Applies a decision to the entry the way the store's `defer` does.
fn apply(e: &mut QueueEntry, d: &Decision) {
    let def = d.deferral().expect("a deferral");
    e.lane = Lane::Deferred;
    e.attempts += 1;
    e.due = def.due;
    e.last_error = Some(def.last_error);
    e.notify_count = def.notify_count;
}

/// What [`run_to_end`] saw: attempt ages, delay events as (age,
/// notify_num), and the final event with its age.
type Run = (Vec<u64>, Vec<(u64, u32)>, (EventKind, u64));

/// Runs attempts that all fail transiently, each exactly at its due time,
/// until the recipient completes.
fn run_to_end(p: &Policy, schedule: &str) -> Run {
    let env = sample_envelope(1, 1);
    let mut e = entry(&env, 0, schedule);
    let mut ages = Vec::new();
    let mut delays = Vec::new();
    for _ in 0..10_000 {
        let now = e.due;
        let age = now - env.arrived;
        ages.push(age);
        let a = Attempt {
            envelope: &env,
            entry: &e,
            queue: "default",
            remote: None,
            attempted: true,
        };
        let d = p.decide(&a, &transient("451 try later"), now, 0.0, None);
        match &d {
            Decision::Complete(k) => return (ages, delays, (k.clone(), age)),
            Decision::Defer { delayed, .. } => {
                if let Some(EventKind::Delayed { notify_num, .. }) = delayed {
                    delays.push((age, *notify_num));
                }
            }
        }
        apply(&mut e, &d);
    }
    panic!("never completed");
}

#[test]
fn retry_sequence_last_interval_repeats() {
    let p =
        policy("[queue.schedule]\nretry = \"[2m, 5m, 10m]\"\nnotify = \"[]\"\nexpire = \"1h\"\n");
    let (ages, delays, (last, at)) = run_to_end(&p, "default");
    // 0, +2m, +5m, +10m, then +10m repeating, the last one clamped to expiry.
    assert_eq!(
        ages,
        vec![0, 2, 7, 17, 27, 37, 47, 57, 60]
            .into_iter()
            .map(|m| m * MIN)
            .collect::<Vec<_>>()
    );
    assert!(delays.is_empty());
    assert!(matches!(last, EventKind::Expired { .. }), "{last:?}");
    assert_eq!(at, HOUR, "the last attempt happens at expiry");
}

#[test]
fn notify_sequence_exactly_at_each_age_once() {
    let p = policy("[queue.schedule]\nretry = \"[50m]\"\nnotify = \"[3h, 1h]\"\nexpire = \"4h\"\n");
    let (ages, delays, (last, at)) = run_to_end(&p, "default");
    assert_eq!(
        delays,
        vec![(HOUR, 1), (3 * HOUR, 2)],
        "unsorted list is fine"
    );
    // Attempts: 0, 50m, 1h (notify age), 1h50, 2h40, 3h (notify), 3h50, 4h (expiry).
    assert_eq!(
        ages,
        vec![0, 50, 60, 110, 160, 180, 230, 240]
            .into_iter()
            .map(|m| m * MIN)
            .collect::<Vec<_>>()
    );
    match last {
        EventKind::Expired { reason, .. } => assert_eq!(reason, "451 try later"),
        other => panic!("{other:?}"),
    }
    assert_eq!(at, 4 * HOUR);
}

#[test]
fn passed_notify_ages_give_one_notice() {
    // An entry first attempted long after arrival (e.g. after an outage):
    // both ages are passed, one notice covers them.
    let p = policy("[queue.schedule]\nretry = \"[10m]\"\nnotify = \"[1h, 2h]\"\nexpire = \"1d\"\n");
    let env = sample_envelope(1, 1);
    let e = entry(&env, 0, "default");
    let a = Attempt {
        envelope: &env,
        entry: &e,
        queue: "default",
        remote: None,
        attempted: true,
    };
    let d = p.decide(&a, &transient("x"), env.arrived + 3 * HOUR, 0.0, None);
    match d {
        Decision::Defer {
            notify_count,
            delayed:
                Some(EventKind::Delayed {
                    notify_num,
                    will_retry_until,
                    ..
                }),
            ..
        } => {
            assert_eq!((notify_count, notify_num), (2, 2));
            assert_eq!(will_retry_until, Some(env.arrived + 24 * HOUR));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn max_attempts_expires_on_the_last_attempt() {
    let p = policy("[queue.schedule]\nretry = \"[1m]\"\nnotify = \"[2m]\"\nmax-attempts = 4\n");
    let (ages, delays, (last, at)) = run_to_end(&p, "default");
    assert_eq!(ages, vec![0, MIN, 2 * MIN, 3 * MIN]);
    assert_eq!(delays, vec![(2 * MIN, 1)]);
    assert!(matches!(last, EventKind::Expired { .. }));
    assert_eq!(at, 3 * MIN);
    // No expiry age: the delay notice has no Will-Retry-Until.
    let env = sample_envelope(1, 1);
    let e = entry(&env, 0, "default");
    let a = Attempt {
        envelope: &env,
        entry: &e,
        queue: "default",
        remote: None,
        attempted: true,
    };
    match p.decide(&a, &transient("x"), env.arrived + 2 * MIN, 0.0, None) {
        Decision::Defer {
            delayed: Some(EventKind::Delayed {
                will_retry_until, ..
            }),
            ..
        } => assert_eq!(will_retry_until, None),
        other => panic!("{other:?}"),
    }
}

#[test]
fn jitter_stays_within_ten_percent_and_covers_the_range() {
    let p = policy("[queue.schedule]\nretry = \"[10m]\"\nnotify = \"[]\"\nexpire = \"5d\"\n");
    let env = sample_envelope(1, 1);
    let e = entry(&env, 0, "default");
    let a = Attempt {
        envelope: &env,
        entry: &e,
        queue: "default",
        remote: None,
        attempted: true,
    };
    let mut rng = Rng::new(0x5eed);
    let now = env.arrived;
    let (mut lo, mut hi, mut sum) = (u64::MAX, 0u64, 0f64);
    const N: usize = 20_000;
    let mut buckets = [0usize; 10];
    for _ in 0..N {
        let Decision::Defer { due, .. } =
            p.decide(&a, &transient("x"), now, rng.symmetric(JITTER), None)
        else {
            panic!()
        };
        let d = due - now;
        assert!((9 * MIN..=11 * MIN).contains(&d), "{d}");
        lo = lo.min(d);
        hi = hi.max(d);
        sum += d as f64;
        buckets[(((d - 9 * MIN) * 10) / (2 * MIN + 1)) as usize] += 1;
    }
    let mean = sum / N as f64;
    assert!(
        (mean - (10 * MIN) as f64).abs() < 0.005 * (10 * MIN) as f64,
        "{mean}"
    );
    assert!(
        lo < 9 * MIN + MIN / 50 && hi > 11 * MIN - MIN / 50,
        "{lo} {hi}"
    );
    // Roughly uniform: each tenth of the range gets 10% ± 2%.
    for b in buckets {
        assert!(
            (N / 10 - N / 50..=N / 10 + N / 50).contains(&b),
            "{buckets:?}"
        );
    }
    // Out-of-range draws are clamped.
    let Decision::Defer { due, .. } = p.decide(&a, &transient("x"), now, 5.0, None) else {
        panic!()
    };
    assert_eq!(due - now, 11 * MIN);
}

#[test]
fn not_before_delays_but_ages_still_bound() {
    let p = policy("[queue.schedule]\nretry = \"[1m]\"\nnotify = \"[30m]\"\nexpire = \"2h\"\n");
    let env = sample_envelope(1, 1);
    let e = entry(&env, 0, "default");
    let a = Attempt {
        envelope: &env,
        entry: &e,
        queue: "default",
        remote: None,
        attempted: true,
    };
    let now = env.arrived;
    let due = |nb| match p.decide(&a, &transient("x"), now, 0.0, Some(nb)) {
        Decision::Defer { due, .. } => due,
        d => panic!("{d:?}"),
    };
    assert_eq!(due(now + 10 * MIN), now + 10 * MIN);
    // Never past the next notify age.
    assert_eq!(due(now + 50 * MIN), now + 30 * MIN);
}

#[test]
fn schedule_fields_are_expressions() {
    let p = policy(
        r#"
[queue.schedule]
retry = [ { if = "rcpt_domain == 'dest1.example'", then = "[1h]" },
          { if = "contains(last_error, '452')", then = "[7m]" },
          { if = "retry_num >= 2", then = "[3m]" },
          { else = "[1m]" } ]
notify = [ { if = "sender_domain == 'example.org'", then = "[5m]" }, { else = "[]" } ]
expire = [ { if = "source == 'dsn'", then = "1h" }, { else = "1d" } ]
"#,
    );
    let mut env = sample_envelope(1, 2); // rcpt0@dest0.example, rcpt1@dest1.example
    let now = env.arrived + 10;
    let due_for = |env: &Envelope, rcpt: u32, attempts: u32, reason: &str| {
        let mut e = entry(env, rcpt, "default");
        e.attempts = attempts;
        let a = Attempt {
            envelope: env,
            entry: &e,
            queue: "default",
            remote: None,
            attempted: true,
        };
        match p.decide(&a, &transient(reason), now, 0.0, None) {
            Decision::Defer { due, .. } => due - now,
            d => panic!("{d:?}"),
        }
    };
    // notify [5m] applies (sender sender1@example.org), so every due is
    // clamped to 5m after arrival unless shorter.
    assert_eq!(
        due_for(&env, 1, 0, "x"),
        5 * MIN - 10,
        "rcpt_domain, clamped"
    );
    assert_eq!(due_for(&env, 0, 0, "x"), MIN);
    assert_eq!(due_for(&env, 0, 1, "x"), 3 * MIN, "retry_num");
    assert_eq!(due_for(&env, 0, 0, "452 4.2.2 full"), 5 * MIN - 10);
    env.sender = "a@other.example".into();
    assert_eq!(due_for(&env, 0, 0, "452 4.2.2 full"), 7 * MIN, "last_error");
    // expire by source.
    env.source = ferrymail_spool::Source::Dsn;
    let e = entry(&env, 0, "default");
    let a = Attempt {
        envelope: &env,
        entry: &e,
        queue: "default",
        remote: None,
        attempted: true,
    };
    assert!(matches!(
        p.decide(&a, &transient("x"), env.arrived + HOUR, 0.0, None),
        Decision::Complete(EventKind::Expired { .. })
    ));
    env.source = ferrymail_spool::Source::Smtp;
    let a = Attempt {
        envelope: &env,
        entry: &e,
        queue: "default",
        remote: None,
        attempted: true,
    };
    assert!(matches!(
        p.decide(&a, &transient("x"), env.arrived + HOUR, 0.0, None),
        Decision::Defer { .. }
    ));
}

#[test]
fn final_outcomes() {
    let p = policy("");
    let env = sample_envelope(1, 1);
    let e = entry(&env, 0, "default");
    let remote = |lmtp, dsn| Remote {
        host: "mx.dest0.example".into(),
        ip: "192.0.2.1".parse().unwrap(),
        port: 25,
        tls: None,
        dsn,
        lmtp,
        source: None,
    };
    let ok = reply(250, "2.0.0");
    let cases: Vec<(Option<Remote>, Outcome, EventKind)> = vec![
        (
            Some(remote(true, false)),
            Outcome::Delivered { reply: ok.clone() },
            EventKind::Delivered {
                reply: ok.clone(),
                lmtp: true,
            },
        ),
        (
            Some(remote(false, true)),
            Outcome::Delivered { reply: ok.clone() },
            EventKind::Delivered {
                reply: ok.clone(),
                lmtp: false,
            },
        ),
        (
            Some(remote(false, false)),
            Outcome::Delivered { reply: ok.clone() },
            EventKind::Relayed { reply: ok.clone() },
        ),
        (
            Some(remote(false, true)),
            Outcome::Permanent {
                reason: "rejected".into(),
                reply: Some(reply(550, "5.1.1")),
            },
            EventKind::Failed {
                reason: "rejected".into(),
                reply: Some(reply(550, "5.1.1")),
            },
        ),
    ];
    for (r, outcome, want) in cases {
        let a = Attempt {
            envelope: &env,
            entry: &e,
            queue: "default",
            remote: r.as_ref(),
            attempted: true,
        };
        assert_eq!(
            p.decide(&a, &outcome, env.arrived, 0.0, None),
            Decision::Complete(want)
        );
    }
    // A transient reply is stored as the last error, code and text.
    let a = Attempt {
        envelope: &env,
        entry: &e,
        queue: "default",
        remote: None,
        attempted: true,
    };
    let out = Outcome::Transient {
        reason: "ignored when a reply exists".into(),
        reply: Some(reply(451, "4.3.0")),
    };
    match p.decide(&a, &out, env.arrived, 0.0, None) {
        Decision::Defer { last_error, .. } => assert_eq!(last_error, "451 4.3.0 text"),
        d => panic!("{d:?}"),
    }
}

#[test]
fn schedule_choice() {
    let p = policy(
        r#"
[queue.schedule.fast]
retry = "[1m]"
[queue.schedule.slow]
retry = "[1h]"
[queue.virtual.pinned]
schedule = "slow"
"#,
    );
    assert_eq!(p.resolve("default", "fast"), ("fast", false));
    assert_eq!(
        p.resolve("pinned", "fast"),
        ("slow", false),
        "queue overrides"
    );
    assert_eq!(
        p.resolve("bounce", "default"),
        ("bounce", false),
        "bounce queue"
    );
    assert_eq!(p.resolve("dom-x", "gone"), ("default", true), "unknown id");
    assert_eq!(p.resolve("dom-x", "gone"), ("default", true), "warned once");
    // The fallback is used for decisions too.
    let env = sample_envelope(1, 1);
    let e = entry(&env, 0, "gone");
    let a = Attempt {
        envelope: &env,
        entry: &e,
        queue: "dom-x",
        remote: None,
        attempted: true,
    };
    match p.decide(&a, &transient("x"), env.arrived, 0.0, None) {
        Decision::Defer { due, .. } => assert_eq!(due - env.arrived, 2 * MIN),
        d => panic!("{d:?}"),
    }
}

/// A deferral without an attempt (the destination suspended as dead) does
/// not use up `max-attempts` nor move along the retry list; expiry by age
/// still applies. Before, five minutes of suspension bounced mail under
/// `max-attempts = 5` after as few as no real attempt.
#[test]
fn a_suspension_deferral_is_no_attempt() {
    let p = policy("[queue.schedule]\nretry = \"[1m, 10m]\"\nnotify = \"[]\"\nmax-attempts = 2\n");
    let env = sample_envelope(1, 1);
    let mut e = entry(&env, 0, "default");
    e.attempts = 1;
    let now = env.arrived + MIN;
    let decide = |attempted| {
        let a = Attempt {
            envelope: &env,
            entry: &e,
            queue: "default",
            remote: None,
            attempted,
        };
        p.decide(&a, &transient("x"), now, 0.0, None)
    };
    // The second real attempt is the last one max-attempts allows.
    assert!(matches!(
        decide(true),
        Decision::Complete(EventKind::Expired { .. })
    ));
    // Not attempted: deferred, by the first retry interval still, and
    // recorded without counting.
    match decide(false) {
        d @ Decision::Defer { due, .. } => {
            assert_eq!(due - now, MIN);
            let stored = d.deferral().unwrap();
            assert!(!stored.attempted);
        }
        other => panic!("{other:?}"),
    }
    // Expiry by age still ends it.
    let p = policy("[queue.schedule]\nretry = \"[1m]\"\nnotify = \"[]\"\nexpire = \"30m\"\n");
    let a = Attempt {
        envelope: &env,
        entry: &e,
        queue: "default",
        remote: None,
        attempted: false,
    };
    assert!(matches!(
        p.decide(&a, &transient("x"), env.arrived + 31 * MIN, 0.0, None),
        Decision::Complete(EventKind::Expired { .. })
    ));
}
