//! What the next hop offers: the service extensions of its EHLO/LHLO reply
//! (RFC 5321 §4.1.1.1), read from the reply with no I/O.

use super::reply::Reply;

/// The extensions delivery cares about. Anything else in the reply is
/// ignored; a HELO session has none of them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// PIPELINING (RFC 2920): MAIL, RCPT and DATA may be sent together.
    pub pipelining: bool,
    /// SIZE (RFC 1870): `Some(limit)` when advertised; 0 means no fixed limit.
    pub size: Option<u64>,
    /// 8BITMIME (RFC 6152).
    pub eight_bit_mime: bool,
    /// BINARYMIME (RFC 3030).
    pub binary_mime: bool,
    /// CHUNKING (RFC 3030): BDAT instead of DATA.
    pub chunking: bool,
    /// SMTPUTF8 (RFC 6531).
    pub smtputf8: bool,
    /// DSN (RFC 3461): RET, ENVID, NOTIFY and ORCPT are understood.
    pub dsn: bool,
    /// STARTTLS (RFC 3207).
    pub starttls: bool,
    /// AUTH PLAIN (RFC 4954, RFC 4616).
    pub auth_plain: bool,
    /// AUTH LOGIN (the widespread non-standard mechanism).
    pub auth_login: bool,
}

impl Capabilities {
    /// Reads the keywords of a 250 reply to EHLO or LHLO. The first line is
    /// the server's name and greeting, not an extension.
    pub fn from_ehlo(reply: &Reply) -> Capabilities {
        let mut caps = Capabilities::default();
        for line in reply.lines.iter().skip(1) {
            // Keywords are case-insensitive (§4.1.1.1); some old servers
            // write `AUTH=LOGIN PLAIN`.
            let mut words = line.split([' ', '=']).filter(|w| !w.is_empty());
            let Some(keyword) = words.next() else {
                continue;
            };
            match keyword.to_ascii_uppercase().as_str() {
                "PIPELINING" => caps.pipelining = true,
                "SIZE" => {
                    // An unreadable limit is treated as none: the server
                    // will still refuse what it cannot take.
                    caps.size = Some(words.next().and_then(|n| n.parse().ok()).unwrap_or(0));
                }
                "8BITMIME" => caps.eight_bit_mime = true,
                "BINARYMIME" => caps.binary_mime = true,
                "CHUNKING" => caps.chunking = true,
                "SMTPUTF8" => caps.smtputf8 = true,
                "DSN" => caps.dsn = true,
                "STARTTLS" => caps.starttls = true,
                "AUTH" => {
                    for mechanism in words {
                        match mechanism.to_ascii_uppercase().as_str() {
                            "PLAIN" => caps.auth_plain = true,
                            "LOGIN" => caps.auth_login = true,
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        caps
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::reply::parse_reply;

    fn caps(text: &str) -> Capabilities {
        let (reply, _) = parse_reply(text.as_bytes()).unwrap().unwrap();
        Capabilities::from_ehlo(&reply)
    }

    #[test]
    fn postfix_style() {
        let c = caps(
            "250-mx.example.org\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-VRFY\r\n250-ETRN\r\n250-STARTTLS\r\n250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250-DSN\r\n250-SMTPUTF8\r\n250 CHUNKING\r\n",
        );
        assert_eq!(
            c,
            Capabilities {
                pipelining: true,
                size: Some(10_240_000),
                eight_bit_mime: true,
                binary_mime: false,
                chunking: true,
                smtputf8: true,
                dsn: true,
                starttls: true,
                auth_plain: false,
                auth_login: false,
            }
        );
    }

    #[test]
    fn odd_spellings() {
        let c = caps("250-x\r\n250-size\r\n250-auth=login plain\r\n250 binarymime\r\n");
        assert_eq!(c.size, Some(0));
        assert!(c.auth_login && c.auth_plain && c.binary_mime);
        let c = caps("250-x\r\n250-SIZE lots\r\n250 AUTH CRAM-MD5\r\n");
        assert_eq!(c.size, Some(0));
        assert!(!c.auth_login && !c.auth_plain);
        // The greeting line is never a keyword, and HELO-like replies have none.
        assert_eq!(caps("250 PIPELINING\r\n"), Capabilities::default());
        assert_eq!(caps("250-x\r\n250\r\n"), Capabilities::default());
    }
}
