//! Sender verification is for mail from elsewhere. Through the real
//! `ferrymail serve`, with every check `strict` and the sender's domain
//! publishing `-all` and `p=reject` in a DNS server inside the test:
//!
//! * a client that is not trusted is refused at MAIL FROM (550 5.7.23);
//! * the same mail from a session that authenticated with AUTH is queued,
//!   unverified: its Authentication-Results field says only `auth=pass`,
//!   and no SPF, DKIM or DMARC record of the sender was looked up (the
//!   HELO name's SPF lookup starts at EHLO, before AUTH, and its failing
//!   result is then left unused);
//! * the same mail from a client `session.rcpt.relay` trusts (its own
//!   network) is queued unverified, with no field at all.

mod common;
mod dns_support;
mod verify_support;

use common::*;
use dns_support::*;
use hickory_server::proto::rr::RecordType;
use verify_support::*;

const STRICT: &str = r#"[auth.spf.verify]
ehlo = "strict"
mail-from = "strict"
[auth.dkim]
verify = "strict"
[auth.dmarc]
verify = "strict"
"#;

fn zone() -> Zone {
    Zone::new()
        .txt("client.test", SPF_NOBODY)
        .txt("example.org", SPF_NOBODY)
        .txt("_dmarc.example.org", "v=DMARC1; p=reject")
}

fn txt_lookups(dns: &DnsServer) -> Vec<String> {
    dns.asked()
        .into_iter()
        .filter(|(_, t)| *t == RecordType::TXT)
        .map(|(n, _)| n)
        .collect()
}

#[test]
fn authenticated_sessions_are_not_verified_and_strangers_are() {
    let dns = DnsServer::start(zone());
    let s = Server::start(&format!(
        r#"{resolver}
[session.rcpt]
local-domains = ["local.test"]
relay = "!is_empty(authenticated_as)"

[session.auth]
directory = "'users'"
allow-plain-text = true

[directory.users]
type = "memory"

[[directory.users.principals]]
name = "alice"
secret = "alice-pw"
email = ["alice@example.org"]

{STRICT}"#,
        resolver = dns.resolver_toml()
    ));
    let body = message("alice@example.org", "submitted");
    let mut c = s.client();
    c.ehlo();
    // \0alice\0alice-pw
    assert!(c.cmd("AUTH PLAIN AGFsaWNlAGFsaWNlLXB3").is(235, "2.7.0"));
    let reply = in_session(&mut c, "alice@example.org", &body).answer();
    c.cmd("QUIT");
    assert_eq!(
        our_results(&after_received(&s, &reply)).as_deref(),
        Some("Authentication-Results: mx.ferry.test;\r\n\tauth=pass smtp.auth=alice\r\n")
    );
    assert_eq!(
        txt_lookups(&dns),
        ["client.test"],
        "nothing was looked up for the authenticated session's sender"
    );

    // Without AUTH the same mail is verified, and refused.
    let r = transaction(&s, "client.test", "alice@example.org", &body).refusal();
    assert!(r.is(550, "5.7.23"), "{r:?}");
    assert!(!txt_lookups(&dns).is_empty());
}

#[test]
fn clients_the_relay_rule_trusts_are_not_verified() {
    let dns = DnsServer::start(zone());
    let s = Server::start(&format!(
        "{}[session.rcpt]\nlocal-domains = [\"local.test\"]\nrelay = \"in_network(remote_ip, '127.0.0.0/8')\"\n\n{STRICT}",
        dns.resolver_toml()
    ));
    let body = message("alice@example.org", "internal");
    let reply = transaction(&s, "client.test", "alice@example.org", &body).answer();
    assert!(reply.is(250, "2.0.0"), "{reply:?}");
    assert_eq!(
        after_received(&s, &reply).as_bytes(),
        body,
        "no field: nothing was verified"
    );
    assert_eq!(txt_lookups(&dns), Vec::<String>::new());
}
