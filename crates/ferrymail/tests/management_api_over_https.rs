//! A management listener with `tls.implicit = true` speaks HTTPS, so that a
//! remote operator's token never crosses the network in clear. Through the
//! real `ferrymail serve`:
//!
//! * the queue CLI reaches it, checking the server's own certificate (the
//!   self-signed one generated at first start, read from the same
//!   configuration);
//! * Python's `http.client` over `ssl`, trusting only that certificate,
//!   gets 401 without the token and the queue with it;
//! * a plain-HTTP request gets no HTTP answer;
//! * the CLI refuses a server whose certificate is not the one the file
//!   names; after the certificate is replaced and SIGHUP reloads it, the
//!   listener presents the new one and the CLI follows.

mod common;

use std::io::{Read, Write};
use std::process::Command;
use std::time::Duration;

use common::*;

const TOKEN: &str = "s3cret-token";

fn start() -> Server {
    Server::start_custom(
        "[session.rcpt]\nlocal-domains = [\"local.test\"]\n",
        |c| {
            c.replace(
                "protocol = \"http\"\n",
                &format!("protocol = \"http\"\ntls.implicit = true\ntoken = \"{TOKEN}\"\n"),
            )
        },
        &[],
    )
}

/// `GET path` over HTTPS with Python, trusting only `cafile`; prints the
/// status and body.
fn python_get(server: &Server, cafile: &std::path::Path, token: Option<&str>) -> String {
    let script = r#"
import http.client, ssl, sys
port, cafile, token = int(sys.argv[1]), sys.argv[2], sys.argv[3]
ctx = ssl.create_default_context(cafile=cafile)
ctx.check_hostname = False  # the certificate names the server, we dial 127.0.0.1
c = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=30)
headers = {"Authorization": "Bearer " + token} if token else {}
c.request("GET", "/api/queue/messages", headers=headers)
r = c.getresponse()
print(r.status, r.read().decode())
"#;
    let out = run_bounded(
        Command::new("python3").args([
            "-c",
            script,
            &server.mgmt.port().to_string(),
            &cafile.display().to_string(),
            token.unwrap_or(""),
        ]),
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn management_api_speaks_https_with_the_servers_certificate() {
    require("python3");
    require("openssl");
    let mut server = start();
    let mut c = server.client();
    c.ehlo();
    let id = queued_id(&c.send_message(
        "a@example.org",
        &["x@local.test"],
        b"Subject: t\r\n\r\nb\r\n",
    ));
    c.cmd("QUIT");

    // The CLI, pinning the generated certificate.
    assert_eq!(queue_ids(&server.queue_json()), vec![id.clone()]);

    // An independent client trusting only that certificate.
    let generated = server.dir.path().join("data/tls/cert.pem");
    assert!(python_get(&server, &generated, None).starts_with("401 "));
    let with_token = python_get(&server, &generated, Some(TOKEN));
    assert!(
        with_token.starts_with("200 ") && with_token.contains(&id),
        "{with_token}"
    );

    // Plain HTTP gets no HTTP answer.
    let mut s = std::net::TcpStream::connect(server.mgmt).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let _ = write!(s, "GET /api/health HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    assert!(
        !raw.starts_with(b"HTTP/"),
        "{}",
        String::from_utf8_lossy(&raw)
    );

    // A certificate of its own, put in force with SIGHUP.
    let dir = server.dir.path();
    let (cert, key) = (dir.join("new-cert.pem"), dir.join("new-key.pem"));
    self_signed_cert("mx.ferry.test", &key, &cert);
    let mut text = std::fs::read_to_string(&server.config).unwrap();
    text.push_str(&format!(
        "\n[certificate.main]\ncert = \"%{{file:{}}}%\"\nprivate-key = \"%{{file:{}}}%\"\n",
        cert.display(),
        key.display()
    ));
    std::fs::write(&server.config, text).unwrap();
    // The CLI now pins the new certificate, which the server does not
    // present yet: it refuses to talk.
    let out = server.cli(&["queue", "list"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    server.hangup("configuration reloaded", 1);
    assert!(python_get(&server, &cert, Some(TOKEN)).starts_with("200 "));
    assert_eq!(queue_ids(&server.queue_json()), vec![id]);

    assert_eq!(server.terminate().code(), Some(0));
}
