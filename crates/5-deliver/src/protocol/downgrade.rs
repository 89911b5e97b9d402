//! 8-bit MIME to 7 bits, for a next hop without 8BITMIME. RFC 6152 §3 lets
//! a relay either return such mail or convert it; returning it fails mail
//! that only has an accented word in a text part. Each leaf part whose
//! body has 8-bit octets and no transfer encoding is re-encoded as
//! quoted-printable (RFC 2045 §6.7), its Content-Transfer-Encoding field
//! replaced or added; nothing else changes. What cannot be converted this
//! way (8-bit header fields, a message without MIME-Version, 8-bit text
//! inside an attached message or outside the parts) is left to the caller
//! to refuse, as before. No I/O.
//!
//! A DKIM signature over a converted body no longer verifies; signers that
//! care sign 7-bit content (RFC 6376 §5.3), as Postfix's users learn too.

use std::ops::Range;

use mail_parser::{Encoding, HeaderName, MessageParser, PartType};

/// The field that replaces or joins a converted part's header.
const QP_FIELD: &[u8] = b"Content-Transfer-Encoding: quoted-printable\r\n";

/// `message` with every 8-bit leaf part quoted-printable, or `None` when the
/// result would still not be 7-bit (or the message is not MIME).
pub fn to_seven_bit(message: &[u8]) -> Option<Vec<u8>> {
    let parsed = MessageParser::default().parse(message)?;
    // RFC 2045 §4: without MIME-Version no Content-Transfer-Encoding means
    // anything, so a bare 8-bit message cannot be converted.
    if !parsed
        .headers()
        .iter()
        .any(|h| h.name == HeaderName::MimeVersion)
    {
        return None;
    }
    let mut edits: Vec<(Range<usize>, Vec<u8>)> = Vec::new();
    for part in &parsed.parts {
        let leaf = matches!(
            part.body,
            PartType::Text(_) | PartType::Html(_) | PartType::Binary(_) | PartType::InlineBinary(_)
        );
        let body = part.offset_body as usize..part.offset_end as usize;
        if !leaf
            || part.encoding != Encoding::None
            || body.end > message.len()
            || message[body.clone()].is_ascii()
        {
            continue;
        }
        match part
            .headers
            .iter()
            .find(|h| h.name == HeaderName::ContentTransferEncoding)
        {
            Some(h) => edits.push((
                h.offset_field as usize..h.offset_end as usize,
                QP_FIELD.to_vec(),
            )),
            None => {
                let at = part.offset_header as usize;
                edits.push((at..at, QP_FIELD.to_vec()));
            }
        }
        edits.push((body.clone(), quoted_printable(&message[body])));
    }
    if edits.is_empty() {
        return None;
    }
    edits.sort_by_key(|(r, _)| (r.start, r.end));
    let mut out = Vec::with_capacity(message.len() + message.len() / 4);
    let mut at = 0;
    for (range, with) in edits {
        if range.start < at {
            return None; // overlapping edits: not a shape this handles
        }
        out.extend_from_slice(&message[at..range.start]);
        out.extend_from_slice(&with);
        at = range.end;
    }
    out.extend_from_slice(&message[at..]);
    out.is_ascii().then_some(out)
}

/// Quoted-printable (RFC 2045 §6.7) of `body`, line by line: CRLF line
/// breaks stay line breaks, any other CR or LF is encoded (`=0D`, `=0A`)
/// and the line goes on, trailing white space is encoded (rule 3), and
/// lines are broken softly to at most 76 characters (rule 5). Decoding
/// gives `body` back, byte for byte.
pub fn quoted_printable(body: &[u8]) -> Vec<u8> {
    const MAX: usize = 76;
    let mut out = Vec::with_capacity(body.len() + body.len() / 3);
    // Characters on the encoded line so far: a bare LF does not end it.
    let mut width = 0;
    let mut pieces = body.split_inclusive(|&b| b == b'\n').peekable();
    while let Some(raw) = pieces.next() {
        let (piece, crlf) = match raw.strip_suffix(b"\r\n") {
            Some(l) => (l, true),
            None => (raw, false),
        };
        // Where the encoded line ends: a CRLF, or the end of the body.
        let ends_line = crlf || pieces.peek().is_none();
        for (i, &b) in piece.iter().enumerate() {
            let last = ends_line && i + 1 == piece.len();
            let literal = matches!(b, 33..=60 | 62..=126) || (matches!(b, b' ' | b'\t') && !last);
            let mut hex = [b'=', 0, 0];
            let token: &[u8] = if literal {
                std::slice::from_ref(&piece[i])
            } else {
                const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
                hex[1] = DIGITS[usize::from(b >> 4)];
                hex[2] = DIGITS[usize::from(b & 0xf)];
                &hex
            };
            // Room for a soft break's "=" after the token.
            if width + token.len() > MAX - 1 {
                out.extend_from_slice(b"=\r\n");
                width = 0;
            }
            out.extend_from_slice(token);
            width += token.len();
        }
        if crlf {
            out.extend_from_slice(b"\r\n");
            width = 0;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoded_texts(message: &[u8]) -> Vec<String> {
        let m = MessageParser::default().parse(message).unwrap();
        (0..m.text_body_count())
            .filter_map(|i| m.body_text(i).map(|t| t.into_owned()))
            .collect()
    }

    /// RFC 2045 §6.7 decoding, strict: only what `quoted_printable` writes.
    fn qp_decode(encoded: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < encoded.len() {
            match encoded[i] {
                b'=' if encoded[i + 1..].starts_with(b"\r\n") => i += 3,
                b'=' => {
                    let hex = std::str::from_utf8(&encoded[i + 1..i + 3]).unwrap();
                    out.push(u8::from_str_radix(hex, 16).unwrap());
                    i += 3;
                }
                b => {
                    out.push(b);
                    i += 1;
                }
            }
        }
        out
    }

    #[test]
    fn bare_line_ends_are_encoded_once_and_lines_stay_short() {
        // A bare LF was encoded twice (the body gained a line), and the
        // width restarted after it, so long lines of short LF-separated
        // pieces broke the 76-character limit (found by fuzz/downgrade).
        assert_eq!(quoted_printable(b"a\nb"), b"a=0Ab");
        assert_eq!(quoted_printable(b"a\n"), b"a=0A");
        assert_eq!(quoted_printable(b"a\rb\r\n"), b"a=0Db\r\n");
        let body: Vec<u8> = b"caf\xc3\xa9 \n".repeat(40);
        let qp = quoted_printable(&body);
        for line in qp.split(|&b| b == b'\n') {
            assert!(line.len() <= 77, "{}", String::from_utf8_lossy(line));
        }
        assert_eq!(qp_decode(&qp), body);
        // Trailing white space is encoded only where a line ends.
        assert_eq!(quoted_printable(b"a \nb \r\nc "), b"a =0Ab=20\r\nc=20");
    }

    #[test]
    fn a_single_8bit_text_part_becomes_quoted_printable() {
        let m = "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\
                 Content-Transfer-Encoding: 8bit\r\nSubject: caf\u{e9}s\r\n\r\nd\u{e9}j\u{e0} vu = ok \r\nline two\r\n"
            .replace("Subject: caf\u{e9}s", "Subject: cafes");
        let out = to_seven_bit(m.as_bytes()).unwrap();
        let text = String::from_utf8(out.clone()).unwrap();
        assert!(
            text.contains("Content-Transfer-Encoding: quoted-printable\r\n"),
            "{text}"
        );
        assert!(!text.contains("8bit"), "{text}");
        assert!(
            text.contains("d=C3=A9j=C3=A0 vu =3D ok=20\r\nline two\r\n"),
            "{text}"
        );
        assert_eq!(decoded_texts(&out), decoded_texts(m.as_bytes()));
    }

    #[test]
    fn only_the_8bit_parts_of_a_multipart_change() {
        let m = "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n\
                 preamble\r\n--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n\u{fc}ber\r\n\
                 --b\r\nContent-Type: text/plain\r\n\r\nplain ascii\r\n\
                 --b\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\nAAEC\r\n\
                 --b--\r\n";
        let out = to_seven_bit(m.as_bytes()).unwrap();
        let text = String::from_utf8(out.clone()).unwrap();
        assert!(
            text.contains("--b\r\nContent-Transfer-Encoding: quoted-printable\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n=C3=BCber\r\n--b"),
            "{text}"
        );
        assert!(text.contains("plain ascii\r\n--b"), "{text}");
        assert!(text.contains("base64\r\n\r\nAAEC\r\n"), "{text}");
        assert_eq!(decoded_texts(&out), decoded_texts(m.as_bytes()));
    }

    #[test]
    fn what_cannot_be_converted_is_left_to_the_caller() {
        // No MIME-Version.
        assert_eq!(
            to_seven_bit("Subject: x\r\n\r\n\u{e9}\r\n".as_bytes()),
            None
        );
        // An 8-bit header field.
        assert_eq!(
            to_seven_bit("MIME-Version: 1.0\r\nSubject: \u{e9}\r\n\r\n\u{e9}\r\n".as_bytes()),
            None
        );
        // Nothing to convert.
        assert_eq!(to_seven_bit(b"MIME-Version: 1.0\r\n\r\nascii\r\n"), None);
    }

    #[test]
    fn long_lines_are_broken_softly() {
        let line = "\u{e9}".repeat(40);
        let qp = String::from_utf8(quoted_printable(format!("{line}\r\n").as_bytes())).unwrap();
        assert!(qp.lines().all(|l| l.len() <= 76), "{qp}");
        assert_eq!(qp.matches("=\r\n").count(), 3, "{qp}");
        assert!(qp.ends_with("\r\n"));
    }
}
