//! Messages sent with SMTPUTF8 get notifications with the RFC 6533 types:
//! message/global-delivery-status with UTF-8 fields (Final-Recipient of
//! type utf-8 for a UTF-8 address) and message/global-headers. The failing
//! next hop is aiosmtpd answering 550 to RCPT (smtp-sink does not announce
//! SMTPUTF8, so it cannot take these recipients).
//!
//! Two cases, because two of the judges predate RFC 6533:
//!
//! * an ASCII sender whose message has UTF-8 headers: every judge passes in
//!   full. flufl.bounce has no parser for message/global-delivery-status
//!   and finds the recipient with its heuristic detector (SimpleMatch, on
//!   the text part); Sisimai 4.25 falls back to the text part too and reads
//!   the recipient and the status there.
//! * a UTF-8 sender and a UTF-8 recipient (full EAI), the recipient with
//!   an ORCPT of RFC 6533's utf-8 type: the notification
//!   travels with SMTPUTF8 and the email package and dkimpy pass in full.
//!   flufl.bounce skips non-ASCII addresses by design (its GL#3) and still
//!   finds the ASCII recipient; Sisimai 4.25 reads nothing at all once the
//!   To field holds a UTF-8 address. For these two the test asserts that
//!   what they report is right, not that they report everything.

mod common;
mod dsn_support;

use std::time::Duration;

use common::*;
use dsn_support::*;
use serde_json::json;

fn rcpt(addr: &str) -> serde_json::Value {
    json!({"final": addr, "original": null, "action": "failed", "status": "5.1.1",
           "status_class": "5", "remote_mta": "127.0.0.1",
           "diagnostic": "550 5.1.1 Unbekannter Empfänger", "will_retry": false})
}

struct Run {
    server: Server,
    sink: Sink,
    keys: Keys,
    _hop: Sink,
}

fn start() -> Run {
    let hop = Sink::refusing("550 5.1.1 Unbekannter Empfänger");
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
    Run {
        server,
        sink,
        keys,
        _hop: hop,
    }
}

#[test]
fn ascii_sender_utf8_headers_every_judge_passes() {
    let run = start();
    let body = "From: Sender <sender@sender.test>\r\nTo: plain@dest.test\r\nSubject: Grüße aus Köln\r\n\
                Message-ID: <utf8-0@sender.test>\r\n\r\nBODY-MARKER-7f3a Schöne Grüße.\r\n";
    let id = send(
        &run.server,
        "sender@sender.test",
        "SMTPUTF8 BODY=8BITMIME ENVID=utf8-env",
        &[(
            "plain@dest.test",
            "NOTIFY=FAILURE ORCPT=rfc822;Plain@dest.test",
        )],
        body,
    );
    let got = run.sink.wait(1, Duration::from_secs(30), &run.server);
    let dsn = &got[0];
    assert_envelope(dsn, "sender@sender.test");
    let mut r = rcpt("plain@dest.test");
    r["original"] = json!("rfc822;Plain@dest.test");
    let sisimai = judge(
        &dsn.data,
        json!({
            "kind": "failure", "utf8": true, "reporting_mta": "mx.ferry.test",
            "from": "MAILER-DAEMON@ferry.test", "to": "sender@sender.test",
            "envid": "utf8-env", "returned": "headers", "returned_subject": "Grüße aus Köln",
            "body_marker": "BODY-MARKER-7f3a",
            "recipients": [r],
            "flufl": {"permanent": ["plain@dest.test"], "temporary": []},
        }),
        &run.keys,
    );
    let text = String::from_utf8_lossy(&dsn.data);
    assert!(
        text.contains("Content-Type: message/global-delivery-status"),
        "{text}"
    );
    assert!(
        text.contains("Content-Type: message/global-headers"),
        "{text}"
    );
    assert_sisimai(&sisimai, &[("plain@dest.test", "5.1.1")], &dsn.data);
    assert_bounce_queue(&run.server, &id);
}

#[test]
fn utf8_sender_and_recipient_full_eai() {
    let run = start();
    let body = "From: Jöran <jöran@sender.test>\r\nTo: müller@dest.test\r\nSubject: Grüße aus Köln\r\n\
                Message-ID: <utf8-1@sender.test>\r\n\r\nBODY-MARKER-7f3a Schöne Grüße.\r\n";
    let id = send(
        &run.server,
        "jöran@sender.test",
        "SMTPUTF8 BODY=8BITMIME RET=FULL",
        // RFC 6533 §3: an ORCPT of type utf-8, as utf-8-addr-unitext.
        &[
            ("müller@dest.test", "ORCPT=utf-8;Müller@dest.test"),
            ("plain@dest.test", ""),
        ],
        body,
    );
    let got = run.sink.wait(1, Duration::from_secs(30), &run.server);
    let dsn = &got[0];
    assert_envelope(dsn, "jöran@sender.test");
    assert!(
        dsn.mail_options
            .iter()
            .any(|o| o.eq_ignore_ascii_case("SMTPUTF8")),
        "sent with SMTPUTF8: {:?}",
        dsn.mail_options
    );
    let mut mueller = rcpt("müller@dest.test");
    mueller["original"] = json!("utf-8;Müller@dest.test");
    let sisimai = judge(
        &dsn.data,
        json!({
            "kind": "failure", "utf8": true, "reporting_mta": "mx.ferry.test",
            "from": "MAILER-DAEMON@ferry.test", "to": "jöran@sender.test",
            "envid": null, "returned": "full", "returned_subject": "Grüße aus Köln",
            "body_marker": "BODY-MARKER-7f3a",
            "recipients": [mueller, rcpt("plain@dest.test")],
            "flufl": {"permanent": ["plain@dest.test"], "temporary": []},
        }),
        &run.keys,
    );
    let text = String::from_utf8_lossy(&dsn.data);
    assert!(
        text.contains("Final-Recipient: utf-8; müller@dest.test"),
        "{text}"
    );
    assert!(
        text.contains("Original-Recipient: utf-8;Müller@dest.test"),
        "{text}"
    );
    assert!(text.contains("Content-Type: message/global\r\n"), "{text}");
    for r in &sisimai {
        assert!(
            r["recipient"] == "plain@dest.test" || r["recipient"] == "müller@dest.test",
            "{r}"
        );
        assert_eq!(r["deliverystatus"], "5.1.1", "{r}");
    }
    assert_bounce_queue(&run.server, &id);
}
