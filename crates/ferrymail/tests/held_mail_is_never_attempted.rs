//! Held messages are never attempted until released (issue 3), through the
//! real `ferrymail serve`.
//!
//! Holding mail before its first attempt would be a race, so the mail goes
//! first to a relay that is down, is held there, and then the relay comes
//! up. Every way of asking for delivery (`queue flush`, ETRN, `queue retry`,
//! a restart of the server) must leave held mail alone; a message that is
//! not held, for the same relay, shows that the requests did work. After
//! `queue release` (by id, then `--all`) and a flush, the mail is delivered.

mod common;

use std::time::Duration;

use common::peers::*;
use common::*;

const WAIT: Duration = Duration::from_secs(20);

fn ok(out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "exit {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn held_state(server: &Server, id: &str) -> (bool, u64) {
    let m = server
        .show(id)
        .unwrap_or_else(|| panic!("{id} left the queue"));
    let r = &m["recipients"][0];
    (
        r["held"].as_bool().unwrap(),
        r["attempts"].as_u64().unwrap(),
    )
}

#[test]
fn held_mail_waits_for_release() {
    let relay = free_port();
    let mut server = Server::start(&format!(
        r#"[session.rcpt]
relay = "remote_ip == '127.0.0.1'"

[queue.schedule]
retry = "[1h]"

{route}
[queue.strategy]
route = "'relay'"
"#,
        route = relay_route("relay", relay, "smtp"),
    ));

    let send = |to: &str| {
        let mut c = server.client();
        c.ehlo();
        let body = format!("Subject: to {to}\r\n\r\nfor {to}\r\n");
        let id = queued_id(&c.send_message("s@origin.test", &[to], body.as_bytes()));
        c.cmd("QUIT");
        id
    };
    let held1 = send("one@held.test");
    let held2 = send("two@held.test");
    let free = send("free@free.test");
    for id in [&held1, &held2, &free] {
        server.wait_deferred(id, WAIT);
    }

    // Hold one by id, and the other with a bulk selection.
    assert!(ok(server.cli(&["queue", "hold", &held1])).contains("hold: 1 recipient(s)"));
    let out = ok(server.cli(&["queue", "hold", "--rcpt-domain", "held.test"]));
    assert!(out.contains("hold: 2 recipient(s)"), "{out}");
    assert_eq!(held_state(&server, &held1), (true, 1));
    assert_eq!(held_state(&server, &held2), (true, 1));
    assert_eq!(held_state(&server, &free), (false, 1));

    // The relay comes up; every kind of request for delivery.
    let sink = SmtpSink::start_on(relay, &[]);
    ok(server.cli(&["queue", "flush"]));
    ok(server.cli(&["queue", "flush", "held.test"]));
    ok(server.cli(&["queue", "retry", &held1]));
    let mut c = server.client();
    c.ehlo();
    let r = c.cmd("ETRN held.test");
    assert!(
        r.is(251, "2.0.0"),
        "held mail is not pending for ETRN: {r:?}"
    );
    c.cmd("QUIT");

    // The message that is not held went out: the requests worked.
    server.wait_gone(&free, WAIT);
    let d = sink.wait_dumped(1, WAIT);
    assert_eq!(d[0].rcpt_args, ["<free@free.test>"]);

    // Restart: the held mail stays held after recovery, too.
    server.kill9();
    server.spawn();
    ok(server.cli(&["queue", "flush"]));

    // Give a wrongful attempt every chance to happen.
    std::thread::sleep(Duration::from_secs(2));
    ok(server.cli(&["queue", "flush"]));
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        sink.dumped().len(),
        1,
        "held mail was delivered: {:?}",
        sink.dumped()
    );
    assert_eq!(held_state(&server, &held1), (true, 1), "never attempted");
    assert_eq!(held_state(&server, &held2), (true, 1), "never attempted");

    // Release one by id: it goes at the next flush, the other stays.
    assert!(ok(server.cli(&["queue", "release", &held1])).contains("release: 1 recipient(s)"));
    ok(server.cli(&["queue", "flush"]));
    server.wait_gone(&held1, WAIT);
    let d = sink.wait_dumped(2, WAIT);
    assert!(
        d.iter().any(|d| d.rcpt_args == ["<one@held.test>"]),
        "{d:?}"
    );
    assert_eq!(held_state(&server, &held2), (true, 1));

    // Release everything.
    assert!(ok(server.cli(&["queue", "release", "--all"])).contains("release: 1 recipient(s)"));
    ok(server.cli(&["queue", "flush"]));
    server.wait_gone(&held2, WAIT);
    let d = sink.wait_dumped(3, WAIT);
    assert_eq!(d.len(), 3, "{d:?}");
    assert!(
        d.iter().any(|d| d.rcpt_args == ["<two@held.test>"]),
        "{d:?}"
    );
    server.wait_queue_empty(WAIT);
}
