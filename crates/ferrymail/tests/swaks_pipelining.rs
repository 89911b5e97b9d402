//! RFC 2920 PIPELINING: swaks (an independent client) pipelines MAIL/RCPT/DATA
//! and its message is queued; a raw client writing EHLO, MAIL, RCPTs and DATA in
//! one packet gets every reply, in order.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

#[test]
fn swaks_pipeline_sends_a_message() {
    require("swaks");
    let server = Server::start("[session.rcpt]\nlocal-domains = [\"local.test\"]\n");
    let out = run_bounded(
        Command::new("swaks")
            .arg("--pipeline")
            .args(["--server", &server.smtp.ip().to_string()])
            .args(["--port", &server.smtp.port().to_string()])
            .args(["--ehlo", "swaks.test"])
            .args(["--from", "swaks@example.org"])
            .args(["--to", "one@local.test,two@local.test"])
            .args(["--header", "Subject: pipelined by swaks"])
            .args(["--body", "hello from swaks"])
            .args(["--timeout", "20"]),
        Duration::from_secs(60),
    );
    let transcript = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "swaks exited with {}:\n{transcript}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = transcript.lines().collect();
    let find = |pred: &dyn Fn(&str) -> bool, what: &str| -> usize {
        lines
            .iter()
            .position(|l| pred(l))
            .unwrap_or_else(|| panic!("no {what} in the transcript:\n{transcript}"))
    };
    let mail = find(
        &|l| l.starts_with(" -> MAIL FROM:<swaks@example.org>"),
        "MAIL",
    );
    let rcpt1 = find(
        &|l| l.starts_with(" -> RCPT TO:<one@local.test>"),
        "RCPT one",
    );
    let rcpt2 = find(
        &|l| l.starts_with(" -> RCPT TO:<two@local.test>"),
        "RCPT two",
    );
    let data = find(&|l| l == " -> DATA", "DATA");
    // The grouping that proves pipelining: all commands, then all replies.
    assert_eq!(
        (rcpt1, rcpt2, data),
        (mail + 1, mail + 2, mail + 3),
        "MAIL, RCPT, RCPT, DATA should be sent as one group:\n{transcript}"
    );
    let replies: Vec<&str> = lines[data + 1..data + 5].to_vec();
    assert!(
        replies[0].starts_with("<-  250 2.1.0")
            && replies[1].starts_with("<-  250 2.1.5")
            && replies[2].starts_with("<-  250 2.1.5")
            && replies[3].starts_with("<-  354"),
        "the replies should follow the group, in order: {replies:?}\n{transcript}"
    );
    let queued = lines
        .iter()
        .find_map(|l| l.strip_prefix("<-  250 2.0.0 Message queued as "))
        .unwrap_or_else(|| panic!("no queued reply:\n{transcript}"))
        .trim()
        .to_string();
    let list = server.queue_json();
    assert_eq!(queue_ids(&list), vec![queued.clone()], "{list}");
    let m = &list["messages"][0];
    assert_eq!(m["sender"], "swaks@example.org");
    let rcpts: Vec<&str> = m["recipients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["address"].as_str().unwrap())
        .collect();
    assert_eq!(rcpts, ["one@local.test", "two@local.test"]);
    let stored = String::from_utf8_lossy(&server.contents(&queued)).into_owned();
    assert!(
        stored.contains("Subject: pipelined by swaks\r\n"),
        "{stored}"
    );
    assert!(stored.contains("hello from swaks"), "{stored}");
}

#[test]
fn raw_pipelined_group_gets_every_reply_in_order() {
    let server = Server::start_default();
    let mut c = Smtp::connect(server.smtp);
    c.send_raw(
        b"EHLO pipe.test\r\n\
          MAIL FROM:<pipe@example.org>\r\n\
          RCPT TO:<a@local.test>\r\n\
          RCPT TO:<b@local.test>\r\n\
          RCPT TO:<c@local.test>\r\n\
          DATA\r\n",
    );
    let ehlo = c.read();
    assert_eq!(ehlo.code, 250, "{ehlo:?}");
    assert!(ehlo.lines.len() > 1, "EHLO reply is multi-line: {ehlo:?}");
    assert!(
        ehlo.lines.iter().any(|l| &l[4..] == "PIPELINING"),
        "{ehlo:?}"
    );
    assert!(c.read().is(250, "2.1.0"), "MAIL");
    for i in 0..3 {
        let r = c.read();
        assert!(r.is(250, "2.1.5"), "RCPT {i}: {r:?}");
    }
    let r = c.read();
    assert_eq!(r.code, 354, "DATA: {r:?}");
    let body = b"Subject: pipelined\r\n\r\nbody\r\n";
    c.send_raw(body);
    c.send_raw(b".\r\n");
    let r = c.read();
    let id = queued_id(&r);
    assert_eq!(strip_received(&server.contents(&id)), body);
    let m = &server.queue_json()["messages"][0];
    assert_eq!(m["recipients"].as_array().unwrap().len(), 3, "{m}");
}

#[test]
fn raw_pipelined_group_with_refused_recipient_and_trailing_commands() {
    // Without relay permission the remote recipient is refused, the others are
    // not; DATA still goes ahead. The body, end marker, and the next commands
    // are pipelined too.
    let server = Server::start("[session.rcpt]\nlocal-domains = [\"local.test\"]\n");
    let mut c = server.client();
    c.ehlo();
    c.send_raw(
        b"MAIL FROM:<pipe@example.org>\r\n\
          RCPT TO:<a@local.test>\r\n\
          RCPT TO:<someone@elsewhere.example>\r\n\
          RCPT TO:<b@local.test>\r\n\
          DATA\r\n",
    );
    assert!(c.read().is(250, "2.1.0"));
    assert!(c.read().is(250, "2.1.5"));
    let r = c.read();
    assert!(r.is(554, "5.7.1"), "relay to a remote domain: {r:?}");
    assert!(c.read().is(250, "2.1.5"));
    assert_eq!(c.read().code, 354);
    c.send_raw(b"Subject: x\r\n\r\nbody\r\n.\r\nMAIL FROM:<second@example.org>\r\nRCPT TO:<a@local.test>\r\nRSET\r\nNOOP\r\nQUIT\r\n");
    let id = queued_id(&c.read());
    assert!(c.read().is(250, "2.1.0"), "second MAIL");
    assert!(c.read().is(250, "2.1.5"), "second RCPT");
    assert!(c.read().is(250, "2.0.0"), "RSET");
    assert!(c.read().is(250, "2.0.0"), "NOOP");
    assert!(c.read().is(221, "2.0.0"), "QUIT");
    assert!(c.try_read().is_none(), "closed after QUIT");
    let list = server.queue_json();
    assert_eq!(queue_ids(&list), vec![id], "{list}");
    assert_eq!(
        list["messages"][0]["recipients"].as_array().unwrap().len(),
        2,
        "{list}"
    );
}
