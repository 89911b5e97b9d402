//! `[queue.limiter.inbound.<id>]` (Stalwart's names): a runaway sender is
//! slowed at RCPT TO with 451 4.4.5 while everyone else goes on. Through the
//! real `ferrymail serve` and Postfix's smtp-source as well as a raw SMTP
//! client:
//!
//! * a limiter keyed by `sender_domain` lets three recipients of
//!   noisy.example through, then answers 451 4.4.5; quiet.example is not
//!   touched, and postmaster is never limited;
//! * the `match` expression confines a second limiter to one destination;
//! * the refusals are counted in `GET /metrics`;
//! * a reload does not give the limited sender a fresh allowance;
//! * smtp-source, a real client that stops at the first refusal, gets
//!   exactly the allowance through.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

const LIMITS: &str = r#"[session.rcpt]
local-domains = ["local.test", "vip.test"]

[queue.limiter.inbound.sender]
key = ["sender_domain"]
rate = "3/1h"

[queue.limiter.inbound.vip]
key = ["rcpt_domain"]
rate = "1/1h"
match = "rcpt_domain == 'vip.test'"
"#;

fn rcpt_replies(server: &Server, from: &str, to: &[&str]) -> Vec<Reply> {
    let mut c = server.client();
    c.ehlo();
    let r = c.cmd(&format!("MAIL FROM:<{from}>"));
    assert_eq!(r.code, 250, "{r:?}");
    let out = to
        .iter()
        .map(|t| c.cmd(&format!("RCPT TO:<{t}>")))
        .collect();
    c.cmd("QUIT");
    out
}

#[test]
fn a_noisy_sender_is_slowed_and_the_others_are_not() {
    let server = Server::start(LIMITS);

    let noisy = rcpt_replies(
        &server,
        "app@noisy.example",
        &[
            "a@local.test",
            "b@local.test",
            "c@local.test",
            "d@local.test",
            "postmaster@local.test",
        ],
    );
    for r in &noisy[..3] {
        assert!(r.is(250, "2.1.5"), "{r:?}");
    }
    assert!(noisy[3].is(451, "4.4.5"), "{:?}", noisy[3]);
    assert!(
        noisy[3].text().contains("Rate limit exceeded"),
        "{:?}",
        noisy[3]
    );
    assert!(noisy[4].is(250, "2.1.5"), "postmaster: {:?}", noisy[4]);

    // Another sender is counted apart; the vip limiter applies only to
    // vip.test, once per hour.
    let quiet = rcpt_replies(
        &server,
        "app@quiet.example",
        &["a@local.test", "x@vip.test", "y@vip.test"],
    );
    assert!(quiet[0].is(250, "2.1.5"), "{:?}", quiet[0]);
    assert!(quiet[1].is(250, "2.1.5"), "{:?}", quiet[1]);
    assert!(quiet[2].is(451, "4.4.5"), "{:?}", quiet[2]);

    let (status, body) = server.api_get("/metrics");
    assert_eq!(status, 200);
    let metrics = String::from_utf8_lossy(&body);
    assert!(
        metrics.contains("\nferrymail_smtp_rate_limited_total 2\n"),
        "{metrics}"
    );

    // A reload keeps the counts.
    let out = server.cli(&["reload"]);
    assert!(out.status.success(), "{out:?}");
    let again = rcpt_replies(&server, "app@noisy.example", &["e@local.test"]);
    assert!(again[0].is(451, "4.4.5"), "{:?}", again[0]);
}

#[test]
fn smtp_source_gets_exactly_the_allowance() {
    require("smtp-source");
    let server = Server::start(
        "[session.rcpt]\nlocal-domains = [\"local.test\"]\n\n\
         [queue.limiter.inbound.sender]\nkey = [\"sender_domain\"]\nrate = \"5/1h\"\n",
    );
    // Ten messages, one recipient each, one session at a time: smtp-source
    // gives up at the first refusal.
    let out = run_bounded(
        Command::new("smtp-source")
            .args(["-s", "1", "-m", "10", "-f", "bulk@runaway.example"])
            .args(["-t", "rcpt@local.test"])
            .arg(server.smtp.to_string()),
        Duration::from_secs(60),
    );
    assert!(!out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("451 4.4.5"),
        "{out:?}"
    );
    assert_eq!(queue_ids(&server.queue_json()).len(), 5);
}
