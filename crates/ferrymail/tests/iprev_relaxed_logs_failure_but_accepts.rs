//! iprev relaxed looks the client up and logs the result, but never
//! refuses: a client whose PTR name does not lead back is accepted, and the
//! log says "fail".

mod common;
mod dns_support;
use dns_support::*;

#[test]
fn failed_iprev_is_logged_and_the_mail_accepted() {
    let (_dns, s) = checked_server(
        Zone::new()
            .ptr(LOOPBACK_PTR, "forged.client.test")
            .addr("forged.client.test", "192.0.2.1"),
        "[auth.iprev]\nverify = \"relaxed\"\n",
    );
    let r = send_to_local(&s, "relaxed");
    assert!(r.is(250, "2.0.0"), "{r:?}\n{}", s.log_text());
    let log = s.log_text();
    assert!(
        log_has(&log, &["iprev", "remote=127.0.0.1", "result=\"fail\""]),
        "{log}"
    );
}
