//! `relaxed` sender verification through the real `ferrymail serve`, with
//! SPF policies, a DKIM key and DMARC policies served by a DNS server
//! inside the test and the message signed by dkimpy:
//!
//! * mail from a domain whose SPF record lists the client, signed with
//!   the domain's key, gets one Authentication-Results field (RFC 8601)
//!   under `server.hostname` saying `spf=pass smtp.mailfrom=...`,
//!   `dkim=pass header.d=... header.s=... header.b=...` and `dmarc=pass`,
//!   beside the HELO name's own SPF result; the client's bytes are stored
//!   as sent (dkimpy still verifies the signature), except a field forged
//!   under our name, which is removed (§5);
//! * forged mail (SPF `-all`, unsigned, DMARC `p=reject`) is accepted all
//!   the same in relaxed mode, and the field says so: `spf=fail`,
//!   `dkim=none`, `dmarc=fail (p=reject)`.

mod common;
mod dns_support;
mod verify_support;

use common::*;
use dns_support::*;
use verify_support::*;

const RELAXED: &str = r#"[auth.spf.verify]
ehlo = "relaxed"
mail-from = "relaxed"
[auth.dkim]
verify = "relaxed"
[auth.dmarc]
verify = "relaxed"
"#;

#[test]
fn authentic_mail_gets_pass_for_spf_dkim_and_dmarc_in_one_field() {
    let key = DkimKey::generate();
    let (_dns, s) = checked_server(
        Zone::new()
            .txt("client.test", SPF_NOBODY)
            .txt("sender.test", SPF_LOOPBACK)
            .txt("s1._domainkey.sender.test", &key.record)
            .txt("_dmarc.sender.test", "v=DMARC1; p=reject"),
        RELAXED,
    );
    let signed = key.sign("sender.test", "s1", &message("a@sender.test", "authentic"));
    // A field forged under our name, above the signature, and another
    // server's field, which is kept.
    let mut sent = b"Authentication-Results: mx.ferry.test; dkim=pass header.d=bank.example\r\n\
        Authentication-Results: upstream.example; spf=pass smtp.mailfrom=sender.test\r\n"
        .to_vec();
    sent.extend_from_slice(&signed);
    let reply = transaction(&s, "client.test", "a@sender.test", &sent).answer();
    let stored = after_received(&s, &reply);
    let b = signature_b(&signed);
    assert_eq!(
        our_results(&stored).as_deref(),
        Some(
            format!(
                "Authentication-Results: mx.ferry.test;\r\n\
                 \tspf=fail smtp.helo=client.test;\r\n\
                 \tspf=pass smtp.mailfrom=a@sender.test;\r\n\
                 \tdkim=pass header.d=sender.test header.s=s1 header.b={};\r\n\
                 \tdmarc=pass (p=reject) header.from=sender.test\r\n",
                // A MIME token (RFC 8601 §2.2) cannot hold '/'.
                if b.contains('/') {
                    format!("\"{b}\"")
                } else {
                    b.clone()
                }
            )
            .as_str()
        ),
        "{stored}"
    );
    // After our field, the client's bytes, the forged field removed.
    let ours = our_results(&stored).unwrap();
    let mut expected =
        b"Authentication-Results: upstream.example; spf=pass smtp.mailfrom=sender.test\r\n"
            .to_vec();
    expected.extend_from_slice(&signed);
    assert_eq!(
        &stored.as_bytes()[ours.len()..],
        expected,
        "{}",
        describe_diff(&expected, &stored.as_bytes()[ours.len()..])
    );
    // An independent verifier agrees the stored message's signature holds.
    let (ok, report) = dkimpy_verifies(
        stored.as_bytes(),
        &serde_json::json!({ "s1._domainkey.sender.test": key.record }),
    );
    assert!(ok, "dkimpy: {report}");
}

#[test]
fn forged_mail_is_accepted_and_the_field_says_it_failed() {
    let (_dns, s) = checked_server(
        Zone::new()
            .txt("client.test", SPF_LOOPBACK)
            .txt("bank.test", SPF_NOBODY)
            .txt("_dmarc.bank.test", "v=DMARC1; p=reject"),
        RELAXED,
    );
    let reply = transaction(
        &s,
        "client.test",
        "alerts@bank.test",
        &message("alerts@bank.test", "forged"),
    )
    .answer();
    assert!(reply.is(250, "2.0.0"), "relaxed never refuses: {reply:?}");
    let stored = after_received(&s, &reply);
    assert_eq!(
        our_results(&stored).as_deref(),
        Some(
            "Authentication-Results: mx.ferry.test;\r\n\
             \tspf=pass smtp.helo=client.test;\r\n\
             \tspf=fail smtp.mailfrom=alerts@bank.test;\r\n\
             \tdkim=none;\r\n\
             \tdmarc=fail (p=reject) header.from=bank.test\r\n"
        ),
        "{stored}"
    );
    assert!(
        log_has(&s.log_text(), &["spf", "MAIL FROM", "bank.test", "fail"]),
        "the result is logged"
    );
}
