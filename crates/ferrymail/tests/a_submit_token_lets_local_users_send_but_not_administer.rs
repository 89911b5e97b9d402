//! `submit-token` on the management listener: a second bearer token that
//! is good for submitting mail (`POST /api/submit`) and nothing else.
//! The full `token` is in a file only root may read, the submit token in
//! one everybody may, as a host with local users would set them up:
//!
//! * `ferrymail sendmail` run as `nobody` queues mail, which reaches
//!   Postfix's smtp-sink;
//! * `ferrymail queue list` run as `nobody` gets nothing (it has no token
//!   it may use);
//! * the submit token presented to any other endpoint (the queue, a
//!   message's contents, an action, a reload, the metrics) gets 403, the
//!   full token gets in.
//!
//! Before, `sendmail` needed the one token there was, so every user who
//! could send mail could also read, cancel and bounce everyone's.

mod common;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use common::peers::*;
use common::*;

const ADMIN: &str = "admin-Token-only.root";
const SUBMIT: &str = "submit-token.for-everyone";

/// A POST with a JSON body; the status code.
fn http_post(addr: SocketAddr, path: &str, bearer: &str, body: &str) -> u16 {
    let headers = format!(
        "Host: 127.0.0.1\r\nAuthorization: Bearer {bearer}\r\nContent-Type: application/json\r\n"
    );
    http_request(addr, &format!("POST {path}"), &headers, body.as_bytes()).0
}

#[test]
fn sendmail_works_with_the_submit_token_and_nothing_else_does() {
    require("runuser");
    let sink = SmtpSink::start(&[]);
    // The full token where only root may read it; the submit token where
    // anyone may.
    let secrets = tempfile::tempdir().unwrap();
    let admin = secrets.path().join("admin-token");
    std::fs::write(&admin, ADMIN).unwrap();
    std::fs::set_permissions(&admin, std::fs::Permissions::from_mode(0o600)).unwrap();
    let public = tempfile::tempdir().unwrap();
    std::fs::set_permissions(public.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let submit = public.path().join("submit-token");
    std::fs::write(&submit, SUBMIT).unwrap();
    std::fs::set_permissions(&submit, std::fs::Permissions::from_mode(0o644)).unwrap();
    let tokens = format!(
        "protocol = \"http\"\ntoken = \"%{{file:{}}}%\"\nsubmit-token = \"%{{file:{}}}%\"\n",
        admin.display(),
        submit.display()
    );
    // Mail for held.test goes nowhere (a port that refuses) and stays
    // queued for the API to show; the rest goes to smtp-sink.
    let extra = format!(
        r#"[session.rcpt]
relay = "remote_ip == '127.0.0.1'"

[queue.schedule]
retry = "[1h]"

{sink_route}{parked}
[queue.strategy]
route = [{{ if = "rcpt_domain == 'held.test'", then = "'parked'" }}, {{ else = "'sink'" }}]
"#,
        sink_route = relay_route("sink", sink.port, "smtp"),
        parked = relay_route("parked", 9, "smtp"),
    );
    let server = Server::start_custom(
        &extra,
        |c| {
            let with = c.replacen("protocol = \"http\"\n", &tokens, 1);
            assert_ne!(with, c, "base config has an http listener");
            with
        },
        &[],
    );
    let config = public.path().join("ferrymail.toml");
    std::fs::copy(&server.config, &config).unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let as_nobody = |args: &[&str], input: &[u8]| {
        run_with_input(
            Command::new("runuser")
                .args(["-u", "nobody", "--", bin()])
                .args(args)
                .arg("-c")
                .arg(&config),
            input,
        )
    };

    // sendmail, as a local user: queued and delivered.
    let out = as_nobody(
        &["sendmail", "ops@far.example"],
        b"Subject: local\n\nhello\n",
    );
    assert!(
        out.status.success(),
        "sendmail: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = sink.wait_dumped(1, Duration::from_secs(30));
    assert_eq!(got[0].rcpt_args, ["<ops@far.example>"]);

    // The queue, as the same user: refused.
    let out = as_nobody(&["queue", "list", "--json"], b"");
    assert_eq!(
        out.status.code(),
        Some(1),
        "queue list as nobody: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty());

    // Hold one message, so that there is something to look at.
    let mut c = server.client();
    c.ehlo();
    let id = queued_id(&c.send_message(
        "someone@example.org",
        &["private@held.test"],
        b"Subject: private\r\n\r\nnot for local users\r\n",
    ));
    assert_eq!(
        http_post(
            server.mgmt,
            "/api/queue/action",
            ADMIN,
            &format!(r#"{{"action":"hold","ids":["{id}"]}}"#)
        ),
        200
    );

    for path in [
        "/api/health".to_string(),
        "/api/queue/messages".to_string(),
        format!("/api/queue/messages/{id}"),
        format!("/api/queue/messages/{id}/contents"),
        "/api/queue/shape".to_string(),
        "/metrics".to_string(),
    ] {
        let (status, body) = http_get(server.mgmt, &path, Some(SUBMIT));
        assert_eq!(status, 403, "{path}: {}", String::from_utf8_lossy(&body));
        assert!(!String::from_utf8_lossy(&body).contains("not for local users"));
        let (status, _) = http_get(server.mgmt, &path, Some(ADMIN));
        assert_eq!(status, 200, "{path} with the full token");
    }
    for (path, body) in [
        (
            "/api/queue/action",
            format!(r#"{{"action":"cancel","ids":["{id}"]}}"#),
        ),
        ("/api/queue/flush", "{}".to_string()),
        ("/api/reload", "{}".to_string()),
    ] {
        assert_eq!(http_post(server.mgmt, path, SUBMIT, &body), 403, "{path}");
    }
    let (_, body) = http_get(
        server.mgmt,
        &format!("/api/queue/messages/{id}"),
        Some(ADMIN),
    );
    assert!(
        String::from_utf8_lossy(&body).contains("private@held.test"),
        "the held message is still queued"
    );
}
