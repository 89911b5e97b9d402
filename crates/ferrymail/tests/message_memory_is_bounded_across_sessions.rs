//! Every session holds the message it receives in memory until it is made
//! durable. `session.data.max-memory` bounds what all sessions hold
//! together: a message that would go beyond gets 452 4.3.1 (insufficient
//! system storage, which the client retries) instead of the server
//! growing without limit while clients send slowly to many sessions. The
//! bytes are given back when a message ends, and `/metrics` shows them.

mod common;

use common::*;

fn start_data(s: &Server) -> Smtp {
    let mut c = s.client();
    c.ehlo();
    assert_eq!(c.cmd("MAIL FROM:<a@example.org>").code, 250);
    assert_eq!(c.cmd("RCPT TO:<u@local.test>").code, 250);
    assert_eq!(c.cmd("DATA").code, 354);
    c.send_raw(b"Subject: big\r\n\r\n");
    c
}

/// About 900 KiB of body lines.
fn body() -> Vec<u8> {
    let line = [b'x'; 998];
    let mut out = Vec::new();
    for _ in 0..900 {
        out.extend_from_slice(&line);
        out.extend_from_slice(b"\r\n");
    }
    out
}

fn metric(s: &Server, name: &str) -> f64 {
    let text = String::from_utf8(s.api_get("/metrics").1).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name}"))
        .parse()
        .unwrap()
}

/// Waits until the sessions hold at least `bytes` (a client's bytes have
/// all arrived).
fn wait_held(s: &Server, bytes: f64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while metric(s, "ferrymail_smtp_message_memory_bytes") < bytes {
        assert!(
            std::time::Instant::now() < deadline,
            "the bytes never arrived"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn a_message_beyond_the_memory_bound_gets_452_and_is_taken_later() {
    let s = Server::start(
        "[session.data]\nmax-message-size = \"1M\"\nmax-memory = \"1536K\"\n\n\
         [session.rcpt]\nlocal-domains = [\"local.test\"]\n",
    );
    // A holds about 900 KiB and has not ended its message.
    let mut a = start_data(&s);
    a.send_raw(&body());
    // Wait until the server has it all (the gauge says so).
    wait_held(&s, 900_000.0);
    // B's message of the same size does not fit beside it.
    let mut b = start_data(&s);
    b.send_raw(&body());
    b.send_raw(b".\r\n");
    let r = b.read();
    assert!(r.is(452, "4.3.1"), "{r:?}");
    assert_eq!(metric(&s, "ferrymail_smtp_refused_no_memory_total"), 1.0);
    // A ends its message: accepted, and its bytes are given back.
    a.send_raw(b".\r\n");
    let r = a.read();
    assert_eq!(r.code, 250, "{r:?}");
    assert_eq!(metric(&s, "ferrymail_smtp_message_memory_bytes"), 0.0);
    // B tries again, as a client does after a 4xx: now it fits.
    assert_eq!(b.cmd("MAIL FROM:<a@example.org>").code, 250);
    assert_eq!(b.cmd("RCPT TO:<u@local.test>").code, 250);
    assert_eq!(b.cmd("DATA").code, 354);
    b.send_raw(b"Subject: big\r\n\r\n");
    b.send_raw(&body());
    b.send_raw(b".\r\n");
    assert_eq!(b.read().code, 250);
    // The same bound for BDAT.
    let mut c = s.client();
    c.ehlo();
    assert_eq!(c.cmd("MAIL FROM:<a@example.org>").code, 250);
    assert_eq!(c.cmd("RCPT TO:<u@local.test>").code, 250);
    let mut a = start_data(&s);
    a.send_raw(&body());
    wait_held(&s, 900_000.0);
    let chunk = body();
    c.send_raw(format!("BDAT {} LAST\r\n", chunk.len()).as_bytes());
    c.send_raw(&chunk);
    let r = c.read();
    assert!(r.is(452, "4.3.1"), "{r:?}");
    a.send_raw(b".\r\n");
    assert_eq!(a.read().code, 250);
}
