//! Final delivery over LMTP (RFC 2033) through the real `ferrymail serve`: a
//! relay route with `protocol = "lmtp"`.
//!
//! * aiosmtpd's LMTP server takes a message for two recipients and answers
//!   after DATA once per recipient: 250 for one, 550 for the other. One
//!   recipient is delivered, the other fails permanently, each with its own
//!   reply in the delivery log, and the queue ends empty, contents included.
//! * Postfix's smtp-sink in LMTP mode (`-L`) takes two recipients in one
//!   transaction; both are delivered.

mod common;

use std::time::Duration;

use common::peers::*;
use common::*;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

fn lmtp_server(port: u16, log: &std::path::Path) -> Server {
    Server::start(&format!(
        r#"[session.rcpt]
local-domains = ["box.test"]

[queue.schedule]
retry = "[1h]"

[queue.outbound]
delivery-log = "{log}"

{route}
[queue.strategy]
route = "'mailstore'"
"#,
        log = log.display(),
        route = relay_route("mailstore", port, "lmtp"),
    ))
}

fn body(subject: &str) -> Vec<u8> {
    format!(
        "From: <s@origin.test>\r\nTo: <ok@box.test>, <refused@box.test>\r\n\
         Subject: {subject}\r\nMessage-ID: <{subject}@origin.test>\r\n\r\nHello.\r\n.dot\r\n"
    )
    .into_bytes()
}

#[test]
fn per_recipient_replies_after_data() {
    let sink = RecordingSink::start(json!({
        "lmtp": true,
        "data_reply": {
            "refused@box.test": "550 5.1.1 <refused@box.test>: no such mailbox here",
        },
    }));
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("delivery.jsonl");
    let server = lmtp_server(sink.port, &log);
    let mut c = server.client();
    c.ehlo();
    let sent = body("lmtp");
    // The null sender: the failed recipient then yields no notification
    // (RFC 3461 §6.2) that would reach this same LMTP server; notifications
    // are tested on their own (issue 5).
    let id = queued_id(&c.send_message("", &["ok@box.test", "refused@box.test"], &sent));
    c.cmd("QUIT");

    server.wait_gone(&id, WAIT);
    server.wait_queue_empty(WAIT);
    assert_eq!(
        server.cli(&["queue", "cat", &id]).status.code(),
        Some(1),
        "contents must be gone"
    );

    // One LMTP transaction carried both recipients and the whole message.
    let t = sink.wait_transactions(1, WAIT);
    assert_eq!(t.len(), 1, "{t:?}");
    assert_eq!(t[0]["rcpt_tos"], json!(["ok@box.test", "refused@box.test"]));
    assert_eq!(t[0]["mail_from"], "<>", "the null sender is passed on");
    assert_eq!(t[0]["helo"], "mx.ferry.test", "LHLO names our host");
    assert_eq!(strip_received(&recorded_data(&t[0])), sent.as_slice());

    // Each recipient's outcome is its own reply.
    let lines = delivery_log(&log);
    assert_eq!(lines.len(), 2, "{lines:?}");
    let of = |rcpt: &str| {
        lines
            .iter()
            .find(|l| l["rcpt"] == rcpt)
            .unwrap_or_else(|| panic!("no log line for {rcpt}: {lines:?}"))
    };
    let ok = of("ok@box.test");
    assert_eq!(ok["outcome"], "delivered", "{ok}");
    assert_eq!(ok["reply"], "250 2.0.0 <ok@box.test> delivered", "{ok}");
    let refused = of("refused@box.test");
    assert_eq!(refused["outcome"], "permanent", "{refused}");
    assert_eq!(refused["status"], "5.1.1", "{refused}");
    assert_eq!(
        refused["reply"], "550 5.1.1 <refused@box.test>: no such mailbox here",
        "{refused}"
    );
    for l in &lines {
        assert_eq!(l["route"], "mailstore", "{l}");
        assert_eq!(l["message_id"], id.as_str(), "{l}");
    }
    // The server log says which was which.
    let text = server.log_text();
    assert!(
        text.lines().any(|l| l.contains(&id)
            && l.contains("failed")
            && l.contains("550 5.1.1 <refused@box.test>")),
        "{text}"
    );
    assert!(
        text.lines().any(|l| l.contains(&id)
            && l.contains("delivered")
            && l.contains("250 2.0.0 <ok@box.test> delivered")),
        "{text}"
    );
}

#[test]
fn smtp_sink_in_lmtp_mode() {
    let sink = SmtpSink::start(&["-L"]);
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("delivery.jsonl");
    let server = lmtp_server(sink.port, &log);
    let mut c = server.client();
    c.ehlo();
    let sent = body("sink-lmtp");
    let id =
        queued_id(&c.send_message("s@origin.test", &["ok@box.test", "refused@box.test"], &sent));
    c.cmd("QUIT");

    server.wait_gone(&id, WAIT);
    let d = sink.wait_dumped(1, WAIT);
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(d[0].rcpt_args, ["<ok@box.test>", "<refused@box.test>"]);
    assert_eq!(
        String::from_utf8_lossy(strip_received(&d[0].body)),
        String::from_utf8_lossy(&as_dumped(&sent))
    );
    let lines = delivery_log(&log);
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines.iter().all(|l| l["outcome"] == "delivered"),
        "{lines:?}"
    );
    assert_eq!(server.queue_json()["recipients"], 0);
}
