//! An MTA-STS policy file as a web server returns it (RFC 8461 §3.2), the
//! TXT record (§3.1), and host matching (§4.1).
#![no_main]

use ferrymail_deliver::protocol::mta_sts::{MAX_MX_PATTERNS, parse_policy, record_id};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (String, Vec<String>, String)| {
    let (text, records, host) = input;
    if let Ok(policy) = parse_policy(&text) {
        assert!(policy.mx.len() <= MAX_MX_PATTERNS);
        let _ = policy.matches(&host);
        for p in &policy.mx {
            // Every pattern matches the host it names (a wildcard, a host
            // one label below it).
            let host = match p.strip_prefix("*.") {
                Some(rest) => format!("a.{rest}"),
                None => p.clone(),
            };
            assert!(policy.matches(&host), "{p:?} does not match {host:?}");
        }
    }
    let _ = record_id(&records);
});
