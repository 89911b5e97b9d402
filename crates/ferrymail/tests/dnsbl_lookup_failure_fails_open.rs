//! A DNSBL that cannot be asked (SERVFAIL, or no answer at all) does not
//! stop mail: the client counts as not listed, and a warning names the
//! zone. A blocklist outage must never refuse every sender.

mod common;
mod dns_support;
use dns_support::*;

#[test]
fn servfail_and_timeout_count_as_not_listed_with_a_warning() {
    let (_dns, s) = checked_server(
        Zone::new()
            .servfail("1.0.0.127.broken.test")
            .silent("1.0.0.127.silent.test"),
        "[session.connect]\ndnsbl = [\"broken.test\", \"silent.test\"]\n",
    );
    // The lookups run in the background: the greeting, EHLO and MAIL do not
    // wait for the silent zone (its query times out after 5 s); only RCPT
    // TO does.
    let started = std::time::Instant::now();
    let mut c = s.client();
    c.ehlo();
    assert_eq!(c.cmd("MAIL FROM:<a@example.org>").code, 250);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "greeting delayed by the DNS: {:?}",
        started.elapsed()
    );
    assert!(c.cmd("RSET").is(250, "2.0.0"));
    let r = c.send_message(
        "a@example.org",
        &["user@local.test"],
        b"Subject: hello\r\n\r\nblocklists down\r\n",
    );
    assert!(r.is(250, "2.0.0"), "{r:?}\n{}", s.log_text());
    assert_eq!(c.cmd("QUIT").code, 221);

    let log = s.log_text();
    for zone in ["broken.test", "silent.test"] {
        assert!(
            log_has(
                &log,
                &[
                    "WARN",
                    "dnsbl lookup failed",
                    &format!("zone={zone}"),
                    "result=\"error\""
                ]
            ),
            "no warning for {zone}:\n{log}"
        );
    }
}
