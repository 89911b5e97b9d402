//! Python's smtplib and ssl as independent clients: DSN parameters (RFC 3461)
//! survive into the queue, SMTPUTF8 (RFC 6531) addresses are stored intact and
//! refused without the parameter, STARTTLS (RFC 3207) works with the self-signed
//! certificate and is recorded in the Received header, and commands pipelined
//! after STARTTLS in the clear are discarded (CVE-2011-0411).

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

fn script() -> String {
    format!(
        "{}/tests/python/smtplib_client.py",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// Runs the Python client in `mode` against the server; asserts it succeeded
/// and returns its stdout.
fn run_client(server: &Server, mode: &str) -> String {
    require("python3");
    let out = run_bounded(
        Command::new("python3")
            .arg(script())
            .arg(mode)
            .arg(server.smtp.ip().to_string())
            .arg(server.smtp.port().to_string()),
        Duration::from_secs(90),
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "smtplib_client.py {mode} failed ({}):\n{stdout}\n{stderr}\nserver log:\n{}",
        out.status,
        server.log_text()
    );
    assert!(
        stdout.lines().last() == Some("done") && !stdout.contains("FAIL"),
        "{stdout}"
    );
    stdout
}

fn only_message(server: &Server) -> serde_json::Value {
    let list = server.queue_json();
    let msgs = list["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 1, "expected exactly one queued message: {list}");
    msgs[0].clone()
}

fn show_json(server: &Server, id: &str) -> serde_json::Value {
    let out = server.cli(&["queue", "show", id, "--json"]);
    assert!(
        out.status.success(),
        "queue show failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("queue show --json is JSON")
}

#[test]
fn dsn_parameters_are_kept() {
    let server = Server::start_default();
    run_client(&server, "dsn");
    let id = only_message(&server)["id"].as_str().unwrap().to_string();
    let m = show_json(&server, &id);
    assert_eq!(m["id"], id.as_str());
    assert_eq!(m["sender"], "dsn-sender@example.org", "{m}");
    assert_eq!(m["ret"], "HDRS", "{m}");
    assert_eq!(m["envid"], "env-123", "{m}");
    let rcpts = m["recipients"].as_array().unwrap();
    assert_eq!(rcpts.len(), 1, "{m}");
    assert_eq!(rcpts[0]["address"], "dsn-rcpt@local.test", "{m}");
    assert_eq!(
        rcpts[0]["notify"],
        serde_json::json!(["SUCCESS", "FAILURE"]),
        "{m}"
    );
    assert_eq!(rcpts[0]["orcpt"], "rfc822;orig@example.net", "{m}");

    // The human form shows the same.
    let out = server.cli(&["queue", "show", &id]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for want in [
        "ret:         HDRS",
        "envid:       env-123",
        "notify=SUCCESS,FAILURE",
        "orcpt=rfc822;orig@example.net",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
}

#[test]
fn smtputf8_addresses_are_stored_intact() {
    let server = Server::start_default();
    let stdout = run_client(&server, "utf8");
    assert!(
        stdout.contains("ok: UTF-8 recipient without SMTPUTF8 refused 553 5.6.7"),
        "{stdout}"
    );
    let list = server.queue_json();
    let msgs = list["messages"].as_array().unwrap();
    assert_eq!(
        msgs.len(),
        2,
        "sendmail and send_message each queue one message (the refused one none): {list}"
    );
    for m in msgs {
        let id = m["id"].as_str().unwrap();
        let m = show_json(&server, id);
        assert_eq!(m["smtputf8"], true, "{m}");
        assert_eq!(m["sender"], "josé@example.org", "{m}");
        assert_eq!(m["recipients"][0]["address"], "用户@local.test", "{m}");
        assert_eq!(m["body"], "8BITMIME", "{m}");
        let stored = server.contents(id);
        let received =
            String::from_utf8_lossy(&stored[..stored.len() - strip_received(&stored).len()])
                .into_owned();
        assert!(
            received.contains("with UTF8SMTP "),
            "RFC 6531 §3.7.3: the Received header should say UTF8SMTP: {received}"
        );
        let body = String::from_utf8(strip_received(&stored).to_vec()).expect("UTF-8 contents");
        assert!(body.contains("你好"), "{body}");
    }
    // The queue filters match UTF-8 text too.
    let out = server.cli(&["queue", "list", "--json", "--rcpt", "用户"]);
    assert!(out.status.success());
    let l: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(l["messages"].as_array().unwrap().len(), 2, "{l}");
}

#[test]
fn starttls_with_self_signed_certificate() {
    let server = Server::start_default();
    let stdout = run_client(&server, "starttls");
    assert!(stdout.contains("ok: negotiated TLSv1."), "{stdout}");
    let m = only_message(&server);
    let id = m["id"].as_str().unwrap();
    let stored = server.contents(id);
    let rest = strip_received(&stored);
    assert_eq!(rest, b"Subject: over tls\r\n\r\nsecret body\r\n");
    let received = String::from_utf8_lossy(&stored[..stored.len() - rest.len()]).into_owned();
    assert!(
        received.contains("with ESMTPS "),
        "RFC 3848: TLS sessions are recorded as ESMTPS: {received}"
    );
    assert!(
        received.contains("TLS"),
        "the Received header should mention the TLS version: {received}"
    );
    // The certificate was generated at first start and kept in the data dir.
    assert!(server.dir.path().join("data/tls/cert.pem").exists());
}

#[test]
fn starttls_command_injection_is_discarded() {
    let server = Server::start_default();
    let stdout = run_client(&server, "inject");
    for want in [
        "ok: no plaintext after the 220",
        "ok: first reply over TLS is NOOP's 250",
        "ok: second reply over TLS is VRFY's 252",
        "ok: no stale replies pending",
        "ok: MAIL before EHLO after TLS is 503 5.5.1",
    ] {
        assert!(stdout.contains(want), "missing {want:?} in:\n{stdout}");
    }
}
