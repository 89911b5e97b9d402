//! SIGTERM and deliveries in flight: a delivery that has not sent the end of
//! its message is abandoned at once (the next hop cannot have the message,
//! so nothing is lost and nothing is sent twice), while one that has sent it
//! is waited for, so its outcome is recorded and the message is not sent
//! again after the restart.
//!
//! * A next hop that takes the TCP connection and never greets (a listener
//!   that never answers) no longer holds the shutdown for the whole grace
//!   period (30 s by default): the process exits 0 within seconds and the
//!   message is still queued afterwards, not yet attempted.
//! * smtp-sink delaying its reply to the end of DATA (`-W .:3`): the process
//!   waits for the reply, records the delivery and exits 0; the sink has the
//!   message once and the queue is empty after the restart.

mod common;

use std::net::TcpListener;
use std::time::{Duration, Instant};

use common::peers::*;
use common::*;

const WAIT: Duration = Duration::from_secs(30);

/// A server relaying everything to `port` with the default grace period.
fn server(port: u16) -> Server {
    Server::start(&relay_all_to(port))
}

/// `text` without the terminal's colour codes around log fields.
fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// SIGTERM; asserts exit status 0 and returns how long the exit took.
fn terminate_timed(server: &mut Server) -> Duration {
    let t0 = Instant::now();
    let status = server.terminate();
    let took = t0.elapsed();
    assert!(
        status.success(),
        "exit status {status}:\n{}",
        server.log_text()
    );
    took
}

fn send(server: &Server) -> String {
    let mut c = server.client();
    c.ehlo();
    let id = queued_id(&c.send_message(
        "sender@example.org",
        &["user@remote.test"],
        b"Subject: in flight at shutdown\r\n\r\nbody\r\n",
    ));
    c.cmd("QUIT");
    id
}

#[test]
fn sigterm_does_not_wait_for_a_next_hop_that_never_greets() {
    // A real TCP peer that accepts and then says nothing.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let mut server = server(port);
    let id = send(&server);
    // The delivery is in flight once the connection was accepted.
    silent.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + WAIT;
    let _held = loop {
        match silent.accept() {
            Ok((s, _)) => break s,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("no delivery attempt reached the silent hop: {e}"),
        }
    };
    let took = terminate_timed(&mut server);
    assert!(
        took < Duration::from_secs(10),
        "SIGTERM waited {took:?} for a delivery that had not sent anything \
         (the grace period is 30 s):\n{}",
        server.log_text()
    );
    assert!(
        plain(&server.log_text()).contains("abandoned=1 waiting=0"),
        "the log should count the abandoned delivery:\n{}",
        server.log_text()
    );

    // Nothing lost, nothing counted: still queued, never attempted.
    server.spawn();
    let m = server.show(&id).expect("the message is still queued");
    assert_eq!(m["recipients"][0]["attempts"], 0, "{m}");
    server.terminate();
}

#[test]
fn sigterm_waits_for_a_delivery_past_the_end_of_data() {
    let sink = SmtpSink::start(&["-W", ".:3"]);
    let mut server = server(sink.port);
    let id = send(&server);
    // The end of DATA has gone out once smtp-sink dumped the message; it
    // holds its reply for 3 s, so the outcome is not recorded yet.
    sink.wait_dumped(1, WAIT);
    assert!(
        server.show(&id).is_some(),
        "the delivery ended early; the test needs the reply held"
    );
    let took = terminate_timed(&mut server);
    assert!(
        took >= Duration::from_millis(500),
        "exited after {took:?}: it did not wait for the reply to the end of DATA:\n{}",
        server.log_text()
    );
    let got = sink.wait_dumped(1, WAIT);
    assert_eq!(got.len(), 1);

    // The outcome was recorded before the exit: nothing is sent again.
    server.spawn();
    assert!(server.show(&id).is_none(), "{:?}", server.show(&id));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(sink.dumped().len(), 1, "the message was delivered twice");
    server.terminate();
}
