//! logrotate moves `[queue.outbound] delivery-log` away and sends SIGHUP
//! (`postrotate`); the reload reopens the log at its configured path, so
//! the lines that follow go to the new file, not to the moved one; also
//! when the reload itself is refused (the file mid-edit). Through the real
//! `ferrymail serve` and Postfix's smtp-sink.

mod common;

use std::time::Duration;

use common::peers::*;
use common::*;

const WAIT: Duration = Duration::from_secs(30);

fn send(server: &Server, subject: &str) {
    let mut c = server.client();
    c.ehlo();
    let r = c.send_message(
        "app@example.org",
        &["r@far.example"],
        format!("Subject: {subject}\r\n\r\nbody\r\n").as_bytes(),
    );
    assert!(r.is(250, "2.0.0"), "{r:?}");
    c.cmd("QUIT");
}

fn lines(path: &std::path::Path) -> usize {
    std::fs::read_to_string(path)
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

#[test]
fn sighup_reopens_the_delivery_log() {
    let sink = SmtpSink::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("delivery.log");
    let rotated = dir.path().join("delivery.log.1");
    let server = Server::start_in(
        dir,
        &format!(
            "{}\n[queue.outbound]\ndelivery-log = \"{}\"\n",
            relay_all_to(sink.port),
            log.display()
        ),
    );
    send(&server, "before");
    sink.wait_dumped(1, WAIT);
    wait_for(WAIT, "the first log line", String::new, || {
        (lines(&log) == 1).then_some(())
    });

    std::fs::rename(&log, &rotated).unwrap();
    server.hangup("configuration reloaded", 1);

    send(&server, "after");
    sink.wait_dumped(2, WAIT);
    wait_for(WAIT, "a line in the new log", String::new, || {
        (lines(&log) == 1).then_some(())
    });
    assert_eq!(lines(&rotated), 1, "the moved file got nothing more");

    // logrotate again, while the configuration file is mid-edit: the
    // reload is refused, the log is opened again all the same.
    let rotated2 = server.dir.path().join("delivery.log.2");
    std::fs::rename(&log, &rotated2).unwrap();
    let good = std::fs::read_to_string(&server.config).unwrap();
    std::fs::write(
        &server.config,
        format!(
            "{good}
[queue.outbound
"
        ),
    )
    .unwrap();
    server.hangup("delivery log opened again", 1);
    send(&server, "while broken");
    sink.wait_dumped(3, WAIT);
    wait_for(WAIT, "a line in the log reopened", String::new, || {
        (lines(&log) == 1).then_some(())
    });
    assert_eq!(lines(&rotated2), 1, "the moved file got nothing more");
}
