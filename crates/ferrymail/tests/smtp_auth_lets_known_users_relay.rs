//! SMTP AUTH (RFC 4954) with PLAIN (RFC 4616) and LOGIN, against a
//! `[directory.<id>]` of type `memory` whose secrets are a SHA-512-crypt
//! hash and a plain password. Relaying is allowed only when authenticated
//! (`relay = "!is_empty(authenticated_as)"`).
//!
//! * Two independent clients, Python's smtplib and swaks, log in over
//!   STARTTLS with each mechanism and relay; the queued message records who
//!   (`authenticated_as`) and its Received header says `ESMTPSA` (RFC 3848).
//! * AUTH is not offered before TLS, and AUTH there gets 538 5.7.11.
//! * A wrong password gets 535 5.7.8 and no relaying (554 5.7.1); the
//!   third failure closes the session with 421; after `errors.per-ip`
//!   failures, AUTH from that address gets 454 4.7.0, in new sessions too.
//! * `require = true`: MAIL before AUTH gets 530 5.7.0.
//! * A user sends only as its own addresses (`must-match-sender`, on by
//!   default): another user's address gets 553 5.7.1; case does not
//!   matter; the null sender is allowed; switched off, anything goes.
//! * Protocol edges by hand (with `allow-plain-text`, so a raw client can
//!   walk them): an unknown mechanism is 504 5.5.4, `*` cancels with 501,
//!   bad base64 is 501 5.5.2, a second AUTH is 503, and AUTH in a mail
//!   transaction is 503.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

/// `mkpasswd`-style SHA-512-crypt of "carol-pw" (glibc crypt(3)).
const CAROL_HASH: &str = "$6$ferrysalt$IIbtfN946G3zhHWINkCgmRCMfv/GwotAuQJzKd4uUE1DenbQO70vbsLwbzZi.edMNBXKI4p01DUY3UU6OKNfM0";

fn config(extra_auth: &str) -> String {
    format!(
        r#"[session.rcpt]
local-domains = ["local.test"]
relay = "!is_empty(authenticated_as)"

[session.auth]
directory = "'users'"
mechanisms = ["plain", "login"]
{extra_auth}

[session.auth.errors]
total = 3
wait = "50ms"

[directory.users]
type = "memory"

[[directory.users.principals]]
name = "alice"
secret = "alice-pw"
email = ["alice@example.org"]

[[directory.users.principals]]
name = "carol"
secret = "{CAROL_HASH}"
email = ["carol@example.org", "postmaster@example.org"]
"#
    )
}

fn smtplib(server: &Server, mechanism: &str, user: &str, password: &str) -> serde_json::Value {
    require("python3");
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/smtp_auth_client.py");
    let out = run_bounded(
        Command::new("python3").arg(script).args([
            &server.smtp.port().to_string(),
            mechanism,
            user,
            password,
        ]),
        Duration::from_secs(60),
    );
    assert!(
        out.status.success(),
        "smtplib client: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        server.log_text()
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The queued message whose subject is `subject`.
fn queued_with_subject(server: &Server, subject: &str) -> serde_json::Value {
    for id in queue_ids(&server.queue_json()) {
        let contents = String::from_utf8_lossy(&server.contents(&id)).into_owned();
        if contents.contains(&format!("Subject: {subject}")) {
            let (status, body) = server.api_get(&format!("/api/queue/messages/{id}"));
            assert_eq!(status, 200);
            let mut m: serde_json::Value = serde_json::from_slice(&body).unwrap();
            m["contents"] = serde_json::Value::String(contents);
            return m;
        }
    }
    panic!("no queued message with subject {subject}");
}

#[test]
fn smtplib_and_swaks_log_in_over_starttls_and_relay() {
    let server = Server::start(&config(""));
    for (mechanism, user, password) in [
        ("PLAIN", "alice", "alice-pw"),
        ("LOGIN", "carol", "carol-pw"),
    ] {
        let r = smtplib(&server, mechanism, user, password);
        assert_eq!(r["auth_before_tls"], serde_json::Value::Null, "{r}");
        assert_eq!(r["auth_after_tls"], "PLAIN LOGIN", "{r}");
        assert_eq!(r["auth"][0], 235, "{mechanism}: {r}");
        assert_eq!(r["send"][0], 250, "{mechanism}: {r}");
        let m = queued_with_subject(&server, &format!("via smtplib {mechanism}"));
        let contents = m["contents"].as_str().unwrap();
        assert!(contents.contains("with ESMTPSA"), "{contents}");
        // RFC 8601 §2.7.4, for filters and mailbox servers downstream.
        assert!(
            contents.contains(&format!(
                "Authentication-Results: mx.ferry.test;\r\n\tauth=pass smtp.auth={user}\r\n"
            )),
            "{contents}"
        );
        assert_eq!(m["authenticated_as"], user, "{m}");
        let log = strip_ansi(&server.log_text());
        assert!(
            log.contains(&format!(
                "authenticated remote=127.0.0.1 user={user} mechanism={mechanism}"
            )),
            "{log}"
        );
    }

    require("swaks");
    for mechanism in ["PLAIN", "LOGIN"] {
        let out = run_bounded(
            Command::new("swaks")
                .args(["--server", "127.0.0.1"])
                .args(["--port", &server.smtp.port().to_string()])
                .arg("--tls")
                .args(["--auth", mechanism])
                .args(["--auth-user", "carol", "--auth-password", "carol-pw"])
                .args(["--from", "carol@example.org", "--to", "far@remote.test"])
                .args(["--header", &format!("Subject: via swaks {mechanism}")])
                .args(["--timeout", "20"]),
            Duration::from_secs(60),
        );
        let transcript = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "swaks {mechanism}:\n{transcript}");
        assert!(transcript.contains("<~  235 2.7.0"), "{transcript}");
        let m = queued_with_subject(&server, &format!("via swaks {mechanism}"));
        assert!(m["contents"].as_str().unwrap().contains("with ESMTPSA"));
        assert_eq!(m["authenticated_as"], "carol", "{m}");
    }
}

#[test]
fn wrong_passwords_are_refused_and_do_not_relay() {
    let server = Server::start(&config(""));
    let r = smtplib(&server, "PLAIN", "alice", "wrong");
    assert_eq!(r["auth"][0], 535, "{r}");
    assert!(r["auth"][1].as_str().unwrap().starts_with("5.7.8"), "{r}");
    assert_eq!(r["send"][0], 554, "not authenticated: no relaying: {r}");
    let r = smtplib(&server, "LOGIN", "nobody", "alice-pw");
    assert_eq!(r["auth"][0], 535, "{r}");
    assert!(queue_ids(&server.queue_json()).is_empty());
    // Both failures are in /metrics, where password guessing shows.
    let (_, metrics) = server.api_get("/metrics");
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(
        metrics
            .lines()
            .any(|l| l == "ferrymail_smtp_auth_failures_total 2"),
        "{metrics}"
    );
}

/// A raw client after EHLO, on a server that offers AUTH without TLS
/// (`allow-plain-text`), to walk the protocol's edges by hand; the clients
/// above cover AUTH over STARTTLS.
fn plain_text_client(server: &Server) -> Smtp {
    let mut c = server.client();
    let ehlo = c.ehlo();
    assert!(
        ehlo.lines.iter().any(|l| l.ends_with("AUTH PLAIN LOGIN")),
        "{ehlo:?}"
    );
    c
}

const PLAIN_TEXT: &str = "allow-plain-text = true";

#[test]
fn auth_needs_tls_and_follows_rfc_4954_at_the_edges() {
    let server = Server::start(&config(""));
    // Before TLS: not offered, and refused.
    let mut c = server.client();
    let ehlo = c.ehlo();
    assert!(!format!("{ehlo:?}").contains("AUTH"), "{ehlo:?}");
    assert!(c.cmd("AUTH PLAIN AGFsaWNlAGFsaWNlLXB3").is(538, "5.7.11"));
    drop(c);

    drop(server);
    let server = Server::start(&config(PLAIN_TEXT));
    let mut c = plain_text_client(&server);
    assert!(c.cmd("AUTH CRAM-MD5").is(504, "5.5.4"));
    assert!(
        c.cmd("AUTH GSSAPI").is(504, "5.5.4"),
        "registered but not offered"
    );
    let r = c.cmd("AUTH PLAIN");
    assert_eq!(r.code, 334, "{r:?}");
    assert!(c.cmd("*").is(501, "5.0.0"), "cancelled");
    let r = c.cmd("AUTH LOGIN");
    assert_eq!(r.code, 334);
    assert_eq!(r.lines[0], "334 VXNlcm5hbWU6", "Username: {r:?}");
    assert!(c.cmd("!!not base64!!").is(501, "5.5.2"));
    // PLAIN with its initial response: \0alice\0alice-pw.
    assert!(c.cmd("AUTH PLAIN AGFsaWNlAGFsaWNlLXB3").is(235, "2.7.0"));
    assert!(
        c.cmd("AUTH PLAIN AGFsaWNlAGFsaWNlLXB3").is(503, "5.5.1"),
        "only once"
    );
    // MAIL's AUTH parameter (RFC 4954 §5) is accepted once AUTH is offered.
    assert_eq!(c.cmd("MAIL FROM:<alice@example.org> AUTH=<>").code, 250);
    assert_eq!(c.cmd("RCPT TO:<far@remote.test>").code, 250);
    assert!(
        c.cmd("AUTH LOGIN").is(503, "5.5.1"),
        "not during a transaction"
    );
}

#[test]
fn the_third_failure_closes_the_session() {
    let server = Server::start(&config(PLAIN_TEXT));
    let mut c = plain_text_client(&server);
    // \0alice\0nope
    assert!(c.cmd("AUTH PLAIN AGFsaWNlAG5vcGU=").is(535, "5.7.8"));
    assert!(c.cmd("AUTH PLAIN AGFsaWNlAG5vcGU=").is(535, "5.7.8"));
    let r = c.cmd("AUTH PLAIN AGFsaWNlAG5vcGU=");
    assert!(r.is(535, "5.7.8"), "{r:?}");
    let r = c.try_read().expect("421 after the third failure");
    assert!(r.is(421, "4.7.0"), "{r:?}");
    assert!(c.try_read().is_none(), "closed");
}

#[test]
fn required_auth_refuses_mail_before_it() {
    let server = Server::start(&config(&format!("require = true\n{PLAIN_TEXT}")));
    let mut c = plain_text_client(&server);
    assert!(c.cmd("MAIL FROM:<x@example.org>").is(530, "5.7.0"));
    // \0carol\0carol-pw (the hashed secret)
    assert!(c.cmd("AUTH PLAIN AGNhcm9sAGNhcm9sLXB3").is(235, "2.7.0"));
    assert_eq!(c.cmd("MAIL FROM:<carol@example.org>").code, 250);
}

#[test]
fn users_send_only_as_their_own_addresses() {
    let server = Server::start(&config(PLAIN_TEXT));
    let mut c = plain_text_client(&server);
    // \0alice\0alice-pw
    assert!(c.cmd("AUTH PLAIN AGFsaWNlAGFsaWNlLXB3").is(235, "2.7.0"));
    let r = c.cmd("MAIL FROM:<carol@example.org>");
    assert!(r.is(553, "5.7.1"), "{r:?}");
    assert!(r.text().contains("not owned by user alice"), "{r:?}");
    assert_eq!(c.cmd("MAIL FROM:<Alice@Example.ORG>").code, 250);
    assert!(c.cmd("RSET").is(250, "2.0.0"));
    assert_eq!(c.cmd("MAIL FROM:<>").code, 250, "bounces are allowed");
    drop(c);

    let server = Server::start(&config(&format!("{PLAIN_TEXT}\nmust-match-sender = false")));
    let mut c = plain_text_client(&server);
    assert!(c.cmd("AUTH PLAIN AGFsaWNlAGFsaWNlLXB3").is(235, "2.7.0"));
    assert_eq!(c.cmd("MAIL FROM:<carol@example.org>").code, 250);
}

#[test]
fn repeated_failures_from_one_address_block_auth_across_sessions() {
    let server = Server::start(&config(PLAIN_TEXT).replace("total = 3", "total = 3\nper-ip = 2"));
    let mut c = plain_text_client(&server);
    // \0alice\0nope, twice: the address has used up its failures.
    assert!(c.cmd("AUTH PLAIN AGFsaWNlAG5vcGU=").is(535, "5.7.8"));
    assert!(c.cmd("AUTH PLAIN AGFsaWNlAG5vcGU=").is(535, "5.7.8"));
    assert!(c.cmd("AUTH PLAIN AGFsaWNlAGFsaWNlLXB3").is(454, "4.7.0"));
    drop(c);
    // A new session from the same address: refused even with the right
    // password, so reconnecting does not reset a guesser.
    let mut c = plain_text_client(&server);
    let r = c.cmd("AUTH PLAIN AGFsaWNlAGFsaWNlLXB3");
    assert!(r.is(454, "4.7.0"), "{r:?}");
    assert!(
        strip_ansi(&server.log_text())
            .contains("AUTH refused: too many failures from this address"),
        "{}",
        server.log_text()
    );
}
