//! iprev strict with a DNS that fails (SERVFAIL for the PTR) refuses
//! temporarily, 450 4.7.25, so a legitimate client retries later instead
//! of bouncing; postmaster stays reachable.

mod common;
mod dns_support;
use dns_support::*;

#[test]
fn servfail_on_the_ptr_gives_450_4_7_25() {
    let (_dns, s) = checked_server(
        Zone::new().servfail(LOOPBACK_PTR),
        "[auth.iprev]\nverify = \"strict\"\n",
    );
    let mut c = s.client();
    c.ehlo();
    assert_eq!(c.cmd("MAIL FROM:<a@example.org>").code, 250);
    let r = c.cmd("RCPT TO:<user@local.test>");
    assert!(r.is(450, "4.7.25"), "{r:?}\n{}", s.log_text());
    assert!(c.cmd("RCPT TO:<postmaster>").is(250, "2.1.5"));
    assert_eq!(c.cmd("QUIT").code, 221);
    let log = s.log_text();
    assert!(
        log_has(&log, &["iprev", "remote=127.0.0.1", "result=\"temperror\""]),
        "{log}"
    );
}
