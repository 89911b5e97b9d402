//! With sender verification off, the default or `disable` written out for
//! all four settings, the real `ferrymail serve` looks nothing up and
//! adds nothing: mail forged from a domain publishing SPF `-all` and DMARC
//! `p=reject` (in a DNS server inside the test, which `[resolver]` points
//! at) is queued exactly as sent, and the DNS server was asked no TXT
//! question. The benchmark path pays nothing for the feature.

mod common;
mod dns_support;
mod verify_support;

use dns_support::*;
use hickory_server::proto::rr::RecordType;
use verify_support::*;

const DISABLED: &str = r#"[auth.spf.verify]
ehlo = "disable"
mail-from = "disable"
[auth.dkim]
verify = "disable"
[auth.dmarc]
verify = "disable"
"#;

#[test]
fn disable_checks_nothing_and_adds_nothing() {
    for settings in ["", DISABLED] {
        let (dns, s) = checked_server(
            Zone::new()
                .txt("client.test", SPF_NOBODY)
                .txt("bank.test", SPF_NOBODY)
                .txt("_dmarc.bank.test", "v=DMARC1; p=reject"),
            settings,
        );
        let body = message("alerts@bank.test", "forged");
        let reply = transaction(&s, "client.test", "alerts@bank.test", &body).answer();
        assert!(reply.is(250, "2.0.0"), "{reply:?}");
        assert_eq!(
            after_received(&s, &reply).as_bytes(),
            body,
            "stored as sent, no Authentication-Results ({settings:?})"
        );
        let txt: Vec<_> = dns
            .asked()
            .into_iter()
            .filter(|(_, t)| *t == RecordType::TXT)
            .collect();
        assert!(txt.is_empty(), "no lookups, got {txt:?}");
    }
}
