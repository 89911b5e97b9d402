//! The JSON documents of the management API (and of `--json` CLI output).

use ferrymail_spool::{BodyType, Envelope, Notify, QueueEntry, Ret};
use std::collections::BTreeMap;

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
    /// `pending` (first attempt not made), `deferred` (waiting for a
    /// retry) or `held`: Postfix's `postsuper -d ALL deferred`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub lane: Option<String>,
}

/// The lanes a filter or `queue shape` may name.
pub const LANES: [&str; 3] = ["pending", "deferred", "held"];

/// True if `entry` is in `lane` (one of [`LANES`]): held entries are in
/// `held` only, whatever lane they will go back to.
pub fn in_lane(entry: &QueueEntry, lane: &str) -> bool {
    match lane {
        "held" => entry.held,
        "pending" => !entry.held && entry.lane == ferrymail_spool::Lane::Pending,
        "deferred" => !entry.held && entry.lane == ferrymail_spool::Lane::Deferred,
        _ => false,
    }
}

impl Filter {
    /// The first filter given with an empty or all-space value, by name. An
    /// empty substring matches every address, so `--sender "$UNSET"` would
    /// turn a bulk action on some senders into one on the whole queue; such
    /// a filter is refused instead.
    pub fn blank(&self) -> Option<&'static str> {
        [
            ("queue", &self.queue),
            ("sender", &self.sender),
            ("rcpt", &self.rcpt),
            ("rcpt_domain", &self.rcpt_domain),
            ("lane", &self.lane),
        ]
        .into_iter()
        .find(|(_, v)| v.as_deref().is_some_and(|v| v.trim().is_empty()))
        .map(|(name, _)| name)
    }

    /// The part of the filter an entry alone decides (queue and lane), so
    /// that envelopes are read only for entries that pass it.
    pub fn matches_entry(&self, entry: &QueueEntry) -> bool {
        self.queue.as_ref().is_none_or(|q| &entry.queue == q)
            && self.lane.as_deref().is_none_or(|l| in_lane(entry, l))
    }

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
        self.matches_entry(entry)
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
    /// `retry`, `hold`, `release`, `cancel`, `bounce` or `requeue`.
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
    /// `bounce` only: the reason the senders' failure notices give.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
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

/// The age buckets of `queue shape`, in minutes: the upper bound of each,
/// like Postfix's qshape (each twice the one before; the last is open).
pub const SHAPE_BUCKETS: [u64; 9] = [5, 10, 20, 40, 80, 160, 320, 640, 1280];

/// `GET /api/queue/shape`: recipients by destination (or virtual queue)
/// and age, the view Postfix's qshape gives of a queue, to see at a glance
/// which destination holds mail back and since when.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ShapeView {
    /// What the rows are: `domain` (recipient domain) or `queue`.
    pub by: String,
    /// Column labels: each bucket's upper bound in minutes, then `1280+`.
    pub buckets: Vec<String>,
    /// `TOTAL` first, then one row per domain or queue, most recipients
    /// first (ties by name).
    pub rows: Vec<ShapeRow>,
}

/// One row of [`ShapeView`].
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ShapeRow {
    /// The domain or queue (`TOTAL` for the sum).
    pub name: String,
    /// Recipients in all buckets.
    pub total: u64,
    /// Recipients per age bucket, as [`ShapeView::buckets`].
    pub counts: Vec<u64>,
}

impl ShapeView {
    /// Counts `(row name, age in ms)` pairs into a view.
    pub fn build(by: &str, items: impl IntoIterator<Item = (String, u64)>) -> ShapeView {
        let n = SHAPE_BUCKETS.len() + 1;
        let bucket = |age_ms: u64| {
            let minutes = age_ms / 60_000;
            SHAPE_BUCKETS
                .iter()
                .position(|&b| minutes < b)
                .unwrap_or(SHAPE_BUCKETS.len())
        };
        let mut rows: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        let mut total = vec![0u64; n];
        for (name, age) in items {
            let b = bucket(age);
            rows.entry(name).or_insert_with(|| vec![0; n])[b] += 1;
            total[b] += 1;
        }
        let mut rows: Vec<ShapeRow> = rows
            .into_iter()
            .map(|(name, counts)| ShapeRow {
                name,
                total: counts.iter().sum(),
                counts,
            })
            .collect();
        rows.sort_by(|a, b| b.total.cmp(&a.total).then_with(|| a.name.cmp(&b.name)));
        rows.insert(
            0,
            ShapeRow {
                name: "TOTAL".into(),
                total: total.iter().sum(),
                counts: total,
            },
        );
        let mut buckets: Vec<String> = SHAPE_BUCKETS.iter().map(u64::to_string).collect();
        buckets.push(format!("{}+", SHAPE_BUCKETS[SHAPE_BUCKETS.len() - 1]));
        ShapeView {
            by: by.into(),
            buckets,
            rows,
        }
    }
}

#[cfg(test)]
mod shape_tests {
    use super::*;

    #[test]
    fn ages_fall_in_qshape_buckets_and_rows_sort_by_size() {
        let min = 60_000u64;
        let v = ShapeView::build(
            "domain",
            [
                ("b.test".to_string(), 0),
                ("b.test".to_string(), 5 * min - 1),
                ("a.test".to_string(), 5 * min),
                ("c.test".to_string(), 1279 * min),
                ("c.test".to_string(), 1280 * min),
                ("c.test".to_string(), 100_000 * min),
            ],
        );
        assert_eq!(
            v.buckets,
            [
                "5", "10", "20", "40", "80", "160", "320", "640", "1280", "1280+"
            ]
        );
        let row = |name: &str| v.rows.iter().find(|r| r.name == name).unwrap().clone();
        assert_eq!(row("TOTAL").total, 6);
        assert_eq!(row("TOTAL").counts, [2, 1, 0, 0, 0, 0, 0, 0, 1, 2]);
        assert_eq!(row("b.test").counts, [2, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(row("a.test").counts, [0, 1, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(row("c.test").counts, [0, 0, 0, 0, 0, 0, 0, 0, 1, 2]);
        let names: Vec<&str> = v.rows.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["TOTAL", "c.test", "b.test", "a.test"]);
        assert_eq!(ShapeView::build("queue", []).rows.len(), 1, "TOTAL only");
    }
}
