//! The management listener may face the network (with a token and TLS), so
//! what one client can hold is bounded, and input that could only be a
//! mistake is refused, through the real `ferrymail serve`:
//!
//! * a connection that sends nothing is closed after 10 s (hyper's header
//!   read timeout; before, it stayed open for ever);
//! * at most 256 connections are open at once: the next one is closed at
//!   once, and once the silent ones are gone a request is answered again;
//! * an empty filter (`--sender ""`, `?sender=`), which would match every
//!   address and turn a bulk action on some mail into one on the whole
//!   queue, is refused by the CLI (exit 2) and by the API (400);
//! * `GET /api/queue/messages/contents` is a bad id (400), not a panic that
//!   drops the connection.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

/// Reads until EOF or `limit`; true if the server closed the connection.
fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    s.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 256];
    matches!(s.read(&mut buf), Ok(0)) || matches!(s.read(&mut buf), Ok(0))
}

#[test]
fn silent_connections_are_closed_and_capped() {
    let server = Server::start("");
    let started = Instant::now();
    let mut held: Vec<TcpStream> = (0..256)
        .map(|_| TcpStream::connect(server.mgmt).unwrap())
        .collect();
    // The server takes each one in turn; give it a moment to have all.
    std::thread::sleep(Duration::from_millis(500));
    let mut extra = TcpStream::connect(server.mgmt).unwrap();
    assert!(
        closed_within(&mut extra, Duration::from_secs(3)),
        "the 257th connection is closed at once"
    );
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "the cap, not the header timeout, closed it"
    );
    // The silent ones are closed by the header timeout, all of them.
    for s in &mut held {
        assert!(
            closed_within(s, Duration::from_secs(20)),
            "a silent connection is closed"
        );
    }
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(9),
        "closed by the 10 s header timeout, not earlier: {waited:?}"
    );
    let (status, _) = server.api_get("/api/health");
    assert_eq!(status, 200, "answered again once the slots are free");
    held.clear();
}

#[test]
fn empty_filters_are_refused_and_odd_paths_are_bad_requests() {
    let server = Server::start("[session.rcpt]\nlocal-domains = [\"local.test\"]\n");
    let mut c = server.client();
    c.ehlo();
    let id = queued_id(&c.send_message(
        "keep@example.org",
        &["user@local.test"],
        b"Subject: keep\r\n\r\nbody\r\n",
    ));
    let out = server.cli(&["queue", "hold", &id]);
    assert!(out.status.success());

    for args in [
        &["queue", "cancel", "--sender", ""][..],
        &["queue", "cancel", "--sender", "  "],
        &["queue", "release", "--rcpt-domain", ""],
        &["queue", "list", "--rcpt", ""],
    ] {
        let out = server.cli(args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("must not be empty"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let (status, body) = server.api_get("/api/queue/messages?sender=");
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));

    // A raw action with an empty filter.
    let body = r#"{"action":"cancel","filter":{"sender":""}}"#;
    let mut s = TcpStream::connect(server.mgmt).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "POST /api/queue/action HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    assert!(raw.starts_with("HTTP/1.1 400"), "{raw}");
    assert!(raw.contains("filter sender is empty"), "{raw}");

    // Still queued, still held.
    let (status, body) = server.api_get(&format!("/api/queue/messages/{id}"));
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));

    let (status, body) = server.api_get("/api/queue/messages/contents");
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
}
