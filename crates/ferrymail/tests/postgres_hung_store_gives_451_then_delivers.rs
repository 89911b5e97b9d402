//! A store that hangs does not hold the client past `session.timeout.
//! data-end`, and the message is not stranded when the store comes back.
//!
//! Ferrymail keeps its queue in the real PostgreSQL 15 that `scripts/test`
//! starts. A psql session takes `LOCK TABLE envelope IN ACCESS EXCLUSIVE
//! MODE` and holds it: the database accepts connections but the insert of
//! a new message waits, as behind a hung disk or a stuck migration. With
//! `data-end = "2s"` the client gets 451 4.3.0 after about two seconds
//! (RFC 5321 §4.5.3.2.6: a client waits 10 minutes at most). When the lock
//! is released the insert completes; the message is then scheduled and
//! delivered to Postfix's smtp-sink like any other, and the log says it
//! may arrive twice (the client was told to try again).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::peers::*;
use common::pg::*;
use common::*;

#[test]
fn hung_store_gives_451_in_time_and_the_message_is_delivered_later() {
    let db = TestDb::create();
    let sink = SmtpSink::start(&[]);
    let server = Server::start_pg(
        &db,
        "",
        &format!(
            "[session.rcpt]\nlocal-domains = [\"local.test\"]\n\n\
             [session.timeout]\ndata-end = \"2s\"\n\n{route}\n\
             [queue.strategy]\nroute = \"'sink'\"\n",
            route = relay_route("sink", sink.port, "smtp"),
        ),
    );

    // A session holding the lock, until told to commit.
    let bin = std::env::var("FERRYMAIL_TEST_PG_BIN")
        .unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".to_string());
    let mut locker = Command::new(format!("{bin}/psql"))
        .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", &db.url])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("psql");
    let mut to_psql = locker.stdin.take().unwrap();
    to_psql
        .write_all(b"BEGIN;\nLOCK TABLE envelope IN ACCESS EXCLUSIVE MODE;\nSELECT 'locked';\n")
        .unwrap();
    let mut from_psql = BufReader::new(locker.stdout.take().unwrap());
    let mut line = String::new();
    while !line.contains("locked") {
        line.clear();
        assert!(from_psql.read_line(&mut line).unwrap() > 0, "psql ended");
    }

    let mut c = server.client();
    c.ehlo();
    assert_eq!(c.cmd("MAIL FROM:<s@example.org>").code, 250);
    assert_eq!(c.cmd("RCPT TO:<user@local.test>").code, 250);
    assert_eq!(c.cmd("DATA").code, 354);
    let started = Instant::now();
    c.send_raw(b"Subject: behind a lock\r\n\r\nbody\r\n.\r\n");
    let r = c.read();
    let waited = started.elapsed();
    assert!(r.is(451, "4.3.0"), "{r:?}");
    assert!(
        waited >= Duration::from_millis(1500) && waited < Duration::from_secs(15),
        "answered after {waited:?}, not after data-end (2 s)"
    );
    assert!(sink.dumped().is_empty());

    // The lock goes; the insert that waited for it completes.
    to_psql.write_all(b"COMMIT;\n\\q\n").unwrap();
    drop(to_psql);
    let _ = locker.wait();
    let got = sink.wait_dumped(1, Duration::from_secs(30));
    let body = String::from_utf8_lossy(&got[0].body).into_owned();
    assert!(body.contains("Subject: behind a lock"), "{body}");
    let log = server.log_text();
    assert!(
        log.contains("the spool did not make the message durable in time"),
        "{log}"
    );
    assert!(
        log.contains("made durable after the client was told 451"),
        "{log}"
    );
}
