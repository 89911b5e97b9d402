//! The Authentication-Results header field (RFC 8601): what this server
//! verified about the client (forward-confirmed reverse DNS, SMTP AUTH),
//! written where filters and mailbox servers downstream read it, and the
//! removal of fields that claim this server's name but came in with the
//! message (§5), which would otherwise let a sender forge a verdict. No I/O.

use std::net::IpAddr;

/// The iprev result to report (RFC 8601 §2.7.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IprevResult<'a> {
    /// `pass`, `fail`, `permerror` or `temperror`.
    pub result: &'a str,
    /// The client's address (`policy.iprev`).
    pub ip: IpAddr,
    /// The forward-confirmed name, for a pass (written as a comment).
    pub name: Option<&'a str>,
}

/// The header field, CRLF-terminated and folded one result per line, or
/// `None` when there is nothing to report (RFC 8601 §2.2 would allow
/// `none`, but a field that says nothing only adds bytes).
pub fn header(
    authserv_id: &str,
    iprev: Option<IprevResult<'_>>,
    auth: Option<&str>,
) -> Option<String> {
    let mut results = Vec::new();
    if let Some(i) = iprev {
        let mut r = format!(
            "iprev={} policy.iprev={}",
            i.result,
            pvalue(&i.ip.to_canonical().to_string())
        );
        if let Some(name) = i.name.filter(|n| is_comment_safe(n)) {
            r.push_str(&format!(" ({name})"));
        }
        results.push(r);
    }
    if let Some(user) = auth {
        // §2.7.4: the identity the AUTH command confirmed.
        results.push(format!("auth=pass smtp.auth={}", pvalue(user)));
    }
    if results.is_empty() {
        return None;
    }
    let mut out = format!("Authentication-Results: {authserv_id}");
    for r in results {
        out.push_str(";\r\n\t");
        out.push_str(&r);
    }
    out.push_str("\r\n");
    Some(out)
}

/// A property value (RFC 8601 §2.2 `pvalue`): a MIME token, or an address
/// `local-part@domain`, as it is; anything else as a quoted-string.
fn pvalue(v: &str) -> String {
    let token = |s: &str| !s.is_empty() && s.bytes().all(is_token_byte);
    let plain = token(v)
        || v.rsplit_once('@').is_some_and(|(local, domain)| {
            (local.is_empty() || token(local))
                && !domain.is_empty()
                && domain
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        });
    if plain {
        return v.to_string();
    }
    let mut q = String::with_capacity(v.len() + 2);
    q.push('"');
    for c in v.chars().filter(|c| !c.is_control()) {
        if c == '"' || c == '\\' {
            q.push('\\');
        }
        q.push(c);
    }
    q.push('"');
    q
}

/// RFC 2045 §5.1 token characters: printable ASCII except space and the
/// tspecials.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?=".contains(&b)
}

/// A DNS name can go into a comment as it is; anything odd is left out.
fn is_comment_safe(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
}

/// `contents` without the Authentication-Results fields of its header
/// section whose authentication service identifier is `authserv_id`
/// (compared without case), or `None` when it has none. RFC 8601 §5: a
/// server that adds the field under its name must delete such fields that
/// did not come from itself, else any sender could forge its verdict.
pub fn strip_forged(contents: &[u8], authserv_id: &str) -> Option<Vec<u8>> {
    const NAME: &[u8] = b"authentication-results:";
    let mut out: Option<Vec<u8>> = None;
    let mut pos = 0;
    while pos < contents.len() {
        let line_end = |from: usize| {
            memchr::memchr(b'\n', &contents[from..]).map_or(contents.len(), |i| from + i + 1)
        };
        let mut end = line_end(pos);
        let line = &contents[pos..end];
        if line == b"\r\n" || line == b"\n" {
            break;
        }
        // The field runs on over continuation lines (RFC 5322 §2.2.3).
        while end < contents.len() && matches!(contents[end], b' ' | b'\t') {
            end = line_end(end);
        }
        let field = &contents[pos..end];
        let forged = field.len() > NAME.len()
            && field[..NAME.len()].eq_ignore_ascii_case(NAME)
            && authserv_id_of(&field[NAME.len()..])
                .is_some_and(|id| id.eq_ignore_ascii_case(authserv_id.as_bytes()));
        match (&mut out, forged) {
            (None, true) => out = Some(contents[..pos].to_vec()),
            (Some(o), false) => o.extend_from_slice(field),
            _ => {}
        }
        pos = end;
    }
    out.map(|mut o| {
        o.extend_from_slice(&contents[pos..]);
        o
    })
}

/// The authserv-id at the start of a field body: after white space and
/// comments, up to `;`, white space or a comment.
fn authserv_id_of(body: &[u8]) -> Option<&[u8]> {
    let mut i = 0;
    let mut depth = 0u32;
    while i < body.len() {
        match body[i] {
            b'(' => depth += 1,
            b')' if depth > 0 => depth -= 1,
            b' ' | b'\t' | b'\r' | b'\n' => {}
            _ if depth > 0 => {}
            _ => break,
        }
        i += 1;
    }
    let start = i;
    while i < body.len() && !matches!(body[i], b';' | b' ' | b'\t' | b'\r' | b'\n' | b'(') {
        i += 1;
    }
    (i > start).then(|| &body[start..i])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_field_reports_what_was_checked() {
        assert_eq!(header("mx.example.org", None, None), None);
        let pass = IprevResult {
            result: "pass",
            ip: ip("192.0.2.1"),
            name: Some("mail.example.net"),
        };
        assert_eq!(
            header("mx.example.org", Some(pass), Some("alice")).unwrap(),
            "Authentication-Results: mx.example.org;\r\n\
             \tiprev=pass policy.iprev=192.0.2.1 (mail.example.net);\r\n\
             \tauth=pass smtp.auth=alice\r\n"
        );
        // IPv6 addresses and odd user names are not tokens: quoted.
        let fail = IprevResult {
            result: "fail",
            ip: ip("2001:db8::1"),
            name: None,
        };
        assert_eq!(
            header("mx", Some(fail), Some("bob smith")).unwrap(),
            "Authentication-Results: mx;\r\n\
             \tiprev=fail policy.iprev=\"2001:db8::1\";\r\n\
             \tauth=pass smtp.auth=\"bob smith\"\r\n"
        );
        // An address as the login stays as it is (§2.2's local-part@domain).
        assert!(
            header("mx", None, Some("carol@example.org"))
                .unwrap()
                .ends_with("smtp.auth=carol@example.org\r\n")
        );
        // An IPv4 client on a dual-stack socket is reported as IPv4.
        let mapped = IprevResult {
            result: "temperror",
            ip: ip("::ffff:192.0.2.7"),
            name: None,
        };
        assert!(
            header("mx", Some(mapped), None)
                .unwrap()
                .contains("policy.iprev=192.0.2.7\r\n")
        );
    }

    #[test]
    fn fields_forged_under_our_name_are_removed_and_others_kept() {
        let m = b"Received: x\r\n\
            Authentication-Results: MX.example.org; auth=pass\r\n\
            \tsmtp.auth=mallory\r\n\
            Authentication-Results: (comment) mx.example.org;\r\n iprev=pass\r\n\
            Authentication-Results: other.example; spf=pass\r\n\
            Subject: hi\r\n\
            \r\n\
            Authentication-Results: mx.example.org; in the body\r\n";
        let out = strip_forged(m, "mx.example.org").unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "Received: x\r\n\
             Authentication-Results: other.example; spf=pass\r\n\
             Subject: hi\r\n\
             \r\n\
             Authentication-Results: mx.example.org; in the body\r\n"
        );
        assert_eq!(strip_forged(b"Subject: a\r\n\r\nb", "mx.example.org"), None);
        // A longer name that merely starts with ours is someone else's.
        assert_eq!(
            strip_forged(
                b"Authentication-Results: mx.example.org.evil; x=y\r\n\r\n",
                "mx.example.org"
            ),
            None
        );
    }
}
