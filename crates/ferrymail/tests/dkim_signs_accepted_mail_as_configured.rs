//! `[auth.dkim] sign` (Stalwart's key): Ferrymail DKIM-signs the mail it
//! accepts, so that every application behind it passes DMARC without each
//! holding a key. Through the real `ferrymail serve`, with keys made by
//! openssl and the signatures checked by dkimpy against their DNS records:
//!
//! * mail from the signing domain carries one valid RSA and one valid
//!   Ed25519 signature, in front of Ferrymail's Received field;
//! * mail the expression does not pick (another sender domain) is stored
//!   exactly as sent.

mod common;
mod dsn_support;

use common::*;
use dsn_support::Keys;

const BODY: &str = "From: App <app@ferry.test>\r\nTo: someone@far.example\r\n\
Subject: your invoice\r\nDate: Wed, 2 Dec 2026 00:00:00 +0000\r\n\
Message-ID: <inv-1@ferry.test>\r\n\r\nHello,\r\nyour invoice is attached.\r\n";

#[test]
fn mail_from_the_signing_domain_is_signed_and_other_mail_is_not() {
    let keys = Keys::generate();
    let server = Server::start(&format!(
        r#"[session.rcpt]
relay = "remote_ip == '127.0.0.1'"

[auth.dkim]
sign = [ {{ if = "sender_domain == 'ferry.test'", then = "['rsa', 'ed']" }},
         {{ else = false }} ]

{keys}"#,
        keys = keys.toml()
    ));
    let mut c = server.client();
    c.ehlo();
    let signed =
        queued_id(&c.send_message("app@ferry.test", &["someone@far.example"], BODY.as_bytes()));
    let plain = queued_id(&c.send_message(
        "app@other.example",
        &["someone@far.example"],
        BODY.as_bytes(),
    ));
    c.cmd("QUIT");

    let stored = server.contents(&signed);
    let text = String::from_utf8_lossy(&stored).to_string();
    assert!(
        text.starts_with("DKIM-Signature: "),
        "the signatures come first: {text}"
    );
    let (ok, report) = dkimpy_verifies(&stored, &keys.records);
    assert!(ok, "dkimpy: {report}\n{text}");
    assert!(report.contains("signatures: 2"), "{report}");
    assert!(
        report.contains("a=rsa-sha256") && report.contains("a=ed25519-sha256"),
        "{report}"
    );

    let stored = server.contents(&plain);
    assert_eq!(
        strip_received(&stored),
        BODY.as_bytes(),
        "not signed, not changed"
    );
}
