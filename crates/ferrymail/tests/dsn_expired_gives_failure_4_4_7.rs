//! Expiry: a recipient the next hop (smtp-sink) keeps refusing with 451
//! reaches the schedule's `expire` age (3 s) and is given up: a failure
//! notification with Action failed, Status 4.4.7 (RFC 3463: delivery time
//! expired) and the last 451 reply as Diagnostic-Code. Every judge accepts
//! it; flufl.bounce counts it as a permanent failure, Sisimai as "expired".
//!
//! The hop's reply carries no enhanced status code here on purpose:
//! Sisimai prefers a code found in Diagnostic-Code over the Status field
//! (Sisimai::Data, CHECK_DELIVERY_STATUS_VALUE), so with `450 4.3.2 ...` it
//! reports 4.3.2 and "notaccept", which is its reading of the remote's
//! last word rather than of the expiry.

mod common;
mod dsn_support;

use std::time::Duration;

use common::*;
use dsn_support::*;
use serde_json::json;

#[test]
fn expiry_gives_a_failure_with_4_4_7() {
    let hop = Hop::start(&["-r", "RCPT", "-b", "451 Try again later"]);
    let sink = Sink::start();
    let keys = Keys::generate();
    let server = Server::start(&config(
        &Setup {
            hop: hop.port,
            schedule: "expire = \"3s\"",
            ..Setup::default()
        },
        &sink,
        &keys,
    ));

    let id = send(
        &server,
        "sender@sender.test",
        "",
        &[("late@dest.test", "")],
        &original("Deadline"),
    );
    let got = sink.wait(1, Duration::from_secs(40), &server);
    let dsn = &got[0];
    assert_envelope(dsn, "sender@sender.test");
    let sisimai = judge(
        &dsn.data,
        json!({
            "kind": "failure", "utf8": false, "reporting_mta": "mx.ferry.test",
            "from": "MAILER-DAEMON@ferry.test", "to": "sender@sender.test",
            "envid": null, "returned": "headers", "returned_subject": "Deadline",
            "body_marker": "BODY-MARKER-7f3a",
            "recipients": [{"final": "late@dest.test", "original": null, "action": "failed",
                            "status": "4.4.7", "status_class": "4", "remote_mta": "127.0.0.1",
                            "diagnostic": "451 Try again later",
                            "will_retry": false}],
            "flufl": {"permanent": ["late@dest.test"], "temporary": []},
        }),
        &keys,
    );
    let r = &assert_sisimai(&sisimai, &[("late@dest.test", "4.4.7")], &dsn.data)[0];
    assert_eq!(r["reason"], "expired", "{r}");
    assert_bounce_queue(&server, &id);
}
