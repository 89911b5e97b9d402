//! Every reply the receiver sends, in one place, with its RFC 3463 enhanced
//! status code. Keeping them here makes the table of limits and their replies
//! auditable against the issue and the RFCs.

use std::fmt::Write;

/// One SMTP reply: a basic code, an enhanced status code (RFC 2034, RFC 3463)
/// and text. Multi-line replies are built by [`Reply::lines`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The three-digit basic code.
    pub code: u16,
    /// The enhanced status code, e.g. "5.5.1"; empty for replies RFC 2034 §3
    /// exempts (220 greeting, 221? no: only the greeting and EHLO lines).
    pub status: &'static str,
    /// Human-readable text, one entry per line.
    pub text: Vec<String>,
}

impl Reply {
    /// A one-line reply.
    pub fn new(code: u16, status: &'static str, text: impl Into<String>) -> Self {
        Reply {
            code,
            status,
            text: vec![text.into()],
        }
    }

    /// A multi-line reply without an enhanced status code (EHLO, HELP).
    pub fn lines(code: u16, lines: Vec<String>) -> Self {
        Reply {
            code,
            status: "",
            text: lines,
        }
    }

    /// True for 4xx and 5xx: counts towards the error limit.
    pub fn is_error(&self) -> bool {
        self.code >= 400
    }

    /// Appends the wire form (RFC 5321 §4.2) to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let mut s = String::new();
        let n = self.text.len().max(1);
        for i in 0..n {
            let sep = if i + 1 == n { ' ' } else { '-' };
            let text = self.text.get(i).map(String::as_str).unwrap_or("");
            if self.status.is_empty() {
                let _ = write!(s, "{}{}{}\r\n", self.code, sep, text);
            } else {
                let _ = write!(s, "{}{}{} {}\r\n", self.code, sep, self.status, text);
            }
        }
        out.extend_from_slice(s.as_bytes());
    }

    /// The reply as one string, for logs and tests.
    pub fn to_line(&self) -> String {
        let mut v = Vec::new();
        self.write_to(&mut v);
        String::from_utf8_lossy(&v).trim_end().to_string()
    }
}

/// Replies named after the situation they answer.
pub mod replies {
    use super::Reply;

    /// 250 2.0.0 OK for RSET and NOOP.
    pub fn ok() -> Reply {
        Reply::new(250, "2.0.0", "OK")
    }
    /// 250 after MAIL FROM.
    pub fn sender_ok() -> Reply {
        Reply::new(250, "2.1.0", "Sender OK")
    }
    /// 250 after RCPT TO.
    pub fn rcpt_ok() -> Reply {
        Reply::new(250, "2.1.5", "Recipient OK")
    }
    /// 354 after DATA.
    pub fn start_data() -> Reply {
        Reply::new(354, "", "Start mail input; end with <CRLF>.<CRLF>")
    }
    /// 250 once the message is durable.
    pub fn queued(id: &str) -> Reply {
        Reply::new(250, "2.0.0", format!("Message queued as {id}"))
    }
    /// 250 for a non-final BDAT chunk (RFC 3030 §2).
    pub fn chunk_ok(n: usize) -> Reply {
        Reply::new(250, "2.0.0", format!("{n} octets received"))
    }
    /// 221 on QUIT.
    pub fn bye(host: &str) -> Reply {
        Reply::new(221, "2.0.0", format!("{host} closing connection"))
    }
    /// 252 for VRFY: RFC 5321 §3.5.3, we neither verify nor deny.
    pub fn vrfy() -> Reply {
        Reply::new(
            252,
            "2.5.0",
            "Cannot VRFY user, but will accept message and attempt delivery",
        )
    }
    /// 502 for EXPN, which mailing-list privacy argues against (RFC 5321 §3.5.2).
    pub fn expn_disabled() -> Reply {
        Reply::new(502, "5.5.1", "EXPN is not supported")
    }
    /// 220 ready for TLS (RFC 3207 §4).
    pub fn tls_go() -> Reply {
        Reply::new(220, "2.0.0", "Ready to start TLS")
    }
    /// 454 when TLS is not available (RFC 3207 §4).
    pub fn tls_unavailable() -> Reply {
        Reply::new(454, "4.7.0", "TLS not available")
    }

    // --- Bad input (the table) ---

    /// Command line longer than the limit.
    pub fn line_too_long() -> Reply {
        Reply::new(500, "5.5.2", "Line too long")
    }
    /// A NUL byte in a command.
    pub fn nul_in_command() -> Reply {
        Reply::new(500, "5.5.2", "NUL bytes are not allowed in commands")
    }
    /// A NUL byte in message content (RFC 5321 §2.4, RFC 6152 §2).
    pub fn nul_in_data() -> Reply {
        Reply::new(554, "5.6.0", "Message content contains NUL bytes")
    }
    /// SIZE= or streamed size above the limit (RFC 1870 §6).
    pub fn too_big(limit: u64) -> Reply {
        Reply::new(
            552,
            "5.3.4",
            format!("Message size exceeds fixed maximum message size of {limit} bytes"),
        )
    }
    /// Commands out of order.
    pub fn bad_sequence(what: &str) -> Reply {
        Reply::new(503, "5.5.1", format!("Bad sequence of commands: {what}"))
    }
    /// Syntax error in a known command or its parameters.
    pub fn syntax(what: &str) -> Reply {
        Reply::new(501, "5.5.4", format!("Syntax error: {what}"))
    }
    /// Bad reverse-path syntax (RFC 3463 X.1.7).
    pub fn bad_sender_syntax() -> Reply {
        Reply::new(501, "5.1.7", "Bad sender address syntax")
    }
    /// Bad forward-path syntax (RFC 3463 X.1.3).
    pub fn bad_rcpt_syntax() -> Reply {
        Reply::new(501, "5.1.3", "Bad recipient address syntax")
    }
    /// An unknown command verb.
    pub fn unknown_command() -> Reply {
        Reply::new(500, "5.5.1", "Command unrecognized")
    }
    /// A parameter we do not implement (RFC 5321 §4.1.1.11: 555).
    pub fn unknown_parameter(p: &str) -> Reply {
        Reply::new(
            555,
            "5.5.4",
            format!("Parameter not recognized or not implemented: {p}"),
        )
    }
    /// A recipient beyond an inbound rate limit: try again later. Stalwart's
    /// reply (RFC 3463 X.4.5, system congestion), so that clients and
    /// log parsers that know it need no new rule.
    pub fn rate_limited() -> Reply {
        Reply::new(451, "4.4.5", "Rate limit exceeded, try again later")
    }
    /// The message would take more memory than `session.data.max-memory`
    /// leaves now (RFC 5321 §4.2.2 452, RFC 3463 X.3.1): try later.
    pub fn no_memory() -> Reply {
        Reply::new(452, "4.3.1", "Insufficient system storage, try again later")
    }

    /// More recipients than allowed in one transaction (RFC 5321 §4.5.3.1.10).
    pub fn too_many_recipients() -> Reply {
        Reply::new(452, "4.5.3", "Too many recipients")
    }
    /// A non-ASCII address without SMTPUTF8 (RFC 6531 §3.5).
    pub fn needs_smtputf8() -> Reply {
        Reply::new(
            553,
            "5.6.7",
            "Non-ASCII address requires the SMTPUTF8 parameter",
        )
    }
    /// Too many Received headers: a mail loop (RFC 5321 §6.3, RFC 3463 X.4.6).
    pub fn mail_loop(count: usize) -> Reply {
        Reply::new(
            554,
            "5.4.6",
            format!("Too many hops ({count} Received headers): mail loop detected"),
        )
    }
    /// RFC 4954 §6: 235, AUTH succeeded.
    pub fn auth_ok() -> Reply {
        Reply::new(235, "2.7.0", "Authentication successful")
    }
    /// RFC 4954 §6: 535, the name or password is wrong (which one is not
    /// said).
    pub fn auth_failed() -> Reply {
        Reply::new(535, "5.7.8", "Authentication credentials invalid")
    }
    /// RFC 4954 §4: 504, a mechanism not offered.
    pub fn auth_mechanism_unknown() -> Reply {
        Reply::new(504, "5.5.4", "Unrecognized authentication type")
    }
    /// RFC 4954 §6: 538, this mechanism needs an encrypted connection.
    pub fn auth_needs_tls() -> Reply {
        Reply::new(
            538,
            "5.7.11",
            "Encryption required for requested authentication mechanism",
        )
    }
    /// RFC 4954 §6: 530, MAIL before AUTH where AUTH is required.
    pub fn auth_required() -> Reply {
        Reply::new(530, "5.7.0", "Authentication required")
    }
    /// 553 5.7.1: an authenticated client used an address that is not its
    /// own (`session.auth.must-match-sender`).
    pub fn sender_not_owned(user: &str) -> Reply {
        Reply::new(
            553,
            "5.7.1",
            format!("Sender address rejected: not owned by user {user}"),
        )
    }
    /// RFC 4954 §4: 501, the client cancelled the exchange with `*`.
    pub fn auth_cancelled() -> Reply {
        Reply::new(501, "5.0.0", "Authentication cancelled")
    }
    /// RFC 4954 §4: 501, a response that is not valid base64 or not a
    /// valid message of the mechanism.
    pub fn auth_malformed() -> Reply {
        Reply::new(501, "5.5.2", "Cannot decode the authentication response")
    }
    /// RFC 4954 §6: 454, AUTH refused for now: this address failed too
    /// often (`session.auth.errors.per-ip`).
    pub fn auth_address_blocked() -> Reply {
        Reply::new(
            454,
            "4.7.0",
            "Too many failed authentications from your address, try again later",
        )
    }
    /// Too many failed AUTH attempts: the session is closed.
    pub fn auth_too_many_failures() -> Reply {
        Reply::new(
            421,
            "4.7.0",
            "Too many authentication failures, closing connection",
        )
    }
    /// Relaying refused.
    pub fn relay_denied() -> Reply {
        Reply::new(554, "5.7.1", "Relay access denied")
    }
    /// A local-domain address that `[session.rcpt] directory` does not
    /// know (RFC 3463 X.1.1, bad destination mailbox); Postfix's wording.
    pub fn unknown_user() -> Reply {
        Reply::new(
            550,
            "5.1.1",
            "Recipient address rejected: User unknown in local recipient table",
        )
    }
    /// The client's address is on a DNS blocklist (RFC 5782); Postfix's
    /// wording, so postmasters and their tools recognise it.
    pub fn dnsbl_listed(ip: std::net::IpAddr, zone: &str) -> Reply {
        Reply::new(
            554,
            "5.7.1",
            format!("Service unavailable; client [{ip}] blocked using {zone}"),
        )
    }
    /// `auth.iprev.verify = "strict"` and the client's address has no
    /// forward-confirmed PTR name: RFC 7372 §3.3 registers 5.7.25.
    pub fn iprev_failed() -> Reply {
        Reply::new(550, "5.7.25", "Reverse DNS validation failed")
    }
    /// As [`iprev_failed`], but the DNS could not answer now; the client
    /// should retry rather than bounce.
    pub fn iprev_temporary() -> Reply {
        Reply::new(
            450,
            "4.7.25",
            "Reverse DNS validation failed temporarily, try again later",
        )
    }
    /// `auth.spf.verify.* = "strict"` and the SPF result of `identity`
    /// (`helo` or `mail from`) for `domain` is not `pass` (Stalwart's
    /// strict demands a pass): RFC 7372 §3.2 registers X.7.23 "SPF
    /// validation failed" (RFC 7208 §8.4 says 550 for `fail`).
    pub fn spf_failed(identity: &str, domain: &str, result: &str) -> Reply {
        Reply::new(
            550,
            "5.7.23",
            format!("SPF validation of the {identity} identity {domain} failed: {result}"),
        )
    }
    /// The SPF record of `domain` is broken (`permerror`, RFC 7208 §8.7):
    /// X.7.24 "SPF validation error" (RFC 7372 §3.2).
    pub fn spf_error(identity: &str, domain: &str) -> Reply {
        Reply::new(
            550,
            "5.7.24",
            format!("SPF validation of the {identity} identity {domain} failed: permerror"),
        )
    }
    /// SPF could not be evaluated now (`temperror`, a DNS failure): 451
    /// as RFC 7208 §8.6 says, with X.7.24 (RFC 7372 §3.2), so the client
    /// tries again later.
    pub fn spf_temporary(identity: &str, domain: &str) -> Reply {
        Reply::new(
            451,
            "4.7.24",
            format!(
                "SPF validation of the {identity} identity {domain} failed temporarily, try again later"
            ),
        )
    }
    /// `auth.dkim.verify = "strict"` and no DKIM signature of the message
    /// verifies: RFC 7372 §3.1 registers X.7.20 "No passing DKIM
    /// signature found".
    pub fn dkim_failed() -> Reply {
        Reply::new(550, "5.7.20", "No passing DKIM signature found")
    }
    /// As [`dkim_failed`], but a signature's key could not be fetched
    /// now: it may pass later.
    pub fn dkim_temporary() -> Reply {
        Reply::new(
            451,
            "4.7.20",
            "No passing DKIM signature found for now (DNS error), try again later",
        )
    }
    /// `auth.dmarc.verify = "strict"` and the From domain's DMARC policy
    /// is `reject` for this message (RFC 7489 §6.6.4 and §10.3: a 5xx
    /// during the session); Stalwart's 550 5.7.1.
    pub fn dmarc_rejected(domain: &str) -> Reply {
        Reply::new(
            550,
            "5.7.1",
            format!("Rejected per the DMARC policy of {domain}"),
        )
    }
    /// DMARC in `strict` mode and the message does not have exactly one
    /// From domain (RFC 7489 §6.6.1, RFC 5322 §3.6).
    pub fn dmarc_no_single_from() -> Reply {
        Reply::new(
            550,
            "5.7.1",
            "Rejected: DMARC needs exactly one From domain in the message",
        )
    }
    /// The DMARC policy of `domain` could not be read, or says `reject`
    /// and a mechanism failed temporarily: try again later.
    pub fn dmarc_temporary(domain: &str) -> Reply {
        Reply::new(
            451,
            "4.7.1",
            format!("DMARC policy of {domain} could not be evaluated now, try again later"),
        )
    }
    /// Too many errors in one session: the server gives up (RFC 5321 §4.3.2 421).
    pub fn too_many_errors() -> Reply {
        Reply::new(421, "4.7.0", "Too many errors, closing connection")
    }
    /// Idle too long.
    pub fn timeout() -> Reply {
        Reply::new(421, "4.4.2", "Timeout exceeded, closing connection")
    }
    /// Shutting down.
    pub fn shutting_down(host: &str) -> Reply {
        Reply::new(421, "4.3.2", format!("{host} Service shutting down"))
    }
    /// Connection refused by a connection limit.
    pub fn too_many_connections() -> Reply {
        Reply::new(421, "4.7.0", "Too many connections, try again later")
    }
    /// The spool could not make the message durable.
    pub fn store_failed() -> Reply {
        Reply::new(451, "4.3.0", "Temporary local problem, please try again")
    }
    /// MAIL given while a transaction is open.
    pub fn nested_mail() -> Reply {
        bad_sequence("MAIL already given")
    }
}
