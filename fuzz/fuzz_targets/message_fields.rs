//! Header work the server does on every received message: counting
//! Received fields (loop detection), removing forged
//! Authentication-Results (RFC 8601 §5), and the header section a
//! notification returns (RET=HDRS).
#![no_main]

use ferrymail_receive::protocol::{auth_results, received};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|message: &[u8]| {
    let n = received::count_received(message);
    assert!(n <= message.len() / 9 + 1);
    if let Some(stripped) = auth_results::strip_forged(message, "mx.example.org") {
        assert!(stripped.len() < message.len(), "stripping added bytes");
        // What is left has no field of ours to strip.
        assert!(
            auth_results::strip_forged(&stripped, "mx.example.org").is_none(),
            "a forged field survived"
        );
    }
    let headers = ferrymail_report::compose::header_section(message);
    assert!(message.starts_with(headers));
    if let Ok(text) = std::str::from_utf8(message) {
        for utf8 in [false, true] {
            let cleaned = ferrymail_report::compose::clean(text, utf8);
            assert!(!cleaned.contains('\n') && !cleaned.contains('\r'));
            assert!(utf8 || cleaned.is_ascii(), "{cleaned:?}");
        }
    }
});
