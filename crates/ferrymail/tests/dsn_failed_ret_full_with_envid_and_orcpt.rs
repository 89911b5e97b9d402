//! RET=FULL with ENVID and ORCPT: the failure notification returns the
//! whole original as message/rfc822, byte for byte, and carries
//! Original-Envelope-Id (the decoded ENVID) and Original-Recipient (the
//! decoded ORCPT). The failing next hop is Postfix's smtp-sink (550 to
//! RCPT). Every judge accepts it; flufl.bounce reports the original
//! recipient, as RFC 3464 §2.3.1 intends it to be used.

mod common;
mod dsn_support;

use std::time::Duration;

use common::*;
use dsn_support::*;
use serde_json::json;

#[test]
fn ret_full_returns_the_message_with_envid_and_orcpt() {
    let hop = Hop::start(&["-f", "RCPT", "-B", "550 5.2.1 Mailbox disabled"]);
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

    let body = original("Contract draft");
    let id = send(
        &server,
        "sender@sender.test",
        "RET=FULL ENVID=ferry+2Benv-17",
        &[(
            "alice@dest.test",
            "NOTIFY=FAILURE ORCPT=rfc822;Alice+2BList@Dest.Test",
        )],
        &body,
    );
    let got = sink.wait(1, Duration::from_secs(30), &server);
    let dsn = &got[0];
    assert_envelope(dsn, "sender@sender.test");

    let sisimai = judge(
        &dsn.data,
        json!({
            "kind": "failure", "utf8": false, "reporting_mta": "mx.ferry.test",
            "from": "MAILER-DAEMON@ferry.test", "to": "sender@sender.test",
            "envid": "ferry+env-17", "returned": "full", "returned_subject": "Contract draft",
            "body_marker": "BODY-MARKER-7f3a",
            "recipients": [{"final": "alice@dest.test", "original": "rfc822;Alice+List@Dest.Test",
                            "action": "failed", "status": "5.2.1", "status_class": "5",
                            "remote_mta": "127.0.0.1", "diagnostic": "550 5.2.1 Mailbox disabled",
                            "will_retry": false}],
            "flufl": {"permanent": ["Alice+List@Dest.Test"], "temporary": []},
        }),
        &keys,
    );
    let r = &assert_sisimai(&sisimai, &[("alice@dest.test", "5.2.1")], &dsn.data)[0];
    assert_eq!(r["action"], "failed", "{r}");

    // The returned message is the stored one, byte for byte: our Received
    // header, then exactly what the client sent.
    let text = String::from_utf8_lossy(&dsn.data);
    let part = &text[text
        .find("Content-Type: message/rfc822")
        .expect("message/rfc822")..];
    let returned = &part[part.find("\r\n\r\n").unwrap() + 4..];
    assert!(
        returned.starts_with(&format!(
            "Received: from client.test ([127.0.0.1])\r\n\tby mx.ferry.test (Ferrymail) with ESMTP id {id}\r\n"
        )),
        "{returned}"
    );
    let after_received = &returned[returned.find("\r\nFrom: ").unwrap() + 2..];
    assert!(after_received.starts_with(&body), "{after_received}");
    assert_bounce_queue(&server, &id);
}
