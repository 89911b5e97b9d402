//! RCPT parameters smtp-proto does not parse, taken out of the command line
//! before it does. No I/O.
//!
//! smtp-proto 0.2 accepts an ORCPT (RFC 3461 §4.2) only of type `rfc822`,
//! and decodes its xtext octet by octet into Latin-1 characters (`+C3+A9`
//! becomes `Ã©`, not `é`). RFC 6533 §3 adds the `utf-8` type, which an
//! SMTPUTF8 client may send with any recipient it got from an
//! internationalized address, and RFC 3461 allows any registered type;
//! refusing them refuses the recipient. So the ORCPT is cut out of the
//! line here, smtp-proto parses the rest, and the session decodes the value
//! with [`ferrymail_spool::orcpt::decode`].

/// When `line` is a RCPT command with an ORCPT parameter: the line without
/// that parameter (still CRLF-terminated) and the parameter's raw value.
/// `None` otherwise, and for a line whose parameters are not UTF-8
/// (smtp-proto then refuses it as it would).
///
/// Only the first ORCPT is taken: a second one stays in the line, so the
/// session sees both and refuses the command.
pub fn take_orcpt(line: &[u8]) -> Option<(Vec<u8>, String)> {
    if line.len() < 4 || !line[..4].eq_ignore_ascii_case(b"RCPT") {
        return None;
    }
    // The end of the forward-path: the first `>` outside a quoted string
    // (RFC 5321 §4.1.2: a quoted local part may hold `>`).
    let open = memchr::memchr(b'<', line)?;
    let (mut quoted, mut escaped) = (false, false);
    let mut close = None;
    for (i, &b) in line.iter().enumerate().skip(open + 1) {
        if escaped {
            escaped = false;
            continue;
        }
        match b {
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            b'>' if !quoted => {
                close = Some(i);
                break;
            }
            _ => {}
        }
    }
    let close = close?;
    let params = std::str::from_utf8(&line[close + 1..]).ok()?;
    let params = params.trim_end_matches(['\r', '\n']);
    let mut kept = Vec::new();
    let mut value = None;
    for param in params.split(' ').filter(|p| !p.is_empty()) {
        match param.split_once('=') {
            Some((key, v)) if value.is_none() && key.eq_ignore_ascii_case("ORCPT") => {
                value = Some(v.to_string());
            }
            _ => kept.push(param),
        }
    }
    let value = value?;
    let mut out = line[..=close].to_vec();
    for p in kept {
        out.push(b' ');
        out.extend_from_slice(p.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    Some((out, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn take(line: &str) -> Option<(String, String)> {
        take_orcpt(line.as_bytes()).map(|(l, v)| (String::from_utf8(l).unwrap(), v))
    }

    #[test]
    fn table() {
        assert_eq!(
            take("RCPT TO:<b@x> NOTIFY=FAILURE ORCPT=utf-8;\\x{E9}@x\r\n"),
            Some((
                "RCPT TO:<b@x> NOTIFY=FAILURE\r\n".into(),
                "utf-8;\\x{E9}@x".into()
            ))
        );
        assert_eq!(
            take("rcpt to:<\u{e9}@x> orcpt=UTF-8;\u{e9}@x notify=never\r\n"),
            Some((
                "rcpt to:<\u{e9}@x> notify=never\r\n".into(),
                "UTF-8;\u{e9}@x".into()
            ))
        );
        // A quoted local part holding `>` and a space.
        assert_eq!(
            take("RCPT TO:<\"a> b\"@x> ORCPT=x400;c+3Dus\r\n"),
            Some(("RCPT TO:<\"a> b\"@x>\r\n".into(), "x400;c+3Dus".into()))
        );
        assert_eq!(
            take("RCPT TO:<b@x> ORCPT=rfc822;caf+C3+A9@x\r\n"),
            Some(("RCPT TO:<b@x>\r\n".into(), "rfc822;caf+C3+A9@x".into()))
        );
        // Lines without ORCPT are smtp-proto's alone.
        assert_eq!(take("RCPT TO:<b@x> NOTIFY=NEVER\r\n"), None);
        assert_eq!(take("RCPT TO:<b@x>\r\n"), None);
        assert_eq!(take("MAIL FROM:<a@x> ORCPT=utf-8;a@x\r\n"), None);
        // A second ORCPT stays for the session to refuse.
        assert_eq!(
            take("RCPT TO:<b@x> ORCPT=utf-8;a@x ORCPT=rfc822;b@x\r\n"),
            Some((
                "RCPT TO:<b@x> ORCPT=rfc822;b@x\r\n".into(),
                "utf-8;a@x".into()
            ))
        );
    }
}
