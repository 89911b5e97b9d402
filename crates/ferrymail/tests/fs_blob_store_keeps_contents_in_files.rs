//! `[storage] blob` naming a `type = "fs"` store, through the real
//! `ferrymail serve`, with the queue in the embedded store and in
//! PostgreSQL:
//!
//! * mail accepted over SMTP is held (`queue hold`) while its contents are
//!   exactly one file under the store's `path`, named by the queue id,
//!   holding what the management API serves and what the client sent
//!   behind Ferrymail's Received header (and, with PostgreSQL, nothing in
//!   its `blob` table);
//! * a message acknowledged with 250 right before `kill -9` is still queued
//!   after the restart, and its contents file is still there;
//! * once released and flushed, both reach Postfix's smtp-sink byte for
//!   byte as stored, and their files are gone afterwards;
//! * that restart swept the path: a contents file no message refers to,
//!   two hours old, was removed (and the log says so); a young one was kept.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::peers::*;
use common::pg::*;
use common::*;

const WAIT: Duration = Duration::from_secs(30);

/// Starts `ferrymail serve` in a directory of its own with the base
/// configuration's `[storage]` replaced by `stores` (which must put the
/// contents in `[store.files]`, an fs store at `<dir>/blobs`); returns the
/// server and the blob path.
fn start(relay: u16, stores: impl Fn(&Path) -> String) -> (Server, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let blobs = dir.path().join("blobs");
    let edit = |base: String| with_storage(base, &stores(&blobs));
    let mut s = Server::configured(dir, edit, &relay_all_to(relay));
    s.spawn_in_dir();
    (s, blobs)
}

fn body(subject: &str) -> Vec<u8> {
    format!(
        "From: <sender@origin.test>\r\nTo: <rcpt@far.test>\r\nSubject: {subject}\r\n\r\n\
         Kept in a file of its own.\r\n.a line starting with a dot\r\n\tand a tab\r\n"
    )
    .into_bytes()
}

fn send(server: &Server, to: &str, body: &[u8]) -> String {
    let mut c = server.client();
    c.ehlo();
    let id = queued_id(&c.send_message("sender@origin.test", &[to], body));
    c.cmd("QUIT");
    id
}

fn ok(out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "exit {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The scenario of the module docs. `while_held` looks at the data store
/// while the first message is held.
fn contents_live_in_files(mut server: Server, blobs: &Path, relay: u16, while_held: impl Fn(&str)) {
    // Accepted, attempted once (the relay is down), then held.
    let first_body = body("first");
    let first = send(&server, "one@far.test", &first_body);
    server.wait_attempted(&first, WAIT);
    assert!(ok(server.cli(&["queue", "hold", &first])).contains("hold: 1 recipient(s)"));

    // One file under the path, named by the id, holding the contents.
    let files = files_under(blobs);
    assert_eq!(files.len(), 1, "one file for one message: {files:?}");
    assert_eq!(names_under(blobs), vec![first.clone()]);
    let first_stored = std::fs::read(&files[0]).unwrap();
    assert_eq!(
        first_stored,
        server.contents(&first),
        "the file is what the server serves"
    );
    assert_eq!(
        strip_received(&first_stored),
        &first_body[..],
        "{}",
        describe_diff(&first_body, strip_received(&first_stored))
    );
    while_held(&first);

    // Two orphans, as a crash between contents and envelope leaves them:
    // one two hours old, one just written (it could be a message another
    // node is accepting right now).
    let old_orphan = blobs.join("00").join("00000000000000aa");
    let young_orphan = blobs.join("01").join("00000000000000bb");
    std::fs::write(&old_orphan, b"Subject: orphan\r\n\r\n").unwrap();
    std::fs::write(&young_orphan, b"Subject: orphan\r\n\r\n").unwrap();
    std::fs::File::options()
        .write(true)
        .open(&old_orphan)
        .unwrap()
        .set_modified(std::time::SystemTime::now() - Duration::from_secs(2 * 3600))
        .unwrap();

    // Acknowledged, then SIGKILL at once: nothing is flushed on the way out.
    let second_body = body("second");
    let second = send(&server, "two@far.test", &second_body);
    server.kill9();
    server.spawn_in_dir();

    // The start swept the old orphan only, and said so.
    let sweeps = |server: &Server| -> Vec<String> {
        strip_ansi(&server.log_text())
            .lines()
            .filter(|l| l.contains("fs blob store: swept orphaned contents"))
            .map(str::to_string)
            .collect()
    };
    let swept = wait_for(
        WAIT,
        "the second start's orphan sweep",
        || server.log_text(),
        || Some(sweeps(&server)).filter(|s| s.len() == 2),
    );
    assert!(swept[0].contains("removed=0"), "{swept:?}");
    // Young: the two messages' own files (never looked up) and the orphan.
    assert!(
        swept[1].contains("removed=1") && swept[1].contains("younger_than_min_age=3"),
        "{swept:?}"
    );
    assert!(!old_orphan.exists(), "the old orphan was removed");
    assert!(young_orphan.exists(), "the young one was kept");
    std::fs::remove_file(&young_orphan).unwrap();

    let mut ids = queue_ids(&server.queue_json());
    ids.sort();
    let mut want = vec![first.clone(), second.clone()];
    want.sort();
    assert_eq!(ids, want, "both acknowledged messages survived kill -9");
    assert_eq!(names_under(blobs), want, "and so did both files");
    let second_stored = server.contents(&second);
    assert_eq!(strip_received(&second_stored), &second_body[..]);
    assert_eq!(server.contents(&first), first_stored);

    // The relay comes up; release and flush: both delivered as stored.
    let sink = SmtpSink::start_on(relay, &[]);
    ok(server.cli(&["queue", "release", "--all"]));
    // The scheduler re-reads released entries from the store in the
    // background, so a flush right after the release may come before it
    // knows (seen with PostgreSQL): flush until both are gone.
    wait_for(
        WAIT,
        "both messages to leave the queue",
        || format!("{}\n{}", server.queue_json(), server.log_text()),
        || {
            ok(server.cli(&["queue", "flush"]));
            std::thread::sleep(Duration::from_millis(200));
            (server.show(&first).is_none() && server.show(&second).is_none()).then_some(())
        },
    );
    let dumped = sink.wait_dumped(2, WAIT);
    for (to, stored) in [
        ("<one@far.test>", &first_stored),
        ("<two@far.test>", &second_stored),
    ] {
        let d = dumped
            .iter()
            .find(|d| d.rcpt_args == [to])
            .unwrap_or_else(|| panic!("nothing for {to}: {dumped:?}"));
        // smtp-sink's dump shows CRLF as LF; otherwise byte for byte.
        assert_eq!(
            String::from_utf8_lossy(&d.body),
            String::from_utf8_lossy(&as_dumped(stored)),
            "contents for {to} changed between the file and the next hop"
        );
    }

    // Delivered: the files go (after the store's short grace).
    wait_for(
        WAIT,
        "the contents files to be removed",
        || format!("{:?}\n{}", files_under(blobs), server.log_text()),
        || files_under(blobs).is_empty().then_some(()),
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(sink.dumped().len(), 2, "each message once");
}

#[test]
fn contents_in_files_with_the_embedded_queue() {
    let relay = free_port(); // nothing listens yet: attempts fail with 4xx
    let (server, blobs) = start(relay, |blobs| {
        format!(
            "{}[storage]\ndata = \"local\"\nblob = \"files\"\n",
            fs_store(blobs)
        )
    });
    let data = server.dir.path().join("data");
    contents_live_in_files(server, &blobs, relay, |_| {
        assert!(
            data.join("spool").is_dir(),
            "the queue is in the embedded store"
        );
    });
}

#[test]
fn contents_in_files_with_a_postgresql_queue() {
    let db = TestDb::create();
    let relay = free_port();
    let url = db.url.clone();
    let (server, blobs) = start(relay, |blobs| {
        format!(
            "[store.pg]\ntype = \"postgresql\"\nurl = \"{url}\"\npool-size = 4\n\n{}\
             [storage]\ndata = \"pg\"\nblob = \"files\"\n",
            fs_store(blobs)
        )
    });
    contents_live_in_files(server, &blobs, relay, |_| {
        assert_eq!(db.sql("SELECT count(*) FROM envelope"), "1");
        assert_eq!(db.sql("SELECT count(*) FROM entry"), "1");
        assert_eq!(
            db.sql("SELECT count(*) FROM blob"),
            "0",
            "the contents are not in PostgreSQL"
        );
    });
    for table in ["envelope", "entry", "blob"] {
        assert_eq!(db.sql(&format!("SELECT count(*) FROM {table}")), "0");
    }
}
