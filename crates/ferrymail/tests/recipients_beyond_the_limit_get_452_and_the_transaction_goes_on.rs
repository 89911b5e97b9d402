//! RFC 5321 §4.5.3.1.10: recipients beyond the server's limit get 452
//! 4.5.3 and the client sends them in another transaction. That 452 is the
//! limit working, not a client error: a pipelined transaction with more
//! recipients than the limit plus `session.max-errors` must still be
//! accepted for the first ones, not cut off with 421.

mod common;

use std::io::Write;

use common::*;

#[test]
fn pipelined_recipients_beyond_the_limit_do_not_end_the_session() {
    let s = Server::start(
        "[session]\nmax-errors = 3\n\n[session.rcpt]\nlocal-domains = [\"local.test\"]\nmax-recipients = 2\n",
    );
    let mut c = s.client();
    c.ehlo();
    // One write, as a pipelining client sends it: 12 recipients, 10 over.
    let mut batch = String::from("MAIL FROM:<a@example.org>\r\n");
    for i in 0..12 {
        batch.push_str(&format!("RCPT TO:<u{i}@local.test>\r\n"));
    }
    batch.push_str("DATA\r\n");
    c.writer.write_all(batch.as_bytes()).unwrap();
    assert_eq!(c.read().code, 250, "MAIL");
    for i in 0..12 {
        let r = c.read();
        if i < 2 {
            assert!(r.is(250, "2.1.5"), "{i}: {r:?}");
        } else {
            assert!(r.is(452, "4.5.3"), "{i}: {r:?}");
        }
    }
    assert_eq!(c.read().code, 354);
    c.send_raw(b"Subject: first two\r\n\r\nbody\r\n.\r\n");
    let id = queued_id(&c.read());
    let out = s.cli(&["queue", "show", &id, "--json"]);
    let m: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(m["recipients"].as_array().unwrap().len(), 2, "{m}");
    // Real errors still count: three bad commands end the session.
    for _ in 0..2 {
        assert_eq!(c.cmd("BOGUS").code, 500);
    }
    assert_eq!(c.cmd("BOGUS").code, 500);
    let r = c.read();
    assert!(r.is(421, "4.7.0"), "{r:?}");
}
