//! The MIME structure and the field formatting of notifications, checked on
//! the bytes (the independent parsers judge them in the binary's
//! end-to-end tests).

use super::*;
use ferrymail_spool::conformance::sample_envelope;
use ferrymail_spool::{Envelope, MessageId, Notify, Recipient};

const HOST: &str = "mx.ferry.test";
/// 2026-01-02 03:04:05 UTC.
const T: UnixMillis = 1_767_323_045_000;

const ORIGINAL: &[u8] =
    b"Received: from client.test by mx.ferry.test;\r\n Fri, 2 Jan 2026 03:00:00 +0000\r\n\
From: Sender <sender@sender.test>\r\nTo: a@dest.test\r\nSubject: Lunch?\r\n\
Message-ID: <orig-1@sender.test>\r\n\r\nBody line one.\r\n.dot line\r\n";

fn envelope() -> Envelope {
    let mut e = sample_envelope(9, 2);
    e.id = MessageId(0x0123_4567_89ab_cdef);
    e.sender = "sender@sender.test".into();
    e.recipients = vec![
        Recipient {
            address: "a@dest.test".into(),
            orcpt: Some("rfc822;A@Dest.Test".into()),
            notify: Notify::Default,
        },
        Recipient {
            address: "b@dest.test".into(),
            orcpt: None,
            notify: Notify::Default,
        },
    ];
    e.arrived = T - 3_600_000;
    e.smtputf8 = false;
    e.ret = None;
    e.envid = None;
    e.body = BodyType::SevenBit;
    e
}

fn failed(address: &str, status: &str, reply: Option<&str>) -> RecipientReport {
    RecipientReport {
        address: address.into(),
        original: None,
        action: Action::Failed,
        status: status.into(),
        remote_mta: reply.map(|_| "sink.dest.test".into()),
        diagnostic: reply.map(str::to_string),
        reason: reply.unwrap_or("no such domain").into(),
        last_attempt: T - 1000,
        will_retry_until: None,
    }
}

fn notification<'a>(
    kind: Kind,
    env: &'a Envelope,
    rcpts: &'a [RecipientReport],
    original: Option<&'a [u8]>,
) -> Notification<'a> {
    Notification {
        kind,
        reporting_mta: HOST,
        from_name: "Mail Delivery Subsystem",
        from_address: "MAILER-DAEMON@mx.ferry.test",
        to: &env.sender,
        double_bounce: false,
        envelope: env,
        recipients: rcpts,
        original,
        max_returned_size: 256 << 10,
        date: T,
        message_id: "n1.dsn@mx.ferry.test",
    }
}

/// A MIME part as written: its header section and its body.
#[derive(Debug)]
struct Part {
    headers: String,
    body: Vec<u8>,
}

impl Part {
    fn header(&self, name: &str) -> Option<String> {
        ferrymail_route::header_value(self.headers.as_bytes(), name)
    }
    fn content_type(&self) -> String {
        self.header("Content-Type").unwrap_or_default()
    }
}

fn split_head(bytes: &[u8]) -> Part {
    let end = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("header end");
    Part {
        headers: String::from_utf8(bytes[..end + 2].to_vec()).unwrap(),
        body: bytes[end + 4..].to_vec(),
    }
}

/// The top-level header section and the parts of the multipart/report.
fn parse(message: &[u8]) -> (Part, Vec<Part>) {
    let top = split_head(message);
    let ct = top.content_type();
    let boundary = ct
        .split("boundary=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("boundary")
        .to_string();
    let delim = format!("\r\n--{boundary}");
    let body = String::from_utf8_lossy(&top.body).to_string();
    let body = format!("\r\n{body}");
    let mut chunks: Vec<&str> = body.split(&delim).collect();
    assert!(
        chunks.last().unwrap().starts_with("--"),
        "closing delimiter"
    );
    chunks.pop();
    let parts = chunks[1..]
        .iter()
        .map(|c| split_head(c.strip_prefix("\r\n").unwrap().as_bytes()))
        .collect();
    (top, parts)
}

/// The blocks of a delivery-status body, each a list of (name, unfolded
/// value).
fn blocks(body: &[u8]) -> Vec<Vec<(String, String)>> {
    let text = String::from_utf8(body.to_vec()).unwrap();
    text.split("\r\n\r\n")
        .filter(|b| !b.trim().is_empty())
        .map(|b| {
            let unfolded = b.replace("\r\n ", " ");
            unfolded
                .split("\r\n")
                .filter(|l| !l.is_empty())
                .map(|l| {
                    let (n, v) = l.split_once(':').expect("name: value");
                    (n.to_string(), v.trim().to_string())
                })
                .collect()
        })
        .collect()
}

fn get<'a>(block: &'a [(String, String)], name: &str) -> Option<&'a str> {
    block
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// RFC 6522/3464 structure of a failure notice: outer headers, three parts
/// in order with their types and encodings, every field of both block
/// kinds, headers only returned when RET is absent.
#[test]
fn failure_structure_and_fields() {
    let env = envelope();
    let mut a = failed("a@dest.test", "5.1.1", Some("550 5.1.1 no such user"));
    a.original = Some("rfc822;A@Dest.Test".into());
    let rcpts = [a, failed("b@dest.test", "5.0.0", None)];
    let c = compose(&notification(Kind::Failure, &env, &rcpts, Some(ORIGINAL)));
    assert!(!c.eight_bit);
    assert_eq!(
        c.returned,
        Returned::Headers {
            why: None,
            truncated: false
        }
    );
    assert!(c.message.is_ascii());
    let (top, parts) = parse(&c.message);
    assert_eq!(
        top.header("From").as_deref(),
        Some("\"Mail Delivery Subsystem\" <MAILER-DAEMON@mx.ferry.test>")
    );
    assert_eq!(top.header("To").as_deref(), Some("<sender@sender.test>"));
    assert_eq!(
        top.header("Subject").as_deref(),
        Some("Delivery status notification: failure")
    );
    assert_eq!(
        top.header("Date").as_deref(),
        Some("Fri, 2 Jan 2026 03:04:05 +0000")
    );
    assert_eq!(
        top.header("Message-ID").as_deref(),
        Some("<n1.dsn@mx.ferry.test>")
    );
    assert_eq!(
        top.header("Auto-Submitted").as_deref(),
        Some("auto-replied")
    );
    assert_eq!(
        top.header("In-Reply-To").as_deref(),
        Some("<orig-1@sender.test>")
    );
    assert_eq!(top.header("MIME-Version").as_deref(), Some("1.0"));
    let ct = top.content_type();
    assert!(ct.starts_with("multipart/report;"), "{ct}");
    assert!(ct.contains("report-type=\"delivery-status\""), "{ct}");

    assert_eq!(parts.len(), 3);
    assert!(parts[0].content_type().starts_with("text/plain"));
    let text = String::from_utf8_lossy(&parts[0].body);
    assert!(
        text.contains("<a@dest.test>: sink.dest.test said: 550 5.1.1 no such user"),
        "{text}"
    );
    assert!(text.contains("<b@dest.test>: no such domain"), "{text}");
    assert!(
        text.contains("headers of the message are attached"),
        "{text}"
    );

    assert_eq!(parts[1].content_type(), "message/delivery-status");
    assert_eq!(
        parts[1].header("Content-Transfer-Encoding").as_deref(),
        Some("7bit")
    );
    let b = blocks(&parts[1].body);
    assert_eq!(b.len(), 3, "{b:?}");
    assert_eq!(get(&b[0], "Reporting-MTA"), Some("dns; mx.ferry.test"));
    assert_eq!(
        get(&b[0], "Arrival-Date"),
        Some("Fri, 2 Jan 2026 02:04:05 +0000")
    );
    assert_eq!(get(&b[0], "Original-Envelope-Id"), None, "no ENVID given");
    assert_eq!(get(&b[0], "X-Ferrymail-Queue-ID"), Some("0123456789abcdef"));
    assert_eq!(get(&b[1], "Original-Recipient"), Some("rfc822;A@Dest.Test"));
    assert_eq!(get(&b[1], "Final-Recipient"), Some("rfc822; a@dest.test"));
    assert_eq!(get(&b[1], "Action"), Some("failed"));
    assert_eq!(get(&b[1], "Status"), Some("5.1.1"));
    assert_eq!(get(&b[1], "Remote-MTA"), Some("dns; sink.dest.test"));
    assert_eq!(
        get(&b[1], "Diagnostic-Code"),
        Some("smtp; 550 5.1.1 no such user")
    );
    assert_eq!(
        get(&b[1], "Last-Attempt-Date"),
        Some("Fri, 2 Jan 2026 03:04:04 +0000")
    );
    assert_eq!(get(&b[1], "Will-Retry-Until"), None);
    assert_eq!(get(&b[2], "Original-Recipient"), None, "no ORCPT given");
    assert_eq!(get(&b[2], "Final-Recipient"), Some("rfc822; b@dest.test"));
    assert_eq!(get(&b[2], "Remote-MTA"), None, "no connection");
    assert_eq!(get(&b[2], "Diagnostic-Code"), None, "no remote reply");
    // RFC 3464 §2.3 order within a block.
    let names: Vec<&str> = b[1].iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "Original-Recipient",
            "Final-Recipient",
            "Action",
            "Status",
            "Remote-MTA",
            "Diagnostic-Code",
            "Last-Attempt-Date"
        ]
    );

    assert_eq!(parts[2].content_type(), "text/rfc822-headers");
    assert_eq!(
        parts[2].header("Content-Transfer-Encoding").as_deref(),
        Some("7bit")
    );
    assert_eq!(parts[2].body, header_section(ORIGINAL));
    assert!(!String::from_utf8_lossy(&parts[2].body).contains("Body line"));
}

/// RET=FULL returns the whole message as message/rfc822, byte for byte;
/// over `max-returned-size` or with a binary body, the headers only, and
/// the text says why.
#[test]
fn ret_full_and_the_size_limit() {
    let mut env = envelope();
    env.ret = Some(Ret::Full);
    env.envid = Some("env-42".into());
    let rcpts = [failed("a@dest.test", "5.1.1", Some("550 5.1.1 no"))];
    let c = compose(&notification(Kind::Failure, &env, &rcpts, Some(ORIGINAL)));
    assert_eq!(c.returned, Returned::Full);
    let (_, parts) = parse(&c.message);
    assert_eq!(parts[2].content_type(), "message/rfc822");
    assert_eq!(
        parts[2].header("Content-Transfer-Encoding").as_deref(),
        Some("7bit")
    );
    assert_eq!(parts[2].body, ORIGINAL);
    assert_eq!(
        get(&blocks(&parts[1].body)[0], "Original-Envelope-Id"),
        Some("env-42")
    );
    assert!(String::from_utf8_lossy(&parts[0].body).contains("The message is attached."));

    let mut n = notification(Kind::Failure, &env, &rcpts, Some(ORIGINAL));
    n.max_returned_size = 100;
    let c = compose(&n);
    assert_eq!(
        c.returned,
        Returned::Headers {
            why: Some(NotFull::TooLarge {
                size: ORIGINAL.len() as u64,
                limit: 100
            }),
            truncated: true
        }
    );
    let (_, parts) = parse(&c.message);
    assert_eq!(parts[2].content_type(), "text/rfc822-headers");
    assert!(parts[2].body.len() <= 100);
    assert!(parts[2].body.starts_with(b"Received: "));
    assert!(parts[2].body.ends_with(b"\r\n"), "cut at a field boundary");
    let text = String::from_utf8_lossy(&parts[0].body);
    assert!(
        text.contains(&format!(
            "The message was {} bytes, more than the 100 bytes",
            ORIGINAL.len()
        )),
        "{text}"
    );

    let mut n = notification(Kind::Failure, &env, &rcpts, Some(ORIGINAL));
    n.max_returned_size = 190;
    let c = compose(&n);
    assert_eq!(
        c.returned,
        Returned::Headers {
            why: Some(NotFull::TooLarge {
                size: ORIGINAL.len() as u64,
                limit: 190
            }),
            truncated: false
        }
    );

    env.body = BodyType::BinaryMime;
    let c = compose(&notification(Kind::Failure, &env, &rcpts, Some(ORIGINAL)));
    assert!(matches!(
        c.returned,
        Returned::Headers {
            why: Some(NotFull::Binary),
            ..
        }
    ));
}

/// An 8-bit original comes back with `8bit` and makes the notice 8-bit.
#[test]
fn eight_bit_original() {
    let mut env = envelope();
    env.ret = Some(Ret::Full);
    env.body = BodyType::EightBitMime;
    let original = "Subject: caf\u{e9}\r\n\r\nna\u{ef}ve\r\n".as_bytes();
    let rcpts = [failed("a@dest.test", "5.1.1", Some("550 no"))];
    let c = compose(&notification(Kind::Failure, &env, &rcpts, Some(original)));
    assert!(c.eight_bit);
    let (_, parts) = parse(&c.message);
    assert_eq!(
        parts[2].header("Content-Transfer-Encoding").as_deref(),
        Some("8bit")
    );
    assert_eq!(parts[2].body, original);
}

/// Delay notices: Action delayed, Will-Retry-Until, headers only even with
/// RET=FULL (RFC 3461 §4.3), and a text that says nothing needs resending.
#[test]
fn delay_notice() {
    let mut env = envelope();
    env.ret = Some(Ret::Full);
    let rcpts = [RecipientReport {
        action: Action::Delayed,
        status: "4.2.0".into(),
        will_retry_until: Some(T + 86_400_000),
        ..failed("a@dest.test", "", Some("450 4.2.0 busy"))
    }];
    let c = compose(&notification(Kind::Delay, &env, &rcpts, Some(ORIGINAL)));
    let (top, parts) = parse(&c.message);
    assert_eq!(
        top.header("Subject").as_deref(),
        Some("Delivery status notification: delayed, still trying")
    );
    assert_eq!(parts[2].content_type(), "text/rfc822-headers");
    let b = blocks(&parts[1].body);
    assert_eq!(get(&b[1], "Action"), Some("delayed"));
    assert_eq!(get(&b[1], "Status"), Some("4.2.0"));
    assert_eq!(
        get(&b[1], "Will-Retry-Until"),
        Some("Sat, 3 Jan 2026 03:04:05 +0000")
    );
    let text = String::from_utf8_lossy(&parts[0].body).replace("\r\n", "\n");
    assert!(
        text.contains("still being retried until\nSat, 3 Jan 2026 03:04:05 +0000."),
        "{text}"
    );
    assert!(
        text.contains("You do not need to send the message again."),
        "{text}"
    );
    assert!(
        text.contains("<a@dest.test>: sink.dest.test said: 450 4.2.0 busy"),
        "{text}"
    );
    assert_eq!(
        parts[0].header("Content-Transfer-Encoding").as_deref(),
        Some("7bit"),
        "short ASCII lines need no encoding"
    );
}

/// Success notices: delivered and relayed blocks, headers returned.
#[test]
fn success_notice() {
    let env = envelope();
    let ok = |address: &str, action| RecipientReport {
        action,
        status: "2.0.0".into(),
        ..failed(address, "", Some("250 2.0.0 ok"))
    };
    let rcpts = [
        ok("a@dest.test", Action::Delivered),
        ok("b@dest.test", Action::Relayed),
    ];
    let c = compose(&notification(Kind::Success, &env, &rcpts, Some(ORIGINAL)));
    let (_, parts) = parse(&c.message);
    let b = blocks(&parts[1].body);
    assert_eq!(get(&b[1], "Action"), Some("delivered"));
    assert_eq!(get(&b[2], "Action"), Some("relayed"));
    assert_eq!(get(&b[2], "Status"), Some("2.0.0"));
    assert_eq!(parts[2].content_type(), "text/rfc822-headers");
    let text = String::from_utf8_lossy(&parts[0].body).replace("\r\n", "\n");
    assert!(
        text.contains("<a@dest.test>: delivered to the mailbox by sink.dest.test\n"),
        "{text}"
    );
    assert!(
        text.contains("<b@dest.test>: relayed to sink.dest.test, which does not support"),
        "{text}"
    );
}

/// SMTPUTF8 originals get the RFC 6533 types, UTF-8 fields, `utf-8`
/// address types for non-ASCII addresses, and 8bit encodings.
#[test]
fn smtputf8_uses_global_types() {
    let mut env = envelope();
    env.smtputf8 = true;
    env.sender = "jos\u{e9}@sender.test".into();
    let mut r = failed("\u{fc}ser@dest.test", "5.1.1", Some("550 5.1.1 unknown"));
    r.original = Some("utf-8;\u{fc}ser@dest.test".into());
    let rcpts = [r, failed("plain@dest.test", "5.1.1", Some("550 5.1.1 x"))];
    let original =
        "Subject: gr\u{fc}\u{df}e\r\nFrom: jos\u{e9}@sender.test\r\n\r\nhi\r\n".as_bytes();
    let c = compose(&notification(Kind::Failure, &env, &rcpts, Some(original)));
    assert!(c.eight_bit);
    let (top, parts) = parse(&c.message);
    assert_eq!(top.header("To").as_deref(), Some("<jos\u{e9}@sender.test>"));
    assert_eq!(parts[1].content_type(), "message/global-delivery-status");
    assert_eq!(
        parts[1].header("Content-Transfer-Encoding").as_deref(),
        Some("8bit")
    );
    let b = blocks(&parts[1].body);
    assert_eq!(
        get(&b[1], "Final-Recipient"),
        Some("utf-8; \u{fc}ser@dest.test")
    );
    assert_eq!(
        get(&b[1], "Original-Recipient"),
        Some("utf-8;\u{fc}ser@dest.test")
    );
    assert_eq!(
        get(&b[2], "Final-Recipient"),
        Some("rfc822; plain@dest.test")
    );
    assert_eq!(parts[2].content_type(), "message/global-headers");
    assert_eq!(parts[2].body, header_section(original));

    env.ret = Some(Ret::Full);
    let c = compose(&notification(Kind::Failure, &env, &rcpts, Some(original)));
    let (_, parts) = parse(&c.message);
    assert_eq!(parts[2].content_type(), "message/global");
    assert_eq!(parts[2].body, original);
}

/// Without the contents there is no third part, and the text says so; a
/// double bounce copy says it is one.
#[test]
fn nothing_returned_and_double_bounce() {
    let env = envelope();
    let rcpts = [failed("a@dest.test", "5.1.1", Some("550 x"))];
    let mut n = notification(Kind::Failure, &env, &rcpts, None);
    n.double_bounce = true;
    n.to = "postmaster@mx.ferry.test";
    let c = compose(&n);
    assert_eq!(c.returned, Returned::Nothing);
    let (top, parts) = parse(&c.message);
    assert_eq!(parts.len(), 2);
    assert_eq!(
        top.header("Subject").as_deref(),
        Some("Postmaster copy: undeliverable bounce")
    );
    assert_eq!(top.header("In-Reply-To"), None);
    let text = String::from_utf8_lossy(&parts[0].body).replace("\r\n", "\n");
    assert!(text.contains("copy for the postmaster"), "{text}");
    assert!(text.contains("could no longer be read"), "{text}");
}

/// Field values never carry a line break (which would forge a field), are
/// ASCII outside SMTPUTF8, and long ones fold at spaces into short lines
/// that unfold to the value.
#[test]
fn field_values_are_safe_and_folded() {
    assert_eq!(
        clean("550 a\r\nAction: delivered", false),
        "550 a Action: delivered"
    );
    assert_eq!(clean("caf\u{e9}\tok  ", false), "caf? ok");
    assert_eq!(clean("caf\u{e9}", true), "caf\u{e9}");

    let env = envelope();
    let long = format!("550 5.7.1 {}", "policy says no ".repeat(20).trim_end());
    let rcpts = [failed("a@dest.test", "5.7.1", Some(&long))];
    let body = delivery_status(&notification(Kind::Failure, &env, &rcpts, None));
    for line in body.split("\r\n") {
        assert!(line.len() <= 78, "{line:?}");
    }
    let b = blocks(body.as_bytes());
    assert_eq!(
        get(&b[1], "Diagnostic-Code"),
        Some(&*format!("smtp; {long}"))
    );

    let mut out = String::new();
    field(&mut out, "Diagnostic-Code", &"x".repeat(2000));
    assert!(
        out.split("\r\n").all(|l| l.len() <= HARD_LINE),
        "hard split"
    );
    assert_eq!(
        out.replace("\r\n ", "").len(),
        "Diagnostic-Code: ".len() + 2000 + 2
    );

    // ORCPT with non-ASCII in a 7-bit report goes back to xtext.
    assert_eq!(
        original_recipient("rfc822;\u{e9}@x", false),
        "rfc822;+C3+A9@x"
    );
    assert_eq!(original_recipient("rfc822;a@x", false), "rfc822;a@x");
    // RFC 6533 §3: a utf-8 one as utf-8-addr-xtext, or as it is in a
    // global report.
    assert_eq!(
        original_recipient("utf-8;\u{e9}@x", false),
        "utf-8;\\x{E9}@x"
    );
    assert_eq!(original_recipient("utf-8;\u{e9}@x", true), "utf-8;\u{e9}@x");
    assert_eq!(
        original_recipient("utf-8;a+b@x", false),
        "utf-8;a\\x{2B}b@x"
    );
}

/// The header section ends at the first empty line (CRLF or LF), or is the
/// whole message; cutting keeps whole fields, continuation lines included.
#[test]
fn header_section_and_cutting() {
    assert_eq!(
        header_section(b"A: 1\r\nB: 2\r\n\r\nbody\r\n"),
        b"A: 1\r\nB: 2\r\n"
    );
    assert_eq!(header_section(b"A: 1\nB: 2\n\nbody\n"), b"A: 1\nB: 2\n");
    assert_eq!(header_section(b"A: 1\r\nB: 2"), b"A: 1\r\nB: 2");
    assert_eq!(header_section(b"\r\nbody"), b"");
    let h = b"A: 1\r\nB: 2\r\n 2b\r\nC: 3\r\n";
    assert_eq!(cut_at_field(h, 100), (&h[..], false));
    assert_eq!(cut_at_field(h, 12), (&b"A: 1\r\n"[..], true));
    assert_eq!(cut_at_field(h, 18), (&b"A: 1\r\nB: 2\r\n 2b\r\n"[..], true));
    assert_eq!(cut_at_field(h, 3), (&b""[..], true));
}

#[test]
fn dates_are_rfc5322() {
    assert_eq!(date(0), "Thu, 1 Jan 1970 00:00:00 +0000");
    assert_eq!(date(T), "Fri, 2 Jan 2026 03:04:05 +0000");
}
