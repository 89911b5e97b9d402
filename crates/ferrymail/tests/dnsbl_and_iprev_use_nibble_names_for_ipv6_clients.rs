//! An IPv6 client is looked up in nibble form: in the DNSBL as RFC 5782
//! §2.4 says, and under ip6.arpa for its PTR, whose name must then have an
//! AAAA record equal to the address (RFC 8601 §2.7.3). The test connects
//! from ::1 to a listener on [::1]; without IPv6 loopback it is skipped.

mod common;
mod dns_support;
use common::*;
use dns_support::*;

/// ::1 reversed, one nibble per label.
const LOOPBACK6_NIBBLES: &str = "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0";

#[test]
fn ipv6_client_is_listed_by_nibble_name_and_its_ptr_checked_by_aaaa() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("no IPv6 loopback here; skipped");
        return;
    }
    let dns = DnsServer::start(
        Zone::new()
            .addr(&format!("{LOOPBACK6_NIBBLES}.listed.test"), "127.0.0.2")
            .ptr(
                &format!("{LOOPBACK6_NIBBLES}.ip6.arpa"),
                "host6.client.test",
            )
            .addr("host6.client.test", "::1")
            // The A record must not count for an IPv6 client.
            .addr("host6.client.test", "127.0.0.1"),
    );
    // A port free on [::1] itself (free_port() probes IPv4 only, and
    // another test's server may hold the same number on IPv6).
    let port6 = std::net::TcpListener::bind("[::1]:0")
        .and_then(|l| l.local_addr())
        .expect("a free port on [::1]")
        .port();
    let s = Server::start(&format!(
        "{}{LOCAL_DOMAIN}\n[session.connect]\ndnsbl = [\"listed.test\"]\n\n\
         [auth.iprev]\nverify = \"strict\"\n\n\
         [server.listener.smtp6]\nbind = [\"[::1]:{port6}\"]\nprotocol = \"smtp\"\n",
        dns.resolver_toml()
    ));
    let mut c = Smtp::connect(std::net::SocketAddr::from((
        std::net::Ipv6Addr::LOCALHOST,
        port6,
    )));
    c.ehlo();
    assert_eq!(c.cmd("MAIL FROM:<a@example.org>").code, 250);
    let r = c.cmd("RCPT TO:<user@local.test>");
    assert_eq!(
        r.lines,
        ["554 5.7.1 Service unavailable; client [::1] blocked using listed.test"],
        "{}",
        s.log_text()
    );
    assert_eq!(c.cmd("QUIT").code, 221);
    let log = s.log_text();
    assert!(
        log_has(
            &log,
            &[
                "iprev",
                "remote=::1",
                "result=\"pass\"",
                "ptr=host6.client.test"
            ]
        ),
        "{log}"
    );
}
