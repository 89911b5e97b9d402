//! iprev strict (RFC 8601 §2.7.3): a client whose PTR name leads back to
//! its address (forward-confirmed reverse DNS) is accepted, and the pass
//! is logged with the name.

mod common;
mod dns_support;
use common::*;
use dns_support::*;

#[test]
fn forward_confirmed_client_passes() {
    let dns = DnsServer::start(
        Zone::new()
            .ptr(LOOPBACK_PTR, "mail.client.test")
            .addr("mail.client.test", "192.0.2.1")
            .addr("mail.client.test", "127.0.0.1"),
    );
    let s = Server::start(&format!(
        "{}{LOCAL_DOMAIN}\n[auth.iprev]\nverify = \"strict\"\n",
        dns.resolver_toml()
    ));
    let mut c = s.client();
    c.ehlo();
    let r = c.send_message(
        "a@example.org",
        &["user@local.test"],
        b"Subject: hello\r\n\r\nconfirmed\r\n",
    );
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
