//! Sender verification when the DNS fails, through the real `ferrymail
//! serve`: a name the in-test DNS server answers with SERVFAIL, or a
//! `[resolver]` where no server listens. A temporary error must never
//! bounce mail, so `strict` mode answers 4xx and the client tries again:
//!
//! * SPF: MAIL FROM gets 451 4.7.24 (RFC 7208 §8.6, RFC 7372 §3.2);
//! * DKIM: the key lookup fails, the message gets 451 4.7.20;
//! * DMARC: the policy lookup fails, the message gets 451 4.7.1;
//! * with no DNS server at all, MAIL FROM gets 451 4.7.24;
//! * `relaxed` mode accepts and says `spf=temperror`.

mod common;
mod dns_support;
mod verify_support;

use common::*;
use dns_support::*;
use verify_support::*;

fn zone(key: &DkimKey) -> Zone {
    Zone::new()
        .servfail("broken.test")
        .txt("sender.test", SPF_LOOPBACK)
        .servfail("s1._domainkey.sender.test")
        .txt("bank.test", SPF_LOOPBACK)
        .servfail("_dmarc.bank.test")
        .txt("s1._domainkey.bank.test", &key.record)
}

#[test]
fn strict_mode_answers_each_dns_failure_with_4xx() {
    let key = DkimKey::generate();
    let (_dns, s) = checked_server(
        zone(&key),
        "[auth.spf.verify]\nmail-from = \"strict\"\n[auth.dkim]\nverify = \"strict\"\n[auth.dmarc]\nverify = \"strict\"\n",
    );
    let mut c = s.client();
    c.ehlo();
    let r = in_session(&mut c, "a@broken.test", &message("a@broken.test", "spf")).refusal();
    assert_eq!(
        r.lines,
        [
            "451 4.7.24 SPF validation of the MAIL FROM identity broken.test failed temporarily, try again later"
        ]
    );
    let signed = key.sign("sender.test", "s1", &message("a@sender.test", "dkim"));
    let r = in_session(&mut c, "a@sender.test", &signed).answer();
    assert_eq!(
        r.lines,
        ["451 4.7.20 No passing DKIM signature found for now (DNS error), try again later"]
    );
    // SPF and DKIM pass here; only the DMARC policy cannot be read.
    let signed = key.sign("bank.test", "s1", &message("a@bank.test", "dmarc"));
    let r = in_session(&mut c, "a@bank.test", &signed).answer();
    assert_eq!(
        r.lines,
        ["451 4.7.1 DMARC policy of bank.test could not be evaluated now, try again later"]
    );
    c.cmd("QUIT");
    assert!(queue_ids(&s.queue_json()).is_empty());
}

#[test]
fn strict_mode_without_a_dns_server_answers_4xx() {
    let s = Server::start(&format!(
        "{}{LOCAL_DOMAIN}\n[auth.spf.verify]\nmail-from = \"strict\"\n",
        resolver_down()
    ));
    let mut c = s.client();
    // The resolver gives up after its timeouts and retries (about 15 s
    // here); SPF_TIMEOUT (30 s) bounds it in any case.
    c.writer
        .set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .unwrap();
    c.ehlo();
    let started = std::time::Instant::now();
    let r = in_session(&mut c, "a@sender.test", &message("a@sender.test", "down")).refusal();
    assert!(r.is(451, "4.7.24"), "{r:?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(40));
    c.cmd("QUIT");
}

#[test]
fn relaxed_mode_accepts_and_reports_temperror() {
    let key = DkimKey::generate();
    let (_dns, s) = checked_server(zone(&key), "[auth.spf.verify]\nmail-from = \"relaxed\"\n");
    let reply = transaction(
        &s,
        "client.test",
        "a@broken.test",
        &message("a@broken.test", "relaxed"),
    )
    .answer();
    assert_eq!(
        our_results(&after_received(&s, &reply)).as_deref(),
        Some(
            "Authentication-Results: mx.ferry.test;\r\n\tspf=temperror smtp.mailfrom=a@broken.test\r\n"
        )
    );
}
