//! `ferrymail queue shape` (Postfix's qshape for Ferrymail): queued
//! recipients by destination domain, or by virtual queue, and by age.
//! Mail to a relay nobody listens on stays queued: three recipients in
//! a.test and two in b.test; one b.test message is then held. The shape
//! counts what is waiting (held mail apart, with `--lane held`), biggest
//! destination first, all of it in the first age bucket; `--lane deferred`
//! sees the retried ones, `--by-queue` groups by virtual queue and
//! `--by-sender` by sender domain (qshape -s), `--json`
//! gives every row, and a bad `--lane` is a usage error.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn start() -> Server {
    let dead = free_port();
    Server::start(&format!(
        r#"[session.rcpt]
local-domains = ["a.test", "b.test"]

[queue.schedule]
retry = "[1h]"

[queue.virtual.slow]
concurrency = 1

[queue.route.dead]
type = "relay"
address = "127.0.0.1"
port = {dead}

[queue.strategy]
queue = [ {{ if = "rcpt_domain == 'b.test'", then = "'slow'" }}, {{ else = "'default'" }} ]
route = "'dead'"
"#
    ))
}

fn shape(server: &Server, args: &[&str]) -> std::process::Output {
    Command::new(bin())
        .args(["queue", "shape", "-c"])
        .arg(&server.config)
        .args(args)
        .output()
        .unwrap()
}

fn shape_json(server: &Server, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = shape(server, &all);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// (name, total, first bucket) of every row.
fn rows(v: &Value) -> Vec<(String, u64, u64)> {
    v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap().to_string(),
                r["total"].as_u64().unwrap(),
                r["counts"][0].as_u64().unwrap(),
            )
        })
        .collect()
}

fn row(name: &str, total: u64) -> (String, u64, u64) {
    (name.to_string(), total, total)
}

#[test]
fn shape_counts_waiting_recipients_by_domain_queue_and_age() {
    let server = start();
    let mut c = server.client();
    c.ehlo();
    let body = b"Subject: shape\r\n\r\nbody\r\n";
    queued_id(&c.send_message("s@example.org", &["x@a.test", "y@a.test"], body));
    queued_id(&c.send_message("news@Lists.Example.net", &["z@a.test", "p@b.test"], body));
    let held = queued_id(&c.send_message("s@example.org", &["q@b.test"], body));
    c.cmd("QUIT");
    // Every recipient tried once and deferred for an hour.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = shape_json(&server, &["--lane", "deferred"]);
        if rows(&v)[0].1 == 5 {
            break;
        }
        assert!(Instant::now() < deadline, "never all deferred: {v}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = Command::new(bin())
        .args(["queue", "hold", "-c"])
        .arg(&server.config)
        .arg(&held)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let v = shape_json(&server, &[]);
    assert_eq!(v["by"], "domain");
    assert_eq!(v["buckets"][0], "5");
    assert_eq!(v["buckets"][9], "1280+");
    assert_eq!(
        rows(&v),
        [row("TOTAL", 4), row("a.test", 3), row("b.test", 1)],
        "held mail is not waiting: {v}"
    );
    assert_eq!(
        rows(&shape_json(&server, &["--lane", "held"])),
        [row("TOTAL", 1), row("b.test", 1)]
    );
    assert_eq!(
        rows(&shape_json(&server, &["--lane", "pending"])),
        [row("TOTAL", 0)],
        "every one has been tried"
    );
    assert_eq!(
        rows(&shape_json(&server, &["--by-queue"])),
        [row("TOTAL", 4), row("default", 3), row("slow", 1)]
    );
    // qshape -s: by sender domain, lower-cased.
    let by_sender = rows(&shape_json(&server, &["--by-sender"]));
    assert_eq!(by_sender[0], row("TOTAL", 4));
    let mut senders = by_sender[1..].to_vec();
    senders.sort();
    assert_eq!(
        senders,
        [row("example.org", 2), row("lists.example.net", 2)]
    );
    assert_eq!(
        rows(&shape_json(&server, &["--queue", "slow"])),
        [row("TOTAL", 1), row("b.test", 1)]
    );

    // The qshape layout: header of bucket bounds, TOTAL, then the rows.
    let out = shape(&server, &["--top", "1"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<Vec<&str>> = text
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        lines[0],
        [
            "T", "5", "10", "20", "40", "80", "160", "320", "640", "1280", "1280+"
        ],
        "{text}"
    );
    assert_eq!(
        lines[1],
        [
            "TOTAL", "4", "4", "0", "0", "0", "0", "0", "0", "0", "0", "0"
        ],
        "{text}"
    );
    assert_eq!(lines[2][..3], ["a.test", "3", "3"], "{text}");
    assert!(lines[3].join(" ").starts_with("(1 more rows"), "{text}");

    let out = shape(&server, &["--lane", "frozen"]);
    assert_eq!(out.status.code(), Some(2), "usage error");
}
