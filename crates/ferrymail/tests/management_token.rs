//! The management API with a bearer token (INTERFACE.md): `token =
//! "%{env:NAME}%"` on the http listener; the queue CLI reading the same config
//! (and environment) gets in, a raw HTTP request without the token gets 401, and
//! one with `Authorization: Bearer <token>` gets 200.

mod common;

use common::*;

const VAR: &str = "FERRY_TEST_TOKEN";
const TOKEN: &str = "s3cret-Token_for.tests";

fn start() -> Server {
    Server::start_custom(
        "[session.rcpt]\nlocal-domains = [\"local.test\"]\n",
        |c| {
            let with = c.replacen(
                "protocol = \"http\"\n",
                &format!("protocol = \"http\"\ntoken = \"%{{env:{VAR}}}%\"\n"),
                1,
            );
            assert_ne!(with, c, "base config has an http listener");
            with
        },
        &[(VAR, TOKEN)],
    )
}

fn queue_one(server: &Server) -> String {
    let mut c = server.client();
    c.ehlo();
    queued_id(&c.send_message(
        "tok@example.org",
        &["user@local.test"],
        b"Subject: token\r\n\r\nbody\r\n",
    ))
}

#[test]
fn cli_with_the_same_config_and_environment_works() {
    let server = start();
    let id = queue_one(&server);
    let out = server.cli_env(&["queue", "list", "--json"], &[(VAR, TOKEN)]);
    assert!(
        out.status.success(),
        "queue list with the token: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(queue_ids(&list), vec![id.clone()]);
    let out = server.cli_env(&["queue", "hold", &id], &[(VAR, TOKEN)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = server.cli_env(&["queue", "cat", &id], &[(VAR, TOKEN)]);
    assert!(out.status.success());
    assert_eq!(
        strip_received(&out.stdout),
        b"Subject: token\r\n\r\nbody\r\n"
    );
}

#[test]
fn cli_with_a_wrong_token_is_refused() {
    let server = start();
    queue_one(&server);
    let out = server.cli_env(&["queue", "list", "--json"], &[(VAR, "not-the-token")]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a refused request is an operation failure"
    );
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("token"), "the message should say why: {err}");
}

#[test]
fn cli_without_the_variable_fails() {
    let server = start();
    // The CLI's environment lacks the variable (the test process never sets it).
    assert!(std::env::var_os(VAR).is_none());
    let out = server.cli(&["queue", "list", "--json"]);
    assert!(
        !out.status.success(),
        "queue list without the token variable succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    // An unset variable is a configuration error: exit 2, `file:line: ...`
    // pointing at the token line.
    assert_eq!(out.status.code(), Some(2));
    let text = std::fs::read_to_string(&server.config).unwrap();
    let line = text
        .lines()
        .position(|l| l.starts_with("token = "))
        .unwrap()
        + 1;
    let err = String::from_utf8_lossy(&out.stderr);
    let prefix = format!("{}:{line}:", server.config.display());
    assert!(err.starts_with(&prefix), "want {prefix:?}: {err}");
    assert!(err.contains(VAR), "{err}");
}

#[test]
fn raw_http_needs_the_bearer_token() {
    let server = start();
    let id = queue_one(&server);
    for path in [
        "/api/health".to_string(),
        "/api/queue/messages".to_string(),
        format!("/api/queue/messages/{id}"),
        format!("/api/queue/messages/{id}/contents"),
    ] {
        let (status, body) = http_get(server.mgmt, &path, None);
        assert_eq!(
            status,
            401,
            "{path} without a token: {}",
            String::from_utf8_lossy(&body)
        );
        let doc: serde_json::Value = serde_json::from_slice(&body).expect("JSON error document");
        assert!(doc["error"].is_string(), "{doc}");
        assert!(
            !String::from_utf8_lossy(&body).contains("tok@example.org"),
            "no queue data without the token"
        );
        let (status, _) = http_get(server.mgmt, &path, Some("wrong"));
        assert_eq!(status, 401, "{path} with a wrong token");
        let (status, _) = http_get(server.mgmt, &path, Some(&format!("{TOKEN}x")));
        assert_eq!(status, 401, "{path} with a longer token");
        let (status, _) = http_get(server.mgmt, &path, Some(&TOKEN[..TOKEN.len() - 1]));
        assert_eq!(status, 401, "{path} with a prefix of the token");
        let (status, body) = http_get(server.mgmt, &path, Some(TOKEN));
        assert_eq!(
            status,
            200,
            "{path} with the token: {}",
            String::from_utf8_lossy(&body)
        );
    }
    let (_, body) = http_get(server.mgmt, "/api/queue/messages", Some(TOKEN));
    let list: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(queue_ids(&list), vec![id]);
}
