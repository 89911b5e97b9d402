//! NOTIFY=SUCCESS and a next hop without DSN (RFC 3461 §6.2.2): smtp-sink
//! -N accepts the recipient but cannot carry the request on, so the sender
//! gets a success notification with Action relayed. A recipient of the same
//! message at a hop that announces DSN (plain smtp-sink) gets none from
//! here: that hop took the duty over (§6.2.1). Every judge accepts the
//! notification.

mod common;
mod dsn_support;

use std::time::Duration;

use common::*;
use dsn_support::*;
use serde_json::json;

#[test]
fn hop_without_dsn_gives_a_relayed_notice() {
    let no_dsn = Hop::start(&["-N"]);
    let with_dsn = Hop::start(&[]);
    let sink = Sink::start();
    let keys = Keys::generate();
    let tables = format!(
        "[queue.route.dsnhop]\ntype = \"relay\"\naddress = \"127.0.0.1\"\nport = {}\n\n",
        with_dsn.port
    );
    let server = Server::start(&config(
        &Setup {
            hop: no_dsn.port,
            tables: &tables,
            branches: "{ if = \"rcpt_domain == 'withdsn.test'\", then = \"'dsnhop'\" },",
            ..Setup::default()
        },
        &sink,
        &keys,
    ));

    let id = send(
        &server,
        "sender@sender.test",
        "",
        &[
            ("far@nodsn.test", "NOTIFY=SUCCESS"),
            ("near@withdsn.test", "NOTIFY=SUCCESS"),
        ],
        &original("Passed on"),
    );
    let got = sink.wait(1, Duration::from_secs(30), &server);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(sink.received().len(), 1, "one notice, about far@ only");
    let dsn = &got[0];
    assert_envelope(dsn, "sender@sender.test");
    let sisimai = judge(
        &dsn.data,
        json!({
            "kind": "success", "utf8": false, "reporting_mta": "mx.ferry.test",
            "from": "MAILER-DAEMON@ferry.test", "to": "sender@sender.test",
            "envid": null, "returned": "headers", "returned_subject": "Passed on",
            "body_marker": "BODY-MARKER-7f3a",
            "recipients": [{"final": "far@nodsn.test", "original": null, "action": "relayed",
                            "status": null, "status_class": "2", "remote_mta": "127.0.0.1",
                            "diagnostic": "250", "will_retry": false}],
            "flufl": {"permanent": [], "temporary": []},
        }),
        &keys,
    );
    assert_sisimai(&sisimai, &[("far@nodsn.test", "2.0.0")], &dsn.data);
    assert!(
        !String::from_utf8_lossy(&dsn.data).contains("near@withdsn.test"),
        "the DSN-capable hop reports for near@"
    );
    assert_bounce_queue(&server, &id);
}
