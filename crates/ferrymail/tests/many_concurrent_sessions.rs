//! Thousands of concurrent sessions: 1,500 clients connect and greet at once,
//! all stay open together, and then every one of them sends a message, which
//! is queued. One task per connection must scale to this without refusing or
//! stalling anyone.

mod common;
use common::*;

#[test]
fn fifteen_hundred_sessions_at_once() {
    const N: usize = 1500;
    // All clients come from 127.0.0.1, so the per-IP limit (default 256)
    // is raised; the global limit stays at its default (8192).
    let s = Server::start_with_server_keys(
        "max-connections-per-ip = 2000\n",
        "[session.rcpt]\nlocal-domains = [\"local.test\"]\n",
    );
    let mut clients: Vec<Smtp> = (0..N).map(|_| Smtp::connect(s.smtp)).collect();
    for c in clients.iter_mut() {
        c.send_raw(b"EHLO many.test\r\n");
    }
    for c in clients.iter_mut() {
        assert_eq!(c.read().code, 250);
    }
    // All sessions are open at the same time here.
    for (i, c) in clients.iter_mut().enumerate() {
        c.send_raw(
            format!("MAIL FROM:<s{i}@example.org>\r\nRCPT TO:<r{i}@local.test>\r\nDATA\r\n")
                .as_bytes(),
        );
    }
    for c in clients.iter_mut() {
        assert_eq!(c.read().code, 250);
        assert_eq!(c.read().code, 250);
        assert_eq!(c.read().code, 354);
    }
    for (i, c) in clients.iter_mut().enumerate() {
        c.send_raw(format!("Subject: {i}\r\n\r\nbody {i}\r\n.\r\n").as_bytes());
    }
    for c in clients.iter_mut() {
        let r = c.read();
        assert_eq!(r.code, 250, "{r:?}");
    }
    let q = s.queue_json();
    assert_eq!(q["messages"].as_array().unwrap().len(), N);
}
