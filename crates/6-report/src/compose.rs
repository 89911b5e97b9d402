//! The notification message: RFC 6522 `multipart/report;
//! report-type=delivery-status` with the three parts of RFC 3464 §2:
//!
//! 1. `text/plain`, for people: what happened to each recipient and why;
//! 2. `message/delivery-status` (`message/global-delivery-status` for a
//!    message sent with SMTPUTF8, RFC 6533 §6.1), for programs: one
//!    per-message block and one block per recipient (fields below);
//! 3. the original, as RET asks and [`Returned`] decides: `message/rfc822`
//!    whole or `text/rfc822-headers` (`message/global`,
//!    `message/global-headers` under SMTPUTF8, RFC 6533 §6.3 and §6.4).
//!
//! Composition is I/O-free and deterministic given its inputs (the MIME
//! boundary aside), so the structure and every field are unit-tested here.
//! mail-builder writes the outer headers (encoding the display name and
//! subject when needed, folding long ones) and the MIME framing; the
//! delivery-status fields and the returned original are written here,
//! verbatim, with an explicit `Content-Transfer-Encoding`, because
//! `message/*` bodies must not be base64-encoded (RFC 2046 §5.2.1,
//! RFC 3464 §2.1) and mail-builder would otherwise choose an encoding.

use std::borrow::Cow;

use ferrymail_deliver::protocol::command::path;
use ferrymail_spool::{BodyType, Envelope, Ret, UnixMillis};
use mail_builder::MessageBuilder;
use mail_builder::headers::address::Address;
use mail_builder::headers::content_type::ContentType;
use mail_builder::headers::date::Date;
use mail_builder::headers::message_id::MessageId;
use mail_builder::headers::raw::Raw;
use mail_builder::headers::text::Text;
use mail_builder::mime::{BodyPart, MimePart};

use crate::notify::Kind;

/// The Action field of one recipient block (RFC 3464 §2.3.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Given up on: a permanent error or expiry.
    Failed,
    /// Still being retried past a notify age.
    Delayed,
    /// Delivered here (LMTP final delivery).
    Delivered,
    /// Handed to a next hop that does not support DSN (RFC 3461 §6.2.2).
    Relayed,
}

impl Action {
    /// The field value.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Failed => "failed",
            Action::Delayed => "delayed",
            Action::Delivered => "delivered",
            Action::Relayed => "relayed",
        }
    }
}

/// What one recipient block says (RFC 3464 §2.3), plus the sentence for
/// the human-readable part.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecipientReport {
    /// The address as given in RCPT TO: Final-Recipient (§2.3.2).
    pub address: String,
    /// ORCPT as `addr-type;address`, xtext-decoded: Original-Recipient
    /// (§2.3.1), omitted when the client gave none.
    pub original: Option<String>,
    /// Action (§2.3.3).
    pub action: Action,
    /// Status (§2.3.4), an RFC 3463 code such as `5.1.1`.
    pub status: String,
    /// The next hop's host name: Remote-MTA (§2.3.5), when a connection
    /// was made.
    pub remote_mta: Option<String>,
    /// The next hop's reply, `550 5.1.1 text`: `Diagnostic-Code: smtp;`
    /// (§2.3.6), when there was one.
    pub diagnostic: Option<String>,
    /// Why, in words (for the text part): the reply or the local reason.
    pub reason: String,
    /// When the attempt this report is about ended: Last-Attempt-Date
    /// (§2.3.7).
    pub last_attempt: UnixMillis,
    /// Will-Retry-Until (§2.3.9), on delay notices when retries stop at a
    /// known time.
    pub will_retry_until: Option<UnixMillis>,
}

/// Everything a notification is made of.
#[derive(Clone, Debug)]
pub struct Notification<'a> {
    /// Failure, delay or success.
    pub kind: Kind,
    /// `server.hostname`: Reporting-MTA (§2.2.2) and the Message-ID domain.
    pub reporting_mta: &'a str,
    /// Header From display name (`report.dsn.from-name`); empty for none.
    pub from_name: &'a str,
    /// Header From address (`report.dsn.from-address`).
    pub from_address: &'a str,
    /// Header To: the original envelope sender, or the postmaster for a
    /// double bounce.
    pub to: &'a str,
    /// This is the postmaster's copy of a failed message with the null
    /// sender (`report.dsn.double-bounce`).
    pub double_bounce: bool,
    /// The original message's envelope: Arrival-Date, ENVID, RET, SMTPUTF8.
    pub envelope: &'a Envelope,
    /// One block per recipient, in order.
    pub recipients: &'a [RecipientReport],
    /// The original message as stored, when it could still be read.
    pub original: Option<&'a [u8]>,
    /// `report.dsn.max-returned-size`.
    pub max_returned_size: u64,
    /// Date of the notification.
    pub date: UnixMillis,
    /// Message-ID of the notification, without angle brackets.
    pub message_id: &'a str,
}

/// How much of the original a notification returns (RFC 3461 §4.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Returned {
    /// The whole message: RET=FULL on a failure notice, within
    /// `max-returned-size`.
    Full,
    /// The header section only: RET=HDRS or no RET, every delay and success
    /// notice (§4.3: RET applies to failures only), or RET=FULL over the
    /// limit or with a binary body.
    Headers {
        /// RET=FULL was asked for but could not be honoured.
        why: Option<NotFull>,
        /// The header section itself was over the limit and was cut at a
        /// field boundary.
        truncated: bool,
    },
    /// Nothing: the contents could no longer be read.
    Nothing,
}

/// Why RET=FULL came back as headers only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotFull {
    /// The message is larger than `max-returned-size`.
    TooLarge {
        /// Its size in bytes.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// BODY=BINARYMIME (RFC 3030): a binary body cannot travel inside
    /// `message/rfc822` over plain SMTP.
    Binary,
}

/// A composed notification.
#[derive(Clone, Debug)]
pub struct Composed {
    /// The message, CRLF line ends, not yet signed.
    pub message: Vec<u8>,
    /// Some part carries 8-bit data (an 8-bit original, or UTF-8 fields):
    /// send with BODY=8BITMIME.
    pub eight_bit: bool,
    /// What was returned of the original.
    pub returned: Returned,
}

/// The subject of a notification.
pub fn subject(kind: Kind, double_bounce: bool) -> &'static str {
    match (kind, double_bounce) {
        (Kind::Failure, true) => "Postmaster copy: undeliverable bounce",
        (Kind::Failure, false) => "Delivery status notification: failure",
        (Kind::Delay, _) => "Delivery status notification: delayed, still trying",
        (Kind::Success, _) => "Delivery status notification: success",
    }
}

/// Builds the notification.
pub fn compose(n: &Notification<'_>) -> Composed {
    let utf8 = n.envelope.smtputf8;
    let (returned, returned_bytes) = choose_returned(n);

    let status_body = delivery_status(n);
    let text = human_text(n, returned);

    let mut parts = Vec::with_capacity(3);
    parts.push(
        MimePart::new(
            ContentType::new("text/plain").attribute("charset", "utf-8"),
            BodyPart::Text(text.into()),
        )
        .header("Content-Description", Text::new("Notification")),
    );
    let status_8bit = !status_body.is_ascii();
    parts.push(
        MimePart::new(
            ContentType::new(if utf8 {
                "message/global-delivery-status"
            } else {
                "message/delivery-status"
            }),
            BodyPart::Binary(status_body.into_bytes().into()),
        )
        .header("Content-Description", Text::new("Delivery report"))
        .transfer_encoding(if status_8bit { "8bit" } else { "7bit" }),
    );
    let returned_8bit = !returned_bytes.is_ascii();
    match returned {
        Returned::Nothing => {}
        Returned::Full => parts.push(
            MimePart::new(
                ContentType::new(if utf8 {
                    "message/global"
                } else {
                    "message/rfc822"
                }),
                BodyPart::Binary(Cow::Borrowed(returned_bytes)),
            )
            .header("Content-Description", Text::new("Undelivered message"))
            .transfer_encoding(if returned_8bit { "8bit" } else { "7bit" }),
        ),
        Returned::Headers { .. } => parts.push(
            MimePart::new(
                ContentType::new(if utf8 {
                    "message/global-headers"
                } else {
                    "text/rfc822-headers"
                }),
                BodyPart::Binary(Cow::Borrowed(returned_bytes)),
            )
            .header("Content-Description", Text::new("Message headers"))
            .transfer_encoding(if returned_8bit { "8bit" } else { "7bit" }),
        ),
    }

    let from_name = n.from_name.trim();
    let mut builder = MessageBuilder::new()
        .from(Address::new_address(
            (!from_name.is_empty()).then_some(from_name),
            n.from_address,
        ))
        // Addresses are stored with a quoted local part unquoted
        // (`"a b"@x` as `a b@x`): quoted again, as the delivery client's
        // paths are, so that header and fields hold an addr-spec.
        .to(Address::new_address(None::<&str>, path(n.to)))
        .subject(subject(n.kind, n.double_bounce))
        .date(Date::new((n.date / 1000) as i64))
        .message_id(n.message_id)
        // RFC 3834 §5: automatic responses say so, so that vacation
        // programs and the like never answer them.
        .header("Auto-Submitted", Raw::new("auto-replied"));
    if let Some(id) = n
        .original
        .and_then(|o| ferrymail_route::header_value(o, "Message-ID"))
        .and_then(|v| valid_msg_id(&v))
    {
        builder = builder
            .header("In-Reply-To", MessageId::new(id.clone()))
            .header("References", MessageId::new(id));
    }
    let message = builder
        .body(MimePart::new(
            ContentType::new("multipart/report").attribute("report-type", "delivery-status"),
            BodyPart::Multipart(parts),
        ))
        .write_to_vec()
        .unwrap_or_default();
    Composed {
        eight_bit: status_8bit || (returned_8bit && !matches!(returned, Returned::Nothing)),
        message,
        returned,
    }
}

/// Decides what is returned of the original and returns those bytes.
fn choose_returned<'a>(n: &Notification<'a>) -> (Returned, &'a [u8]) {
    let Some(original) = n.original else {
        return (Returned::Nothing, &[]);
    };
    let limit = n.max_returned_size;
    let size = original.len() as u64;
    let why = match (n.kind, n.envelope.ret) {
        // RFC 3461 §4.3: RET=FULL asks for the whole message on failure.
        (Kind::Failure, Some(Ret::Full)) => {
            if n.envelope.body == BodyType::BinaryMime {
                Some(NotFull::Binary)
            } else if size > limit {
                Some(NotFull::TooLarge { size, limit })
            } else {
                return (Returned::Full, original);
            }
        }
        // RET=HDRS, no RET (§4.3: the MTA's choice; headers, as Postfix),
        // and every notice that is not a failure.
        _ => None,
    };
    let headers = header_section(original);
    let (headers, truncated) = cut_at_field(headers, limit);
    (Returned::Headers { why, truncated }, headers)
}

/// The header section of `message`: every field up to (not including) the
/// empty line that ends it; the whole message if it has no body.
pub fn header_section(message: &[u8]) -> &[u8] {
    let mut at = 0;
    while at < message.len() {
        let rest = &message[at..];
        if rest.starts_with(b"\r\n") || rest.starts_with(b"\n") {
            return &message[..at];
        }
        match rest.iter().position(|&b| b == b'\n') {
            Some(nl) => at += nl + 1,
            None => return message,
        }
    }
    message
}

/// Cuts a header section to at most `limit` bytes at a field boundary (a
/// line that does not start with white space), so no field is left half
/// written. Returns whether anything was cut.
fn cut_at_field(headers: &[u8], limit: u64) -> (&[u8], bool) {
    if headers.len() as u64 <= limit {
        return (headers, false);
    }
    let mut keep = 0;
    let mut at = 0;
    while at < headers.len() && at as u64 <= limit {
        let starts_field = !matches!(headers[at], b' ' | b'\t');
        if starts_field {
            keep = at;
        }
        match headers[at..].iter().position(|&b| b == b'\n') {
            Some(nl) => at += nl + 1,
            None => break,
        }
    }
    if at as u64 <= limit {
        keep = at;
    }
    (&headers[..keep], true)
}

/// An RFC 5322 date-time in UTC, as every date field of a DSN needs
/// (RFC 3464 §2.1 `date-time`).
pub fn date(at: UnixMillis) -> String {
    Date::new((at / 1000) as i64).to_rfc822()
}

/// A field value safe to write: control characters (CR and LF above all,
/// which would start a new field) become spaces, runs of spaces shrink to
/// one; outside SMTPUTF8, non-ASCII characters become `?` (a 7-bit
/// `message/delivery-status` may carry only ASCII, RFC 3464 §2.1).
pub fn clean(value: &str, utf8: bool) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        let c = if c.is_control() {
            ' '
        } else if !utf8 && !c.is_ascii() {
            '?'
        } else {
            c
        };
        if c == ' ' && (out.is_empty() || out.ends_with(' ')) {
            continue;
        }
        out.push(c);
    }
    out.trim_end().to_string()
}

/// Longest line written in the delivery-status part before folding.
const FOLD_AT: usize = 78;
/// Hard limit of a folded line's length (RFC 5322 §2.1.1 allows 998).
const HARD_LINE: usize = 900;

/// Writes `Name: value` and CRLF, folding at spaces so lines stay near 78
/// characters (RFC 5322 §2.2.3; RFC 3464 §2.1 fields follow RFC 822
/// syntax, so folding is allowed). A run without spaces longer than
/// [`HARD_LINE`] is split where it must be.
fn field(out: &mut String, name: &str, value: &str) {
    out.push_str(name);
    out.push(':');
    let mut col = name.len() + 1;
    for word in value.split(' ').filter(|w| !w.is_empty()) {
        let mut word = word;
        if col + 1 + word.len() > FOLD_AT && col > 1 + name.len() {
            out.push_str("\r\n");
            col = 0;
        }
        out.push(' ');
        col += 1;
        while col + word.len() > HARD_LINE {
            let mut cut = HARD_LINE.saturating_sub(col).max(1);
            while !word.is_char_boundary(cut) {
                cut -= 1;
            }
            out.push_str(&word[..cut]);
            out.push_str("\r\n ");
            col = 1;
            word = &word[cut..];
        }
        out.push_str(word);
        col += word.len();
    }
    out.push_str("\r\n");
}

/// `addr-type; address` for Final-Recipient: `rfc822`, or `utf-8` for a
/// non-ASCII address in a global DSN (RFC 6533 §3).
fn typed_address(address: &str, utf8: bool) -> String {
    let address = clean(&path(address), utf8);
    if address.is_ascii() {
        format!("rfc822; {address}")
    } else {
        format!("utf-8; {address}")
    }
}

/// ORCPT as Original-Recipient wants it: `addr-type;address`. Outside
/// SMTPUTF8 a non-ASCII byte is written as xtext `+XX` (RFC 3461 §4),
/// the form the parameter arrived in.
fn original_recipient(orcpt: &str, utf8: bool) -> String {
    let value = clean(orcpt, true);
    // RFC 6533 §3: a utf-8 address outside message/global-delivery-status
    // is written as utf-8-addr-xtext, `\x{HEX}` for each non-ASCII
    // character and for `+`, `=` and `\`.
    if !utf8
        && let Some((kind, address)) = value.split_once(';')
        && ferrymail_spool::orcpt::is_utf8_type(kind.trim())
    {
        return format!(
            "{kind};{}",
            ferrymail_spool::orcpt::encode_utf8_addr(address.trim_start(), false)
        );
    }
    if utf8 || value.is_ascii() {
        return value;
    }
    let mut out = String::with_capacity(value.len() + 8);
    for b in value.bytes() {
        if b.is_ascii() {
            out.push(b as char);
        } else {
            out.push_str(&format!("+{b:02X}"));
        }
    }
    out
}

/// The `message/delivery-status` body (RFC 3464 §2.1): the per-message
/// block, then one block per recipient, each ended by an empty line.
pub fn delivery_status(n: &Notification<'_>) -> String {
    let utf8 = n.envelope.smtputf8;
    let mut out = String::with_capacity(256 + 320 * n.recipients.len());
    // §2.2: per-message fields.
    if let Some(envid) = &n.envelope.envid {
        field(&mut out, "Original-Envelope-Id", &clean(envid, utf8));
    }
    field(
        &mut out,
        "Reporting-MTA",
        &format!("dns; {}", n.reporting_mta),
    );
    field(&mut out, "Arrival-Date", &date(n.envelope.arrived));
    // §2.4 extension field: the queue id, for the postmaster.
    field(&mut out, "X-Ferrymail-Queue-ID", &n.envelope.id.to_string());
    for r in n.recipients {
        out.push_str("\r\n");
        // §2.3: per-recipient fields, in the RFC's order.
        if let Some(orcpt) = &r.original {
            field(
                &mut out,
                "Original-Recipient",
                &original_recipient(orcpt, utf8),
            );
        }
        field(
            &mut out,
            "Final-Recipient",
            &typed_address(&r.address, utf8),
        );
        field(&mut out, "Action", r.action.as_str());
        field(&mut out, "Status", &clean(&r.status, false));
        if let Some(host) = &r.remote_mta {
            field(
                &mut out,
                "Remote-MTA",
                &format!("dns; {}", clean(host, utf8)),
            );
        }
        if let Some(reply) = &r.diagnostic {
            field(
                &mut out,
                "Diagnostic-Code",
                &format!("smtp; {}", clean(reply, utf8)),
            );
        }
        field(&mut out, "Last-Attempt-Date", &date(r.last_attempt));
        if let Some(until) = r.will_retry_until {
            field(&mut out, "Will-Retry-Until", &date(until));
        }
    }
    out
}

/// The human-readable first part.
fn human_text(n: &Notification<'_>, returned: Returned) -> String {
    let mut t = format!(
        "This is the mail delivery system at {}.\n\n",
        n.reporting_mta
    );
    if n.double_bounce {
        t.push_str(
            "This is a copy for the postmaster. A message with an empty envelope\n\
             sender (a delivery notification or similar) could not be delivered.\n\
             Notifications are never returned to an empty sender, so this copy\n\
             comes to you instead.\n\n",
        );
    }
    match n.kind {
        Kind::Failure => t.push_str(
            "Your message could not be delivered to the recipients below.\n\
             Delivery has stopped; this is the final notice about them.\n\n",
        ),
        Kind::Delay => {
            t.push_str(
                "Your message has not been delivered yet to the recipients below.\n\
                 This is only a warning: delivery is still being retried",
            );
            if let Some(until) = n.recipients.iter().filter_map(|r| r.will_retry_until).max() {
                t.push_str(&format!(" until\n{}", date(until)));
            }
            t.push_str(".\nYou do not need to send the message again.\n\n");
        }
        Kind::Success => {
            t.push_str("Your message was delivered, and you asked to be told (NOTIFY=SUCCESS):\n\n")
        }
    }
    for r in n.recipients {
        t.push_str(&format!("<{}>: ", clean(&path(&r.address), true)));
        let host = r.remote_mta.as_deref().map(|h| clean(h, true));
        let by = host.as_deref().unwrap_or("the next hop");
        match r.action {
            Action::Delivered => t.push_str(&format!("delivered to the mailbox by {by}")),
            Action::Relayed => t.push_str(&format!(
                "relayed to {by}, which does not support delivery\n    \
                 notifications; this is the last notice about it"
            )),
            Action::Failed | Action::Delayed => {
                if r.status == ferrymail_schedule::event::EXPIRED_STATUS {
                    t.push_str("delivery time expired. Last error: ");
                }
                match (&host, &r.diagnostic) {
                    (Some(h), Some(reply)) => {
                        t.push_str(&format!("{h} said: {}", clean(reply, true)))
                    }
                    _ => t.push_str(&clean(&r.reason, true)),
                }
            }
        }
        t.push_str("\n\n");
    }
    match returned {
        Returned::Full => t.push_str("The message is attached.\n"),
        Returned::Headers { why, truncated } => {
            match why {
                Some(NotFull::TooLarge { size, limit }) => t.push_str(&format!(
                    "The message was {size} bytes, more than the {limit} bytes this system\n\
                     returns, so only its headers are attached.\n"
                )),
                Some(NotFull::Binary) => t.push_str(
                    "The message has a binary body, which cannot be returned; only its\n\
                     headers are attached.\n",
                ),
                None => t.push_str("The headers of the message are attached.\n"),
            }
            if truncated {
                t.push_str(&format!(
                    "They were longer than {} bytes and were cut short.\n",
                    n.max_returned_size
                ));
            }
        }
        Returned::Nothing => {
            t.push_str("The message itself could no longer be read, so it is not attached.\n")
        }
    }
    t
}

/// The original's Message-ID without angle brackets, if it looks like one
/// (`<left@right>`, no white space or control characters); anything else is
/// not worth copying into In-Reply-To.
fn valid_msg_id(v: &str) -> Option<String> {
    let inner = v.trim().strip_prefix('<')?.strip_suffix('>')?;
    let ok = inner.contains('@')
        && inner.len() <= 250
        && inner
            .chars()
            .all(|c| c.is_ascii_graphic() && !matches!(c, '<' | '>'));
    ok.then(|| inner.to_string())
}

#[cfg(test)]
mod tests;
