//! Checks on envelope addresses that smtp-proto's parser does not make: the
//! relay-relevant forms (percent hack, bang path), the postmaster exception, and
//! non-ASCII detection for SMTPUTF8.

pub use ferrymail_spool::domain_of;

/// True when the local part carries another routing layer that a downstream
/// system might act on: `user%other.example@here` (percent hack),
/// `other!user@here` (UUCP bang path), or `"user@other.example"@here` (a
/// quoted local part holding an `@`, which smtp-proto returns unquoted).
/// Ferrymail treats such recipients as relaying, so an open relay cannot be
/// built out of a local domain (as Postfix's `allow_untrusted_routing = no`).
pub fn has_hidden_route(address: &str) -> bool {
    let local = address.rsplit_once('@').map(|(l, _)| l).unwrap_or(address);
    local.contains('%') || local.contains('!') || local.contains('@')
}

/// True if any byte is outside US-ASCII (RFC 6531 needs SMTPUTF8 for those).
pub fn is_non_ascii(s: &str) -> bool {
    !s.is_ascii()
}

/// Recovers `<postmaster>` (any case), which smtp-proto returns as an empty
/// address, from the raw RCPT line. RFC 5321 §4.5.1 requires accepting it.
pub fn raw_is_postmaster(line: &[u8]) -> bool {
    let Some(open) = memchr::memchr(b'<', line) else {
        return false;
    };
    let Some(close) = memchr::memchr(b'>', &line[open..]) else {
        return false;
    };
    line[open + 1..open + close].eq_ignore_ascii_case(b"postmaster")
}

/// Extracts the SIZE= value from a raw MAIL line, saturating on overflow.
/// smtp-proto wraps values longer than usize silently, which would let a huge
/// declared size pass the RFC 1870 check.
pub fn raw_declared_size(line: &[u8]) -> Option<u64> {
    let upper = line.to_ascii_uppercase();
    let pos = memchr::memmem::find(&upper, b" SIZE=")?;
    let digits = upper[pos + 6..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .fold(0u64, |acc, &b| {
            acc.saturating_mul(10).saturating_add((b - b'0') as u64)
        });
    Some(digits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains() {
        assert_eq!(domain_of("a@Example.ORG.").as_deref(), Some("example.org"));
        assert_eq!(domain_of("postmaster"), None);
        assert_eq!(domain_of("a@b@c.org").as_deref(), Some("c.org"));
    }

    #[test]
    fn hidden_routes() {
        assert!(has_hidden_route("u%evil.example@local.example"));
        assert!(has_hidden_route("evil.example!u@local.example"));
        assert!(!has_hidden_route("u.v+tag@local.example"));
        // `"victim@evil.example"@local.example`, as smtp-proto returns it.
        assert!(has_hidden_route("victim@evil.example@local.example"));
    }

    #[test]
    fn postmaster_forms() {
        assert!(raw_is_postmaster(b"RCPT TO:<Postmaster>\r\n"));
        assert!(raw_is_postmaster(b"RCPT TO:<postmaster> NOTIFY=NEVER\r\n"));
        assert!(!raw_is_postmaster(b"RCPT TO:<>\r\n"));
    }

    #[test]
    fn declared_size_saturates() {
        assert_eq!(
            raw_declared_size(b"MAIL FROM:<a@b> SIZE=99999999999999999999999\r\n"),
            Some(u64::MAX)
        );
        assert_eq!(
            raw_declared_size(b"MAIL FROM:<a@b> size=1000\r\n"),
            Some(1000)
        );
        assert_eq!(raw_declared_size(b"MAIL FROM:<a@b>\r\n"), None);
    }
}
