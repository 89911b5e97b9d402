//! SMTP AUTH (RFC 4954) client messages for PLAIN (RFC 4616) and LOGIN.
//! No I/O.

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding (RFC 4648 §4), the encoding AUTH uses.
/// Twenty lines here instead of a dependency.
pub fn base64(input: &[u8]) -> String {
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// `AUTH PLAIN <initial response>` (RFC 4954 §4, RFC 4616 §2): an empty
/// authorization identity, the username and the secret, NUL-separated.
pub fn plain_command(username: &str, secret: &str) -> String {
    let message = format!("\0{username}\0{secret}");
    format!("AUTH PLAIN {}\r\n", base64(message.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_rfc4648_vectors() {
        for (input, want) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), want);
        }
    }

    #[test]
    fn plain() {
        // RFC 4616 §4 example, without an authorization identity.
        assert_eq!(
            plain_command("tim", "tanstaaftanstaaf"),
            "AUTH PLAIN AHRpbQB0YW5zdGFhZnRhbnN0YWFm\r\n"
        );
    }
}
