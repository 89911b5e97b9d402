//! A client that `session.rcpt.relay` trusts (an office network, say) is
//! not refused by the DNSBL or iprev checks, as Postfix's
//! `permit_mynetworks` before `reject_rbl_client` and
//! `reject_unknown_reverse_client_hostname`: internal clients often lack
//! reverse DNS, and turning the checks on must not cut them off. The
//! lookups still run and are logged.

mod common;
mod dns_support;
use common::*;
use dns_support::*;

#[test]
fn trusted_client_is_accepted_though_listed_and_without_ptr() {
    let dns = DnsServer::start(Zone::new().addr("1.0.0.127.listed.test", "127.0.0.2"));
    let s = Server::start(&format!(
        "{}[session.rcpt]\nlocal-domains = [\"local.test\"]\nrelay = \"remote_ip == '127.0.0.1'\"\n\n\
         [session.connect]\ndnsbl = [\"listed.test\"]\n\n[auth.iprev]\nverify = \"strict\"\n",
        dns.resolver_toml()
    ));
    let mut c = s.client();
    c.ehlo();
    let r = c.send_message(
        "a@example.org",
        &["user@local.test", "someone@elsewhere.example"],
        b"Subject: hello\r\n\r\nfrom the office\r\n",
    );
    assert!(r.is(250, "2.0.0"), "{r:?}\n{}", s.log_text());
    let log = s.log_text();
    assert!(
        log_has(&log, &["dnsbl", "zone=listed.test", "result=\"listed\""]),
        "{log}"
    );
    assert!(
        log_has(&log, &["iprev", "remote=127.0.0.1", "result=\"permerror\""]),
        "{log}"
    );
}

/// The trust that spares a client is the client's own: a relay rule that
/// names a recipient domain (a backup MX relaying for a customer) must not
/// let a listed client past the blocklist for that domain. Before, the
/// exemption was evaluated per recipient and it did.
#[test]
fn a_relay_rule_for_a_recipient_domain_spares_no_listed_client() {
    let dns = DnsServer::start(Zone::new().addr("1.0.0.127.listed.test", "127.0.0.2"));
    let s = Server::start(&format!(
        "{}[session.rcpt]\nrelay = \"rcpt_domain == 'customer.example'\"\n\n\
         [session.connect]\ndnsbl = [\"listed.test\"]\n",
        dns.resolver_toml()
    ));
    let mut c = s.client();
    c.ehlo();
    assert_eq!(c.cmd("MAIL FROM:<a@example.org>").code, 250);
    let r = c.cmd("RCPT TO:<someone@customer.example>");
    assert!(r.is(554, "5.7.1"), "{r:?}\n{}", s.log_text());
}
