//! The Authentication-Results header field (RFC 8601): what this server
//! verified about the client and its message (forward-confirmed reverse
//! DNS, SMTP AUTH, SPF, DKIM, DMARC), written in one field where filters
//! and mailbox servers downstream read it, and the removal of fields that
//! claim this server's name but came in with the message (§5), which
//! would otherwise let a sender forge a verdict. No I/O.

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

/// Which SPF identity a result is about (RFC 7208 §2.3, §2.4), and so
/// which property names it (RFC 8601 §2.7.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpfIdentity<'a> {
    /// The HELO/EHLO name: `smtp.helo`.
    Helo(&'a str),
    /// The MAIL FROM address (for the null sender, `postmaster@` the HELO
    /// name, the identity RFC 7208 §2.4 checks): `smtp.mailfrom`.
    MailFrom(&'a str),
}

/// One SPF result to report (RFC 8601 §2.7.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpfResult<'a> {
    /// `pass`, `fail`, `softfail`, `neutral`, `none`, `temperror` or
    /// `permerror` (RFC 7208 §2.6).
    pub result: &'a str,
    /// The identity checked.
    pub identity: SpfIdentity<'a>,
}

/// One DKIM signature's result to report (RFC 8601 §2.7.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DkimResult<'a> {
    /// `pass`, `fail`, `neutral`, `temperror`, `permerror` or `none`.
    pub result: &'a str,
    /// Why it did not pass, if it did not (`reason`, §2.2).
    pub reason: Option<&'a str>,
    /// The signing domain (`header.d`); empty for a signature too broken
    /// to name one.
    pub domain: &'a str,
    /// The selector (`header.s`).
    pub selector: &'a str,
    /// The first characters of the signature's `b=` tag (`header.b`, RFC
    /// 6008), which tell several signatures of one domain apart.
    pub b: &'a str,
}

/// The DMARC result to report (RFC 7489 §11.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmarcResult<'a> {
    /// `pass`, `fail`, `temperror`, `permerror` or `none`.
    pub result: &'a str,
    /// The RFC 5322.From domain (`header.from`).
    pub from_domain: &'a str,
    /// The policy that applied (`none`, `quarantine`, `reject`), as a
    /// comment: no property is registered for it.
    pub policy: Option<&'a str>,
}

/// Everything the field says about one message; `None` or empty for
/// checks that were not made.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Results<'a> {
    /// Reverse DNS of the client.
    pub iprev: Option<IprevResult<'a>>,
    /// The SMTP AUTH identity (§2.7.4).
    pub auth: Option<&'a str>,
    /// SPF, the HELO identity first.
    pub spf: Vec<SpfResult<'a>>,
    /// DKIM, one per signature.
    pub dkim: Vec<DkimResult<'a>>,
    /// DMARC.
    pub dmarc: Option<DmarcResult<'a>>,
}

/// The header field, CRLF-terminated and folded one result per line, or
/// `None` when there is nothing to report (RFC 8601 §2.2 would allow
/// `none`, but a field that says nothing only adds bytes).
pub fn header(authserv_id: &str, r: &Results<'_>) -> Option<String> {
    let mut results = Vec::new();
    if let Some(i) = r.iprev {
        let mut line = format!(
            "iprev={} policy.iprev={}",
            i.result,
            pvalue(&i.ip.to_canonical().to_string())
        );
        if let Some(name) = i.name.filter(|n| is_comment_safe(n)) {
            line.push_str(&format!(" ({name})"));
        }
        results.push(line);
    }
    if let Some(user) = r.auth {
        // §2.7.4: the identity the AUTH command confirmed.
        results.push(format!("auth=pass smtp.auth={}", pvalue(user)));
    }
    for spf in &r.spf {
        // §2.7.2: the identity SPF checked, as ptype.property.
        let (property, value) = match spf.identity {
            SpfIdentity::Helo(h) => ("smtp.helo", h),
            SpfIdentity::MailFrom(m) => ("smtp.mailfrom", m),
        };
        results.push(format!("spf={} {property}={}", spf.result, pvalue(value)));
    }
    for dkim in &r.dkim {
        // §2.7.1: header.d and header.s name the key; header.b (RFC 6008)
        // the signature among several of one domain.
        let mut line = format!("dkim={}", dkim.result);
        if let Some(reason) = dkim.reason {
            line.push_str(&format!(" reason={}", quoted(reason)));
        }
        if !dkim.domain.is_empty() {
            line.push_str(&format!(" header.d={}", pvalue(dkim.domain)));
            if !dkim.selector.is_empty() {
                line.push_str(&format!(" header.s={}", pvalue(dkim.selector)));
            }
            if !dkim.b.is_empty() {
                line.push_str(&format!(" header.b={}", pvalue(dkim.b)));
            }
        }
        results.push(line);
    }
    if let Some(d) = r.dmarc {
        let mut line = format!("dmarc={}", d.result);
        if let Some(p) = d.policy.filter(|p| is_comment_safe(p)) {
            line.push_str(&format!(" (p={p})"));
        }
        if !d.from_domain.is_empty() {
            line.push_str(&format!(" header.from={}", pvalue(d.from_domain)));
        }
        results.push(line);
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
    quoted(v)
}

/// `v` as an RFC 5322 quoted-string, control characters left out.
fn quoted(v: &str) -> String {
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

    fn iprev_auth<'a>(iprev: Option<IprevResult<'a>>, auth: Option<&'a str>) -> Results<'a> {
        Results {
            iprev,
            auth,
            ..Results::default()
        }
    }

    #[test]
    fn the_field_reports_what_was_checked() {
        assert_eq!(header("mx.example.org", &Results::default()), None);
        let pass = IprevResult {
            result: "pass",
            ip: ip("192.0.2.1"),
            name: Some("mail.example.net"),
        };
        assert_eq!(
            header("mx.example.org", &iprev_auth(Some(pass), Some("alice"))).unwrap(),
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
            header("mx", &iprev_auth(Some(fail), Some("bob smith"))).unwrap(),
            "Authentication-Results: mx;\r\n\
             \tiprev=fail policy.iprev=\"2001:db8::1\";\r\n\
             \tauth=pass smtp.auth=\"bob smith\"\r\n"
        );
        // An address as the login stays as it is (§2.2's local-part@domain).
        assert!(
            header("mx", &iprev_auth(None, Some("carol@example.org")))
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
            header("mx", &iprev_auth(Some(mapped), None))
                .unwrap()
                .contains("policy.iprev=192.0.2.7\r\n")
        );
    }

    #[test]
    fn spf_dkim_and_dmarc_results_share_the_one_field() {
        let r = Results {
            iprev: None,
            auth: None,
            spf: vec![
                SpfResult {
                    result: "none",
                    identity: SpfIdentity::Helo("mail.example.net"),
                },
                SpfResult {
                    result: "pass",
                    identity: SpfIdentity::MailFrom("alice@example.net"),
                },
            ],
            dkim: vec![
                DkimResult {
                    result: "pass",
                    reason: None,
                    domain: "example.net",
                    selector: "s2026",
                    b: "dGhpcyBp",
                },
                DkimResult {
                    result: "fail",
                    reason: Some("signature verification failed"),
                    domain: "example.net",
                    selector: "old",
                    b: "ab/c+d==",
                },
                DkimResult {
                    result: "neutral",
                    reason: Some("unsupported \"x\" tag"),
                    domain: "",
                    selector: "",
                    b: "",
                },
            ],
            dmarc: Some(DmarcResult {
                result: "pass",
                from_domain: "example.net",
                policy: Some("reject"),
            }),
        };
        assert_eq!(
            header("mx.example.org", &r).unwrap(),
            "Authentication-Results: mx.example.org;\r\n\
             \tspf=none smtp.helo=mail.example.net;\r\n\
             \tspf=pass smtp.mailfrom=alice@example.net;\r\n\
             \tdkim=pass header.d=example.net header.s=s2026 header.b=dGhpcyBp;\r\n\
             \tdkim=fail reason=\"signature verification failed\" header.d=example.net header.s=old header.b=\"ab/c+d==\";\r\n\
             \tdkim=neutral reason=\"unsupported \\\"x\\\" tag\";\r\n\
             \tdmarc=pass (p=reject) header.from=example.net\r\n"
        );
        // A From without a domain: the result alone.
        let none = Results {
            dmarc: Some(DmarcResult {
                result: "none",
                from_domain: "",
                policy: None,
            }),
            ..Results::default()
        };
        assert_eq!(
            header("mx", &none).unwrap(),
            "Authentication-Results: mx;\r\n\tdmarc=none\r\n"
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
