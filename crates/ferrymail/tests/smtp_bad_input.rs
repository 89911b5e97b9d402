//! Every kind of bad input gets its precise reply and enhanced status code, and
//! the session stays usable wherever RFC 5321 allows. A message that was only
//! partly received is never queued.

mod common;
use common::*;

fn server() -> Server {
    Server::start(
        "[session]\nmax-errors = 50\n[session.data]\nmax-message-size = 10000\n\
         [session.rcpt]\nlocal-domains = [\"local.test\"]\nmax-recipients = 3\n",
    )
}

/// The session still works after an error: a full transaction succeeds.
fn still_usable(c: &mut Smtp) {
    assert_eq!(c.cmd("RSET").code, 250);
    let r = c.send_message(
        "a@example.org",
        &["x@local.test"],
        b"Subject: ok\r\n\r\nok\r\n",
    );
    assert_eq!(r.code, 250, "{r:?}");
}

fn queued(s: &Server) -> usize {
    s.queue_json()["messages"].as_array().unwrap().len()
}

#[test]
fn command_line_too_long() {
    let s = server();
    let mut c = s.client();
    c.ehlo();
    let long = format!("NOOP {}", "x".repeat(5000));
    assert!(c.cmd(&long).is(500, "5.5.2"));
    // A long line split across many writes is refused once, too.
    c.send_raw(format!("MAIL FROM:<{}", "y".repeat(3000)).as_bytes());
    std::thread::sleep(std::time::Duration::from_millis(50));
    c.send_raw(format!("{}@example.org>\r\n", "y".repeat(3000)).as_bytes());
    assert!(c.read().is(500, "5.5.2"));
    still_usable(&mut c);
}

#[test]
fn message_too_big_declared_and_streamed() {
    let s = server();
    let mut c = s.client();
    c.ehlo();
    assert!(
        c.cmd("MAIL FROM:<a@example.org> SIZE=20000")
            .is(552, "5.3.4")
    );
    // An absurd SIZE must not wrap around.
    assert!(
        c.cmd("MAIL FROM:<a@example.org> SIZE=99999999999999999999999999")
            .is(552, "5.3.4")
    );
    // Streamed: the whole body is read, then refused.
    assert_eq!(c.cmd("MAIL FROM:<a@example.org>").code, 250);
    assert_eq!(c.cmd("RCPT TO:<x@local.test>").code, 250);
    assert_eq!(c.cmd("DATA").code, 354);
    let line = "z".repeat(998) + "\r\n";
    for _ in 0..20 {
        c.send_raw(line.as_bytes());
    }
    c.send_raw(b".\r\n");
    assert!(c.read().is(552, "5.3.4"));
    assert_eq!(queued(&s), 0, "a refused message is not queued");
    still_usable(&mut c);
    assert_eq!(queued(&s), 1);
}

#[test]
fn bad_sequence() {
    let s = server();
    let mut c = s.client();
    c.ehlo();
    assert!(c.cmd("RCPT TO:<x@local.test>").is(503, "5.5.1"));
    assert!(c.cmd("DATA").is(503, "5.5.1"));
    assert_eq!(c.cmd("MAIL FROM:<a@example.org>").code, 250);
    assert!(c.cmd("MAIL FROM:<a@example.org>").is(503, "5.5.1"));
    assert!(c.cmd("DATA").is(503, "5.5.1"), "DATA without RCPT");
    still_usable(&mut c);
}

#[test]
fn syntax_errors() {
    let s = server();
    let mut c = s.client();
    c.ehlo();
    assert!(c.cmd("MAIL FROM:a@example.org").is(501, "5.5.4"));
    assert!(c.cmd("MAIL TO:<a@example.org>").is(501, "5.5.4"));
    assert!(c.cmd("EHLO").is(501, "5.5.4"));
    assert!(
        c.cmd("MAIL FROM:<a@example.org> MT-PRIORITY=12")
            .is(501, "5.5.4")
    );
    assert!(
        c.cmd("MAIL FROM:<a@example.org> BODY=9BIT")
            .is(501, "5.5.4")
    );
    // A reverse-path needs a domain (RFC 5321 §4.1.2): `<postmaster>` is
    // for RCPT only. Taken for `<>`, it queued an ordinary message as a
    // bounce (no notice owed, relayed with MAIL FROM:<>).
    assert!(c.cmd("MAIL FROM:<postmaster>").is(501, "5.1.7"));
    assert!(
        c.cmd("MAIL FROM:<Postmaster> BODY=8BITMIME")
            .is(501, "5.1.7")
    );
    assert!(c.cmd("MAIL FROM:<other>").is(501, "5.1.7"));
    assert_eq!(c.cmd("MAIL FROM:<a@example.org>").code, 250);
    assert!(
        c.cmd("RCPT TO:<x@local.test> NOTIFY=NEVER,SUCCESS")
            .is(501, "5.5.4")
    );
    assert!(c.cmd("RCPT TO:<>").is(501, "5.1.3"));
    still_usable(&mut c);
}

#[test]
fn unknown_command_and_parameter() {
    let s = server();
    let mut c = s.client();
    c.ehlo();
    assert!(c.cmd("FROBNICATE now").is(500, "5.5.1"));
    assert!(
        c.cmd("MAIL FROM:<a@example.org> X-FOO=bar")
            .is(555, "5.5.4")
    );
    assert_eq!(c.cmd("MAIL FROM:<a@example.org>").code, 250);
    assert!(c.cmd("RCPT TO:<x@local.test> X-BAR=1").is(555, "5.5.4"));
    still_usable(&mut c);
}

#[test]
fn too_many_recipients() {
    let s = server();
    let mut c = s.client();
    c.ehlo();
    assert_eq!(c.cmd("MAIL FROM:<a@example.org>").code, 250);
    for i in 0..3 {
        assert_eq!(c.cmd(&format!("RCPT TO:<r{i}@local.test>")).code, 250);
    }
    assert!(c.cmd("RCPT TO:<r4@local.test>").is(452, "4.5.3"));
    // The transaction goes on with the recipients accepted so far.
    assert_eq!(c.cmd("DATA").code, 354);
    c.send_raw(b"Subject: x\r\n\r\nx\r\n.\r\n");
    let id = queued_id(&c.read());
    let m = s.cli(&["queue", "show", &id, "--json"]);
    let m: serde_json::Value = serde_json::from_slice(&m.stdout).unwrap();
    assert_eq!(m["recipients"].as_array().unwrap().len(), 3);
}

#[test]
fn non_ascii_address_needs_smtputf8() {
    let s = server();
    let mut c = s.client();
    c.ehlo();
    assert!(c.cmd("MAIL FROM:<josé@example.org>").is(553, "5.6.7"));
    assert_eq!(c.cmd("MAIL FROM:<jose@example.org>").code, 250);
    assert!(c.cmd("RCPT TO:<用户@local.test>").is(553, "5.6.7"));
    assert_eq!(c.cmd("RSET").code, 250);
    assert_eq!(c.cmd("MAIL FROM:<josé@example.org> SMTPUTF8").code, 250);
    assert_eq!(c.cmd("RCPT TO:<用户@local.test>").code, 250);
    still_usable(&mut c);
}

#[test]
fn nul_bytes_are_refused() {
    let s = server();
    let mut c = s.client();
    c.ehlo();
    c.send_raw(b"NOOP a\0b\r\n");
    assert!(c.read().is(500, "5.5.2"));
    assert_eq!(c.cmd("MAIL FROM:<a@example.org>").code, 250);
    assert_eq!(c.cmd("RCPT TO:<x@local.test>").code, 250);
    assert_eq!(c.cmd("DATA").code, 354);
    c.send_raw(b"Subject: nul\r\n\r\na\0b\r\n.\r\n");
    assert!(c.read().is(554, "5.6.0"));
    assert_eq!(queued(&s), 0);
    still_usable(&mut c);
}

#[test]
fn too_many_errors_closes_with_421() {
    let s = Server::start("[session]\nmax-errors = 3\n");
    let mut c = s.client();
    assert_eq!(c.cmd("BOGUS").code, 500);
    assert_eq!(c.cmd("BOGUS").code, 500);
    // The third error is answered, then 421 and the connection closes.
    c.send_raw(b"BOGUS\r\n");
    assert_eq!(c.read().code, 500);
    assert!(c.read().is(421, "4.7.0"));
    assert!(c.try_read().is_none());
}

#[test]
fn partial_message_is_never_queued() {
    let s = server();
    let mut c = s.client();
    c.ehlo();
    assert_eq!(c.cmd("MAIL FROM:<a@example.org>").code, 250);
    assert_eq!(c.cmd("RCPT TO:<x@local.test>").code, 250);
    assert_eq!(c.cmd("DATA").code, 354);
    c.send_raw(b"Subject: cut short\r\n\r\nthe connection drops here");
    drop(c);
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(queued(&s), 0);
}

#[test]
fn mail_loop_is_refused() {
    let s = Server::start(
        "[session.data]\nmax-received-headers = 5\n[session.rcpt]\nlocal-domains = [\"local.test\"]\n",
    );
    let mut c = s.client();
    c.ehlo();
    // Four earlier hops plus ours is five: still accepted.
    let hops = |n: usize| {
        let mut m = String::new();
        for i in 0..n {
            m.push_str(&format!("Received: from hop{i}.example by hop{}.example; Thu, 1 Jan 2026 00:00:00 +0000\r\n", i + 1));
        }
        m.push_str("Subject: loop\r\n\r\nbody\r\n");
        m
    };
    let r = c.send_message("a@example.org", &["x@local.test"], hops(4).as_bytes());
    assert_eq!(r.code, 250, "{r:?}");
    assert_eq!(c.cmd("MAIL FROM:<a@example.org>").code, 250);
    assert_eq!(c.cmd("RCPT TO:<x@local.test>").code, 250);
    assert_eq!(c.cmd("DATA").code, 354);
    c.send_raw(&dot_stuff(hops(5).as_bytes()));
    c.send_raw(b".\r\n");
    assert!(c.read().is(554, "5.4.6"));
    assert_eq!(queued(&s), 1, "the looping message is not queued");
    still_usable(&mut c);
}
