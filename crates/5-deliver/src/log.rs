//! The delivery log: one JSON object per recipient per attempt, appended to
//! `[queue.outbound] delivery-log`, or emitted as a `tracing` event with
//! target `delivery` when no file is configured.
//!
//! Fields (JSON keys and tracing field names alike):
//!
//! | key | value |
//! |---|---|
//! | `ts` | Unix time of the log line, milliseconds |
//! | `queue` | virtual queue |
//! | `message_id` | 16 hex digits |
//! | `rcpt` | recipient address |
//! | `route` | route id (`mx` or a relay route) |
//! | `domain` | recipient domain |
//! | `mx` | host tried (MX name, relay address), or null |
//! | `ip`, `port` | address connected to, or null |
//! | `tls` | `TLSv1.3`/`TLSv1.2`, or null |
//! | `outcome` | `delivered`, `transient` or `permanent` |
//! | `status` | enhanced status code, e.g. `5.1.1` |
//! | `reply` | the next hop's reply, e.g. `250 2.0.0 Ok: queued as X`, or null |
//! | `reason` | why it was not delivered (null when delivered) |
//! | `duration_ms` | milliseconds the attempt took, DNS included |

use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use crate::{Outcome, Remote};

/// Where delivery log lines go.
pub enum DeliveryLog {
    /// Appended to a file, one line per record, one write per attempt; the
    /// path, to open it again ([`DeliveryLog::reopen`]).
    File(Mutex<std::fs::File>, std::path::PathBuf),
    /// `tracing` events with target `delivery`.
    Tracing,
}

/// One line of the log.
pub struct Entry<'a> {
    /// Virtual queue.
    pub queue: &'a str,
    /// Message id, printed as hex.
    pub message_id: String,
    /// Recipient address.
    pub rcpt: &'a str,
    /// Route id.
    pub route: &'a str,
    /// Recipient domain.
    pub domain: &'a str,
    /// Where the attempt went.
    pub remote: Option<&'a Remote>,
    /// What happened.
    pub outcome: &'a Outcome,
    /// Attempt duration.
    pub duration_ms: u64,
    /// The mode of the recipient domain's MTA-STS policy that applied
    /// (`enforce` or `testing`), if any.
    pub mta_sts: Option<&'static str>,
}

impl DeliveryLog {
    /// Opens (creates, appends to) `path`, or logs through tracing.
    pub fn open(path: Option<&Path>) -> std::io::Result<DeliveryLog> {
        match path {
            None => Ok(DeliveryLog::Tracing),
            Some(p) => {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)?;
                Ok(DeliveryLog::File(Mutex::new(file), p.to_path_buf()))
            }
        }
    }

    /// Opens the file again at its path, for the lines that follow: what
    /// logrotate's SIGHUP asks for, also when the reload it triggers is
    /// refused (a configuration file mid-edit must not leave the log
    /// writing into the rotated file).
    pub fn reopen(&self) -> std::io::Result<()> {
        if let DeliveryLog::File(file, path) = self {
            let new = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?;
            *file.lock().unwrap_or_else(|e| e.into_inner()) = new;
        }
        Ok(())
    }

    /// Records the entries of one attempt.
    pub fn record(&self, entries: &[Entry<'_>]) {
        match self {
            DeliveryLog::File(file, _) => {
                let mut text = String::new();
                for e in entries {
                    text.push_str(&json_line(e));
                    text.push('\n');
                }
                let mut f = file.lock().unwrap_or_else(|e| e.into_inner());
                if let Err(err) = f.write_all(text.as_bytes()) {
                    tracing::warn!(error = %err, "cannot write the delivery log");
                }
            }
            DeliveryLog::Tracing => {
                for e in entries {
                    let (kind, status, reply, reason) = fields(e.outcome);
                    tracing::info!(
                        target: "delivery",
                        queue = e.queue,
                        message_id = %e.message_id,
                        rcpt = e.rcpt,
                        route = e.route,
                        domain = e.domain,
                        mx = e.remote.map(|r| r.host.as_str()),
                        ip = e.remote.map(|r| r.ip.to_string()),
                        port = e.remote.map(|r| r.port),
                        tls = e.remote.and_then(|r| r.tls.as_deref()),
                        source_ip = e.remote.and_then(|r| r.source).map(|ip| ip.to_string()),
                        mta_sts = e.mta_sts,
                        outcome = kind,
                        status = %status,
                        reply = reply,
                        reason = reason,
                        duration_ms = e.duration_ms,
                    );
                }
            }
        }
    }
}

/// (outcome kind, status, reply text, reason)
fn fields(o: &Outcome) -> (&'static str, String, Option<String>, Option<&str>) {
    let status = o.status();
    match o {
        Outcome::Delivered { reply } => ("delivered", status, Some(reply.to_string()), None),
        Outcome::Transient { reason, reply } => (
            "transient",
            status,
            reply.as_ref().map(ToString::to_string),
            Some(reason),
        ),
        Outcome::Permanent { reason, reply } => (
            "permanent",
            status,
            reply.as_ref().map(ToString::to_string),
            Some(reason),
        ),
    }
}

/// The JSON text of one entry.
pub fn json_line(e: &Entry<'_>) -> String {
    let (kind, status, reply, reason) = fields(e.outcome);
    serde_json::json!({
        "ts": ferrymail_spool::now_millis(),
        "queue": e.queue,
        "message_id": e.message_id,
        "rcpt": e.rcpt,
        "route": e.route,
        "domain": e.domain,
        "mx": e.remote.map(|r| r.host.as_str()),
        "ip": e.remote.map(|r| r.ip.to_string()),
        "port": e.remote.map(|r| r.port),
        "tls": e.remote.and_then(|r| r.tls.as_deref()),
        "source_ip": e.remote.and_then(|r| r.source).map(|ip| ip.to_string()),
        "mta_sts": e.mta_sts,
        "outcome": kind,
        "status": status,
        "reply": reply,
        "reason": reason,
        "duration_ms": e.duration_ms,
    })
    .to_string()
}
