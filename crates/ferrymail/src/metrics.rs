//! What `GET /metrics` reports for this process: receive's counters, the
//! queue engine's outcomes and index, and the conventional process metrics.
//! The operate crate renders them; this binary is where the parts meet.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use ferrymail_operate::api::ControlFuture;
use ferrymail_operate::metrics::{Family, Kind, MetricsSource};
use ferrymail_receive::ReceiveCounters;
use ferrymail_report::ReportCounters;
use ferrymail_schedule::QueueHandle;

/// The figures of one running node.
pub struct NodeMetrics {
    /// Receive's counters, shared with every SMTP listener.
    pub receive: Arc<ReceiveCounters>,
    /// The queue engine: its outcome counters and its index statistics.
    pub queue: QueueHandle,
    /// The notifications queued (failure, delay, success) and refused.
    pub report: Arc<ReportCounters>,
    /// When the process started (`process_start_time_seconds`).
    pub started: SystemTime,
    /// How configuration reloads went.
    pub reloads: Arc<crate::reload::ReloadCounters>,
    /// The SMTP/LMTP client (its MTA-STS policies).
    pub transport: Arc<ferrymail_deliver::SmtpTransport>,
    /// Message contents held by the SMTP sessions.
    pub message_memory: Arc<ferrymail_receive::memory::MessageMemory>,
}

fn n(c: &AtomicU64) -> f64 {
    c.load(Ordering::Relaxed) as f64
}

impl MetricsSource for NodeMetrics {
    fn families(&self) -> ControlFuture<Vec<Family>> {
        use Kind::{Counter, Gauge};
        let r = &self.receive;
        let mut out = vec![
            Family::single(
                "ferrymail_config_last_reload_successful",
                "Whether the last configuration reload (SIGHUP, ferrymail reload) put the file in force: 1, or 0 when the file on disk is not what runs.",
                Gauge,
                n(&self.reloads.last_ok),
            ),
            Family::single(
                "ferrymail_config_last_reload_success_timestamp_seconds",
                "When the configuration in force was loaded (start or reload).",
                Gauge,
                n(&self.reloads.loaded_at),
            ),
            Family {
                name: "ferrymail_config_reloads_total",
                help: "Configuration reloads, by result.",
                kind: Counter,
                samples: vec![
                    (
                        vec![("result", "success".into())],
                        n(&self.reloads.succeeded),
                    ),
                    (vec![("result", "failure".into())], n(&self.reloads.failed)),
                ],
            },
            {
                let sts = self.transport.mta_sts_stats();
                Family {
                    name: "ferrymail_mta_sts_policy_fetches_total",
                    help: "MTA-STS policy fetches (RFC 8461), by result; a failed one leaves a kept policy in force.",
                    kind: Counter,
                    samples: vec![
                        (
                            vec![("result", "success".into())],
                            sts.succeeded_fetches as f64,
                        ),
                        (
                            vec![("result", "failure".into())],
                            sts.failed_fetches as f64,
                        ),
                    ],
                }
            },
            {
                let sts = self.transport.mta_sts_stats();
                Family {
                    name: "ferrymail_mta_sts_policies",
                    help: "Recipient domains' MTA-STS policies kept (unexpired), by mode.",
                    kind: Gauge,
                    samples: [
                        ("enforce", sts.enforce),
                        ("testing", sts.testing),
                        ("none", sts.none),
                    ]
                    .into_iter()
                    .map(|(m, v)| (vec![("mode", m.into())], v as f64))
                    .collect(),
                }
            },
            Family {
                name: "ferrymail_build_info",
                help: "The running release (always 1).",
                kind: Gauge,
                samples: vec![(
                    vec![("version", env!("CARGO_PKG_VERSION").to_string())],
                    1.0,
                )],
            },
            Family::single(
                "ferrymail_smtp_message_memory_bytes",
                "Message contents the SMTP sessions hold in memory while receiving (bounded by session.data.max-memory).",
                Gauge,
                self.message_memory.held() as f64,
            ),
            Family::single(
                "ferrymail_smtp_refused_no_memory_total",
                "Messages refused with 452 4.3.1 because session.data.max-memory was reached.",
                Counter,
                n(&r.refused_no_memory),
            ),
            Family::single(
                "ferrymail_smtp_connections_total",
                "SMTP connections accepted, including those a limit refused.",
                Counter,
                n(&r.connections),
            ),
            Family {
                name: "ferrymail_smtp_connections_refused_total",
                help: "SMTP connections answered 421 and closed, by reason.",
                kind: Counter,
                samples: vec![(vec![("reason", "limit".into())], n(&r.refused_by_limit))],
            },
            Family::single(
                "ferrymail_smtp_sessions_active",
                "SMTP sessions running now.",
                Gauge,
                n(&r.sessions_active),
            ),
            Family::single(
                "ferrymail_smtp_relay_denied_total",
                "Recipients refused with 554 5.7.1 because the session may not relay.",
                Counter,
                n(&r.relay_denied),
            ),
            Family::single(
                "ferrymail_smtp_rate_limited_total",
                "Recipients refused with 451 4.4.5 by an inbound rate limit ([queue.limiter.inbound]).",
                Counter,
                n(&r.refused_by_rate),
            ),
            Family::single(
                "ferrymail_smtp_connection_checks_refused_total",
                "Recipients refused because the client is on a DNS blocklist or fails strict reverse DNS.",
                Counter,
                n(&r.refused_by_checks),
            ),
            Family {
                name: "ferrymail_smtp_sender_verification_refused_total",
                help: "Senders (SPF, at MAIL FROM) and messages (DKIM, DMARC, at the end of data) refused by strict sender verification, 5xx and 4xx, by check.",
                kind: Counter,
                samples: vec![
                    (vec![("check", "spf".into())], n(&r.refused_by_spf)),
                    (vec![("check", "dkim".into())], n(&r.refused_by_dkim)),
                    (vec![("check", "dmarc".into())], n(&r.refused_by_dmarc)),
                ],
            },
            Family::single(
                "ferrymail_spool_failures_total",
                "Messages refused with 451 because the spool could not make them durable.",
                Counter,
                n(&r.store_failures),
            ),
            Family::single(
                "ferrymail_received_messages_total",
                "Messages made durable and acknowledged with 250.",
                Counter,
                n(&r.messages),
            ),
            Family::single(
                "ferrymail_received_recipients_total",
                "Recipients of the messages received.",
                Counter,
                n(&r.recipients),
            ),
            Family::single(
                "ferrymail_received_bytes_total",
                "Bytes of the messages received, as stored (with the Received: header added).",
                Counter,
                n(&r.bytes),
            ),
            Family::single(
                "ferrymail_smtp_auth_failures_total",
                "SMTP AUTH attempts answered 535: a rise is password guessing.",
                Counter,
                n(&r.auth_failures),
            ),
            Family {
                name: "ferrymail_notifications_total",
                help: "Delivery status notifications queued, by kind (RFC 3464 failure, delay, success).",
                kind: Counter,
                samples: self
                    .report
                    .queued()
                    .into_iter()
                    .map(|(k, v)| (vec![("kind", k.to_string())], v as f64))
                    .collect(),
            },
            Family::single(
                "ferrymail_notifications_refused_total",
                "Notifications the spool refused; they stay owed and are tried again.",
                Counter,
                n(&self.report.refused),
            ),
            Family {
                name: "ferrymail_delivery_outcomes_total",
                help: "Delivery attempts recorded, one per recipient, by outcome.",
                kind: Counter,
                samples: self
                    .queue
                    .counters()
                    .outcomes()
                    .into_iter()
                    .map(|(o, v)| (vec![("outcome", o.to_string())], v as f64))
                    .collect(),
            },
        ];
        out.extend(process_families(self.started));
        let queue = self.queue.clone();
        Box::pin(async move {
            // Without a running queue engine the queue gauges are left out.
            if let Ok(s) = queue.stats().await {
                out.push(Family {
                    name: "ferrymail_queue_recipients",
                    help: "Recipients in this node's queue index, by state (held ones excluded).",
                    kind: Gauge,
                    samples: [
                        ("waiting", s.waiting),
                        ("ready", s.ready),
                        ("in_flight", s.in_flight),
                    ]
                    .into_iter()
                    .map(|(k, v)| (vec![("state", k.to_string())], v as f64))
                    .collect(),
                });
                out.push(Family {
                    name: "ferrymail_queue_recipients_by_queue",
                    help: "Recipients in this node's queue index, by virtual queue and state.",
                    kind: Gauge,
                    samples: s
                        .by_queue
                        .iter()
                        .flat_map(|(q, w, r, f)| {
                            [("waiting", *w), ("ready", *r), ("in_flight", *f)].map(|(st, v)| {
                                (
                                    vec![("queue", q.clone()), ("state", st.to_string())],
                                    v as f64,
                                )
                            })
                        })
                        .collect(),
                });
                out.push(Family::single(
                    "ferrymail_queue_jobs",
                    "Delivery jobs running now.",
                    Gauge,
                    s.jobs as f64,
                ));
                out.push(Family::single(
                    "ferrymail_queue_destinations",
                    "Destinations with a ready queue.",
                    Gauge,
                    s.destinations as f64,
                ));
                out.push(Family::single(
                    "ferrymail_queue_destinations_suspended",
                    "Destinations suspended as dead (or awaiting the probe that ends it).",
                    Gauge,
                    s.suspended as f64,
                ));
                out.push(Family {
                    name: "ferrymail_queue_virtual_queues",
                    help: "Virtual queues, configured or made on demand.",
                    kind: Gauge,
                    samples: vec![
                        (
                            vec![("kind", "configured".into())],
                            s.queues.saturating_sub(s.dynamic_queues) as f64,
                        ),
                        (vec![("kind", "dynamic".into())], s.dynamic_queues as f64),
                    ],
                });
            }
            out
        })
    }
}

/// The conventional process metrics every Prometheus client library
/// exports, read from `/proc/self` (Linux; left out where it is missing).
fn process_families(started: SystemTime) -> Vec<Family> {
    let mut out = Vec::new();
    let start = started
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    out.push(Family::single(
        "process_start_time_seconds",
        "Start time of the process since the Unix epoch, in seconds.",
        Kind::Gauge,
        start,
    ));
    // Fields 14 and 15 of /proc/self/stat (after the parenthesised name):
    // user and system time in clock ticks, USER_HZ = 100 on Linux.
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat")
        && let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r)
    {
        let f: Vec<&str> = rest.split_whitespace().collect();
        if let (Some(u), Some(s)) = (f.get(11), f.get(12))
            && let (Ok(u), Ok(s)) = (u.parse::<u64>(), s.parse::<u64>())
        {
            out.push(Family::single(
                "process_cpu_seconds_total",
                "User and system CPU time spent, in seconds.",
                Kind::Counter,
                (u + s) as f64 / 100.0,
            ));
        }
    }
    // `VmRSS:` of /proc/self/status, in kB: /proc/self/statm counts pages,
    // whose size is not 4 KiB everywhere (64 KiB on some arm64 kernels).
    if let Ok(status) = std::fs::read_to_string("/proc/self/status")
        && let Some(Ok(kb)) = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .map(str::parse::<u64>)
    {
        out.push(Family::single(
            "process_resident_memory_bytes",
            "Resident memory size, in bytes.",
            Kind::Gauge,
            (kb * 1024) as f64,
        ));
    }
    out
}
