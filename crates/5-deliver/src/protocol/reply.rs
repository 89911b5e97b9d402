//! SMTP replies (RFC 5321 §4.2) with their enhanced status codes (RFC 3463,
//! RFC 2034): parsed from the bytes the next hop sent, with no I/O.

use crate::RemoteReply;

/// The most bytes one reply may take, all lines together. RFC 5321 §4.5.3.1.5
/// limits a reply line to 512 octets; multi-line EHLO replies of real servers
/// stay far below this. A peer sending more is broken or hostile.
pub const MAX_REPLY_BYTES: usize = 64 * 1024;

/// One reply: a three-digit code and the text of each line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The reply code, e.g. 250.
    pub code: u16,
    /// Each line's text after the code and separator, without the line end.
    pub lines: Vec<String>,
}

/// Why the bytes from the next hop are not an SMTP reply.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    /// A line did not start with three digits and a space or hyphen.
    #[error("malformed reply line {0:?}")]
    Malformed(String),
    /// More than [`MAX_REPLY_BYTES`] without the reply ending.
    #[error("reply longer than {MAX_REPLY_BYTES} bytes")]
    TooLong,
}

impl Reply {
    /// 2 for success, 3 for intermediate, 4 transient, 5 permanent.
    pub fn class(&self) -> u16 {
        self.code / 100
    }

    /// 2xx.
    pub fn is_positive(&self) -> bool {
        self.class() == 2
    }

    /// 5xx: a permanent refusal (RFC 5321 §4.2.1).
    pub fn is_permanent(&self) -> bool {
        self.class() == 5
    }

    /// 421: the server is closing the connection (RFC 5321 §3.8).
    pub fn closes_connection(&self) -> bool {
        self.code == 421
    }

    /// The reply as the rest of Ferrymail keeps it: the enhanced status code
    /// of the first line, when it has one whose class matches the reply
    /// code (RFC 3463 §2, RFC 2034 §4), and the text of all lines without
    /// that code, joined with a space.
    pub fn to_remote(&self) -> RemoteReply {
        let status = self
            .lines
            .first()
            .and_then(|l| enhanced_status(l))
            .filter(|s| s.as_bytes()[0] == b'0' + (self.class() as u8));
        let text = self
            .lines
            .iter()
            .map(|line| match &status {
                Some(s) => line
                    .strip_prefix(s.as_str())
                    .map(|rest| rest.trim_start())
                    .unwrap_or(line),
                None => line.as_str(),
            })
            .filter(|t| !t.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        RemoteReply {
            code: self.code,
            status,
            text,
        }
    }
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.to_remote().fmt(f)
    }
}

/// The `class.subject.detail` code at the start of `text` (RFC 3463 §2):
/// class 2, 4 or 5, subject and detail of one to three digits.
pub fn enhanced_status(text: &str) -> Option<String> {
    let word = text.split([' ', '\t']).next()?;
    let mut parts = word.split('.');
    let (class, subject, detail) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || !matches!(class, "2" | "4" | "5") {
        return None;
    }
    let digits = |s: &str| (1..=3).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit());
    (digits(subject) && digits(detail)).then(|| word.to_string())
}

/// Parses one complete reply from the start of `buf`.
///
/// Returns `Ok(None)` when the reply is not complete yet, and otherwise the
/// reply and the number of bytes it took. Lines end in CRLF; a bare LF is
/// accepted too (being lenient in what we accept from a next hop costs
/// nothing here). A line of just the code (`250`) is a last line.
pub fn parse_reply(buf: &[u8]) -> Result<Option<(Reply, usize)>, ReplyError> {
    let mut pos = 0;
    let mut code = 0u16;
    let mut lines = Vec::new();
    loop {
        let Some(nl) = buf[pos..].iter().position(|&b| b == b'\n') else {
            if buf.len() > MAX_REPLY_BYTES {
                return Err(ReplyError::TooLong);
            }
            return Ok(None);
        };
        let end = pos + nl + 1;
        if end > MAX_REPLY_BYTES {
            return Err(ReplyError::TooLong);
        }
        let mut line = &buf[pos..pos + nl];
        if let Some(l) = line.strip_suffix(b"\r") {
            line = l;
        }
        let malformed = || ReplyError::Malformed(String::from_utf8_lossy(line).into_owned());
        if line.len() < 3 || !line[..3].iter().all(u8::is_ascii_digit) {
            return Err(malformed());
        }
        let this_code = line[..3]
            .iter()
            .fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
        if !(200..600).contains(&this_code) {
            return Err(malformed());
        }
        // RFC 5321 §4.2.1: every line of a multi-line reply carries the same
        // code. A server that breaks this is answered by the first line's.
        if lines.is_empty() {
            code = this_code;
        }
        let (last, text) = match line.get(3) {
            None => (true, &[][..]),
            Some(b' ') => (true, &line[4..]),
            Some(b'-') => (false, &line[4..]),
            Some(_) => return Err(malformed()),
        };
        lines.push(String::from_utf8_lossy(text).trim_end().to_string());
        pos = end;
        if last {
            return Ok(Some((Reply { code, lines }, pos)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> Reply {
        let (r, used) = parse_reply(text.as_bytes()).unwrap().unwrap();
        assert_eq!(used, text.len(), "{text:?}");
        r
    }

    #[test]
    fn single_and_multi_line() {
        let r = one("250 2.0.0 Ok: queued as 1234\r\n");
        assert_eq!(r.code, 250);
        assert_eq!(
            r.to_remote(),
            RemoteReply {
                code: 250,
                status: Some("2.0.0".into()),
                text: "Ok: queued as 1234".into()
            }
        );
        let r = one(
            "550-5.1.1 The email account that you tried to reach does not exist.\r\n550-5.1.1 Please try\r\n550 5.1.1 https://support.example/x\r\n",
        );
        let remote = r.to_remote();
        assert_eq!(remote.status.as_deref(), Some("5.1.1"));
        assert_eq!(
            remote.text,
            "The email account that you tried to reach does not exist. Please try https://support.example/x"
        );
        assert_eq!(
            remote.to_string(),
            "550 5.1.1 The email account that you tried to reach does not exist. Please try https://support.example/x"
        );
    }

    #[test]
    fn incomplete_and_pipelined() {
        assert_eq!(parse_reply(b"").unwrap(), None);
        assert_eq!(parse_reply(b"250-a\r\n250 b").unwrap(), None);
        assert_eq!(parse_reply(b"250-a\r\n").unwrap(), None);
        let buf = b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data\r\n";
        let (a, n) = parse_reply(buf).unwrap().unwrap();
        assert_eq!(a.code, 250);
        let (b, m) = parse_reply(&buf[n..]).unwrap().unwrap();
        assert_eq!(b.to_remote().status.as_deref(), Some("2.1.5"));
        let (c, _) = parse_reply(&buf[n + m..]).unwrap().unwrap();
        assert_eq!(c.code, 354);
        assert_eq!(c.to_remote().status, None);
    }

    #[test]
    fn lenient_forms() {
        // bare LF, code-only last line, no enhanced code
        let r = one("220 smtp-sink ESMTP\n");
        assert_eq!(r.lines, vec!["smtp-sink ESMTP"]);
        let r = one("250\r\n");
        assert_eq!(r.to_remote().text, "");
        let r = one("250-mx.example\r\n250\r\n");
        assert_eq!(r.lines, vec!["mx.example", ""]);
        // a status code whose class disagrees with the reply is not one
        let r = one("550 2.0.0 odd\r\n");
        assert_eq!(r.to_remote().status, None);
        assert_eq!(r.to_remote().text, "2.0.0 odd");
        // a number that only looks like a code
        assert_eq!(enhanced_status("4.7.1000 x"), None);
        assert_eq!(enhanced_status("4.7.100 x").as_deref(), Some("4.7.100"));
        assert_eq!(enhanced_status("3.0.0"), None);
        assert_eq!(enhanced_status("1.2 x"), None);
    }

    #[test]
    fn malformed() {
        for bad in [
            "hello\r\n",
            "25\r\n",
            "250x\r\n",
            "099 no\r\n",
            "650 no\r\n",
            "250-ok\r\nxyz\r\n",
        ] {
            assert!(
                matches!(parse_reply(bad.as_bytes()), Err(ReplyError::Malformed(_))),
                "{bad:?}"
            );
        }
        let mut long = Vec::new();
        while long.len() <= MAX_REPLY_BYTES {
            long.extend_from_slice(b"250-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\r\n");
        }
        assert_eq!(parse_reply(&long), Err(ReplyError::TooLong));
        assert_eq!(
            parse_reply(&vec![b'2'; MAX_REPLY_BYTES + 1]),
            Err(ReplyError::TooLong)
        );
    }
}
