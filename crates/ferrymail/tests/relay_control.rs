//! Ferrymail is never an open relay: the default refuses every non-local
//! recipient, and relaying tricks that hide a second destination in the local
//! part (percent hack, bang path, source route, a quoted `@`) are refused too.

mod common;
use common::*;

fn rcpt(s: &Server, to: &str) -> Reply {
    let mut c = s.client();
    c.ehlo();
    assert_eq!(c.cmd("MAIL FROM:<a@example.org>").code, 250);
    c.cmd(&format!("RCPT TO:<{to}>"))
}

#[test]
fn default_is_closed() {
    let s = Server::start("[session.rcpt]\nlocal-domains = [\"local.test\"]\n");
    assert!(rcpt(&s, "user@elsewhere.example").is(554, "5.7.1"));
    assert!(rcpt(&s, "user@local.test").is(250, "2.1.5"));
    assert!(
        rcpt(&s, "USER@LOCAL.TEST").is(250, "2.1.5"),
        "domains are case-insensitive"
    );
    assert!(rcpt(&s, "postmaster").is(250, "2.1.5"));
    // Percent hack, bang path and source route, each aimed at a remote domain
    // through a local one.
    assert!(rcpt(&s, "user%elsewhere.example@local.test").is(554, "5.7.1"));
    assert!(rcpt(&s, "elsewhere.example!user@local.test").is(554, "5.7.1"));
    assert!(rcpt(&s, "@local.test:user@elsewhere.example").is(554, "5.7.1"));
    // A quoted local part holding an address: smtp-proto hands it over
    // unquoted, `user@elsewhere.example@local.test`, which a backend
    // trusting this server would route on to elsewhere.example.
    assert!(rcpt(&s, "\"user@elsewhere.example\"@local.test").is(554, "5.7.1"));
    // A quoted local part without a route is just a local mailbox.
    assert!(rcpt(&s, "\"first last\"@local.test").is(250, "2.1.5"));
    // A source route that ends in a local domain is just that local domain
    // (RFC 5321 §3.6.1: the route is ignored).
    assert!(rcpt(&s, "@elsewhere.example:user@local.test").is(250, "2.1.5"));
}

#[test]
fn relay_expression_grants_relaying() {
    let s = Server::start(
        "[session.rcpt]\nlocal-domains = [\"local.test\"]\n\
         relay = \"remote_ip == '127.0.0.1' && rcpt_domain != 'blocked.example'\"\n",
    );
    assert!(rcpt(&s, "user@elsewhere.example").is(250, "2.1.5"));
    assert!(rcpt(&s, "user@blocked.example").is(554, "5.7.1"));
    // Relaying clients may use percent forms: the expression decides.
    assert!(rcpt(&s, "user%elsewhere.example@local.test").is(250, "2.1.5"));
}

#[test]
fn relay_expression_with_conditions() {
    let s = Server::start(
        "[session.rcpt]\nrelay = [ { if = \"in_network(remote_ip, '10.0.0.0/8')\", then = \"true\" },\n\
         { else = \"false\" } ]\n",
    );
    assert!(rcpt(&s, "user@elsewhere.example").is(554, "5.7.1"));
}

/// A trusted network written as an IPv4-mapped IPv6 address (how a
/// dual-stack listener's logs show IPv4 clients) is that one IPv4 host.
/// Before, its /128 was applied to 32 bits and every IPv4 client matched:
/// an open relay.
#[test]
fn trusted_network_written_as_a_mapped_address_is_one_host() {
    let other =
        Server::start("[session.rcpt]\nrelay = \"in_network(remote_ip, '::ffff:127.0.0.2')\"\n");
    assert!(rcpt(&other, "user@elsewhere.example").is(554, "5.7.1"));
    let other_net =
        Server::start("[session.rcpt]\nrelay = \"in_network(remote_ip, '::ffff:10.0.0.0/104')\"\n");
    assert!(rcpt(&other_net, "user@elsewhere.example").is(554, "5.7.1"));
    let this_one =
        Server::start("[session.rcpt]\nrelay = \"in_network(remote_ip, '::ffff:127.0.0.1')\"\n");
    assert!(rcpt(&this_one, "user@elsewhere.example").is(250, "2.1.5"));
}
