//! A client that no configured DNSBL lists gets its mail accepted, and each
//! lookup is logged with its result. RFC 5782 §5's test point (127.0.0.2)
//! is listed in the zone, so the zone itself works; 127.0.0.1, where the
//! test connects from, is not (NXDOMAIN).

mod common;
mod dns_support;
use dns_support::*;

#[test]
fn unlisted_client_is_accepted_and_the_lookup_logged() {
    let (_dns, s) = checked_server(
        Zone::new().addr("2.0.0.127.clean.test", "127.0.0.2"),
        "[session.connect]\ndnsbl = [\"clean.test\"]\n",
    );
    let mut c = s.client();
    c.ehlo();
    let r = c.send_message(
        "a@example.org",
        &["user@local.test"],
        b"Subject: hello\r\n\r\nnot listed\r\n",
    );
    assert!(r.is(250, "2.0.0"), "{r:?}");
    assert_eq!(c.cmd("QUIT").code, 221);

    // The lookup really happened: switched off, there is no such line.
    let log = s.log_text();
    assert!(
        log_has(
            &log,
            &[
                "dnsbl",
                "remote=127.0.0.1",
                "zone=clean.test",
                "result=\"not listed\""
            ]
        ),
        "{log}"
    );
}
