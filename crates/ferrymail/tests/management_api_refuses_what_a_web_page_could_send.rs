//! Without a token the management API answers loopback clients, and a web
//! browser on the host is one: any page it opens may send requests to
//! 127.0.0.1. Two kinds are refused, on the real server:
//!
//! * a request for another `Host` than an address or `localhost` (a page
//!   whose name was made to resolve to 127.0.0.1, DNS rebinding, reading
//!   the queue or the mail in it) gets 421;
//! * a POST a page may send without a CORS preflight (no Content-Type, or
//!   a form type), whose body can still be JSON (`enctype="text/plain"`
//!   with a crafted field name), gets 415: before, such a form cancelled
//!   the whole queue, or submitted mail as the server.
//!
//! What the queue commands send (an address as Host, `application/json`)
//! goes through, as an operator's browser on `localhost` does.

mod common;

use std::net::SocketAddr;

use common::*;

/// One request; the status code and the body.
fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    host: &str,
    content_type: Option<&str>,
    body: &str,
) -> (u16, String) {
    let ct = content_type
        .map(|t| format!("Content-Type: {t}\r\n"))
        .unwrap_or_default();
    let (status, body) = http_request(
        addr,
        &format!("{method} {path}"),
        &format!("Host: {host}\r\n{ct}"),
        body.as_bytes(),
    );
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[test]
fn requests_a_web_page_could_make_are_refused() {
    let server = Server::start_default();
    let mut c = server.client();
    c.ehlo();
    let id = queued_id(&c.send_message(
        "someone@example.org",
        &["user@local.test"],
        b"Subject: private\r\n\r\nsecret text\r\n",
    ));
    let port = server.mgmt.port();
    let queued = || queue_ids(&server.queue_json()).len();

    // DNS rebinding: another name as Host.
    for host in [format!("evil.example:{port}"), "evil.example".to_string()] {
        let (status, body) = request(
            server.mgmt,
            "GET",
            &format!("/api/queue/messages/{id}/contents"),
            &host,
            None,
            "",
        );
        assert_eq!(status, 421, "{host}: {body}");
        assert!(!body.contains("secret text"), "{body}");
    }
    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        format!("LocalHost:{port}"),
        format!("[::1]:{port}"),
        "127.0.0.1".to_string(),
    ] {
        let (status, body) = request(server.mgmt, "GET", "/api/queue/messages", &host, None, "");
        assert_eq!(status, 200, "{host}: {body}");
    }

    // Cross-site POSTs: the types a form may send, or none.
    let cancel_all = r#"{"action":"cancel","all":true,"x":"="}"#;
    for ct in [
        None,
        Some("text/plain"),
        Some("text/plain; charset=utf-8"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
    ] {
        let (status, body) = request(
            server.mgmt,
            "POST",
            "/api/queue/action",
            &format!("127.0.0.1:{port}"),
            ct,
            cancel_all,
        );
        assert_eq!(status, 415, "{ct:?}: {body}");
        let (status, _) = request(
            server.mgmt,
            "POST",
            "/api/submit?from=a%40example.org&to=victim%40far.example",
            &format!("127.0.0.1:{port}"),
            ct,
            "Subject: forged\r\n\r\nx\r\n",
        );
        assert_eq!(status, 415, "submit, {ct:?}");
    }
    assert_eq!(queued(), 1, "nothing cancelled, nothing submitted");

    // What the queue commands send.
    let (status, body) = request(
        server.mgmt,
        "POST",
        "/api/queue/action",
        &format!("127.0.0.1:{port}"),
        Some("application/json"),
        &format!(r#"{{"action":"hold","ids":["{id}"]}}"#),
    );
    assert_eq!(status, 200, "{body}");
    let out = server.cli(&["queue", "list", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
