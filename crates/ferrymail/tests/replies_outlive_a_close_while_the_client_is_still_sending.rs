//! A session the server ends (here: `421` after too many errors) while its
//! client is still sending must not lose the replies it wrote before.
//!
//! Closing a socket whose receive queue holds unread input makes the
//! kernel send a reset and discard what is still in the send queue. A
//! client that pipelines a long group and reads the replies only when it
//! is done (its receive window full, so the replies wait in the server's
//! send queue) then never gets them, among them the `250 ... queued as`
//! of a message that is queued: it sends the message again. The server
//! therefore shuts its sending side and reads what the client still sends
//! before it closes (a lingering close).
//!
//! The client is a plain socket with a 2 KiB receive buffer: 20,000
//! pipelined NOOPs (280 KB of replies that cannot reach it yet), a
//! message, then noise until the server closes.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn replies_outlive_a_close_while_the_client_is_still_sending() {
    let server = Server::start_default();
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(2048).unwrap();
    socket.connect(&server.smtp.into()).unwrap();
    let mut s: TcpStream = socket.into();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut greeting = [0u8; 256];
    let n = s.read(&mut greeting).unwrap();
    assert!(greeting[..n].starts_with(b"220 "));

    let mut head = b"EHLO client.test\r\n".to_vec();
    head.extend(b"NOOP\r\n".repeat(20_000));
    head.extend_from_slice(b"MAIL FROM:<a@remote.test>\r\nRCPT TO:<user@local.test>\r\nDATA\r\n");
    s.write_all(&head).unwrap();
    // DATA's 354 is in the server's send queue, behind the NOOPs' replies.
    std::thread::sleep(Duration::from_millis(300));

    // The message, then noise: the server answers 421 after `max-errors`
    // and closes while this goes on arriving.
    let mut tail = b"Subject: kept\r\n\r\nbody\r\n.\r\n".to_vec();
    tail.extend(b"BOGUS\r\n".repeat(100_000));
    s.set_nonblocking(true).unwrap();
    let mut sent = 0;
    let started = Instant::now();
    while sent < tail.len() && started.elapsed() < Duration::from_secs(10) {
        match s.write(&tail[sent..(sent + 65_536).min(tail.len())]) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(1))
            }
            // The server closed; with a reset, what it sent is gone.
            Err(_) => break,
        }
    }
    s.set_nonblocking(false).unwrap();
    std::thread::sleep(Duration::from_millis(300));

    let mut replies = Vec::new();
    let end = s.read_to_end(&mut replies);
    let text = String::from_utf8_lossy(&replies);
    assert!(
        end.is_ok(),
        "{end:?} after {} bytes of replies: the close was a reset",
        replies.len()
    );
    let noops = text.matches("250 2.0.0 OK\r\n").count();
    assert_eq!(noops, 20_000, "every NOOP's reply arrived");
    let queued = text
        .lines()
        .find(|l| l.starts_with("250 ") && l.contains(" queued as "))
        .unwrap_or_else(|| {
            panic!(
                "no 250 for the message; replies end {:?}",
                &text[text.len().saturating_sub(300)..]
            )
        });
    assert!(
        text.ends_with("421 4.7.0 Too many errors, closing connection\r\n"),
        "{:?}",
        &text[text.len().saturating_sub(300)..]
    );
    let id = queued.rsplit(' ').next().unwrap().to_string();
    assert_eq!(queue_ids(&server.queue_json()), vec![id]);
}
