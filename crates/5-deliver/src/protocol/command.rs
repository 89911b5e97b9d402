//! The transaction's commands: which parameters the next hop gets (RFC 1870
//! SIZE, RFC 6152 8BITMIME, RFC 3030 BINARYMIME, RFC 6531 SMTPUTF8, RFC 3461
//! DSN), whether it can take the message at all, and the MAIL and RCPT lines.
//! No I/O.

use ferrymail_spool::{BodyType, Envelope, Notify, Recipient, Ret};

use super::ehlo::Capabilities;

/// How one message goes to one next hop, decided from its capabilities
/// before MAIL is sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The BODY parameter to send, if any.
    pub body: Option<&'static str>,
    /// Send the SMTPUTF8 parameter.
    pub smtputf8: bool,
    /// Send DSN parameters (RET, ENVID, NOTIFY, ORCPT); false when the next
    /// hop did not advertise DSN, which then drops them (RFC 3461 §4.1 lets
    /// a relay that cannot pass them on treat the mail as relayed).
    pub dsn: bool,
    /// Declare the size with MAIL's SIZE parameter (RFC 1870 §6).
    pub declare_size: bool,
    /// Send the contents with BDAT (RFC 3030) instead of DATA.
    pub chunking: bool,
    /// The contents to send instead of the message's own: its 8-bit MIME
    /// parts made quoted-printable for a next hop without 8BITMIME
    /// ([`super::downgrade`]).
    pub converted: Option<bytes::Bytes>,
}

/// A requirement of the message that the next hop cannot meet. Permanent
/// for every recipient of the attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// Enhanced status code for the DSN (RFC 3463), e.g. "5.6.7".
    pub status: &'static str,
    /// What is wrong, for logs and DSNs.
    pub reason: String,
}

/// True when `bytes` has an octet above 127: content that only an 8BITMIME
/// (or BINARYMIME) next hop may receive unconverted.
pub fn has_eight_bit(bytes: &[u8]) -> bool {
    !bytes.is_ascii()
}

/// Decides how the message goes to a next hop with `caps`, or why it cannot.
///
/// Policies (documented in the crate's docs):
/// * SIZE: a message larger than the advertised limit fails with 5.3.4
///   (RFC 1870 §6: the client should not send it; it will not fit later).
/// * SMTPUTF8: mail that needs it (an envelope address is not ASCII, or
///   the sender asked for it and the message is not all ASCII) to a next
///   hop without it fails with 5.6.7 (RFC 6531 §3.2; no downgrade is
///   attempted). Asked for, but all ASCII: sent without the parameter
///   (RFC 6531 §3.4).
/// * 8BITMIME: 8-bit content to a next hop without 8BITMIME has its 8-bit
///   MIME parts converted to quoted-printable (RFC 6152 §3 allows
///   converting or returning); what cannot be converted (8-bit header
///   fields, no MIME-Version, an 8-bit attached message) fails with 5.6.3.
///   A message declared 8BITMIME whose octets are all 7-bit is sent as
///   is, without the BODY parameter.
/// * BINARYMIME needs BINARYMIME and CHUNKING at the next hop (RFC 3030
///   §3), else 5.6.3.
/// * DSN parameters are sent when the next hop advertises DSN and dropped
///   otherwise.
pub fn plan(
    env: &Envelope,
    recipients: &[&Recipient],
    contents: &[u8],
    caps: &Capabilities,
) -> Result<Plan, Refusal> {
    if has_control(&env.sender) {
        return Err(Refusal {
            status: "5.1.7",
            reason: "the sender address contains control characters".into(),
        });
    }
    if let Some(r) = recipients.iter().find(|r| has_control(&r.address)) {
        return Err(Refusal {
            status: "5.1.3",
            reason: format!("recipient {:?} contains control characters", r.address),
        });
    }
    // RFC 6531 §3.4: a client SHOULD NOT send SMTPUTF8 when neither the
    // envelope nor the message needs it. Many clients ask for it on every
    // message; an all-ASCII one can go to a next hop without SMTPUTF8
    // unchanged (Postfix's smtputf8_autodetect does the same), where
    // refusing it would bounce perfectly deliverable mail.
    let needs_utf8 = !env.sender.is_ascii()
        || recipients.iter().any(|r| !r.address.is_ascii())
        || (env.smtputf8 && !contents.is_ascii());
    if needs_utf8 && !caps.smtputf8 {
        return Err(Refusal {
            status: "5.6.7",
            reason: "the message needs SMTPUTF8, which the next hop does not support".into(),
        });
    }
    let mut converted = None;
    let body = match env.body {
        BodyType::SevenBit => None,
        BodyType::EightBitMime if caps.eight_bit_mime => Some("8BITMIME"),
        BodyType::EightBitMime if !has_eight_bit(contents) => None,
        BodyType::EightBitMime => match super::downgrade::to_seven_bit(contents) {
            Some(seven) => {
                converted = Some(bytes::Bytes::from(seven));
                None
            }
            None => {
                return Err(Refusal {
                    status: "5.6.3",
                    reason: "the message has 8-bit content that cannot be made 7-bit (8-bit header fields, no MIME-Version, or an 8-bit attached message) and the next hop does not support 8BITMIME".into(),
                });
            }
        },
        BodyType::BinaryMime if caps.binary_mime && caps.chunking => Some("BINARYMIME"),
        BodyType::BinaryMime => {
            return Err(Refusal {
                status: "5.6.3",
                reason: "the message is BINARYMIME and the next hop does not support BINARYMIME with CHUNKING".into(),
            });
        }
    };
    // The size the next hop gets: the converted contents, if converted.
    let size = converted.as_ref().map_or(contents.len(), |c| c.len());
    if let Some(limit) = caps.size
        && limit > 0
        && size as u64 > limit
    {
        return Err(Refusal {
            status: "5.3.4",
            reason: format!(
                "message size {size} exceeds the next hop's fixed limit of {limit} bytes"
            ),
        });
    }
    Ok(Plan {
        body,
        // Asked for and offered: passed on as the client sent it.
        smtputf8: needs_utf8 || (env.smtputf8 && caps.smtputf8),
        dsn: caps.dsn,
        declare_size: caps.size.is_some(),
        chunking: caps.chunking,
        converted,
    })
}

fn has_control(s: &str) -> bool {
    s.chars().any(|c| c.is_control() || c == '<' || c == '>')
}

/// `address` as a path in a command (RFC 5321 §4.1.2): as it is when its
/// local part is a Dot-string, else with the local part as a
/// Quoted-string. Addresses are stored as smtp-proto parses them, with a
/// quoted local part unquoted (`"a b"@x` becomes `a b@x`); sent that way
/// they would be refused (501) or, worse, read as another address
/// (`"u@evil.example"@here` as `u@evil.example@here`).
pub fn path(address: &str) -> std::borrow::Cow<'_, str> {
    let Some((local, domain)) = address.rsplit_once('@') else {
        return address.into();
    };
    // atext (RFC 5322 §3.2.3), and UTF-8 for SMTPUTF8 (RFC 6531 §3.3).
    let atext =
        |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || !c.is_ascii();
    let dot_string = !local.is_empty()
        && local
            .split('.')
            .all(|atom| !atom.is_empty() && atom.chars().all(atext));
    if dot_string {
        return address.into();
    }
    let mut quoted = String::with_capacity(address.len() + 4);
    quoted.push('"');
    for c in local.chars() {
        if c == '"' || c == '\\' {
            quoted.push('\\');
        }
        quoted.push(c);
    }
    quoted.push_str("\"@");
    quoted.push_str(domain);
    quoted.into()
}

/// `MAIL FROM:<sender> [SIZE=n] [BODY=..] [SMTPUTF8] [RET=..] [ENVID=..]`
/// with CRLF (RFC 5321 §4.1.1.2 and the extensions' RFCs).
pub fn mail_from(env: &Envelope, plan: &Plan, size: usize) -> String {
    let mut line = format!("MAIL FROM:<{}>", path(&env.sender));
    if plan.declare_size {
        line.push_str(&format!(" SIZE={size}"));
    }
    if let Some(body) = plan.body {
        line.push_str(" BODY=");
        line.push_str(body);
    }
    if plan.smtputf8 {
        line.push_str(" SMTPUTF8");
    }
    if plan.dsn {
        match env.ret {
            Some(Ret::Full) => line.push_str(" RET=FULL"),
            Some(Ret::Headers) => line.push_str(" RET=HDRS"),
            None => {}
        }
        if let Some(envid) = &env.envid {
            line.push_str(" ENVID=");
            line.push_str(&xtext(envid));
        }
    }
    line.push_str("\r\n");
    line
}

/// `RCPT TO:<address> [NOTIFY=..] [ORCPT=type;xtext]` with CRLF
/// (RFC 5321 §4.1.1.3, RFC 3461 §4.1-4.2).
pub fn rcpt_to(rcpt: &Recipient, plan: &Plan) -> String {
    let mut line = format!("RCPT TO:<{}>", path(&rcpt.address));
    if plan.dsn {
        match rcpt.notify {
            Notify::Default => {}
            Notify::Never => line.push_str(" NOTIFY=NEVER"),
            Notify::On {
                success,
                failure,
                delay,
            } => {
                let list: Vec<&str> =
                    [(success, "SUCCESS"), (failure, "FAILURE"), (delay, "DELAY")]
                        .into_iter()
                        .filter_map(|(on, name)| on.then_some(name))
                        .collect();
                if !list.is_empty() {
                    line.push_str(" NOTIFY=");
                    line.push_str(&list.join(","));
                }
            }
        }
        if let Some((kind, addr)) = rcpt.orcpt.as_deref().and_then(|o| o.split_once(';'))
            && !kind.is_empty()
            && kind.is_ascii()
        {
            line.push_str(" ORCPT=");
            line.push_str(kind);
            line.push(';');
            if ferrymail_spool::orcpt::is_utf8_type(kind) {
                // RFC 6533 §3: utf-8-addr-unitext within SMTPUTF8,
                // utf-8-addr-xtext (all ASCII) otherwise.
                line.push_str(&ferrymail_spool::orcpt::encode_utf8_addr(
                    addr,
                    plan.smtputf8,
                ));
            } else {
                line.push_str(&xtext(addr));
            }
        }
    }
    line.push_str("\r\n");
    line
}

/// xtext (RFC 3461 §4): octets from `!` to `~` stand for themselves except
/// `+` and `=`; everything else becomes `+XX` in upper-case hex.
pub fn xtext(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (b'!'..=b'~').contains(&b) && b != b'+' && b != b'=' {
            out.push(b as char);
        } else {
            out.push_str(&format!("+{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrymail_spool::{MessageId, Source};

    fn env() -> Envelope {
        Envelope {
            id: MessageId(1),
            sender: "a@example.org".into(),
            recipients: vec![rcpt("b@example.net")],
            size: 10,
            arrived: 0,
            body: BodyType::SevenBit,
            smtputf8: false,
            ret: None,
            envid: None,
            mt_priority: 0,
            source: Source::Smtp,
            remote_ip: None,
            helo: None,
            authenticated_as: None,
        }
    }

    fn rcpt(a: &str) -> Recipient {
        Recipient {
            address: a.into(),
            orcpt: None,
            notify: Notify::Default,
        }
    }

    fn all() -> Capabilities {
        Capabilities {
            pipelining: true,
            size: Some(1000),
            eight_bit_mime: true,
            binary_mime: true,
            chunking: true,
            smtputf8: true,
            dsn: true,
            starttls: true,
            auth_plain: true,
            auth_login: true,
        }
    }

    #[test]
    fn xtext_encoding() {
        assert_eq!(xtext("abc@example.org"), "abc@example.org");
        assert_eq!(xtext("a+b=c d"), "a+2Bb+3Dc+20d");
        assert_eq!(xtext("é"), "+C3+A9");
        assert_eq!(xtext("\r\n"), "+0D+0A");
    }

    #[test]
    fn full_parameters_when_supported() {
        let mut e = env();
        e.body = BodyType::EightBitMime;
        e.smtputf8 = true;
        e.ret = Some(Ret::Headers);
        e.envid = Some("id+1=x".into());
        let r = Recipient {
            address: "b@example.net".into(),
            orcpt: Some("rfc822;B@Example.NET".into()),
            notify: Notify::On {
                success: true,
                failure: true,
                delay: false,
            },
        };
        let p = plan(&e, &[&r], "é".as_bytes(), &all()).unwrap();
        assert_eq!(
            mail_from(&e, &p, 42),
            "MAIL FROM:<a@example.org> SIZE=42 BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=id+2B1+3Dx\r\n"
        );
        assert_eq!(
            rcpt_to(&r, &p),
            "RCPT TO:<b@example.net> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;B@Example.NET\r\n"
        );
        let never = Recipient {
            notify: Notify::Never,
            ..rcpt("c@x")
        };
        assert_eq!(rcpt_to(&never, &p), "RCPT TO:<c@x> NOTIFY=NEVER\r\n");
    }

    /// RFC 6533 §3: a `utf-8` ORCPT goes as utf-8-addr-unitext within
    /// SMTPUTF8 and as utf-8-addr-xtext (ASCII only) without it.
    #[test]
    fn utf8_orcpt_takes_the_form_the_transaction_allows() {
        let r = Recipient {
            orcpt: Some("utf-8;\u{e9}+1@x".into()),
            ..rcpt("b@x")
        };
        let mut e = env();
        e.smtputf8 = true;
        let p = plan(&e, &[&r], b"x", &all()).unwrap();
        assert!(p.smtputf8);
        assert_eq!(
            rcpt_to(&r, &p),
            "RCPT TO:<b@x> ORCPT=utf-8;\u{e9}\\x{2B}1@x\r\n"
        );
        let p = plan(&env(), &[&r], b"x", &all()).unwrap();
        assert!(!p.smtputf8);
        assert_eq!(
            rcpt_to(&r, &p),
            "RCPT TO:<b@x> ORCPT=utf-8;\\x{E9}\\x{2B}1@x\r\n"
        );
    }

    #[test]
    fn dsn_dropped_without_support() {
        let mut e = env();
        e.ret = Some(Ret::Full);
        e.envid = Some("x".into());
        let r = Recipient {
            notify: Notify::Never,
            orcpt: Some("rfc822;b@x".into()),
            ..rcpt("b@x")
        };
        let caps = Capabilities {
            dsn: false,
            size: None,
            ..all()
        };
        let p = plan(&e, &[&r], b"x", &caps).unwrap();
        assert!(!p.dsn);
        assert_eq!(mail_from(&e, &p, 1), "MAIL FROM:<a@example.org>\r\n");
        assert_eq!(rcpt_to(&r, &p), "RCPT TO:<b@x>\r\n");
        let mut null = env();
        null.sender.clear();
        assert_eq!(mail_from(&null, &p, 1), "MAIL FROM:<>\r\n");
    }

    #[test]
    fn refusals() {
        let e = env();
        let r = rcpt("b@x");
        // SIZE: over the limit is 5.3.4; no limit (0) or no SIZE is fine
        let err = plan(&e, &[&r], &[b'x'; 1001], &all()).unwrap_err();
        assert_eq!(err.status, "5.3.4");
        for size in [Some(0), None] {
            let caps = Capabilities { size, ..all() };
            assert!(plan(&e, &[&r], &[b'x'; 5000], &caps).is_ok());
        }
        // SMTPUTF8 required: flag, or a non-ASCII address
        let plain = Capabilities {
            smtputf8: false,
            ..all()
        };
        let mut u = env();
        u.smtputf8 = true;
        let header = "Subject: Grüße\r\n\r\nx".as_bytes();
        assert_eq!(plan(&u, &[&r], header, &plain).unwrap_err().status, "5.6.7");
        // Asked for, but nothing in the envelope or message needs it
        // (RFC 6531 §3.4): sent without; passed on where it is offered.
        assert!(
            !plan(&u, &[&r], b"Subject: hi\r\n\r\nx", &plain)
                .unwrap()
                .smtputf8
        );
        assert!(
            plan(&u, &[&r], b"Subject: hi\r\n\r\nx", &all())
                .unwrap()
                .smtputf8
        );
        let ru = rcpt("jörg@x");
        assert_eq!(plan(&e, &[&ru], b"x", &plain).unwrap_err().status, "5.6.7");
        assert!(!plan(&e, &[&r], b"x", &plain).unwrap().smtputf8);
        // 8BITMIME: 8-bit content fails, 7-bit content goes without BODY
        let no8 = Capabilities {
            eight_bit_mime: false,
            ..all()
        };
        let mut e8 = env();
        e8.body = BodyType::EightBitMime;
        assert_eq!(
            plan(&e8, &[&r], "é".as_bytes(), &no8).unwrap_err().status,
            "5.6.3"
        );
        assert_eq!(plan(&e8, &[&r], b"plain", &no8).unwrap().body, None);
        // BINARYMIME needs CHUNKING too
        let mut eb = env();
        eb.body = BodyType::BinaryMime;
        assert_eq!(
            plan(&eb, &[&r], b"x", &all()).unwrap().body,
            Some("BINARYMIME")
        );
        let nochunk = Capabilities {
            chunking: false,
            ..all()
        };
        assert_eq!(
            plan(&eb, &[&r], b"x", &nochunk).unwrap_err().status,
            "5.6.3"
        );
        // command injection through an address is refused
        let evil = rcpt("b@x>\r\nRCPT TO:<c@y");
        assert_eq!(
            plan(&e, &[&evil], b"x", &all()).unwrap_err().status,
            "5.1.3"
        );
    }

    #[test]
    fn paths_quote_local_parts_that_are_not_dot_strings() {
        for (stored, sent) in [
            ("a.b+tag@x.test", "a.b+tag@x.test"),
            ("", ""),
            ("postmaster", "postmaster"),
            ("a b@x.test", "\"a b\"@x.test"),
            (
                "victim@evil.example@local.test",
                "\"victim@evil.example\"@local.test",
            ),
            (".a@x.test", "\".a\"@x.test"),
            ("a..b@x.test", "\"a..b\"@x.test"),
            ("a\"b\\c@x.test", "\"a\\\"b\\\\c\"@x.test"),
            ("ünïcödé@x.test", "ünïcödé@x.test"),
        ] {
            assert_eq!(path(stored), sent, "{stored}");
        }
    }
}
