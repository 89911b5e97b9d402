//! `[report.dsn] max-returned-size`: a RET=FULL message larger than the
//! limit comes back as its headers only (text/rfc822-headers), and the
//! human-readable part says why. The failing next hop is smtp-sink (554 to
//! RCPT); every judge accepts the notification.

mod common;
mod dsn_support;

use std::time::Duration;

use common::*;
use dsn_support::*;
use serde_json::json;

#[test]
fn ret_full_over_the_limit_returns_headers() {
    let hop = Hop::start(&["-f", "RCPT", "-B", "554 5.7.1 Relay access denied"]);
    let sink = Sink::start();
    let keys = Keys::generate();
    let server = Server::start(&config(
        &Setup {
            hop: hop.port,
            dsn: "max-returned-size = \"2k\"",
            ..Setup::default()
        },
        &sink,
        &keys,
    ));

    let big = format!(
        "{}{}",
        original("Holiday photos"),
        "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\r\n".repeat(100)
    );
    let id = send(
        &server,
        "sender@sender.test",
        "RET=FULL",
        &[("c@dest.test", "")],
        &big,
    );
    let got = sink.wait(1, Duration::from_secs(30), &server);
    let dsn = &got[0];
    assert_envelope(dsn, "sender@sender.test");
    assert!(dsn.data.len() < 8 * 1024, "small: {} bytes", dsn.data.len());
    let sisimai = judge(
        &dsn.data,
        json!({
            "kind": "failure", "utf8": false, "reporting_mta": "mx.ferry.test",
            "from": "MAILER-DAEMON@ferry.test", "to": "sender@sender.test",
            "envid": null, "returned": "headers", "returned_subject": "Holiday photos",
            "body_marker": "BODY-MARKER-7f3a", "too_large": true,
            "recipients": [{"final": "c@dest.test", "original": null, "action": "failed",
                            "status": "5.7.1", "status_class": "5", "remote_mta": "127.0.0.1",
                            "diagnostic": "554 5.7.1 Relay access denied", "will_retry": false}],
            "flufl": {"permanent": ["c@dest.test"], "temporary": []},
        }),
        &keys,
    );
    assert_sisimai(&sisimai, &[("c@dest.test", "5.7.1")], &dsn.data);
    assert_bounce_queue(&server, &id);
}
