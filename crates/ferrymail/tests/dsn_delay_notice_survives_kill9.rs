//! A delay notification that is owed survives a crash before it is queued
//! (the "notice owed" invariant, for `defer`). A next hop (smtp-sink)
//! answers 452 to RCPT; the recipient asked for NOTIFY=DELAY and reaches
//! the schedule's notify age (`[1s]`) while the reporter holds
//! notifications for an hour. `queue list` shows it still deferred with a
//! `delayed` notice owed, and the sink has nothing. Then `kill -9` and a
//! restart on the same data directory with the usual window: the delay
//! notice reaches the sender exactly once (the recipient keeps being
//! retried, and the one notify age is not reported twice), passes every
//! judge, and the recipient then stays queued with no notice owed.

mod common;
mod dsn_support;

use std::time::Duration;

use common::*;
use dsn_support::*;
use serde_json::json;

#[test]
fn delay_notice_owed_at_kill9_is_sent_after_restart() {
    let hop = Hop::start(&["-r", "RCPT", "-b", "452 4.2.2 Mailbox full, try later"]);
    let sink = Sink::start();
    let keys = Keys::generate();
    let setup = |dsn| {
        config(
            &Setup {
                hop: hop.port,
                schedule: "notify = \"[1s]\"",
                dsn,
                ..Setup::default()
            },
            &sink,
            &keys,
        )
    };
    let mut server = Server::start(&setup(HOLD_NOTICES));

    let id = send(
        &server,
        "sender@sender.test",
        "RET=FULL ENVID=delay-crash",
        &[("slow@dest.test", "NOTIFY=DELAY,FAILURE")],
        &original("Slow before the crash"),
    );
    let m = wait_notice_owed(
        &server,
        &id,
        "slow@dest.test",
        "delayed",
        Duration::from_secs(30),
    );
    assert_eq!(m["recipients"][0]["lane"], "deferred", "{m}");
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        sink.received().is_empty(),
        "nothing queued before the crash"
    );

    server.kill9();
    restart_with(&mut server, &setup(""));

    let got = sink.wait(1, Duration::from_secs(30), &server);
    // Retries go on every second; no second notice comes.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(sink.received().len(), 1, "one delay notice");
    let dsn = &got[0];
    assert_envelope(dsn, "sender@sender.test");
    let sisimai = judge(
        &dsn.data,
        json!({
            "kind": "delay", "utf8": false, "reporting_mta": "mx.ferry.test",
            "from": "MAILER-DAEMON@ferry.test", "to": "sender@sender.test",
            "envid": "delay-crash", "returned": "headers",
            "returned_subject": "Slow before the crash",
            "body_marker": "BODY-MARKER-7f3a",
            "recipients": [{"final": "slow@dest.test", "original": null, "action": "delayed",
                            "status": "4.2.2", "status_class": "4", "remote_mta": "127.0.0.1",
                            "diagnostic": "452 4.2.2 Mailbox full, try later", "will_retry": true}],
            "flufl": {"permanent": [], "temporary": ["slow@dest.test"]},
        }),
        &keys,
    );
    let r = &assert_sisimai(&sisimai, &[("slow@dest.test", "4.2.2")], &dsn.data)[0];
    assert_eq!(r["action"], "delayed", "{r}");
    assert_bounce_queue(&server, &id);
    // Discharged: still queued and retried, with no notice owed.
    wait_queue(
        &server,
        Duration::from_secs(15),
        "the notice discharged",
        |l| {
            l["messages"].as_array().unwrap().iter().any(|m| {
                m["id"] == id.as_str()
                    && m["recipients"][0]["address"] == "slow@dest.test"
                    && m["recipients"][0].get("notice_owed").is_none()
            })
        },
    );
}
