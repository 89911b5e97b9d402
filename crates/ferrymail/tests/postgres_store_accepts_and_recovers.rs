//! `ferrymail serve` with its queue and contents in PostgreSQL
//! (`[storage] data = "pg"`, `blob = "pg"`, one store: unified):
//!
//! * mail accepted over SMTP is in the database (envelope, one entry per
//!   recipient, contents) and in `queue list`;
//! * after `kill -9` and a restart it is still queued, contents intact, and
//!   the node came back under the same generated node id (kept in
//!   `./data/node-id`, as no store is local), so it can take over its own
//!   leases at once;
//! * once the relay is up it is delivered, and the database is left empty.

mod common;

use std::time::Duration;

use common::peers::*;
use common::pg::*;
use common::*;

const WAIT: Duration = Duration::from_secs(30);

fn send(server: &Server, to: &[&str], subject: &str) -> String {
    let body = format!(
        "From: <sender@origin.test>\r\nSubject: {subject}\r\n\r\nStored in PostgreSQL.\r\n"
    );
    let mut c = server.client();
    c.ehlo();
    let id = queued_id(&c.send_message("sender@origin.test", to, body.as_bytes()));
    c.cmd("QUIT");
    id
}

#[test]
fn postgres_store_accepts_survives_kill9_and_delivers() {
    let db = TestDb::create();
    let relay = free_port(); // nothing listens yet: attempts fail with 4xx
    let mut s = Server::start_pg(&db, "", &relay_all_to(relay));

    let first = send(&s, &["r1@far.test", "r2@far.test"], "pg-first");
    assert_eq!(queue_ids(&s.queue_json()), vec![first.clone()]);
    assert_eq!(db.sql("SELECT count(*) FROM envelope"), "1");
    assert_eq!(db.sql("SELECT count(*) FROM entry"), "2");
    assert_eq!(db.sql("SELECT count(*) FROM blob"), "1");
    let attempted = s.wait_attempted(&first, WAIT);
    assert_eq!(attempted["recipients"][0]["attempts"], 1, "{attempted}");
    let stored = s.contents(&first);

    // One more, and the crash right after its 250: its first attempt may be
    // in flight, under this node's lease.
    let second = send(&s, &["r3@far.test"], "pg-second");
    s.kill9();
    s.spawn_in_dir();

    let mut ids = queue_ids(&s.queue_json());
    ids.sort();
    let mut want = vec![first.clone(), second.clone()];
    want.sort();
    assert_eq!(ids, want, "both acknowledged messages survived");
    assert_eq!(s.contents(&first), stored);
    let names = s.started_as();
    assert_eq!(names.len(), 2, "{}", s.log_text());
    assert_eq!(names[0], names[1], "same node id after the restart");
    let kept = std::fs::read_to_string(s.dir.path().join("data/node-id")).unwrap();
    assert_eq!(kept.trim(), names[0]);
    // The registry kept the node's name and its message-id tag, and both
    // messages carry that tag (bits 12..22 of the id).
    assert_eq!(db.sql("SELECT name FROM node"), names[0]);
    let tag: u64 = db.sql("SELECT tag FROM node").parse().unwrap();
    for id in [&first, &second] {
        let id = u64::from_str_radix(id, 16).unwrap();
        assert_eq!((id >> 12) & 0x3ff, tag, "{id:016x}");
    }

    let sink = SmtpSink::start_on(relay, &[]);
    let out = s.cli(&["queue", "flush"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    s.wait_gone(&first, WAIT);
    s.wait_gone(&second, WAIT);
    let dumped = sink.wait_dumped(2, WAIT);
    let first_d = dumped
        .iter()
        .find(|d| d.rcpt_args == ["<r1@far.test>", "<r2@far.test>"])
        .unwrap_or_else(|| panic!("first message not delivered: {dumped:?}"));
    assert!(
        String::from_utf8_lossy(&first_d.body)
            .contains("Subject: pg-first\n\nStored in PostgreSQL.\n"),
        "{first_d:?}"
    );
    assert!(dumped.iter().any(|d| d.rcpt_args == ["<r3@far.test>"]));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(sink.dumped().len(), 2, "each message once");

    for table in ["envelope", "entry", "blob"] {
        assert_eq!(
            db.sql(&format!("SELECT count(*) FROM {table}")),
            "0",
            "{table} is empty once everything is delivered"
        );
    }
}
