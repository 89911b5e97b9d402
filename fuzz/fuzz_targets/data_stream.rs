//! The DATA body on the wire, both ways.
//!
//! * Receive: however TCP cuts the stream, the decoder finds the same end
//!   and the same contents.
//! * Deliver, then receive: contents dot-stuffed by the delivery client and
//!   read back by the receive decoder are the contents again (with the
//!   final CRLF the terminator adds), for contents whose line ends are all
//!   CRLF. Bare CR and LF starts are stuffed too (smuggling defence), so
//!   those only gain dots and must still end exactly at the terminator.
#![no_main]

use ferrymail_deliver::protocol::data::dot_stuffed;
use ferrymail_receive::protocol::data::DataDecoder;
use libfuzzer_sys::fuzz_target;

fn decode_in_pieces(input: &[u8], cuts: &[usize]) -> (Vec<u8>, Option<usize>) {
    let mut d = DataDecoder::new(u64::MAX);
    let mut out = Vec::new();
    let mut start = 0;
    for &cut in cuts.iter().chain(std::iter::once(&input.len())) {
        let cut = cut.clamp(start, input.len());
        let fed = d.feed(&input[start..cut], &mut out);
        assert!(fed.consumed <= cut - start);
        if fed.done {
            assert_eq!(d.size(), out.len() as u64);
            return (out, Some(start + fed.consumed));
        }
        assert_eq!(fed.consumed, cut - start);
        start = cut;
    }
    (out, None)
}

fuzz_target!(|input: (Vec<u8>, Vec<u8>)| {
    let (bytes, cut_bytes) = input;
    // The stream as a client sent it, cut where the fuzzer says.
    let mut cuts: Vec<usize> = cut_bytes
        .chunks(2)
        .map(|c| c.iter().fold(0usize, |n, &b| n * 256 + b as usize) % (bytes.len() + 1))
        .collect();
    cuts.sort_unstable();
    let whole = decode_in_pieces(&bytes, &[]);
    let pieces = decode_in_pieces(&bytes, &cuts);
    assert_eq!(whole, pieces, "cut at {cuts:?}");
    if let Some(end) = whole.1 {
        assert!(bytes[..end].ends_with(b".\r\n"));
    }

    // The same bytes as contents, relayed.
    let wire = dot_stuffed(&bytes);
    let (out, end) = decode_in_pieces(&wire, &cuts);
    assert_eq!(
        end,
        Some(wire.len()),
        "the terminator, and nothing before it, ends the data"
    );
    let mut expected = bytes.clone();
    if !expected.is_empty() && !expected.ends_with(b"\r\n") {
        expected.extend_from_slice(b"\r\n");
    }
    let bare = bytes.windows(2).enumerate().any(|(i, w)| {
        (w[0] == b'\r' && w[1] != b'\n')
            || (w[1] == b'\n' && w[0] != b'\r')
            || (i == 0 && w[0] == b'\n')
    }) || bytes == b"\n"
        || bytes.last() == Some(&b'\r');
    if !bare {
        assert_eq!(out, expected);
    } else {
        // Only dots were added.
        assert!(out.len() >= expected.len());
    }
});
