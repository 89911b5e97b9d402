//! `ferrymail queue bounce` (Postfix's `postsuper -e`/`-f`): a postmaster
//! who knows a destination will never take its mail returns that mail to
//! its senders now, instead of letting it retry until it expires. Through
//! the real `ferrymail serve`, a next hop (Postfix's smtp-sink) that
//! answers every recipient 451, and the recording sink for notifications:
//!
//! * `bounce ID --reason TEXT` fails both recipients of a deferred message
//!   at once: the queue loses the message and its contents, and the sender
//!   gets exactly one failure notice covering both, with the reason, that
//!   Python's email package, flufl.bounce, dkimpy and Sisimai read as a
//!   permanent failure;
//! * a held message is returned too (selected with `--rcpt-domain`), and a
//!   recipient with NOTIFY=NEVER is removed without any notice;
//! * without a selection the command is a usage error (exit 2).

mod common;
mod dsn_support;

use std::time::{Duration, Instant};

use common::*;
use dsn_support::*;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

/// Waits until message `id` has had at least one delivery attempt.
fn wait_attempted(server: &Server, id: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let show = server.cli(&["queue", "show", id, "--json"]);
        if show.status.success() {
            let v: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap();
            if v["recipients"]
                .as_array()
                .is_some_and(|rs| rs.iter().all(|r| r["attempts"].as_u64() >= Some(1)))
            {
                return;
            }
        }
        assert!(Instant::now() < deadline, "{id} was never attempted");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs `queue bounce ARGS` until the recipients it reports add up to
/// `want`: an entry being attempted at that moment is left to its delivery
/// (retry = 1s here, so that can happen), and a second run takes it.
fn bounce_until(server: &Server, args: &[&str], want: u64) {
    let mut total = 0;
    for _ in 0..20 {
        let mut all = vec!["queue", "bounce"];
        all.extend_from_slice(args);
        let out = server.cli(&all);
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(out.status.success(), "{out:?}");
        total += stdout
            .lines()
            .find_map(|l| l.strip_prefix("bounce: "))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no count in {stdout:?}"));
        if total >= want {
            assert_eq!(total, want, "each recipient returned once");
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("only {total} of {want} recipients were returned");
}

#[test]
fn bounce_fails_queued_mail_now_and_notifies_as_notify_asks() {
    let hop = Hop::start(&["-r", "RCPT", "-b", "451 4.3.0 Try again later"]);
    let sink = Sink::start();
    let keys = Keys::generate();
    let server = Server::start(&config(
        &Setup {
            hop: hop.port,
            ..Setup::default()
        },
        &sink,
        &keys,
    ));

    // No selection: a usage error, before anything is contacted.
    let usage = server.cli(&["queue", "bounce"]);
    assert_eq!(usage.status.code(), Some(2), "{usage:?}");

    let id = send(
        &server,
        "sender@sender.test",
        "",
        &[("a@dest.test", ""), ("b@dest.test", "")],
        &original("Monthly report"),
    );
    wait_attempted(&server, &id);
    bounce_until(
        &server,
        &[
            &id,
            "--reason",
            "dest.test has closed down; no more mail goes there",
        ],
        2,
    );

    let got = sink.wait(1, WAIT, &server);
    let dsn = &got[0];
    assert_envelope(dsn, "sender@sender.test");
    let text = String::from_utf8_lossy(&dsn.data);
    assert!(
        text.contains("dest.test has closed down; no more mail goes there"),
        "the notice gives the postmaster's reason:\n{text}"
    );
    let rcpt = |addr: &str| {
        json!({"final": addr, "original": null, "action": "failed", "status": "5.0.0",
               "status_class": "5", "remote_mta": null, "diagnostic": null,
               "will_retry": false})
    };
    let sisimai = judge(
        &dsn.data,
        json!({
            "kind": "failure", "utf8": false, "reporting_mta": "mx.ferry.test",
            "from": "MAILER-DAEMON@ferry.test", "to": "sender@sender.test",
            "envid": null, "returned": "headers", "returned_subject": "Monthly report",
            "body_marker": "BODY-MARKER-7f3a",
            "recipients": [rcpt("a@dest.test"), rcpt("b@dest.test")],
            "flufl": {"permanent": ["a@dest.test", "b@dest.test"], "temporary": []},
        }),
        &keys,
    );
    assert_sisimai(
        &sisimai,
        &[("a@dest.test", "5.0.0"), ("b@dest.test", "5.0.0")],
        &dsn.data,
    );
    let (_, metrics) = server.api_get("/metrics");
    assert!(
        String::from_utf8_lossy(&metrics)
            .lines()
            .any(|l| l == r#"ferrymail_notifications_total{kind="failure"} 1"#),
        "/metrics counts the failure notice:\n{}",
        String::from_utf8_lossy(&metrics)
    );
    // The message, contents included, left the queue.
    let show = server.cli(&["queue", "show", &id]);
    assert_eq!(show.status.code(), Some(1), "{show:?}");
    let cat = server.cli(&["queue", "cat", &id]);
    assert_eq!(cat.status.code(), Some(1), "{cat:?}");

    // A held message, selected by domain, whose recipient asked for no
    // notice: returned, and nobody is told.
    let held = send(
        &server,
        "sender@sender.test",
        "",
        &[("c@dest.test", "NOTIFY=NEVER")],
        &original("Never mind"),
    );
    let hold = server.cli(&["queue", "hold", &held]);
    assert!(hold.status.success(), "{hold:?}");
    bounce_until(&server, &["--rcpt-domain", "dest.test"], 1);
    let show = server.cli(&["queue", "show", &held]);
    assert_eq!(show.status.code(), Some(1), "{show:?}");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        sink.received().len(),
        1,
        "NOTIFY=NEVER: no notice for the second message"
    );
}
