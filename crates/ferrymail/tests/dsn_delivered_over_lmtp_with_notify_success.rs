//! NOTIFY=SUCCESS and final delivery here: the next hop is an LMTP server
//! (smtp-sink -L), so its 250 is final delivery and the sender who asked
//! gets a success notification with Action delivered. A recipient of the
//! same message with NOTIFY=FAILURE gets none. Every judge accepts it:
//! flufl.bounce finds no failure, Sisimai (asked to include deliveries)
//! reads it as delivered.

mod common;
mod dsn_support;

use std::time::Duration;

use common::*;
use dsn_support::*;
use serde_json::json;

#[test]
fn lmtp_delivery_gives_a_delivered_notice() {
    let hop = Hop::start(&["-L"]);
    let sink = Sink::start();
    let keys = Keys::generate();
    let server = Server::start(&config(
        &Setup {
            hop: hop.port,
            lmtp: true,
            ..Setup::default()
        },
        &sink,
        &keys,
    ));

    let id = send(
        &server,
        "sender@sender.test",
        "ENVID=ok-1",
        &[
            (
                "mailbox@dest.test",
                "NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;mailbox@dest.test",
            ),
            ("silent@dest.test", "NOTIFY=FAILURE"),
        ],
        &original("Delivered?"),
    );
    let got = sink.wait(1, Duration::from_secs(30), &server);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(sink.received().len(), 1, "one success notice");
    let dsn = &got[0];
    assert_envelope(dsn, "sender@sender.test");
    let sisimai = judge(
        &dsn.data,
        json!({
            "kind": "success", "utf8": false, "reporting_mta": "mx.ferry.test",
            "from": "MAILER-DAEMON@ferry.test", "to": "sender@sender.test",
            "envid": "ok-1", "returned": "headers", "returned_subject": "Delivered?",
            "body_marker": "BODY-MARKER-7f3a",
            "recipients": [{"final": "mailbox@dest.test", "original": "rfc822;mailbox@dest.test",
                            "action": "delivered", "status": "2.2.0", "status_class": "2",
                            "remote_mta": "127.0.0.1", "diagnostic": "250", "will_retry": false}],
            "flufl": {"permanent": [], "temporary": []},
        }),
        &keys,
    );
    let r = &assert_sisimai(&sisimai, &[("mailbox@dest.test", "2.2.0")], &dsn.data)[0];
    assert_eq!(r["reason"], "delivered", "{r}");
    assert_bounce_queue(&server, &id);
}
