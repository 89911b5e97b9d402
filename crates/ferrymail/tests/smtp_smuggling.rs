//! SMTP smuggling (Timo Longin, 2023): a receiver that accepts <LF>.<LF> or
//! <LF>.<CRLF> as the end of DATA lets a sender hide a second message inside the
//! first. Ferrymail ends DATA only at <CRLF>.<CRLF>, so the "smuggled" commands
//! stay content of the one message.

mod common;
use common::*;

#[test]
fn bare_lf_dot_never_ends_data() {
    let s = Server::start_default();
    for ending in [&b"\n.\n"[..], b"\n.\r\n", b"\r\n.\n", b"\r.\r\n", b"\r.\r"] {
        let mut c = s.client();
        c.ehlo();
        assert_eq!(c.cmd("MAIL FROM:<a@example.org>").code, 250);
        assert_eq!(c.cmd("RCPT TO:<x@local.test>").code, 250);
        assert_eq!(c.cmd("DATA").code, 354);
        let mut body = b"Subject: outer\r\n\r\nouter".to_vec();
        body.extend_from_slice(ending);
        body.extend_from_slice(
            b"MAIL FROM:<admin@example.org>\r\nRCPT TO:<victim@local.test>\r\nDATA\r\nSubject: smuggled\r\n\r\nx\r\n",
        );
        c.send_raw(&body);
        c.send_raw(b".\r\n");
        let r = c.read();
        let id = queued_id(&r);
        // Exactly one reply: nothing in the body was executed as a command.
        assert_eq!(c.cmd("NOOP").code, 250);
        let stored = s.contents(&id);
        let text = String::from_utf8_lossy(strip_received(&stored)).to_string();
        assert!(text.contains("Subject: smuggled"), "{ending:?}: {text:?}");
    }
    let q = s.queue_json();
    assert_eq!(q["messages"].as_array().unwrap().len(), 5);
    for m in q["messages"].as_array().unwrap() {
        assert_eq!(m["sender"], "a@example.org");
    }
}

#[test]
fn dot_stuffing_round_trips() {
    let s = Server::start_default();
    let mut c = s.client();
    c.ehlo();
    let body = b".leading dot on the first line\r\n..two\r\n.\r\n";
    // Send it dot-stuffed; the stored copy must be the original.
    let original = b".leading dot on the first line\r\n..two\r\n.\r\n";
    let r = c.send_message("a@example.org", &["x@local.test"], body);
    let stored = s.contents(&queued_id(&r));
    assert_eq!(strip_received(&stored), original);
}
