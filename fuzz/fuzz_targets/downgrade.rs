//! 8-bit MIME to 7 bits for a next hop without 8BITMIME: whatever message
//! a client sent, the conversion either declines or gives 7-bit text.
#![no_main]

use ferrymail_deliver::protocol::downgrade::{quoted_printable, to_seven_bit};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|message: &[u8]| {
    let qp = quoted_printable(message);
    assert!(qp.is_ascii(), "quoted-printable output has 8-bit octets");
    // RFC 2045 §6.7 (5): encoded lines are at most 76 characters.
    for line in qp.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        assert!(line.len() <= 76, "line of {} characters", line.len());
    }
    assert_eq!(
        qp_decode(&qp),
        message,
        "decoding does not give the body back"
    );
    if let Some(out) = to_seven_bit(message) {
        assert!(out.is_ascii(), "converted message has 8-bit octets");
    }
});

/// RFC 2045 §6.7 decoding of what `quoted_printable` writes.
fn qp_decode(encoded: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(encoded.len());
    let mut i = 0;
    while i < encoded.len() {
        if encoded[i] == b'=' {
            if encoded[i + 1..].starts_with(b"\r\n") {
                i += 3;
                continue;
            }
            let hex = std::str::from_utf8(&encoded[i + 1..i + 3]).expect("hex digits");
            out.push(u8::from_str_radix(hex, 16).expect("hex digits"));
            i += 3;
        } else {
            out.push(encoded[i]);
            i += 1;
        }
    }
    out
}
