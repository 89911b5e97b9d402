//! A listener with `tls.implicit = true` speaks TLS from the first byte
//! (SMTP submission on port 465, RFC 8314 §3.3). Python's smtplib.SMTP_SSL
//! and swaks (`--tlsc`) connect with TLS, see no STARTTLS but AUTH (which
//! needs TLS), log in and relay; the Received header says ESMTPSA with the
//! TLS version. A client that speaks plain SMTP to it gets no greeting and
//! is closed, and the plain listener beside it still offers STARTTLS.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use common::*;

fn start(port: u16) -> Server {
    let extra = r#"[session.rcpt]
local-domains = ["local.test"]
relay = "!is_empty(authenticated_as)"

[session.auth]
directory = "'users'"

[directory.users]
type = "memory"

[[directory.users.principals]]
name = "dana"
secret = "dana-pw"
email = ["dana@example.org"]
"#;
    Server::start_custom(
        extra,
        |c| {
            format!(
                "{c}\n[server.listener.submissions]\nbind = [\"127.0.0.1:{port}\"]\n\
                 protocol = \"smtp\"\ntls.implicit = true\n"
            )
        },
        &[],
    )
}

#[test]
fn submission_over_implicit_tls() {
    let port = free_port();
    let server = start(port);

    require("python3");
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/smtps_client.py");
    let out = run_bounded(
        Command::new("python3")
            .arg(script)
            .args([&port.to_string(), "dana", "dana-pw"]),
        Duration::from_secs(60),
    );
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        server.log_text()
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["tls"], "TLSv1.3", "{r}");
    assert_eq!(r["starttls"], false, "no STARTTLS inside TLS: {r}");
    assert_eq!(r["auth"], "PLAIN LOGIN", "{r}");
    assert_eq!(r["login"][0], 235, "{r}");
    assert_eq!(r["refused"], serde_json::json!({}), "{r}");

    require("swaks");
    let out = run_bounded(
        Command::new("swaks")
            .args(["--server", "127.0.0.1", "--port", &port.to_string()])
            .arg("--tlsc")
            .args([
                "--auth",
                "LOGIN",
                "--auth-user",
                "dana",
                "--auth-password",
                "dana-pw",
            ])
            .args(["--from", "dana@example.org", "--to", "far@remote.test"])
            .args(["--header", "Subject: over smtps by swaks"])
            .args(["--timeout", "20"]),
        Duration::from_secs(60),
    );
    let transcript = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{transcript}");
    assert!(transcript.contains("<~  235 2.7.0"), "{transcript}");

    let ids = queue_ids(&server.queue_json());
    assert_eq!(ids.len(), 2, "both relayed messages are queued");
    for id in &ids {
        let contents = String::from_utf8_lossy(&server.contents(id)).into_owned();
        assert!(contents.contains("with ESMTPSA"), "{contents}");
        assert!(contents.contains("version=TLSv1.3"), "{contents}");
    }

    // Plain SMTP on the implicit-TLS port: no greeting, closed.
    let mut raw = TcpStream::connect(("127.0.0.1", port)).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    raw.write_all(b"EHLO plain.test\r\n").unwrap();
    let mut buf = Vec::new();
    let _ = raw.read_to_end(&mut buf);
    assert!(
        !String::from_utf8_lossy(&buf).contains("220"),
        "a plain client got an SMTP greeting: {buf:?}"
    );

    // The plain listener is unchanged: STARTTLS offered, AUTH not yet.
    let mut c = server.client();
    let ehlo = c.ehlo();
    assert!(
        ehlo.lines.iter().any(|l| l.ends_with("STARTTLS")),
        "{ehlo:?}"
    );
    assert!(!ehlo.lines.iter().any(|l| l.contains("AUTH")), "{ehlo:?}");
}
