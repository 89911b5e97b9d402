//! A failure notice that returns an 8-bit original in full (RET=FULL) is
//! itself 8-bit. When the sender's next hop does not offer 8BITMIME
//! (Postfix's smtp-sink with `-8`), the notice is converted (RFC 6152 §3):
//! the returned message's text part becomes quoted-printable inside its
//! `message/rfc822` part, which is labelled `7bit` (RFC 2046 §5.2.1 allows
//! no other encoding there). It used to be refused as unconvertible
//! (5.6.3), so the sender never heard and the postmaster got a double
//! bounce. The failing hop is smtp-sink refusing RCPT with 550. The notice
//! is signed in the 7-bit form, so its DKIM signature survives the hop.

mod common;
mod dsn_support;

use std::time::Duration;

use common::peers::{SmtpSink, relay_route};
use common::*;
use dsn_support::*;

#[test]
fn dsn_returning_8bit_mail_reaches_a_hop_without_8bitmime() {
    let hop = Hop::start(&["-f", "RCPT", "-B", "550 5.2.1 Mailbox disabled"]);
    let sink = Sink::start();
    let keys = Keys::generate();
    let no8 = SmtpSink::start(&["-8"]);
    let route = relay_route("no8", no8.port, "smtp");
    let server = Server::start(&config(
        &Setup {
            hop: hop.port,
            tables: &route,
            branches: "{ if = \"rcpt_domain == 'eight.test'\", then = \"'no8'\" },",
            ..Setup::default()
        },
        &sink,
        &keys,
    ));

    let original = "From: Writer <writer@eight.test>\r\nTo: alice@dest.test\r\n\
                    Subject: draft\r\nMIME-Version: 1.0\r\n\
                    Content-Type: text/plain; charset=utf-8\r\n\
                    Content-Transfer-Encoding: 8bit\r\n\r\n\
                    Gr\u{f6}\u{df}e: na\u{ef}ve caf\u{e9}\r\n";
    send(
        &server,
        "writer@eight.test",
        "BODY=8BITMIME RET=FULL",
        &[("alice@dest.test", "NOTIFY=FAILURE")],
        original,
    );

    let d = no8.wait_dumped(1, Duration::from_secs(30));
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].mail_args, "<>", "no BODY=8BITMIME to this hop");
    let notice = String::from_utf8(d[0].body.clone()).expect("the notice is 7-bit");
    assert!(notice.is_ascii(), "{notice}");
    // (smtp-sink writes its dump with LF line ends.)
    let part = notice
        .split("Content-Type: message/rfc822\n")
        .nth(1)
        .expect("the returned message's part");
    let part_header = part.split("\n\n").next().unwrap();
    assert!(
        part_header.contains("Content-Transfer-Encoding: 7bit"),
        "{part_header}"
    );
    assert!(
        notice.contains("Content-Transfer-Encoding: quoted-printable\n"),
        "{notice}"
    );
    assert!(
        notice.contains("Gr=C3=B6=C3=9Fe: na=C3=AFve caf=C3=A9"),
        "{notice}"
    );
    assert!(notice.contains("Status: 5.2.1"), "{notice}");
    // Its DKIM signature still verifies (dkimpy): the notice was signed in
    // the 7-bit form it travels in. Signed 8-bit and converted on the way,
    // it failed (body hash mismatch).
    let crlf = notice.replace('\n', "\r\n");
    let (ok, report) = dkimpy_verifies(crlf.as_bytes(), &keys.records);
    assert!(ok, "{report}\n{notice}");
    assert!(!plain_log(&server).contains("panicked"));
}
