//! SMTP or LMTP (RFC 2033): what differs between the two protocols a mail
//! listener may speak, as pure functions, so that one session runs both.
//!
//! RFC 2033 §4 defines LMTP as SMTP with its service extensions, "except as
//! modified by this document". The modifications are few:
//!
//! * §4.1: LHLO replaces HELO and EHLO, with EHLO's syntax and reply.
//! * §4.2: after the final dot of DATA the server sends one reply per
//!   recipient accepted at RCPT, in RCPT order; and DATA without any accepted
//!   recipient fails with 503 (the session already does that for SMTP).
//! * §4.3: the same holds after BDAT LAST (CHUNKING, RFC 3030), and BDAT LAST
//!   without any accepted recipient is answered with no reply at all.
//! * §5: PIPELINING and ENHANCEDSTATUSCODES must be offered; the session
//!   offers them on every listener.

use crate::protocol::reply::{Reply, replies};

/// Which protocol a mail listener speaks; a parameter of each session,
/// chosen per listener by `[server.listener.<id>] protocol`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Dialect {
    /// SMTP (RFC 5321) with ESMTP: HELO or EHLO, one reply per message.
    #[default]
    Smtp,
    /// LMTP (RFC 2033): LHLO, one reply per accepted recipient per message.
    Lmtp,
}

/// The three greeting commands, which are where the dialects part first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Greeting {
    /// HELO (RFC 5321 §4.1.1.1): plain SMTP, no extensions.
    Helo,
    /// EHLO (RFC 5321 §4.1.1.1): SMTP with service extensions.
    Ehlo,
    /// LHLO (RFC 2033 §4.1): LMTP's only greeting.
    Lhlo,
}

impl Greeting {
    /// The verb as sent on the wire.
    pub fn verb(self) -> &'static str {
        match self {
            Greeting::Helo => "HELO",
            Greeting::Ehlo => "EHLO",
            Greeting::Lhlo => "LHLO",
        }
    }
}

/// A greeting of the other dialect: an SMTP client talking to an LMTP
/// listener or the reverse. Refused rather than tolerated, because RFC 2033
/// §4.1 changed the verb precisely so that "a misconfiguration where both
/// parties are not using the same protocol" is detected, not run with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{} is not a command of {}", .greeting.verb(), .dialect.name())]
pub struct WrongGreeting {
    /// What the listener speaks.
    pub dialect: Dialect,
    /// What the client sent.
    pub greeting: Greeting,
}

impl WrongGreeting {
    /// The reply: 500 5.5.1, the code of a command the server does not
    /// recognise (RFC 5321 §4.2.4; RFC 3463 X.5.1 invalid command). On an
    /// SMTP listener LHLO is answered exactly as an unknown command always
    /// was; on an LMTP listener the text names the command to use, so the
    /// operator of the misconfigured client sees what is wrong.
    pub fn reply(&self) -> Reply {
        match self.dialect {
            Dialect::Smtp => replies::unknown_command(),
            Dialect::Lmtp => Reply::new(
                500,
                "5.5.1",
                format!(
                    "Command unrecognized: {} is not an LMTP command, send LHLO",
                    self.greeting.verb()
                ),
            ),
        }
    }
}

impl Dialect {
    /// The name used in the banner and in logs.
    pub fn name(self) -> &'static str {
        match self {
            Dialect::Smtp => "ESMTP",
            Dialect::Lmtp => "LMTP",
        }
    }

    /// Whether `greeting` opens a session in this dialect, and if it does,
    /// whether the session is extended (EHLO and LHLO: service extensions,
    /// parameters on MAIL and RCPT) or plain (HELO).
    pub fn greet(self, greeting: Greeting) -> Result<bool, WrongGreeting> {
        match (self, greeting) {
            (Dialect::Smtp, Greeting::Helo) => Ok(false),
            (Dialect::Smtp, Greeting::Ehlo) => Ok(true),
            // RFC 2033 §4.1: "The LHLO command has identical semantics to
            // the EHLO command of ESMTP."
            (Dialect::Lmtp, Greeting::Lhlo) => Ok(true),
            (dialect, greeting) => Err(WrongGreeting { dialect, greeting }),
        }
    }

    /// The greeting commands this dialect has, for HELP's list.
    pub fn greeting_commands(self) -> &'static str {
        match self {
            Dialect::Smtp => "EHLO HELO",
            Dialect::Lmtp => "LHLO",
        }
    }

    /// What a client must send before MAIL, ETRN and the like, for the 503
    /// that tells it so.
    pub fn greet_first(self) -> &'static str {
        match self {
            Dialect::Smtp => "send EHLO or HELO first",
            Dialect::Lmtp => "send LHLO first",
        }
    }

    /// What a client must send before AUTH or STARTTLS, which need the
    /// extended greeting.
    pub fn greet_extended_first(self) -> &'static str {
        match self {
            Dialect::Smtp => "send EHLO first",
            Dialect::Lmtp => "send LHLO first",
        }
    }

    /// The replies that end a message, after the final dot of DATA or after
    /// BDAT LAST, given the one `outcome` the server reached for the whole
    /// message and the recipients `accepted` at RCPT, in RCPT order.
    ///
    /// SMTP answers once, whatever the recipients. LMTP answers once per
    /// accepted recipient, duplicates included (RFC 2033 §4.2 and §4.3),
    /// each reply naming its recipient; Ferrymail queues a message once for
    /// all its recipients, so every recipient gets the same code: all 250
    /// once it is durable, all the same 4xx or 5xx when it is not. No
    /// recipient, no reply (§4.3, BDAT LAST without a successful RCPT).
    pub fn end_of_message(self, outcome: Reply, accepted: &[&str]) -> Vec<Reply> {
        match self {
            Dialect::Smtp => vec![outcome],
            Dialect::Lmtp => accepted
                .iter()
                .map(|rcpt| for_recipient(&outcome, rcpt))
                .collect(),
        }
    }
}

/// `outcome` as the reply for one recipient: the same code and enhanced
/// status, its text prefixed with the recipient, as LMTP servers commonly
/// do (`250 2.0.0 <a@example.org> Message queued as ID`), so a client's log
/// line says which recipient each reply was for.
pub fn for_recipient(outcome: &Reply, rcpt: &str) -> Reply {
    let mut r = outcome.clone();
    match r.text.first_mut() {
        Some(first) => *first = format!("<{rcpt}> {first}"),
        None => r.text.push(format!("<{rcpt}>")),
    }
    r
}

/// The error of a listener protocol that is not a mail protocol (the
/// management API's `http`), so it cannot become a session's dialect.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("protocol '{0}' is not a mail protocol (smtp or lmtp)")]
pub struct NotMail(pub &'static str);

impl TryFrom<ferrymail_config::Protocol> for Dialect {
    type Error = NotMail;

    fn try_from(p: ferrymail_config::Protocol) -> Result<Dialect, NotMail> {
        match p {
            ferrymail_config::Protocol::Smtp => Ok(Dialect::Smtp),
            ferrymail_config::Protocol::Lmtp => Ok(Dialect::Lmtp),
            other => Err(NotMail(other.as_str())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greetings_belong_to_one_dialect() {
        use Greeting::*;
        let table = [
            (Dialect::Smtp, Helo, Ok(false)),
            (Dialect::Smtp, Ehlo, Ok(true)),
            (Dialect::Smtp, Lhlo, Err(())),
            (Dialect::Lmtp, Helo, Err(())),
            (Dialect::Lmtp, Ehlo, Err(())),
            (Dialect::Lmtp, Lhlo, Ok(true)),
        ];
        for (d, g, want) in table {
            assert_eq!(d.greet(g).map_err(|_| ()), want, "{d:?} {g:?}");
        }
    }

    #[test]
    fn wrong_greeting_replies() {
        let smtp = Dialect::Smtp.greet(Greeting::Lhlo).unwrap_err();
        assert_eq!(smtp.reply(), replies::unknown_command());
        let lmtp = Dialect::Lmtp.greet(Greeting::Ehlo).unwrap_err();
        assert_eq!(
            lmtp.reply().to_line(),
            "500 5.5.1 Command unrecognized: EHLO is not an LMTP command, send LHLO"
        );
        assert_eq!(lmtp.to_string(), "EHLO is not a command of LMTP");
    }

    #[test]
    fn smtp_answers_a_message_once() {
        let r = replies::queued("ID1");
        assert_eq!(
            Dialect::Smtp.end_of_message(r.clone(), &["a@x.test", "b@x.test"]),
            vec![r]
        );
    }

    #[test]
    fn lmtp_answers_each_recipient_in_order_duplicates_included() {
        let out = Dialect::Lmtp.end_of_message(
            replies::queued("ID1"),
            &["a@x.test", "b@x.test", "a@x.test"],
        );
        let lines: Vec<String> = out.iter().map(Reply::to_line).collect();
        assert_eq!(
            lines,
            [
                "250 2.0.0 <a@x.test> Message queued as ID1",
                "250 2.0.0 <b@x.test> Message queued as ID1",
                "250 2.0.0 <a@x.test> Message queued as ID1",
            ]
        );
        let failed = Dialect::Lmtp.end_of_message(replies::store_failed(), &["a@x.test"]);
        assert_eq!(
            failed[0].to_line(),
            "451 4.3.0 <a@x.test> Temporary local problem, please try again"
        );
        assert!(
            Dialect::Lmtp
                .end_of_message(replies::too_big(10), &[])
                .is_empty()
        );
    }

    #[test]
    fn listener_protocols_map_to_dialects() {
        use ferrymail_config::Protocol;
        assert_eq!(Dialect::try_from(Protocol::Smtp), Ok(Dialect::Smtp));
        assert_eq!(Dialect::try_from(Protocol::Lmtp), Ok(Dialect::Lmtp));
        assert_eq!(Dialect::try_from(Protocol::Http), Err(NotMail("http")));
    }
}
