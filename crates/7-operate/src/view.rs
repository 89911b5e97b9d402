//! The JSON documents of the management API (and of `--json` CLI output).

use ferrymail_spool::{BodyType, Envelope, Notify, QueueEntry, Ret};
use serde::{Deserialize, Serialize};

/// One recipient's queue state.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RecipientView {
    /// Index within the message.
    pub index: u32,
    /// The recipient address.
    pub address: String,
    /// ORCPT, if given.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub orcpt: Option<String>,
    /// NOTIFY as a list: `["SUCCESS","FAILURE"]`, `["NEVER"]`, or empty (default).
    pub notify: Vec<String>,
    /// Virtual queue.
    pub queue: String,
    /// Schedule id.
    pub schedule: String,
    /// Route id.
    pub route: String,
    /// `pending` or `deferred`.
    pub lane: String,
    /// Held by an operator.
    pub held: bool,
    /// Next attempt, Unix milliseconds.
    pub due: u64,
    /// Attempts so far.
    pub attempts: u32,
    /// Priority weight.
    pub weight: i32,
    /// Last transient error.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub last_error: Option<String>,
    /// Node holding the lease, and until when.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub lease_owner: Option<u64>,
    /// Lease deadline, Unix milliseconds.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub lease_until: Option<u64>,
    /// The DSN action (`failed`, `delayed`, `delivered`, `relayed`) of a
    /// notification owed about this recipient and not yet queued (RFC 3464
    /// §2.3.3). With any action but `delayed` the recipient is finished
    /// and is listed only until the notification is queued ("notice owed").
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub notice_owed: Option<String>,
}

/// One queued message with its remaining recipients.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct MessageView {
    /// Queue id (16 hex digits).
    pub id: String,
    /// Envelope sender; empty for `<>`.
    pub sender: String,
    /// Stored size in bytes.
    pub size: u64,
    /// Arrival, Unix milliseconds.
    pub arrived: u64,
    /// `smtp`, `dsn` or `local`.
    pub source: String,
    /// BODY parameter.
    pub body: String,
    /// SMTPUTF8 given.
    pub smtputf8: bool,
    /// RET parameter: `FULL`, `HDRS` or absent.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub ret: Option<String>,
    /// ENVID.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub envid: Option<String>,
    /// MT-PRIORITY.
    pub mt_priority: i8,
    /// Client address.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub remote_ip: Option<String>,
    /// Who the client logged in as with SMTP AUTH.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub authenticated_as: Option<String>,
    /// Recipients still queued (delivered ones are gone).
    pub recipients: Vec<RecipientView>,
}

impl MessageView {
    /// Builds the view of a message from its envelope and remaining entries.
    pub fn new(env: &Envelope, entries: &[QueueEntry]) -> Self {
        MessageView {
            id: env.id.to_string(),
            sender: env.sender.clone(),
            size: env.size,
            arrived: env.arrived,
            source: env.source.as_str().into(),
            body: match env.body {
                BodyType::SevenBit => "7BIT",
                BodyType::EightBitMime => "8BITMIME",
                BodyType::BinaryMime => "BINARYMIME",
            }
            .into(),
            smtputf8: env.smtputf8,
            ret: env.ret.map(|r| match r {
                Ret::Full => "FULL".into(),
                Ret::Headers => "HDRS".into(),
            }),
            envid: env.envid.clone(),
            mt_priority: env.mt_priority,
            remote_ip: env.remote_ip.map(|i| i.to_string()),
            authenticated_as: env.authenticated_as.clone(),
            recipients: entries
                .iter()
                .map(|e| {
                    let r = env.recipients.get(e.key.rcpt as usize);
                    RecipientView {
                        index: e.key.rcpt,
                        address: r.map(|r| r.address.clone()).unwrap_or_default(),
                        orcpt: r.and_then(|r| r.orcpt.clone()),
                        notify: r.map(|r| notify_list(r.notify)).unwrap_or_default(),
                        queue: e.queue.clone(),
                        schedule: e.schedule.clone(),
                        route: e.route.clone(),
                        lane: e.lane.as_str().into(),
                        held: e.held,
                        due: e.due,
                        attempts: e.attempts,
                        weight: e.weight,
                        last_error: e.last_error.clone(),
                        lease_owner: e.lease.map(|l| l.owner.0),
                        lease_until: e.lease.map(|l| l.until),
                        notice_owed: e.notice.as_ref().map(|n| n.action().to_string()),
                    }
                })
                .collect(),
        }
    }
}

fn notify_list(n: Notify) -> Vec<String> {
    match n {
        Notify::Default => vec![],
        Notify::Never => vec!["NEVER".into()],
        Notify::On {
            success,
            failure,
            delay,
        } => [(success, "SUCCESS"), (failure, "FAILURE"), (delay, "DELAY")]
            .into_iter()
            .filter(|(on, _)| *on)
            .map(|(_, s)| s.to_string())
            .collect(),
    }
}

/// The answer to `GET /api/queue/messages`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct MessageList {
    /// Messages matching the filters, oldest first.
    pub messages: Vec<MessageView>,
    /// Number of recipients listed.
    pub recipients: usize,
}

/// Filters of `queue list` and of bulk actions. All given filters must match.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Filter {
    /// Virtual queue name, exact.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub queue: Option<String>,
    /// Sender address: substring, case-insensitive.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub sender: Option<String>,
    /// Recipient address: substring, case-insensitive.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub rcpt: Option<String>,
    /// Recipient domain, exact, case-insensitive.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub rcpt_domain: Option<String>,
}

impl Filter {
    /// True if the recipient (and its message) match.
    pub fn matches(&self, env: &Envelope, entry: &QueueEntry) -> bool {
        let contains = |hay: &str, needle: &str| {
            hay.to_ascii_lowercase()
                .contains(&needle.to_ascii_lowercase())
        };
        let rcpt = env
            .recipients
            .get(entry.key.rcpt as usize)
            .map(|r| r.address.as_str())
            .unwrap_or("");
        self.queue.as_ref().is_none_or(|q| &entry.queue == q)
            && self
                .sender
                .as_ref()
                .is_none_or(|s| contains(&env.sender, s))
            && self.rcpt.as_ref().is_none_or(|r| contains(rcpt, r))
            && self.rcpt_domain.as_ref().is_none_or(|d| {
                rcpt.rsplit_once('@')
                    .is_some_and(|(_, rd)| rd.eq_ignore_ascii_case(d))
            })
    }
}

/// The body of `POST /api/queue/action`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ActionRequest {
    /// `retry`, `hold`, `release` or `cancel`.
    pub action: String,
    /// Message ids to act on (every recipient of each).
    #[serde(default)]
    pub ids: Vec<String>,
    /// Single recipients to act on, as listed by `GET /api/queue/messages`.
    /// The CLI sends bulk actions this way, in chunks, so it can show
    /// progress; recipients that left the queue meanwhile are skipped.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recipients: Vec<RecipientRef>,
    /// Act on everything matching this filter (ignored when `ids` is non-empty).
    #[serde(default)]
    pub filter: Filter,
    /// With an empty filter and no ids, act on the whole queue only if set.
    #[serde(default)]
    pub all: bool,
}

/// One recipient of one message, by queue id and recipient index.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RecipientRef {
    /// Queue id (16 hex digits).
    pub id: String,
    /// Recipient index within the message.
    pub rcpt: u32,
}

/// The answer to an action.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ActionResult {
    /// Recipients changed.
    pub recipients: usize,
    /// Messages whose contents were removed (cancel).
    pub removed_messages: usize,
}

/// An error document.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ApiError {
    /// What went wrong.
    pub error: String,
}
