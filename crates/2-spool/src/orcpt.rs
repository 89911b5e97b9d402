//! The original recipient (DSN's ORCPT, RFC 3461 §4.2) as the spool keeps
//! it, and its encodings on the wire. No I/O.
//!
//! A [`Recipient::orcpt`](crate::Recipient::orcpt) is stored decoded, as
//! `addr-type;address`: `rfc822;b@example.net`, or `utf-8;δοκιμή@example.gr`.
//! Three parts of Ferrymail meet it in three forms, which is why the forms
//! live here, next to the stored one:
//!
//! * receive decodes the RCPT parameter: xtext (`+XX`, RFC 3461 §4) for
//!   every type, and for `utf-8` the forms of RFC 6533 §3, with `\x{HEX}`
//!   for a character that cannot stand for itself;
//! * deliver encodes it again for the next hop's RCPT;
//! * report writes it in a notification's Original-Recipient field: as it
//!   is in a `message/global-delivery-status`, and in ASCII otherwise.

/// Why an ORCPT parameter was refused (RFC 3461 §4.2: 501).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrcptError {
    /// No `;`, an empty or non-atom address type, or an empty address.
    #[error("ORCPT must be addr-type;address")]
    Shape,
    /// A `+XX` or `\x{HEX}` escape that is not one, or a character the form
    /// does not allow.
    #[error("ORCPT has an invalid encoding")]
    Encoding,
    /// Non-ASCII characters outside an SMTPUTF8 transaction (RFC 6533 §3:
    /// utf-8-addr-unitext needs SMTPUTF8).
    #[error("ORCPT with UTF-8 characters needs SMTPUTF8")]
    NeedsSmtpUtf8,
    /// Longer than any address may be.
    #[error("ORCPT is too long")]
    TooLong,
}

/// Longest decoded address kept (RFC 5321 §4.5.3.1.3 paths are at most 256
/// octets; RFC 3461 §4.2 allows the encoded parameter 500).
const MAX_ADDRESS: usize = 500;

/// The RFC 6533 address type.
pub const UTF8: &str = "utf-8";

/// Whether `kind` is the `utf-8` address type (types are case-insensitive).
pub fn is_utf8_type(kind: &str) -> bool {
    kind.eq_ignore_ascii_case(UTF8)
}

/// Decodes an ORCPT parameter's value, `addr-type;encoded-address`, into the
/// stored form. `smtputf8`: the transaction is SMTPUTF8, so a `utf-8`
/// address may carry its characters as they are (utf-8-addr-unitext).
pub fn decode(value: &str, smtputf8: bool) -> Result<String, OrcptError> {
    let (kind, encoded) = value.split_once(';').ok_or(OrcptError::Shape)?;
    // RFC 3461 §4.2: addr-type is an atom; a registered one in practice.
    if kind.is_empty()
        || !kind
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.+".contains(&b))
        || encoded.is_empty()
    {
        return Err(OrcptError::Shape);
    }
    let address = if is_utf8_type(kind) {
        decode_utf8_addr(encoded, smtputf8)?
    } else {
        decode_xtext(encoded)?
    };
    if address.is_empty() {
        return Err(OrcptError::Shape);
    }
    if address.len() > MAX_ADDRESS {
        return Err(OrcptError::TooLong);
    }
    Ok(format!("{kind};{address}"))
}

/// xtext (RFC 3461 §4): `+XX` is the octet XX; other octets from `!` to
/// `~` except `+` and `=` stand for themselves. Octets that are not UTF-8
/// (a client's Latin-1, say) are kept as replacement characters rather
/// than refusing the recipient, as smtp-proto's decoder did not refuse them.
fn decode_xtext(s: &str) -> Result<String, OrcptError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => {
                let hex = b.get(i + 1..i + 3).ok_or(OrcptError::Encoding)?;
                let hex = std::str::from_utf8(hex).map_err(|_| OrcptError::Encoding)?;
                if !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
                    return Err(OrcptError::Encoding);
                }
                out.push(u8::from_str_radix(hex, 16).map_err(|_| OrcptError::Encoding)?);
                i += 3;
            }
            c @ b'!'..=b'~' if c != b'=' => {
                out.push(c);
                i += 1;
            }
            _ => return Err(OrcptError::Encoding),
        }
    }
    Ok(String::from_utf8(out)
        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()))
}

/// RFC 6533 §3: utf-8-addr-xtext (ASCII; `\x{HEX}` for anything else) and,
/// in an SMTPUTF8 transaction, utf-8-addr-unitext (UTF-8 characters as
/// they are). QCHAR: `!` to `~` but `+`, `=` and `\`.
fn decode_utf8_addr(s: &str, smtputf8: bool) -> Result<String, OrcptError> {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if chars.next() != Some('x') || chars.next() != Some('{') {
                    return Err(OrcptError::Encoding);
                }
                let mut hex = String::new();
                loop {
                    match chars.next() {
                        Some('}') => break,
                        Some(h) if h.is_ascii_hexdigit() && hex.len() < 6 => hex.push(h),
                        _ => return Err(OrcptError::Encoding),
                    }
                }
                // HEXPOINT: 2 to 6 digits, a Unicode scalar value, not NUL.
                let point = (hex.len() >= 2)
                    .then(|| u32::from_str_radix(&hex, 16).ok())
                    .flatten()
                    .and_then(char::from_u32)
                    .filter(|&p| p != '\0')
                    .ok_or(OrcptError::Encoding)?;
                out.push(point);
            }
            '+' | '=' => return Err(OrcptError::Encoding),
            '!'..='~' => out.push(c),
            c if !c.is_ascii() && !c.is_control() => {
                if !smtputf8 {
                    return Err(OrcptError::NeedsSmtpUtf8);
                }
                out.push(c);
            }
            _ => return Err(OrcptError::Encoding),
        }
    }
    Ok(out)
}

/// A stored `utf-8` address in RFC 6533's encoded forms: with `unitext`
/// (the transaction or notification is SMTPUTF8) non-ASCII characters stand
/// for themselves, otherwise they too become `\x{HEX}`; so do `+`, `=`,
/// `\`, space and controls always.
pub fn encode_utf8_addr(address: &str, unitext: bool) -> String {
    let mut out = String::with_capacity(address.len());
    for c in address.chars() {
        let plain = match c {
            '+' | '=' | '\\' => false,
            '!'..='~' => true,
            c => unitext && !c.is_ascii() && !c.is_control(),
        };
        if plain {
            out.push(c);
        } else {
            out.push_str(&format!("\\x{{{:02X}}}", c as u32));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_table() {
        let cases: &[(&str, bool, Result<&str, OrcptError>)] = &[
            // xtext for the other types (RFC 3461 §4).
            ("rfc822;b@x", false, Ok("rfc822;b@x")),
            ("x400;c+3Dus+3Ba+3Datt", false, Ok("x400;c=us;a=att")),
            ("rfc822;a+2Bb@x", false, Ok("rfc822;a+b@x")),
            ("rfc822;caf+C3+A9@x", false, Ok("rfc822;caf\u{e9}@x")),
            ("rfc822;caf+E9@x", false, Ok("rfc822;caf\u{fffd}@x")),
            ("rfc822;a+2", false, Err(OrcptError::Encoding)),
            ("rfc822;a+ZZb", false, Err(OrcptError::Encoding)),
            ("rfc822;a=b", false, Err(OrcptError::Encoding)),
            // RFC 6533 §3: both utf-8 forms, type case-insensitive.
            ("utf-8;\u{e9}@x", true, Ok("utf-8;\u{e9}@x")),
            ("UTF-8;\\x{E9}@x", false, Ok("UTF-8;\u{e9}@x")),
            ("utf-8;a\\x{2B}b@x", false, Ok("utf-8;a+b@x")),
            ("utf-8;\\x{1F600}@x", false, Ok("utf-8;\u{1f600}@x")),
            ("utf-8;\u{e9}@x", false, Err(OrcptError::NeedsSmtpUtf8)),
            ("utf-8;a+b@x", true, Err(OrcptError::Encoding)),
            ("utf-8;\\x{E}@x", false, Err(OrcptError::Encoding)),
            ("utf-8;\\x{D800}@x", false, Err(OrcptError::Encoding)),
            ("utf-8;\\x{0}@x", false, Err(OrcptError::Encoding)),
            ("utf-8;\\x{1234567}@x", false, Err(OrcptError::Encoding)),
            ("utf-8;\\xE9@x", false, Err(OrcptError::Encoding)),
            // Shape.
            ("b@x", false, Err(OrcptError::Shape)),
            (";b@x", false, Err(OrcptError::Shape)),
            ("utf-8;", false, Err(OrcptError::Shape)),
            ("a b;c", false, Err(OrcptError::Shape)),
        ];
        for (input, utf8, want) in cases {
            let got = decode(input, *utf8);
            assert_eq!(got.as_deref().map_err(Clone::clone), *want, "{input}");
        }
        let long = format!("rfc822;{}@x", "a".repeat(600));
        assert_eq!(decode(&long, false), Err(OrcptError::TooLong));
    }

    #[test]
    fn encode_then_decode_gives_the_address_back() {
        for address in [
            "a@x",
            "\u{e9}l\u{e8}ve@\u{e9}cole.fr",
            "a+b=c\\d@x",
            "\u{1f600}@x",
        ] {
            for unitext in [false, true] {
                let wire = encode_utf8_addr(address, unitext);
                if !unitext {
                    assert!(wire.is_ascii(), "{wire}");
                }
                assert_eq!(
                    decode(&format!("utf-8;{wire}"), unitext).unwrap(),
                    format!("utf-8;{address}"),
                    "{wire}"
                );
            }
        }
        assert_eq!(encode_utf8_addr("\u{e9}+@x", false), "\\x{E9}\\x{2B}@x");
        assert_eq!(encode_utf8_addr("\u{e9}+@x", true), "\u{e9}\\x{2B}@x");
    }
}
