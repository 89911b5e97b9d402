//! `[server] max-connections-per-ip` and `max-connections`: a connection over
//! the limit gets `421 4.7.0` and is closed, the connections holding the slots
//! keep working, a refused connection does not use up a slot, and a slot freed by
//! a closed session is given to the next client.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// Connects and expects the limit's 421 4.7.0 as the greeting, then close.
fn expect_refused(server: &Server, what: &str) {
    let mut c = Smtp::connect_raw(server.smtp);
    let r = c
        .try_read()
        .unwrap_or_else(|| panic!("{what}: closed without a reply"));
    assert!(r.is(421, "4.7.0"), "{what}: {r:?}");
    assert!(c.try_read().is_none(), "{what}: not closed after 421");
}

/// Connects until the greeting is 220 (a closed session frees its slot a moment
/// after the client sees the close); bounded.
fn connect_when_free(server: &Server) -> Smtp {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut c = Smtp::connect_raw(server.smtp);
        match c.try_read() {
            Some(r) if r.code == 220 => return c,
            Some(r) if r.is(421, "4.7.0") => {}
            other => panic!("unexpected greeting {other:?}"),
        }
        assert!(
            Instant::now() < deadline,
            "the slot of a closed session was never freed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn works(c: &mut Smtp, n: usize) {
    c.ehlo();
    let r = c.send_message(
        &format!("conn{n}@example.org"),
        &["user@local.test"],
        format!("Subject: conn {n}\r\n\r\nbody\r\n").as_bytes(),
    );
    assert_eq!(r.code, 250, "connection {n}: {r:?}");
}

#[test]
fn per_ip_limit() {
    let server = Server::start_with_server_keys(
        "max-connections-per-ip = 2",
        "[session.rcpt]\nlocal-domains = [\"local.test\"]\n",
    );
    // (The fixture's readiness probe may still hold a slot for a moment.)
    let mut c1 = connect_when_free(&server);
    let mut c2 = connect_when_free(&server);
    expect_refused(&server, "third connection from one IP");
    expect_refused(&server, "fourth connection from one IP");
    // The two admitted sessions are unaffected.
    works(&mut c1, 1);
    works(&mut c2, 2);
    // The management listener is not subject to the SMTP limit.
    assert_eq!(queue_ids(&server.queue_json()).len(), 2);

    // Free one slot: a new connection is accepted and works.
    assert!(c1.cmd("QUIT").is(221, "2.0.0"));
    assert!(c1.try_read().is_none());
    drop(c1);
    let mut c3 = connect_when_free(&server);
    works(&mut c3, 3);
    // And the limit holds again.
    expect_refused(&server, "third connection after the reuse");
    works(&mut c2, 4);

    // A client closing abruptly (no QUIT) frees its slot too.
    drop(c3);
    let mut c5 = connect_when_free(&server);
    works(&mut c5, 5);
    assert_eq!(queue_ids(&server.queue_json()).len(), 5);
}

#[test]
fn global_limit() {
    let server = Server::start_with_server_keys(
        "max-connections = 3\nmax-connections-per-ip = 100",
        "[session.rcpt]\nlocal-domains = [\"local.test\"]\n",
    );
    let mut held: Vec<Smtp> = (0..3).map(|_| connect_when_free(&server)).collect();
    expect_refused(&server, "fourth connection over max-connections = 3");
    for (i, c) in held.iter_mut().enumerate() {
        works(c, i);
    }
    expect_refused(&server, "still full");
    let gone = held.remove(0);
    drop(gone);
    let mut c = connect_when_free(&server);
    works(&mut c, 9);
    expect_refused(&server, "full again");
}
