//! A next hop (Postfix's smtp-sink) refuses both recipients of a message
//! with 550 5.1.1: the sender gets exactly one failure notification
//! covering both, with the null envelope sender, through the bounce queue;
//! with no RET it returns the headers only, and with no ENVID and no ORCPT
//! those fields are absent. Python's email package, flufl.bounce (both
//! permanent), Sisimai (both 5.1.1, "userunknown") and dkimpy (RSA and
//! Ed25519 signatures) all accept it.

mod common;
mod dsn_support;

use std::time::Duration;

use common::*;
use dsn_support::*;
use serde_json::json;

#[test]
fn failed_5xx_gives_one_notice_with_headers() {
    let hop = Hop::start(&[
        "-f",
        "RCPT",
        "-B",
        "550 5.1.1 Recipient address rejected: User unknown",
    ]);
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

    let id = send(
        &server,
        "sender@sender.test",
        "",
        &[("a@dest.test", ""), ("b@dest.test", "")],
        &original("Quarterly figures"),
    );
    let got = sink.wait(1, Duration::from_secs(30), &server);
    // One notification per message and event: nothing else follows.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(sink.received().len(), 1, "exactly one notification");
    let dsn = &got[0];
    assert_envelope(dsn, "sender@sender.test");

    let rcpt = |addr: &str| {
        json!({"final": addr, "original": null, "action": "failed", "status": "5.1.1",
               "status_class": "5", "remote_mta": "127.0.0.1",
               "diagnostic": "550 5.1.1 Recipient address rejected: User unknown",
               "will_retry": false})
    };
    let sisimai = judge(
        &dsn.data,
        json!({
            "kind": "failure", "utf8": false, "reporting_mta": "mx.ferry.test",
            "from": "MAILER-DAEMON@ferry.test", "to": "sender@sender.test",
            "envid": null, "returned": "headers", "returned_subject": "Quarterly figures",
            "body_marker": "BODY-MARKER-7f3a",
            "recipients": [rcpt("a@dest.test"), rcpt("b@dest.test")],
            "flufl": {"permanent": ["a@dest.test", "b@dest.test"], "temporary": []},
        }),
        &keys,
    );
    for r in assert_sisimai(
        &sisimai,
        &[("a@dest.test", "5.1.1"), ("b@dest.test", "5.1.1")],
        &dsn.data,
    ) {
        assert_eq!(r["reason"], "userunknown", "{r}");
        assert_eq!(r["softbounce"], 0, "{r}");
    }
    assert_bounce_queue(&server, &id);
}
