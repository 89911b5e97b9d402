//! One command line from an SMTP client, down the path the receive session
//! takes it: ORCPT taken out, smtp-proto's parser, the raw-line helpers,
//! and the ORCPT decoding. Then the stored ORCPT encoded again the way the
//! delivery client sends it must decode to the same stored form (what a
//! Ferrymail next hop would store).
#![no_main]

use ferrymail_receive::protocol::{address, rcpt_params};
use ferrymail_spool::orcpt;
use libfuzzer_sys::fuzz_target;
use smtp_proto::Request;

fuzz_target!(|line: &[u8]| {
    let taken = rcpt_params::take_orcpt(line);
    let parsed = match &taken {
        Some((rest, value)) => {
            // The line without the parameter is never longer than the line.
            assert!(rest.len() <= line.len());
            for smtputf8 in [false, true] {
                if let Ok(stored) = orcpt::decode(value, smtputf8) {
                    round_trip(&stored, smtputf8);
                }
            }
            rest.as_slice()
        }
        None => line,
    };
    let _ = address::raw_declared_size(line);
    let _ = address::raw_is_postmaster(line);
    if let Ok(request) = Request::parse(&mut parsed.iter()) {
        match request {
            Request::Mail { from } => {
                let _ = address::has_hidden_route(&from.address);
                let _ = address::domain_of(&from.address);
            }
            Request::Rcpt { to } => {
                let _ = address::has_hidden_route(&to.address);
                let _ = address::domain_of(&to.address);
            }
            _ => {}
        }
    }
});

/// The stored form, sent on as the delivery client encodes it, decodes to
/// itself.
fn round_trip(stored: &str, smtputf8: bool) {
    let (kind, addr) = stored.split_once(';').expect("stored ORCPT has a type");
    let wire = if orcpt::is_utf8_type(kind) {
        orcpt::encode_utf8_addr(addr, smtputf8)
    } else {
        ferrymail_deliver::protocol::command::xtext(addr)
    };
    let again = orcpt::decode(&format!("{kind};{wire}"), smtputf8)
        .unwrap_or_else(|e| panic!("{stored:?} sent as {wire:?} does not decode: {e}"));
    assert_eq!(again, stored, "sent as {wire:?}");
}
