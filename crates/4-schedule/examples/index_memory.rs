//! Measures the scheduling core with a large deferred backlog: resident
//! memory per indexed entry, and how fast fresh mail is scheduled with and
//! without that backlog. A benchmark program, not a test: it prints figures.
//!
//! ```text
//! cargo run --release -p ferrymail-schedule --example index_memory -- [ENTRIES] [DOMAINS]
//! ```
//!
//! Defaults: 1,000,000 deferred recipients over 20,000 domains (one
//! recipient per message, the worst case for per-message overhead), due over
//! the next day. Only the index is measured: the driver's other memory
//! (store caches, connections) is not part of it.

use std::path::Path;
use std::time::Instant;

use ferrymail_schedule::{CoreSettings, Health, JobReport, Next, Origin, Scheduler};
use ferrymail_spool::{EntryKey, Lane, MessageId, NodeId, QueueEntry, Routing};

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

fn scheduler() -> Scheduler {
    let c = ferrymail_config::parse(
        "[queue.virtual.default]\nconcurrency = 64\n",
        Path::new("bench.toml"),
    )
    .expect("config");
    Scheduler::new(CoreSettings::from_config(&c.queue, NodeId(1), 7))
}

fn entry(message: MessageId, due: u64, lane: Lane) -> QueueEntry {
    let mut e = QueueEntry::new(
        EntryKey { message, rcpt: 0 },
        Routing::default_with_weight(0),
        due,
    );
    e.lane = lane;
    e
}

/// Schedules `n` fresh messages (one recipient each, 50 domains) and
/// completes every job at once; returns messages per second.
fn fresh_rate(s: &mut Scheduler, now: u64, n: u64, base: u64) -> f64 {
    let start = Instant::now();
    let mut done = 0u64;
    let mut i = 0u64;
    while done < n {
        // Arrivals in bursts of 100, then serve what is ready.
        for _ in 0..100 {
            if i < n {
                let m = MessageId((now << 22) | ((base + i) & 0x3f_ffff));
                let d = format!("fresh{}.example", i % 50);
                s.insert(&entry(m, now, Lane::Pending), &d, Origin::New, now);
                i += 1;
            }
        }
        for d in s.poll(now) {
            let keys = d.keys();
            done += keys.len() as u64;
            s.finish(
                d.job,
                JobReport {
                    health: Health::Answered,
                    next: keys.into_iter().map(|k| (k, Next::Gone)).collect(),
                },
                now,
            );
        }
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let mut args = std::env::args().skip(1);
    let entries: u64 = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let domains: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let now: u64 = 1_800_000_000_000;

    // Fresh-mail rate on an empty index (also warms the allocator).
    let mut empty = scheduler();
    let empty_rate = fresh_rate(&mut empty, now, 200_000, 3_000_000);
    drop(empty);

    let domain_names: Vec<String> = (0..domains).map(|d| format!("d{d}.example")).collect();
    let before = rss_bytes();
    let start = Instant::now();
    let mut s = scheduler();
    for i in 0..entries {
        // Arrived over the last day, due over the next day.
        let arrived = now - 86_400_000 + (i * 86_400_000 / entries.max(1));
        let m = MessageId((arrived << 22) | (i & 0x3f_ffff));
        let due = now + 1 + (i * 7919 % 86_400_000);
        let d = &domain_names[(i % domains) as usize];
        s.insert(&entry(m, due, Lane::Deferred), d, Origin::Recovered, now);
    }
    let build = start.elapsed();
    let after = rss_bytes();
    let st = s.stats();
    let per_entry = (after.saturating_sub(before)) as f64 / entries.max(1) as f64;
    println!("deferred entries indexed : {}", st.entries);
    println!("distinct domains         : {domains}");
    println!(
        "index build time         : {:.0} ms",
        build.as_secs_f64() * 1000.0
    );
    println!(
        "RSS growth               : {:.1} MiB ({:.0} bytes per entry)",
        (after.saturating_sub(before)) as f64 / 1048576.0,
        per_entry
    );
    println!(
        "process RSS              : {:.1} MiB",
        after as f64 / 1048576.0
    );

    let loaded_rate = fresh_rate(&mut s, now, 200_000, 2_000_000);
    println!("fresh mail, empty index  : {empty_rate:.0} recipients/s");
    println!("fresh mail, with backlog : {loaded_rate:.0} recipients/s");
    println!(
        "ratio                    : {:.2}",
        loaded_rate / empty_rate.max(1.0)
    );
    assert_eq!(s.stats().entries as u64, entries);
}
