//! A client listed in a DNSBL (RFC 5782) is refused at RCPT TO with
//! Postfix's reply naming the zone, while a zone that does not list it has
//! no effect; the session stays usable, and postmaster is still accepted
//! (RFC 5321 §4.5.1). The DNSBLs are served by a real DNS server.

mod common;
mod dns_support;
use dns_support::*;

#[test]
fn listed_client_is_refused_at_rcpt_and_the_zone_is_named() {
    // Both zones carry RFC 5782 §5's test point (127.0.0.2 is listed);
    // only listed.test lists 127.0.0.1, where the test connects from.
    let (_dns, s) = checked_server(
        Zone::new()
            .addr("2.0.0.127.clean.test", "127.0.0.2")
            .addr("2.0.0.127.listed.test", "127.0.0.2")
            .addr("1.0.0.127.listed.test", "127.0.0.2"),
        "[session.connect]\ndnsbl = [\"clean.test\", \"listed.test\"]\n",
    );
    let mut c = s.client();
    c.ehlo();
    assert_eq!(c.cmd("MAIL FROM:<a@example.org>").code, 250);
    let r = c.cmd("RCPT TO:<user@local.test>");
    assert_eq!(
        r.lines,
        ["554 5.7.1 Service unavailable; client [127.0.0.1] blocked using listed.test"],
        "{}",
        s.log_text()
    );
    // RFC 5321 §4.5.1: postmaster stays reachable.
    assert!(c.cmd("RCPT TO:<postmaster>").is(250, "2.1.5"));
    assert!(c.cmd("RCPT TO:<postmaster@local.test>").is(250, "2.1.5"));
    // The session stays usable: RSET, a new transaction, QUIT.
    assert!(c.cmd("RSET").is(250, "2.0.0"));
    assert_eq!(c.cmd("MAIL FROM:<a@example.org>").code, 250);
    assert!(c.cmd("RCPT TO:<other@local.test>").is(554, "5.7.1"));
    assert_eq!(c.cmd("QUIT").code, 221);
    // Both refusals are counted for GET /metrics.
    let (status, metrics) = s.api_get("/metrics");
    assert_eq!(status, 200);
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(
        metrics
            .lines()
            .any(|l| l == "ferrymail_smtp_connection_checks_refused_total 2"),
        "{metrics}"
    );

    let log = s.log_text();
    assert!(
        log_has(
            &log,
            &[
                "dnsbl",
                "remote=127.0.0.1",
                "zone=listed.test",
                "result=\"listed\"",
                "answer=127.0.0.2"
            ]
        ),
        "{log}"
    );
    assert!(
        log_has(&log, &["dnsbl", "zone=clean.test", "result=\"not listed\""]),
        "{log}"
    );
    assert!(
        log_has(
            &log,
            &[
                "recipient refused by connection checks",
                "rcpt=user@local.test",
                "blocked using listed.test"
            ]
        ),
        "{log}"
    );
}
