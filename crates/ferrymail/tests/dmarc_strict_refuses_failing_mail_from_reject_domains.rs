//! `[auth.dmarc] verify = "strict"` through the real `ferrymail serve`,
//! with SPF and DMARC policies and a DKIM key served by a DNS server
//! inside the test and messages signed by dkimpy. Only DMARC is turned on:
//! it checks SPF and DKIM itself, and reports neither.
//!
//! * a message whose From domain says `p=reject`, with neither an aligned
//!   SPF pass nor an aligned DKIM pass, gets 550 5.7.1 at the end of DATA
//!   and is not queued, also when its envelope sender's own SPF passes
//!   (a look-alike sender, not aligned with From);
//! * the same domain's mail passes with an aligned DKIM signature or an
//!   aligned SPF pass, and is queued with `dmarc=pass (p=reject)`;
//! * a failing message from a `p=quarantine` domain is accepted (strict
//!   refuses only `reject`), with `dmarc=fail (p=quarantine)`;
//! * a message with a second From field (an aligned, passing one beside
//!   the forged one) is refused: DMARC needs exactly one From domain
//!   (RFC 7489 §6.6.1), or a forger could pass under the domain readers
//!   see.

mod common;
mod dns_support;
mod verify_support;

use common::*;
use dns_support::*;
use verify_support::*;

#[test]
fn reject_policy_refuses_unaligned_mail_and_quarantine_accepts_it() {
    let key = DkimKey::generate();
    let (_dns, s) = checked_server(
        Zone::new()
            .txt("bank.test", SPF_NOBODY)
            .txt("_dmarc.bank.test", "v=DMARC1; p=reject")
            .txt("s1._domainkey.bank.test", &key.record)
            .txt("lookalike.test", SPF_LOOPBACK)
            .txt("shop.test", SPF_NOBODY)
            .txt("_dmarc.shop.test", "v=DMARC1; p=quarantine"),
        "[auth.dmarc]\nverify = \"strict\"\n",
    );
    let forged = message("alerts@bank.test", "forged");
    let mut c = s.client();
    c.ehlo();
    let r = in_session(&mut c, "alerts@bank.test", &forged).answer();
    assert_eq!(
        r.lines,
        ["550 5.7.1 Rejected per the DMARC policy of bank.test"]
    );
    // The envelope sender's SPF passes, but it is not the From domain.
    let r = in_session(&mut c, "bounce@lookalike.test", &forged).answer();
    assert_eq!(
        r.lines,
        ["550 5.7.1 Rejected per the DMARC policy of bank.test"],
        "SPF must align with From"
    );
    assert!(queue_ids(&s.queue_json()).is_empty(), "nothing queued");

    // Two From fields: the forged bank.test one first, a passing
    // lookalike.test one after it.
    let two_froms = [
        b"From: <alerts@lookalike.test>\r\n".as_slice(),
        forged.as_slice(),
    ]
    .concat();
    let r = in_session(&mut c, "bounce@lookalike.test", &two_froms).answer();
    assert_eq!(
        r.lines,
        ["550 5.7.1 Rejected: DMARC needs exactly one From domain in the message"]
    );
    assert!(queue_ids(&s.queue_json()).is_empty(), "nothing queued");

    // Quarantine: accepted, and the field says what DMARC found.
    let reply = in_session(&mut c, "a@shop.test", &message("a@shop.test", "offer")).answer();
    c.cmd("QUIT");
    assert_eq!(
        our_results(&after_received(&s, &reply)).as_deref(),
        Some(
            "Authentication-Results: mx.ferry.test;\r\n\
             \tdmarc=fail (p=quarantine) header.from=shop.test\r\n"
        )
    );
}

#[test]
fn aligned_dkim_or_spf_passes_a_reject_domain() {
    let key = DkimKey::generate();
    let (_dns, s) = checked_server(
        Zone::new()
            .txt("bank.test", SPF_NOBODY)
            .txt("_dmarc.bank.test", "v=DMARC1; p=reject")
            .txt("s1._domainkey.bank.test", &key.record)
            .txt("shop.test", SPF_LOOPBACK)
            .txt("_dmarc.shop.test", "v=DMARC1; p=reject"),
        "[auth.dmarc]\nverify = \"strict\"\n",
    );
    let passing = "Authentication-Results: mx.ferry.test;\r\n\
                   \tdmarc=pass (p=reject) header.from=";
    // DKIM aligned (d=bank.test), SPF failing.
    let signed = key.sign("bank.test", "s1", &message("alerts@bank.test", "statement"));
    let reply = transaction(&s, "client.test", "alerts@bank.test", &signed).answer();
    assert_eq!(
        our_results(&after_received(&s, &reply)),
        Some(format!("{passing}bank.test\r\n"))
    );
    // SPF aligned (MAIL FROM shop.test lists the client), unsigned.
    let reply = transaction(
        &s,
        "client.test",
        "orders@shop.test",
        &message("orders@shop.test", "receipt"),
    )
    .answer();
    assert_eq!(
        our_results(&after_received(&s, &reply)),
        Some(format!("{passing}shop.test\r\n"))
    );
}
