//! iprev strict (RFC 8601 §2.7.3): a client whose PTR name leads back to
//! its address (forward-confirmed reverse DNS) is accepted, and the pass
//! is logged with the name.

mod common;
mod dns_support;
use dns_support::*;

#[test]
fn forward_confirmed_client_passes() {
    let (_dns, s) = checked_server(
        Zone::new()
            .ptr(LOOPBACK_PTR, "mail.client.test")
            .addr("mail.client.test", "192.0.2.1")
            .addr("mail.client.test", "127.0.0.1"),
        "[auth.iprev]\nverify = \"strict\"\n",
    );
    let r = send_to_local(&s, "confirmed");
    assert!(r.is(250, "2.0.0"), "{r:?}\n{}", s.log_text());

    // The check ran (and passed): switched off, there is no such line.
    let log = s.log_text();
    assert!(
        log_has(
            &log,
            &[
                "iprev",
                "remote=127.0.0.1",
                "result=\"pass\"",
                "ptr=mail.client.test"
            ]
        ),
        "{log}"
    );
}
