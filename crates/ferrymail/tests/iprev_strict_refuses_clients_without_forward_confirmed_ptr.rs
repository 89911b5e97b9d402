//! iprev strict refuses, at RCPT TO, a client whose address fails
//! forward-confirmed reverse DNS (RFC 8601 §2.7.3) with 550 5.7.25 (RFC
//! 7372 §3.3): a PTR name whose A records do not include the address, or
//! no PTR name at all. Postmaster stays reachable (RFC 5321 §4.5.1) and the
//! session stays usable.

mod common;
mod dns_support;
use common::*;
use dns_support::*;

fn strict(zone: Zone) -> (DnsServer, Server) {
    checked_server(
        zone,
        "[auth.iprev]
verify = \"strict\"
",
    )
}

fn assert_refused(s: &Server) {
    let mut c = s.client();
    c.ehlo();
    assert_eq!(c.cmd("MAIL FROM:<a@example.org>").code, 250);
    let r = c.cmd("RCPT TO:<user@local.test>");
    assert_eq!(
        r.lines,
        ["550 5.7.25 Reverse DNS validation failed"],
        "{}",
        s.log_text()
    );
    assert!(c.cmd("RCPT TO:<postmaster>").is(250, "2.1.5"));
    assert!(c.cmd("RSET").is(250, "2.0.0"));
    assert_eq!(c.cmd("QUIT").code, 221);
}

#[test]
fn ptr_name_that_does_not_lead_back_is_refused() {
    let (_dns, s) = strict(
        Zone::new()
            .ptr(LOOPBACK_PTR, "forged.client.test")
            .addr("forged.client.test", "192.0.2.1"),
    );
    assert_refused(&s);
    let log = s.log_text();
    assert!(
        log_has(&log, &["iprev", "remote=127.0.0.1", "result=\"fail\""]),
        "{log}"
    );
}

#[test]
fn address_without_ptr_is_refused() {
    // NXDOMAIN for the PTR: RFC 8601's permerror, refused like fail.
    let (_dns, s) = strict(Zone::new());
    assert_refused(&s);
    let log = s.log_text();
    assert!(
        log_has(&log, &["iprev", "remote=127.0.0.1", "result=\"permerror\""]),
        "{log}"
    );
}
