//! A next hop (smtp-sink) answers 450 to RCPT: when the recipient that
//! asked for NOTIFY=DELAY reaches the schedule's notify age (`[1s]`), its
//! sender gets one delay notification (Action delayed, Status 4.x.x,
//! Will-Retry-Until) and only one, as the list has one age. A recipient of
//! the same message without NOTIFY gets no delay notice: an absent NOTIFY
//! means FAILURE only (RFC 3461 §4.1, the DSN issue). Headers only are
//! returned even with RET=FULL (RFC 3461 §4.3). Every judge accepts it;
//! flufl.bounce and Sisimai see a temporary failure.

mod common;
mod dsn_support;

use std::time::Duration;

use common::*;
use dsn_support::*;
use serde_json::json;

#[test]
fn delay_notice_at_the_notify_age() {
    let hop = Hop::start(&["-r", "RCPT", "-b", "452 4.2.2 Mailbox full, try later"]);
    let sink = Sink::start();
    let keys = Keys::generate();
    let server = Server::start(&config(
        &Setup {
            hop: hop.port,
            schedule: "notify = \"[1s]\"",
            ..Setup::default()
        },
        &sink,
        &keys,
    ));

    let id = send(
        &server,
        "sender@sender.test",
        "RET=FULL ENVID=delay-1",
        &[
            ("slow@dest.test", "NOTIFY=DELAY,FAILURE"),
            ("quiet@dest.test", ""),
        ],
        &original("Still there?"),
    );
    let got = sink.wait(1, Duration::from_secs(30), &server);
    // Retries continue every second; no further notice comes.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(sink.received().len(), 1, "one delay notice");
    let dsn = &got[0];
    assert_envelope(dsn, "sender@sender.test");
    let sisimai = judge(
        &dsn.data,
        json!({
            "kind": "delay", "utf8": false, "reporting_mta": "mx.ferry.test",
            "from": "MAILER-DAEMON@ferry.test", "to": "sender@sender.test",
            "envid": "delay-1", "returned": "headers", "returned_subject": "Still there?",
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
    assert_eq!(r["softbounce"], 1, "{r}");
    assert_bounce_queue(&server, &id);
}
