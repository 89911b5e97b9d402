//! 8-bit MIME to 7 bits, for a next hop without 8BITMIME. RFC 6152 §3 lets
//! a relay either return such mail or convert it; returning it fails mail
//! that only has an accented word in a text part. Each leaf part whose
//! body has 8-bit octets and no transfer encoding is re-encoded as
//! quoted-printable (RFC 2045 §6.7), its Content-Transfer-Encoding field
//! replaced or added; nothing else changes. An encapsulated message
//! (`message/rfc822`: a failure notice's returned original, a forwarded
//! message) is converted the same way, and its part labelled `7bit`. What
//! cannot be converted this way (8-bit header fields, a message or an
//! encapsulated one without MIME-Version, 8-bit text outside the parts) is
//! left to the caller to refuse, as before. No I/O.
//!
//! A DKIM signature over a converted body no longer verifies; signers that
//! care sign 7-bit content (RFC 6376 §5.3), as Postfix's users learn too.

use std::ops::Range;

use mail_parser::{Encoding, HeaderName, MessageParser, PartType};

/// The field that replaces or joins a converted part's header.
const QP_FIELD: &[u8] = b"Content-Transfer-Encoding: quoted-printable\r\n";

/// The field of an encapsulated message whose contents were converted.
const SEVEN_BIT_FIELD: &[u8] = b"Content-Transfer-Encoding: 7bit\r\n";

/// `message` with every 8-bit leaf part quoted-printable, or `None` when the
/// result would still not be 7-bit (or the message is not MIME).
pub fn to_seven_bit(message: &[u8]) -> Option<Vec<u8>> {
    let parsed = MessageParser::default().parse(message)?;
    if !is_mime(&parsed) {
        return None;
    }
    let mut edits: Vec<(Range<usize>, Vec<u8>)> = Vec::new();
    convert_parts(message, &parsed, &mut edits)?;
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

/// RFC 2045 §4: without MIME-Version no Content-Transfer-Encoding means
/// anything, so a bare 8-bit message (outer or encapsulated) cannot be
/// converted.
fn is_mime(m: &mail_parser::Message<'_>) -> bool {
    m.headers()
        .iter()
        .any(|h| h.name == HeaderName::MimeVersion)
}

/// The edits that make `parsed`'s 8-bit leaf parts quoted-printable, and
/// those of every message it encapsulates (`message/rfc822` with no
/// encoding, as RFC 2046 §5.2.1 requires: a failure notice returning an
/// 8-bit original, a forwarded message). Offsets are into `message`: the
/// parser reads an unencoded encapsulated message in place. `None` when
/// an encapsulated message cannot be converted (not MIME, or 8-bit header
/// fields), as for the outer one.
fn convert_parts(
    message: &[u8],
    parsed: &mail_parser::Message<'_>,
    edits: &mut Vec<(Range<usize>, Vec<u8>)>,
) -> Option<()> {
    for part in &parsed.parts {
        let body = part.offset_body as usize..part.offset_end as usize;
        if part.encoding != Encoding::None
            || body.end > message.len()
            || body.start > body.end
            || message[body.clone()].is_ascii()
        {
            continue;
        }
        let cte = part
            .headers
            .iter()
            .find(|h| h.name == HeaderName::ContentTransferEncoding);
        match &part.body {
            PartType::Text(_)
            | PartType::Html(_)
            | PartType::Binary(_)
            | PartType::InlineBinary(_) => {
                match cte {
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
            PartType::Message(inner) => {
                let root = inner.parts.first()?;
                let header = root.offset_header as usize..root.offset_body as usize;
                // RFC 2045 §4: an encapsulated message is MIME only if it
                // says so; its header fields must already be 7-bit.
                if !is_mime(inner) || header.end > message.len() || !message[header].is_ascii() {
                    return None;
                }
                convert_parts(message, inner, edits)?;
                // The part is 7-bit once its contents are (RFC 2046 §5.2.1
                // allows 7bit, 8bit and binary only).
                if let Some(h) = cte {
                    edits.push((
                        h.offset_field as usize..h.offset_end as usize,
                        SEVEN_BIT_FIELD.to_vec(),
                    ));
                }
            }
            PartType::Multipart(_) => {}
        }
    }
    Some(())
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

    /// A failure notice returning an 8-bit original (RET=FULL), for a
    /// sender whose MX lacks 8BITMIME: the original's text part inside the
    /// `message/rfc822` part becomes quoted-printable and the part says
    /// `7bit`, instead of the notice being refused and double-bounced.
    #[test]
    fn an_encapsulated_8bit_message_is_converted_too() {
        let original = "From: a@x.test\r\nMIME-Version: 1.0\r\n\
             Content-Type: text/plain; charset=utf-8\r\n\
             Content-Transfer-Encoding: 8bit\r\nSubject: s\r\n\r\nd\u{e9}j\u{e0} vu\r\n";
        let notice = format!(
            "From: MAILER-DAEMON@y.test\r\nMIME-Version: 1.0\r\n\
             Content-Type: multipart/report; report-type=delivery-status; boundary=\"b\"\r\n\r\n\
             --b\r\nContent-Type: text/plain\r\n\r\nIt failed.\r\n\
             --b\r\nContent-Type: message/delivery-status\r\n\r\n\
             Reporting-MTA: dns; y.test\r\n\r\nFinal-Recipient: rfc822; b@z.test\r\n\
             Action: failed\r\nStatus: 5.1.1\r\n\r\n\
             --b\r\nContent-Type: message/rfc822\r\nContent-Transfer-Encoding: 8bit\r\n\r\n\
             {original}\r\n--b--\r\n"
        );
        let out = to_seven_bit(notice.as_bytes()).expect("converted");
        assert!(out.is_ascii());
        let text = String::from_utf8(out.clone()).unwrap();
        assert!(
            text.contains("Content-Type: message/rfc822\r\nContent-Transfer-Encoding: 7bit\r\n"),
            "{text}"
        );
        assert!(text.contains("d=C3=A9j=C3=A0 vu"), "{text}");
        // Read back: the encapsulated message's text is the original's.
        let parsed = MessageParser::default().parse(&out).unwrap();
        let inner = parsed
            .parts
            .iter()
            .find_map(|p| match &p.body {
                PartType::Message(m) => Some(m),
                _ => None,
            })
            .expect("the returned message");
        assert_eq!(inner.body_text(0).unwrap().trim_end(), "d\u{e9}j\u{e0} vu");
        assert_eq!(parsed.body_text(0).unwrap().trim_end(), "It failed.");

        // Not MIME inside, or 8-bit fields inside: left to the caller.
        let bare = notice.replace(
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8",
            "Content-Type: text/plain; charset=utf-8",
        );
        assert_eq!(to_seven_bit(bare.as_bytes()), None);
        let eight_bit_field = notice.replace("Subject: s", "Subject: caf\u{e9}");
        assert_eq!(to_seven_bit(eight_bit_field.as_bytes()), None);
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
