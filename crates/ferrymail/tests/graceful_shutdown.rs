//! Graceful shutdown on SIGTERM (INTERFACE.md: "exits 0 on SIGTERM/SIGINT after
//! a graceful drain"): a session in the middle of DATA may finish and gets its
//! 250, an idle session gets 421 4.3.2 and is closed, no new connection is
//! taken, the process exits 0, and the message is still queued after restart.

mod common;

use std::io::Read;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

/// Waits (bounded) until connecting to `addr` is refused.
fn wait_refused(addr: std::net::SocketAddr) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Err(_) => return true,
            Ok(mut s) => {
                // Accepted just before the listener closed: it may only say
                // 421 or nothing, never start a normal session.
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut buf = [0u8; 3];
                if s.read_exact(&mut buf).is_ok() && &buf == b"220" {
                    let mut rest = Vec::new();
                    let _ = s.read_to_end(&mut rest);
                    let rest = String::from_utf8_lossy(&rest);
                    assert!(
                        rest.contains("421"),
                        "a connection during shutdown was greeted and not closed: 220{rest}"
                    );
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn sigterm_drains_data_and_closes_idle_sessions() {
    let mut server = Server::start_default();
    let addr = server.smtp;

    // Session A: in the middle of DATA.
    let mut a = server.client();
    a.ehlo();
    assert!(a.cmd("MAIL FROM:<drain@example.org>").is(250, "2.1.0"));
    assert!(a.cmd("RCPT TO:<user@local.test>").is(250, "2.1.5"));
    assert_eq!(a.cmd("DATA").code, 354);
    let first = b"Subject: in flight\r\n\r\nfirst half\r\n";
    a.send_raw(first);

    // Session B: idle after EHLO.
    let mut b = server.client();
    b.ehlo();

    let (status, id) = std::thread::scope(|s| {
        let stopper = s.spawn(|| server.terminate());

        // B is told the service is going away, then closed.
        let r = b
            .try_read()
            .expect("idle session should get a 421 before close");
        assert!(r.is(421, "4.3.2"), "idle session at shutdown: {r:?}");
        assert!(b.try_read().is_none(), "idle session not closed after 421");

        // No new connections are taken while A finishes.
        assert!(
            wait_refused(addr),
            "the SMTP listener still accepts connections during shutdown"
        );

        // A finishes its message after the shutdown began and gets its 250.
        let second = b"second half, sent after SIGTERM\r\n";
        a.send_raw(second);
        a.send_raw(b".\r\n");
        let r = a.read();
        let id = queued_id(&r);
        // Then it is closed too (421 4.3.2, or just closed).
        match a.try_read() {
            None => {}
            Some(r) => {
                assert!(r.is(421, "4.3.2"), "after the drained transaction: {r:?}");
                assert!(a.try_read().is_none(), "session not closed after 421");
            }
        }
        (stopper.join().expect("terminate thread"), id)
    });
    assert!(
        status.success(),
        "ferrymail should exit 0 after SIGTERM, got {status}:\n{}",
        server.log_text()
    );

    // Restart on the same data: the drained message is there, intact.
    server.spawn();
    let list = server.queue_json();
    assert_eq!(queue_ids(&list), vec![id.clone()], "{list}");
    let stored = server.contents(&id);
    assert_eq!(
        strip_received(&stored),
        b"Subject: in flight\r\n\r\nfirst half\r\nsecond half, sent after SIGTERM\r\n"
    );
}

#[test]
fn sigterm_with_only_idle_sessions_exits_zero() {
    let mut server = Server::start_default();
    let mut clients: Vec<Smtp> = (0..3).map(|_| server.client()).collect();
    clients[1].ehlo();
    assert!(clients[2].cmd("MAIL FROM:<x@example.org>").code == 503);
    let status = std::thread::scope(|s| {
        let stopper = s.spawn(|| server.terminate());
        for (i, c) in clients.iter_mut().enumerate() {
            let r = c
                .try_read()
                .unwrap_or_else(|| panic!("client {i}: closed without 421"));
            assert!(r.is(421, "4.3.2"), "client {i}: {r:?}");
            assert!(r.text().contains("mx.ferry.test"), "{r:?}");
            assert!(c.try_read().is_none(), "client {i} not closed");
        }
        stopper.join().unwrap()
    });
    assert!(status.success(), "exit status {status}");
    assert!(
        server.log_text().contains("shutting down"),
        "{}",
        server.log_text()
    );
}

#[test]
fn session_stuck_in_data_is_cut_after_grace_period() {
    let mut server = Server::start_with_server_keys(
        "shutdown-timeout = \"1s\"",
        "[session.rcpt]\nlocal-domains = [\"local.test\"]\n",
    );
    let mut a = server.client();
    a.ehlo();
    assert!(a.cmd("MAIL FROM:<stuck@example.org>").is(250, "2.1.0"));
    assert!(a.cmd("RCPT TO:<user@local.test>").is(250, "2.1.5"));
    assert_eq!(a.cmd("DATA").code, 354);
    a.send_raw(b"Subject: never finished\r\n\r\npartial");
    // The client never sends the end marker; the grace period must not wait
    // for the data timeout.
    let status = server.terminate();
    assert!(
        status.success(),
        "exit status {status}:\n{}",
        server.log_text()
    );
    assert!(
        a.try_read().is_none_or(|r| r.code == 421),
        "no 250 for a partial message"
    );
    server.spawn();
    let list = server.queue_json();
    assert!(
        queue_ids(&list).is_empty(),
        "a message cut off by shutdown must not be queued: {list}"
    );
}

#[test]
fn sigint_is_graceful_too() {
    let mut server = Server::start_default();
    let mut c = server.client();
    c.ehlo();
    let id = queued_id(&c.send_message(
        "int@example.org",
        &["user@local.test"],
        b"Subject: before SIGINT\r\n\r\nx\r\n",
    ));
    let mut child = server.child.take().expect("running");
    let _ = std::process::Command::new("kill")
        .arg("-INT")
        .arg(child.id().to_string())
        .status();
    let r = c
        .try_read()
        .expect("idle session should get a 421 before close");
    assert!(r.is(421, "4.3.2"), "{r:?}");
    let deadline = Instant::now() + Duration::from_secs(40);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("ferrymail did not exit after SIGINT");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "exit status after SIGINT: {status}");
    server.spawn();
    assert_eq!(queue_ids(&server.queue_json()), vec![id]);
}
