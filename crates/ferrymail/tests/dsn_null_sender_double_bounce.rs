//! A message with the null sender (a bounce itself) that fails gets no
//! notification: the double bounce is logged. With `[report.dsn]
//! double-bounce` set, the postmaster gets a copy instead, a failure
//! notification that passes every judge.

mod common;
mod dsn_support;

use std::time::Duration;

use common::*;
use dsn_support::*;
use serde_json::json;

fn wait_log(server: &Server, needle: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(l) = log_lines(server, needle).into_iter().next() {
            return l;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no log line with {needle:?}:\n{}",
            plain_log(server)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn null_sender_gets_no_notice_and_the_double_bounce_is_logged() {
    let hop = Hop::start(&["-f", "RCPT", "-B", "550 5.1.1 No such user"]);
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
        "",
        "",
        &[("gone@dest.test", "")],
        &original("Bounce"),
    );
    let line = wait_log(&server, "double bounce");
    assert!(line.contains(&format!("id={id}")), "{line}");
    assert!(line.contains("no notification is sent"), "{line}");
    std::thread::sleep(Duration::from_secs(3));
    assert!(sink.received().is_empty(), "nothing to <> or anyone else");
}

#[test]
fn double_bounce_goes_to_the_configured_postmaster() {
    let hop = Hop::start(&["-f", "RCPT", "-B", "550 5.1.1 No such user"]);
    let sink = Sink::start();
    let keys = Keys::generate();
    let server = Server::start(&config(
        &Setup {
            hop: hop.port,
            dsn: "double-bounce = \"postmaster@admin.test\"",
            ..Setup::default()
        },
        &sink,
        &keys,
    ));
    let id = send(
        &server,
        "",
        "",
        &[("gone@dest.test", "")],
        &original("Bounce"),
    );
    let got = sink.wait(1, Duration::from_secs(30), &server);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(sink.received().len(), 1);
    let dsn = &got[0];
    assert_envelope(dsn, "postmaster@admin.test");
    assert!(
        wait_log(&server, "double bounce").contains("a copy goes to the postmaster"),
        "logged"
    );
    let sisimai = judge(
        &dsn.data,
        json!({
            "kind": "failure", "utf8": false, "reporting_mta": "mx.ferry.test",
            "from": "MAILER-DAEMON@ferry.test", "to": "postmaster@admin.test",
            "envid": null, "returned": "headers", "returned_subject": "Bounce",
            "body_marker": "BODY-MARKER-7f3a",
            "recipients": [{"final": "gone@dest.test", "original": null, "action": "failed",
                            "status": "5.1.1", "status_class": "5", "remote_mta": "127.0.0.1",
                            "diagnostic": "550 5.1.1 No such user", "will_retry": false}],
            "flufl": {"permanent": ["gone@dest.test"], "temporary": []},
        }),
        &keys,
    );
    assert_sisimai(&sisimai, &[("gone@dest.test", "5.1.1")], &dsn.data);
    assert!(String::from_utf8_lossy(&dsn.data).contains("Subject: Postmaster copy"));
    assert_bounce_queue(&server, &id);
}
