//! `ferrymail reload` and SIGHUP (Postfix's `postfix reload`): an operator
//! changes the configuration file of a running server and puts it in force
//! without closing a listener or dropping a session. Through the real
//! `ferrymail serve`, two Postfix smtp-sinks and raw SMTP clients:
//!
//! * route `hop` moves from sink A to sink B. A connection to A sits idle in
//!   the delivery pool after the first message; the next message still
//!   reaches B, so a reload never reuses a connection opened under the old
//!   route;
//! * `max-message-size` shrinks: a new session refuses a message that a
//!   session opened before the reload still sends (sessions in progress
//!   keep the settings they started with);
//! * a file that does not pass `check` is refused with exit 2 and
//!   `file:line`, and the server keeps the configuration in force;
//! * SIGHUP reloads too;
//! * a changed listener is reported as taking effect at the next restart,
//!   and is not opened;
//! * `GET /metrics` says whether the last reload took, and counts them.

mod common;

use std::time::Duration;

use common::peers::*;
use common::*;

const WAIT: Duration = Duration::from_secs(30);

fn config(sink: u16, max_size: usize) -> String {
    format!(
        r#"[session.rcpt]
relay = "remote_ip == '127.0.0.1'"

[session.data]
max-message-size = {max_size}

[queue.schedule]
retry = "[1h]"

{route}
[queue.strategy]
route = "'hop'"
"#,
        route = relay_route("hop", sink, "smtp"),
    )
}

/// The server's config with the `extra` part rewritten: the base tables
/// (listeners, store) stay as they are.
fn rewrite(server: &Server, from: &str, to: &str) {
    let text = std::fs::read_to_string(&server.config).unwrap();
    let i = text.find(from).expect("the part to rewrite");
    let mut out = text[..i].to_string();
    out.push_str(to);
    std::fs::write(&server.config, out).unwrap();
}

/// The value of a metric line that starts with `name` (labels included).
fn metric(server: &Server, name: &str) -> f64 {
    let (status, body) = server.api_get("/metrics");
    assert_eq!(status, 200);
    let text = String::from_utf8_lossy(&body).to_string();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
        .parse()
        .unwrap()
}

fn send(c: &mut Smtp, subject: &str, pad: usize) -> Reply {
    let body = format!("Subject: {subject}\r\n\r\n{}\r\n", "x".repeat(pad));
    c.send_message("a@example.org", &["r@far.example"], body.as_bytes())
}

/// The subjects a sink received, sorted (its dump files are not in
/// arrival order).
fn subjects(sink: &SmtpSink) -> Vec<String> {
    let mut out: Vec<String> = sink
        .dumped()
        .iter()
        .filter_map(|d| {
            String::from_utf8_lossy(&d.body)
                .lines()
                .find_map(|l| l.strip_prefix("Subject: ").map(str::to_string))
        })
        .collect();
    out.sort();
    out
}

#[test]
fn reload_moves_routes_and_limits_for_new_work_only() {
    let a = SmtpSink::start(&[]);
    let b = SmtpSink::start(&[]);
    let v1 = config(a.port, 100_000);
    let mut server = Server::start(&v1);

    // First message over route `hop` to A; its connection stays pooled.
    let mut c = server.client();
    c.ehlo();
    let r = send(&mut c, "one", 10);
    assert!(r.is(250, "2.0.0"), "{r:?}");
    c.cmd("QUIT");
    a.wait_dumped(1, WAIT);

    // A session opened before the reload, with EHLO done.
    let mut before = server.client();
    before.ehlo();

    rewrite(&server, "[session.rcpt]", &config(b.port, 2_000));
    let out = server.cli(&["reload"]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("reloaded"),
        "{out:?}"
    );

    // New sessions: the new size limit, and the route now leads to B.
    let mut c = server.client();
    let ehlo = c.ehlo();
    assert!(ehlo.lines.iter().any(|l| l == "250-SIZE 2000"), "{ehlo:?}");
    let r = send(&mut c, "too big now", 5_000);
    assert!(r.is(552, "5.3.4"), "{r:?}");
    c.cmd("RSET");
    let r = send(&mut c, "two", 10);
    assert!(r.is(250, "2.0.0"), "{r:?}");
    c.cmd("QUIT");
    b.wait_dumped(1, WAIT);
    assert_eq!(subjects(&b), ["two"]);

    // The session from before keeps the limit it started with.
    let r = send(&mut before, "old session", 5_000);
    assert!(r.is(250, "2.0.0"), "{r:?}");
    before.cmd("QUIT");
    b.wait_dumped(2, WAIT);
    assert_eq!(subjects(&a), ["one"], "nothing more reached A");

    // A file that does not pass: exit 2 with file and line; nothing changes.
    let good = std::fs::read_to_string(&server.config).unwrap();
    std::fs::write(
        &server.config,
        good.replace("retry = \"[1h]\"", "retry = \"[1h\""),
    )
    .unwrap();
    let out = server.cli(&["reload"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{}:", server.config.display())) && err.contains("retry"),
        "{err}"
    );
    let mut c = server.client();
    let ehlo = c.ehlo();
    assert!(ehlo.lines.iter().any(|l| l == "250-SIZE 2000"), "{ehlo:?}");
    c.cmd("QUIT");
    // The command checked the file itself and never asked the server;
    // SIGHUP makes the server read it, refuse it and say so.
    server.hangup("SIGHUP: configuration not reloaded", 1);
    assert_eq!(
        metric(&server, "ferrymail_config_last_reload_successful"),
        0.0
    );
    assert_eq!(
        metric(
            &server,
            "ferrymail_config_reloads_total{result=\"failure\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &server,
            "ferrymail_config_reloads_total{result=\"success\"}"
        ),
        1.0
    );

    // SIGHUP: back to A.
    std::fs::write(&server.config, &good).unwrap();
    rewrite(&server, "[session.rcpt]", &config(a.port, 100_000));
    server.hangup("configuration reloaded", 2);
    let mut c = server.client();
    c.ehlo();
    let r = send(&mut c, "three", 5_000);
    assert!(r.is(250, "2.0.0"), "{r:?}");
    c.cmd("QUIT");
    a.wait_dumped(2, WAIT);
    assert_eq!(subjects(&a), ["one", "three"]);
    assert_eq!(
        metric(&server, "ferrymail_config_last_reload_successful"),
        1.0
    );

    // A new listener needs a restart: reported, and not opened.
    let extra = free_port();
    let text = std::fs::read_to_string(&server.config).unwrap();
    std::fs::write(
        &server.config,
        text.replace(
            "[server.listener.management]",
            &format!(
                "[server.listener.extra]\nbind = [\"127.0.0.1:{extra}\"]\nprotocol = \"smtp\"\n\n[server.listener.management]"
            ),
        ),
    )
    .unwrap();
    let out = server.cli(&["reload"]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("server.listener changed"),
        "{out:?}"
    );
    assert!(std::net::TcpStream::connect(("127.0.0.1", extra)).is_err());

    assert_eq!(server.terminate().code(), Some(0));
}
