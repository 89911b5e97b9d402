//! Delivery through the real `ferrymail serve` to Postfix's `smtp-sink` on a
//! relay route (`[queue.strategy] route = "'sink'"`):
//!
//! * accepted mail is delivered: the sink's dump holds each message, exactly
//!   as sent behind Ferrymail's Received header; afterwards the queue is
//!   empty and the contents are gone (`queue cat` exits 1);
//! * a 4xx from the next hop (smtp-sink `-r`, fault injection) leaves the
//!   recipient deferred, with the attempt counted and the remote reply in
//!   `last_error`; at RCPT it concerns that recipient, at the end of DATA
//!   every recipient of the transaction;
//! * a 5xx (smtp-sink `-f`) removes the recipient from the queue, contents
//!   included, and the delivery log and the server log record the permanent
//!   failure with the remote reply. (Sent with the null sender, so that no
//!   notification follows: those are issue 5's.)

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::peers::*;
use common::*;

const WAIT: Duration = Duration::from_secs(30);

/// A server relaying everything to `sink_port`, retrying only after an hour
/// (so a deferred recipient stays put), with a delivery log in `log_dir`.
fn server(sink_port: u16, log_dir: &Path) -> (Server, PathBuf) {
    let log = log_dir.join("delivery.jsonl");
    let server = Server::start(&format!(
        r#"[session.rcpt]
local-domains = ["local.test"]
relay = "remote_ip == '127.0.0.1'"

[queue.schedule]
retry = "[1h]"

[queue.outbound]
delivery-log = "{log}"

{route}
[queue.strategy]
route = "'sink'"
"#,
        log = log.display(),
        route = relay_route("sink", sink_port, "smtp"),
    ));
    (server, log)
}

fn send(server: &Server, from: &str, to: &[&str], body: &[u8]) -> String {
    let mut c = server.client();
    c.ehlo();
    let id = queued_id(&c.send_message(from, to, body));
    c.cmd("QUIT");
    id
}

fn message(subject: &str) -> Vec<u8> {
    format!(
        "From: <sender@origin.test>\r\nTo: <rcpt@far.test>\r\nSubject: {subject}\r\n\
         Message-ID: <{subject}@origin.test>\r\n\r\nFirst line.\r\n.a line starting with a dot\r\n\
         ..two dots\r\n.\r\nLast line.\r\n"
    )
    .into_bytes()
}

fn entries_for<'a>(log: &'a [serde_json::Value], id: &str) -> Vec<&'a serde_json::Value> {
    log.iter().filter(|l| l["message_id"] == id).collect()
}

#[test]
fn accepted_mail_is_delivered_and_leaves_the_queue() {
    let sink = SmtpSink::start(&[]);
    let logs = tempfile::tempdir().unwrap();
    let (server, log) = server(sink.port, logs.path());

    let one = message("one");
    let two = message("two");
    let three = message("three");
    let id1 = send(&server, "sender@origin.test", &["a@far.test"], &one);
    // Two recipients in one domain: one transaction with two RCPTs.
    let id2 = send(
        &server,
        "sender@origin.test",
        &["b1@far.test", "b2@far.test"],
        &two,
    );
    // Two domains, one relay route: both reach the same sink.
    let id3 = send(
        &server,
        "other@origin.test",
        &["c@far.test", "d@elsewhere.test"],
        &three,
    );

    server.wait_queue_empty(WAIT);
    let dumped = sink.wait_dumped(4, WAIT);
    assert_eq!(dumped.len(), 4, "{dumped:?}");

    // Each message arrived whole behind Ferrymail's Received header (which
    // names the queue id); smtp-sink's dump shows line ends as LF.
    for (id, body, rcpts) in [
        (&id1, &one, vec!["a@far.test"]),
        (&id2, &two, vec!["b1@far.test", "b2@far.test"]),
        (&id3, &three, vec!["c@far.test"]),
        (&id3, &three, vec!["d@elsewhere.test"]),
    ] {
        let want_rcpts: Vec<String> = rcpts.iter().map(|r| format!("<{r}>")).collect();
        let d = dumped
            .iter()
            .find(|d| d.rcpt_args == want_rcpts)
            .unwrap_or_else(|| panic!("no transaction for {rcpts:?}: {dumped:?}"));
        assert!(
            d.body
                .starts_with(b"Received: from client.test ([127.0.0.1])"),
            "{}",
            String::from_utf8_lossy(&d.body)
        );
        assert!(
            String::from_utf8_lossy(&d.body).contains(&format!(" id {id}")),
            "the Received header names {id}"
        );
        assert_eq!(
            String::from_utf8_lossy(strip_received(&d.body)),
            String::from_utf8_lossy(&as_dumped(body)),
            "contents of {id} changed in transit"
        );
        let from = if *id == id3 {
            "<other@origin.test>"
        } else {
            "<sender@origin.test>"
        };
        assert!(d.mail_args.starts_with(from), "{}", d.mail_args);
    }

    // Gone from the queue, contents included.
    for id in [&id1, &id2, &id3] {
        assert!(server.show(id).is_none(), "{id} still queued");
        let out = server.cli(&["queue", "cat", id]);
        assert_eq!(
            out.status.code(),
            Some(1),
            "the contents of delivered {id} must be gone: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let list = server.queue_json();
    assert_eq!(list["recipients"], 0, "{list}");
    assert_eq!(queue_ids(&list), Vec::<String>::new());

    // One delivery log line per recipient, each with the sink's 250.
    let lines = delivery_log(&log);
    assert_eq!(lines.len(), 5, "{lines:?}");
    for l in &lines {
        assert_eq!(l["outcome"], "delivered", "{l}");
        assert_eq!(l["route"], "sink", "{l}");
        assert_eq!(l["ip"], "127.0.0.1", "{l}");
        assert_eq!(l["port"], sink.port, "{l}");
        assert!(l["reply"].as_str().unwrap().starts_with("250 2.0.0"), "{l}");
    }
}

#[test]
fn soft_reject_at_rcpt_defers_with_the_remote_reply() {
    let sink = SmtpSink::start(&[
        "-r",
        "RCPT",
        "-b",
        "451 4.7.1 Ferry test: greylisted, come back later",
    ]);
    let logs = tempfile::tempdir().unwrap();
    let (server, log) = server(sink.port, logs.path());
    let body = message("soft");
    let id = send(&server, "sender@origin.test", &["a@far.test"], &body);

    let m = server.wait_attempted(&id, WAIT);
    let r = &m["recipients"][0];
    assert_eq!(r["attempts"], 1, "{m}");
    assert_eq!(r["lane"], "deferred", "{m}");
    let last_error = r["last_error"].as_str().unwrap_or_else(|| panic!("{m}"));
    assert!(
        last_error.contains("451 4.7.1 Ferry test: greylisted, come back later"),
        "last_error must hold the remote reply: {last_error}"
    );
    // The next try follows the schedule ("[1h]", with jitter).
    let due = r["due"].as_u64().unwrap();
    let now = ferrymail_now();
    assert!(due > now + 30 * 60 * 1000, "due {due}, now {now}: {m}");

    // Still queued with its contents; nothing reached the sink's DATA.
    assert_eq!(strip_received(&server.contents(&id)), body.as_slice());
    assert!(sink.dumped().is_empty(), "{:?}", sink.dumped());
    let lines = delivery_log(&log);
    let mine = entries_for(&lines, &id);
    assert_eq!(mine.len(), 1, "{lines:?}");
    assert_eq!(mine[0]["outcome"], "transient");
    assert_eq!(mine[0]["status"], "4.7.1");
    assert_eq!(
        mine[0]["reply"],
        "451 4.7.1 Ferry test: greylisted, come back later"
    );
}

#[test]
fn soft_reject_after_data_defers_every_recipient() {
    let sink = SmtpSink::start(&["-r", ".", "-b", "452 4.3.1 Ferry test: out of space"]);
    let logs = tempfile::tempdir().unwrap();
    let (server, _log) = server(sink.port, logs.path());
    let id = send(
        &server,
        "sender@origin.test",
        &["a@far.test", "b@far.test"],
        &message("soft-data"),
    );
    let m = server.wait_attempted(&id, WAIT);
    for r in m["recipients"].as_array().unwrap() {
        assert_eq!(r["attempts"], 1, "{m}");
        assert_eq!(r["lane"], "deferred", "{m}");
        let e = r["last_error"].as_str().unwrap_or_default();
        assert!(e.contains("452 4.3.1 Ferry test: out of space"), "{m}");
    }
    assert!(server.contents(&id).len() > 100, "the contents are kept");
}

#[test]
fn hard_reject_removes_the_message_and_logs_the_failure() {
    let sink = SmtpSink::start(&[
        "-f",
        "RCPT",
        "-B",
        "550 5.1.1 Ferry test: no such user here",
    ]);
    let logs = tempfile::tempdir().unwrap();
    let (server, log) = server(sink.port, logs.path());
    // The null sender: a failure then never yields a notification (RFC 3461
    // §6.2), whose delivery through the same route would muddle what this
    // test looks at. Notifications have tests of their own (issue 5).
    let id = send(&server, "", &["gone@far.test"], &message("hard"));

    server.wait_gone(&id, WAIT);
    let out = server.cli(&["queue", "cat", &id]);
    assert_eq!(out.status.code(), Some(1), "contents must be gone");
    assert_eq!(server.queue_json()["recipients"], 0);
    assert!(sink.dumped().is_empty(), "{:?}", sink.dumped());

    let lines = delivery_log(&log);
    let mine = entries_for(&lines, &id);
    assert_eq!(mine.len(), 1, "{lines:?}");
    assert_eq!(mine[0]["outcome"], "permanent", "{}", mine[0]);
    assert_eq!(mine[0]["status"], "5.1.1");
    assert_eq!(mine[0]["rcpt"], "gone@far.test");
    assert_eq!(mine[0]["reply"], "550 5.1.1 Ferry test: no such user here");
    // The server's own log says so too (the DSN issue will act on it).
    let text = server.log_text();
    let line = text
        .lines()
        .find(|l| l.contains(&id) && l.contains("failed"))
        .unwrap_or_else(|| panic!("no 'failed' line for {id} in the server log:\n{text}"));
    assert!(
        line.contains("550 5.1.1 Ferry test: no such user here"),
        "{line}"
    );
}

fn ferrymail_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}
