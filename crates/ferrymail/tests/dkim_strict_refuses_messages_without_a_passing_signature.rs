//! `[auth.dkim] verify = "strict"` through the real `ferrymail serve`,
//! with messages signed by dkimpy and the key served by a DNS server
//! inside the test. At the end of DATA (and of BDAT LAST), before the
//! message is made durable:
//!
//! * a message whose body changed after signing, one signed with a key
//!   other than the published one, and an unsigned one (Stalwart's strict
//!   refuses mail with no passing signature) each get 550 5.7.20 (RFC 7372
//!   §3.1) and are not queued;
//! * a message with a good signature is queued with `dkim=pass` in the
//!   field, and so is one that carries a bad signature beside a good one.

mod common;
mod dns_support;
mod verify_support;

use common::*;
use dns_support::*;
use verify_support::*;

const REFUSED: &str = "550 5.7.20 No passing DKIM signature found";

fn server(key: &DkimKey) -> (DnsServer, Server) {
    checked_server(
        Zone::new().txt("s1._domainkey.sender.test", &key.record),
        "[auth.dkim]\nverify = \"strict\"\n",
    )
}

#[test]
fn messages_without_a_passing_signature_are_refused_and_not_queued() {
    let key = DkimKey::generate();
    let other = DkimKey::generate();
    let (_dns, s) = server(&key);
    let mut tampered = key.sign("sender.test", "s1", &message("a@sender.test", "tampered"));
    tampered.extend_from_slice(b"P.S. send the money elsewhere.\r\n");
    let wrong_key = other.sign("sender.test", "s1", &message("a@sender.test", "wrong-key"));
    let unsigned = message("a@sender.test", "unsigned");
    let mut c = s.client();
    c.ehlo();
    for (what, body) in [
        ("body changed after signing", &tampered),
        ("signed with another key", &wrong_key),
        ("unsigned", &unsigned),
    ] {
        let r = in_session(&mut c, "a@sender.test", body).answer();
        assert_eq!(r.lines, [REFUSED], "{what}");
    }
    c.cmd("QUIT");
    assert!(
        queue_ids(&s.queue_json()).is_empty(),
        "nothing refused was queued"
    );
}

#[test]
fn a_passing_signature_is_accepted_with_the_result_in_the_field() {
    let key = DkimKey::generate();
    let other = DkimKey::generate();
    let (_dns, s) = server(&key);
    let signed = key.sign("sender.test", "s1", &message("a@sender.test", "good"));
    let reply = transaction(&s, "client.test", "a@sender.test", &signed).answer();
    let stored = after_received(&s, &reply);
    let b = signature_b(&signed);
    let b = if b.contains('/') {
        format!("\"{b}\"")
    } else {
        b
    };
    assert_eq!(
        our_results(&stored),
        Some(format!(
            "Authentication-Results: mx.ferry.test;\r\n\
             \tdkim=pass header.d=sender.test header.s=s1 header.b={b}\r\n"
        )),
        "{stored}"
    );
    // One good signature is enough; the bad one is reported too.
    let both = other.sign("sender.test", "s1", &signed);
    let reply = transaction(&s, "client.test", "a@sender.test", &both).answer();
    let stored = after_received(&s, &reply);
    let field = our_results(&stored).unwrap();
    assert!(field.contains("\tdkim=fail "), "{field}");
    assert!(
        field.contains("\tdkim=pass header.d=sender.test"),
        "{field}"
    );
}

#[test]
fn bdat_last_is_refused_like_data() {
    let key = DkimKey::generate();
    let (_dns, s) = server(&key);
    let body = message("a@sender.test", "chunked");
    let mut c = s.client();
    c.ehlo();
    assert_eq!(c.cmd("MAIL FROM:<a@sender.test>").code, 250);
    assert_eq!(c.cmd("RCPT TO:<user@local.test>").code, 250);
    c.send_raw(format!("BDAT {} LAST\r\n", body.len()).as_bytes());
    c.send_raw(&body);
    let r = c.read();
    assert_eq!(r.lines, [REFUSED]);
    c.cmd("QUIT");
    assert!(queue_ids(&s.queue_json()).is_empty());
}
