//! `ferrymail queue requeue` (Postfix's `postsuper -r`): the route of a
//! queued recipient is decided when the message is accepted, so after the
//! configuration changes (a relay moved, a route renamed) the mail already
//! queued would keep trying the old way until it expired. Through the real
//! `ferrymail serve` and Postfix's smtp-sink:
//!
//! * a message routed to a relay that is gone (`old`, nothing listening)
//!   is deferred; the server is restarted with the routing changed to
//!   `new` (the sink), and the message still says `old`;
//! * `queue requeue ID` routes it again as configured now: it is delivered
//!   to the sink at once, although its next retry is an hour away;
//! * a held message selected with `--queue` is requeued and released;
//! * without a selection the command is a usage error (exit 2).

mod common;

use std::time::Duration;

use common::peers::*;
use common::*;

const WAIT: Duration = Duration::from_secs(30);

fn config(route: &str, sink: u16) -> String {
    format!(
        r#"[session.rcpt]
relay = "remote_ip == '127.0.0.1'"

[queue.schedule]
retry = "[1h]"

[queue.route.old]
type = "relay"
address = "127.0.0.1"
port = 9

{new}
[queue.strategy]
route = "'{route}'"
"#,
        new = relay_route("new", sink, "smtp"),
    )
}

fn send(server: &Server, subject: &str) -> String {
    let mut c = server.client();
    c.ehlo();
    let id = queued_id(&c.send_message(
        "a@example.org",
        &["r@far.example"],
        format!("Subject: {subject}\r\n\r\nbody\r\n").as_bytes(),
    ));
    c.cmd("QUIT");
    id
}

#[test]
fn requeue_routes_queued_mail_as_configured_now() {
    let sink = SmtpSink::start(&[]);
    let mut server = Server::start(&config("old", sink.port));
    let deferred = send(&server, "deferred");
    let held = send(&server, "held");
    server.wait_attempted(&deferred, WAIT);
    server.wait_attempted(&held, WAIT);
    let out = server.cli(&["queue", "hold", &held]);
    assert!(out.status.success(), "{out:?}");

    // The operator moves the relay: the routing now says `new`.
    assert_eq!(server.terminate().code(), Some(0));
    let text = std::fs::read_to_string(&server.config).unwrap();
    std::fs::write(
        &server.config,
        text.replace("route = \"'old'\"", "route = \"'new'\""),
    )
    .unwrap();
    server.spawn();
    let m = server.show(&deferred).expect("still queued");
    assert_eq!(m["recipients"][0]["route"], "old", "{m}");

    let usage = server.cli(&["queue", "requeue"]);
    assert_eq!(usage.status.code(), Some(2), "{usage:?}");

    let out = server.cli(&["queue", "requeue", &deferred]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("requeue: 1 recipient(s)"),
        "{out:?}"
    );
    let got = sink.wait_dumped(1, WAIT);
    assert!(
        String::from_utf8_lossy(&got[0].body).contains("Subject: deferred"),
        "{got:?}"
    );
    server.wait_gone(&deferred, WAIT);

    // Held mail, selected by queue: requeued and released.
    assert!(server.show(&held).unwrap()["recipients"][0]["held"] == true);
    let out = server.cli(&["queue", "requeue", "--queue", "default"]);
    assert!(out.status.success(), "{out:?}");
    let got = sink.wait_dumped(2, WAIT);
    assert!(
        got.iter()
            .any(|d| String::from_utf8_lossy(&d.body).contains("Subject: held")),
        "{got:?}"
    );
    server.wait_queue_empty(WAIT);
}
