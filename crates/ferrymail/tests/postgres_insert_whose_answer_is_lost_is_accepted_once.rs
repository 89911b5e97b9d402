//! An insert that committed in PostgreSQL, whose answer never came back,
//! still gets the client its 250, keeps the contents, and the message is
//! delivered once.
//!
//! Between `ferrymail serve` and the real PostgreSQL 15 that `scripts/test`
//! starts sits `tests/python/pg_answer_cutter.py`, a TCP proxy that reads
//! the protocol and closes the connection on the first answer after the
//! message insert's Sync: the server has committed, the client sees its
//! connection die. (The proxy is the one stand-in here: no real network
//! part fails on cue. Everything else is real: PostgreSQL, the SMTP client
//! and Postfix's smtp-sink as the next hop.)
//!
//! Before Ferrymail read the envelope back after a failed insert, the
//! client was told 451 for a message that was in the queue: with the
//! contents in PostgreSQL it was then sent twice (once queued, once
//! retried); with the contents in an `fs` store they were deleted under a
//! committed entry, and the queued copy could never be delivered.

mod common;

use std::time::Duration;

use common::peers::*;
use common::pg::*;
use common::*;
use serde_json::json;

/// The proxy in front of the test server, cutting the first message
/// insert's answer; returns it, its URL for `db`, and the file it writes
/// "cut" to when it has cut.
fn cutter(db: &TestDb) -> (Proc, String, tempfile::TempDir) {
    let upstream = db
        .url
        .split("@")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .expect("URL of the form postgresql://user@host:port/db")
        .to_string();
    let (host, port) = upstream.rsplit_once(':').unwrap();
    let listen = free_port();
    let dir = tempfile::tempdir().unwrap();
    let proc = python_peer(
        "pg_answer_cutter.py",
        &json!({
            "port": listen,
            "upstream_host": host,
            "upstream_port": port.parse::<u16>().unwrap(),
            "marker": "INSERT INTO envelope",
            "log": dir.path().join("cuts"),
        }),
    );
    let url = db
        .url
        .replacen(&upstream, &format!("127.0.0.1:{listen}"), 1);
    (proc, url, dir)
}

fn send_one(server: &Server, subject: &str) {
    let mut c = server.client();
    c.ehlo();
    assert_eq!(c.cmd("MAIL FROM:<s@example.org>").code, 250);
    assert_eq!(c.cmd("RCPT TO:<user@remote.test>").code, 250);
    assert_eq!(c.cmd("DATA").code, 354);
    c.send_raw(format!("Subject: {subject}\r\n\r\nbody\r\n.\r\n").as_bytes());
    let r = c.read();
    assert!(
        r.is(250, "2.0.0"),
        "the message is in the queue, so the client must hear 250: {r:?}\n{}",
        server.log_text()
    );
}

/// What both store layouts must show after the cut insert.
fn accepted_once(server: &Server, sink: &SmtpSink, db: &TestDb, cuts: &tempfile::TempDir) {
    send_one(server, "answer lost");
    assert_eq!(
        std::fs::read_to_string(cuts.path().join("cuts")).unwrap_or_default(),
        "cut\n",
        "the proxy cut the insert's answer"
    );
    sink.wait_dumped(1, Duration::from_secs(30));
    assert!(
        server
            .log_text()
            .contains("spool insert reported an error but committed"),
        "{}",
        server.log_text()
    );
    // The connection that died is replaced: the next message goes through.
    send_one(server, "next");
    let got = sink.wait_dumped(2, Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(sink.dumped().len(), 2, "each message delivered once");
    for subject in ["answer lost", "next"] {
        let with = |d: &&Dumped| {
            String::from_utf8_lossy(&d.body).contains(&format!("Subject: {subject}\n"))
        };
        assert_eq!(got.iter().filter(with).count(), 1, "{subject}: {got:?}");
    }
    wait_for(
        Duration::from_secs(30),
        "an empty queue",
        || server.log_text(),
        || (db.sql("SELECT count(*) FROM envelope") == "0").then_some(()),
    );
}

#[test]
fn contents_in_postgresql() {
    let db = TestDb::create();
    let sink = SmtpSink::start(&[]);
    let (_proxy, url, cuts) = cutter(&db);
    let server = Server::start_pg_url(&url, "", &relay_all_to(sink.port));
    accepted_once(&server, &sink, &db, &cuts);
}

#[test]
fn contents_in_an_fs_store() {
    let db = TestDb::create();
    let sink = SmtpSink::start(&[]);
    let (_proxy, url, cuts) = cutter(&db);
    let dir = tempfile::tempdir().unwrap();
    let blobs = dir.path().join("blobs");
    let edit = |base: String| {
        let text = base.replacen(
            "[storage]\ndata = \"local\"\nblob = \"local\"\n",
            &format!(
                "[store.pg]\ntype = \"postgresql\"\nurl = \"{url}\"\npool-size = 4\n\n\
                 [store.files]\ntype = \"fs\"\npath = \"{}\"\n\n\
                 [storage]\ndata = \"pg\"\nblob = \"files\"\n",
                blobs.display()
            ),
            1,
        );
        assert!(
            text.contains("blob = \"files\""),
            "base config changed shape"
        );
        text
    };
    let mut server = Server::configured(dir, edit, &relay_all_to(sink.port));
    server.spawn_in_dir();
    accepted_once(&server, &sink, &db, &cuts);
}
