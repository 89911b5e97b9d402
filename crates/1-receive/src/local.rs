//! Local submission: mail made on this host (cron, applications, through
//! `ferrymail sendmail`) queued without an SMTP session, the way Postfix's
//! sendmail hands mail to postdrop. It goes through the same routing, spool
//! and queue engine as received mail, with `source = 'local'` for the
//! routing expressions, and is acknowledged only once durable.

use bytes::Bytes;
use ferrymail_spool::{
    BodyType, Envelope, MessageId, Notify, QueueEntry, Queued, Recipient, Source, now_millis,
};

use crate::protocol::received::rfc5322_date;
use crate::{ReceiveCounters, Receiver};

/// Why a local submission was refused. Nothing was queued.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// An address cannot be used (empty, or with characters no address has).
    #[error("bad address {0:?}")]
    BadAddress(String),
    /// No recipients.
    #[error("no recipients")]
    NoRecipients,
    /// Over `session.data.max-message-size`.
    #[error("message of {size} bytes exceeds the limit of {limit} bytes")]
    TooBig {
        /// The message's size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The message holds a NUL octet, which no SMTP hop may carry.
    #[error("the message contains a NUL octet")]
    Nul,
    /// The spool could not make it durable (in time).
    #[error("the spool could not make the message durable: {0}")]
    Spool(String),
}

/// An address as submitted: unqualified ones get `@hostname` (Postfix's
/// myorigin), so that they can be routed and replied to.
fn qualify(address: &str, hostname: &str) -> Result<String, LocalError> {
    let a = address.trim().trim_start_matches('<').trim_end_matches('>');
    if a.is_empty()
        || a.chars()
            .any(|c| c.is_control() || c.is_whitespace() || "<>,;\"".contains(c))
    {
        return Err(LocalError::BadAddress(address.to_string()));
    }
    Ok(if a.contains('@') {
        a.to_string()
    } else {
        format!("{a}@{hostname}")
    })
}

/// Bare LF line ends (how files and programs write mail) become CRLF, as
/// SMTP and the spool carry it, and the last line is ended.
fn to_crlf(contents: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(contents.len() + contents.len() / 40 + 2);
    let mut prev = 0u8;
    for &b in contents {
        if b == b'\n' && prev != b'\r' {
            out.push(b'\r');
        }
        out.push(b);
        prev = b;
    }
    if !out.is_empty() && !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Queues a locally made message; answers its id once it is durable.
/// `sender` empty is the null sender.
pub async fn submit(
    rx: &Receiver,
    sender: &str,
    recipients: &[String],
    contents: &[u8],
) -> Result<MessageId, LocalError> {
    let p = &rx.params;
    let sender = if sender.trim().is_empty() || sender.trim() == "<>" {
        String::new()
    } else {
        qualify(sender, &p.hostname)?
    };
    let recipients = recipients
        .iter()
        .map(|r| qualify(r, &p.hostname))
        .collect::<Result<Vec<_>, _>>()?;
    if recipients.is_empty() {
        return Err(LocalError::NoRecipients);
    }
    if memchr::memchr(0, contents).is_some() {
        return Err(LocalError::Nul);
    }
    let id = rx.ids.next();
    let now = now_millis();
    // RFC 5321 §4.4: every MTA that takes a message adds a trace field.
    let mut message = format!(
        "Received: by {} (Ferrymail, local submission)\r\n\tid {id}; {}\r\n",
        p.hostname,
        rfc5322_date(now / 1000)
    )
    .into_bytes();
    message.extend_from_slice(&to_crlf(contents));
    if message.len() as u64 > p.max_message_size {
        return Err(LocalError::TooBig {
            size: message.len() as u64,
            limit: p.max_message_size,
        });
    }
    let envelope = Envelope {
        id,
        smtputf8: !sender.is_ascii() || recipients.iter().any(|r| !r.is_ascii()),
        sender,
        recipients: recipients
            .into_iter()
            .map(|address| Recipient {
                address,
                orcpt: None,
                notify: Notify::Default,
            })
            .collect(),
        size: message.len() as u64,
        arrived: now,
        // 8-bit text from a local program is declared as such, so that a
        // next hop without 8BITMIME is not sent it unannounced.
        body: if message.is_ascii() {
            BodyType::SevenBit
        } else {
            BodyType::EightBitMime
        },
        ret: None,
        envid: None,
        mt_priority: 0,
        source: Source::Local,
        remote_ip: None,
        helo: None,
        authenticated_as: None,
    };
    let entries: Vec<QueueEntry> = rx.router.entries(&envelope, &message, None, now);
    let size = message.len() as u64;
    let accept = rx.spool.accept(&envelope, &entries, Bytes::from(message));
    match tokio::time::timeout(p.store_timeout, accept).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            ReceiveCounters::bump(&rx.counters.store_failures);
            return Err(LocalError::Spool(e.to_string()));
        }
        Err(_) => {
            ReceiveCounters::bump(&rx.counters.store_failures);
            return Err(LocalError::Spool("timed out".into()));
        }
    }
    let c = &rx.counters;
    ReceiveCounters::bump(&c.messages);
    c.recipients.fetch_add(
        envelope.recipients.len() as u64,
        std::sync::atomic::Ordering::Relaxed,
    );
    c.bytes
        .fetch_add(size, std::sync::atomic::Ordering::Relaxed);
    tracing::info!(
        id = %id,
        from = %envelope.sender,
        recipients = envelope.recipients.len(),
        size,
        "queued local submission"
    );
    let _ = rx.queued.send(Queued::with_envelope(entries, &envelope));
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_qualified_and_checked() {
        assert_eq!(
            qualify("root", "mx.example.org").unwrap(),
            "root@mx.example.org"
        );
        assert_eq!(qualify("<a@b.example>", "mx").unwrap(), "a@b.example");
        for bad in ["", "a b@c", "a\r\n@c", "x,y@z", "<>"] {
            assert!(qualify(bad, "mx").is_err(), "{bad:?}");
        }
    }

    #[test]
    fn line_ends_become_crlf() {
        assert_eq!(to_crlf(b"a\nb\r\nc"), b"a\r\nb\r\nc\r\n");
        assert_eq!(to_crlf(b"a\r\n"), b"a\r\n");
        assert_eq!(to_crlf(b""), b"");
    }
}
