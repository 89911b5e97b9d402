//! `tls.ca` on a relay route: a platform team's internal relay has a
//! certificate from the company's own CA, which Mozilla's roots do not
//! know. With `tls.mode = "require"` such a relay could only be reached by
//! turning verification off (`allow-invalid-certs`); `tls.ca` trusts that
//! CA for that route. Through two real `ferrymail serve` processes (the
//! next hop offers STARTTLS with a certificate openssl signed with a test
//! CA) and Postfix's smtp-sink behind it:
//!
//! * the route that names the CA delivers over verified TLS;
//! * the same route without it defers the mail with a certificate error
//!   (nothing is sent in the clear);
//! * a `tls.ca` that holds no certificate, or a PEM block rustls cannot
//!   read, is a config error with file and line.

mod common;

use std::path::Path;
use std::time::Duration;

use common::peers::*;
use common::*;

const WAIT: Duration = Duration::from_secs(30);

/// A test CA and a next-hop certificate it signed, for 127.0.0.1.
fn pki(dir: &Path) {
    self_signed_cert("Ferry Test CA", &dir.join("ca.key"), &dir.join("ca.pem"));
    ca_signed_cert(
        dir,
        "hop",
        "relay.ferry.test",
        "DNS:relay.ferry.test,IP:127.0.0.1",
    );
}

#[test]
fn a_route_trusts_the_ca_it_names_and_no_other_route_does() {
    let pki_dir = tempfile::tempdir().unwrap();
    pki(pki_dir.path());
    let file = |name: &str| pki_dir.path().join(name).display().to_string();

    // The next hop: STARTTLS with the CA-signed certificate, relaying on.
    let sink = SmtpSink::start(&[]);
    let hop = Server::start(&format!(
        "{}\n[certificate.main]\ncert = \"%{{file:{}}}%\"\nprivate-key = \"%{{file:{}}}%\"\n",
        relay_all_to(sink.port),
        file("hop.pem"),
        file("hop.key"),
    ));

    let route = |id: &str, ca: bool| {
        format!(
            "[queue.route.{id}]\ntype = \"relay\"\naddress = \"127.0.0.1\"\nport = {}\n\
             tls.mode = \"require\"\n{}\n",
            hop.smtp.port(),
            if ca {
                format!("tls.ca = \"%{{file:{}}}%\"\n", file("ca.pem"))
            } else {
                String::new()
            }
        )
    };
    let server = Server::start(&format!(
        r#"[session.rcpt]
relay = "remote_ip == '127.0.0.1'"

[queue.schedule]
retry = "[1h]"

{}{}
[queue.strategy]
route = [ {{ if = "rcpt_domain == 'trusted.test'", then = "'internal'" }}, {{ else = "'unknown'" }} ]
"#,
        route("internal", true),
        route("unknown", false),
    ));

    let mut c = server.client();
    c.ehlo();
    let ok = queued_id(&c.send_message(
        "app@example.org",
        &["r@trusted.test"],
        b"Subject: verified\r\n\r\nbody\r\n",
    ));
    let held = queued_id(&c.send_message(
        "app@example.org",
        &["r@other.test"],
        b"Subject: unverified\r\n\r\nbody\r\n",
    ));
    c.cmd("QUIT");

    let got = sink.wait_dumped(1, WAIT);
    assert!(
        String::from_utf8_lossy(&got[0].body).contains("Subject: verified"),
        "{got:?}"
    );
    server.wait_gone(&ok, WAIT);
    let m = server.wait_attempted(&held, WAIT);
    let err = m["recipients"][0]["last_error"].as_str().unwrap_or("");
    assert!(err.to_lowercase().contains("certificate"), "{m}");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(sink.dumped().len(), 1, "nothing went out unverified");
}

#[test]
fn a_ca_that_is_not_a_certificate_is_a_config_error() {
    let c = check_text(
        "[queue.route.internal]\ntype = \"relay\"\naddress = \"10.0.0.1\"\n\
         tls.mode = \"require\"\ntls.ca = \"/etc/ssl/internal-ca.pem\"\n",
    );
    assert_eq!(c.code, Some(2), "{}", c.stderr);
    assert!(
        c.stderr.contains(&format!("{}:5:", c.file.display()))
            && c.stderr.contains("holds no PEM certificate"),
        "{}",
        c.stderr
    );

    // A PEM block that is not a certificate: found by `check` too, at the
    // line of the key, as the server would refuse to start with it.
    let c = check_text(
        "[queue.route.other]\ntype = \"relay\"\naddress = \"10.0.0.2\"\n\n\
         [queue.route.internal]\ntype = \"relay\"\naddress = \"10.0.0.1\"\n\
         tls.mode = \"require\"\n\
         tls.ca = \"-----BEGIN CERTIFICATE-----\\nnot base64!\\n-----END CERTIFICATE-----\\n\"\n",
    );
    assert_eq!(c.code, Some(2), "{}", c.stderr);
    assert!(
        c.stderr
            .contains(&format!("{}:9: route 'internal': tls.ca", c.file.display())),
        "{}",
        c.stderr
    );
}
