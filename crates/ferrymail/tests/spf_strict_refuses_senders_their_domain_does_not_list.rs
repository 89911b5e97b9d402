//! `[auth.spf.verify]` in `strict` mode through the real `ferrymail
//! serve`, SPF policies served by a DNS server inside the test:
//!
//! * MAIL FROM a domain whose policy does not list the client (`-all`)
//!   gets 550 5.7.23 (RFC 7372 §3.2, RFC 7208 §8.4); so does `~all`,
//!   since Stalwart's strict demands a pass; a broken record gets 550
//!   5.7.24; the session stays usable, and a sender whose domain lists
//!   the client is then accepted with `spf=pass` in the field;
//! * `ehlo = "strict"` refuses MAIL FROM when the HELO name's policy does
//!   not list the client, whatever the sender;
//! * each refusal is counted in `GET /metrics`.

mod common;
mod dns_support;
mod verify_support;

use dns_support::*;
use verify_support::*;

fn zone() -> Zone {
    Zone::new()
        .txt("client.test", SPF_LOOPBACK)
        .txt("bad-helo.test", SPF_NOBODY)
        .txt("allowed.test", SPF_LOOPBACK)
        .txt("forged.test", SPF_NOBODY)
        .txt("soft.test", "v=spf1 ~all")
        .txt("broken.test", "v=spf1 ip4:not-an-address -all")
}

#[test]
fn mail_from_a_domain_that_does_not_list_the_client_is_refused() {
    let (_dns, s) = checked_server(zone(), "[auth.spf.verify]\nmail-from = \"strict\"\n");
    let mut c = s.client();
    c.ehlo();
    let body = message("a@allowed.test", "hello");
    let r = in_session(&mut c, "a@forged.test", &body).refusal();
    assert_eq!(
        r.lines,
        ["550 5.7.23 SPF validation of the MAIL FROM identity forged.test failed: fail"]
    );
    let r = in_session(&mut c, "a@soft.test", &body).refusal();
    assert_eq!(
        r.lines,
        ["550 5.7.23 SPF validation of the MAIL FROM identity soft.test failed: softfail"],
        "strict demands a pass, as Stalwart's does"
    );
    let r = in_session(&mut c, "a@broken.test", &body).refusal();
    assert_eq!(
        r.lines,
        ["550 5.7.24 SPF validation of the MAIL FROM identity broken.test failed: permerror"]
    );
    // The session is still usable: a listed sender gets through.
    let reply = in_session(&mut c, "a@allowed.test", &body).answer();
    c.cmd("QUIT");
    let stored = after_received(&s, &reply);
    assert_eq!(
        our_results(&stored).as_deref(),
        Some(
            "Authentication-Results: mx.ferry.test;\r\n\tspf=pass smtp.mailfrom=a@allowed.test\r\n"
        ),
        "{stored}"
    );
    let (status, metrics) = s.api_get("/metrics");
    assert_eq!(status, 200);
    let metrics = String::from_utf8(metrics).unwrap();
    assert!(
        metrics.contains("ferrymail_smtp_sender_verification_refused_total{check=\"spf\"} 3"),
        "{metrics}"
    );
}

#[test]
fn a_helo_name_that_does_not_list_the_client_refuses_its_mail() {
    let (_dns, s) = checked_server(zone(), "[auth.spf.verify]\nehlo = \"strict\"\n");
    let body = message("a@allowed.test", "hello");
    let r = transaction(&s, "bad-helo.test", "a@allowed.test", &body).refusal();
    assert_eq!(
        r.lines,
        ["550 5.7.23 SPF validation of the HELO identity bad-helo.test failed: fail"]
    );
    let reply = transaction(&s, "client.test", "a@forged.test", &body).answer();
    assert_eq!(
        our_results(&after_received(&s, &reply)).as_deref(),
        Some("Authentication-Results: mx.ferry.test;\r\n\tspf=pass smtp.helo=client.test\r\n"),
        "only the HELO identity is checked"
    );
}
