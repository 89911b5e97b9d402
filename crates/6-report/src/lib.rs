//! Report: delivery status notifications (RFC 3461, RFC 3464, RFC 6522,
//! RFC 6533 for SMTPUTF8 mail). Turns the queue engine's per-recipient
//! [`Event`]s into notifications to the original sender, signs them with
//! DKIM, and queues them like any other mail, on the bounce queue.
//!
//! # Code map
//!
//! * [`notify`]: whether an event calls for a notification, and which kind
//!   (failure, delay, success), from the recipient's NOTIFY. Pure.
//! * [`batch`]: collects events per (message, kind) so that one
//!   notification covers every recipient an event concerns. Pure, virtual
//!   clock.
//! * [`compose`]: the `multipart/report` message and every
//!   `message/delivery-status` field. Pure.
//! * [`sign`]: DKIM signers from `[signature.<id>]`, loaded at start.
//! * [`Reporter`] (here): the async task that runs them in order and
//!   accepts each notification into the spool.
//!
//! # Invariants
//!
//! * **No notification about a notification, nor to the null sender**
//!   (RFC 3461 §6.2, RFC 5321 §4.5.5): a failed message with the null
//!   sender is a *double bounce*, logged, and copied to
//!   `report.dsn.double-bounce` when one is configured, except when it is
//!   itself such a copy (no loop).
//! * **A notification is ordinary mail once queued**: envelope sender `<>`,
//!   `source = 'dsn'` (so the built-in strategy puts it on the `bounce`
//!   queue and schedule), routed once by the same [`Router`] as received
//!   mail, made durable by [`Spool::accept`], then handed to the queue
//!   engine through the same channel receive uses.
//! * **Keys are checked at start**: a `[signature.<id>]` whose key cannot
//!   be used fails [`Reporter::new`], so the server does not start.
//!
//! # Notice owed: at least once across a crash
//!
//! A notification is made durable only when its group closes (about a
//! second after the first event). It is not lost if the process dies
//! before: the queue engine records the owed notice with the outcome, in
//! the same store write (see [`ferrymail_schedule::notify::owes`]), keeps a
//! finished recipient (and its envelope and contents) until the notice is
//! discharged, and hands owed notices back as events at restart. The
//! reporter discharges a group's notices
//! ([`ferrymail_spool::DataStore::discharge`]) only after the
//! notification is accepted into the spool (or when none is to be sent),
//! and deletes the contents of messages left without entries. A crash
//! between the accept and the discharge sends the notification again
//! after the restart: a duplicate, never a loss. Not kept across a crash:
//! the double-bounce copy to `report.dsn.double-bounce` (nothing is owed
//! to the null sender).

#![warn(missing_docs)]

pub mod batch;
pub mod compose;
pub mod notify;
pub mod sign;

use arc_swap::ArcSwap;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ferrymail_config::{Config, DsnConfig, Value, Var, Variables};
use ferrymail_route::Router;
use ferrymail_schedule::{Event, EventKind};
use ferrymail_spool::{
    BodyType, Envelope, IdGenerator, MessageId, Notify, QueueEntry, Queued, Recipient, Source,
    Spool, UnixMillis, now_millis,
};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

pub use batch::{Batch, BatchKey, Batcher};
pub use compose::{Action, Composed, Notification, RecipientReport, Returned};
pub use notify::{Kind, wanted};
pub use sign::{KeyError, SignError, Signers};

/// Timing of the [`Reporter`]. [`ReportSettings::default`] gives
/// production values.
#[derive(Clone, Debug)]
pub struct ReportSettings {
    /// A group of events closes once no event joined it for this long
    /// ([`Batcher::quiet`]). Default 1 s: the recipients of one job are
    /// recorded milliseconds apart.
    pub quiet: Duration,
    /// A group closes at the latest this long after its first event
    /// ([`Batcher::max_hold`]). Default 10 s.
    pub max_hold: Duration,
    /// When the spool refuses a notification (a store outage), it is tried
    /// again after this long, then after twice as long each time, up to
    /// [`ReportSettings::retry_max`], for as long as the process runs; the
    /// notice stays owed meanwhile, and other notifications go on. Default
    /// 1 s.
    pub retry_first: Duration,
    /// The longest wait between two tries of a refused notification.
    /// Default 60 s.
    pub retry_max: Duration,
    /// How often the hold on the notices this node has and has not
    /// reported yet is extended in a shared store
    /// ([`DataStore::renew_owed`](ferrymail_spool::DataStore::renew_owed)),
    /// so that no other node takes them over meanwhile. A third of the
    /// hold; default 20 s.
    pub renew_owed: Duration,
}

impl Default for ReportSettings {
    fn default() -> Self {
        ReportSettings {
            quiet: Duration::from_secs(1),
            max_hold: Duration::from_secs(10),
            retry_first: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
            renew_owed: Duration::from_secs(20),
        }
    }
}

/// A notification the spool refused, waiting to be tried again.
struct Refused {
    due: std::time::Instant,
    /// The wait before this try; the next one waits twice as long.
    wait: Duration,
    batch: Batch,
}

/// Notifications this node queued since it started, by kind, and those the
/// spool refused (tried again later): for `GET /metrics`, where a jump in
/// failure notices is often the first sign of a broken destination.
#[derive(Debug, Default)]
pub struct ReportCounters {
    /// Failure notices (action `failed`) queued.
    pub failure: std::sync::atomic::AtomicU64,
    /// Delay notices (action `delayed`) queued.
    pub delay: std::sync::atomic::AtomicU64,
    /// Success notices (actions `delivered`, `relayed`) queued.
    pub success: std::sync::atomic::AtomicU64,
    /// Notifications the spool refused; they stay owed and are retried.
    pub refused: std::sync::atomic::AtomicU64,
}

impl ReportCounters {
    /// `(kind, count)` of the queued notifications, in a fixed order.
    pub fn queued(&self) -> [(&'static str, u64); 3] {
        use std::sync::atomic::Ordering::Relaxed;
        [
            (Kind::Failure.as_str(), self.failure.load(Relaxed)),
            (Kind::Delay.as_str(), self.delay.load(Relaxed)),
            (Kind::Success.as_str(), self.success.load(Relaxed)),
        ]
    }

    fn count(&self, kind: Kind) {
        let c = match kind {
            Kind::Failure => &self.failure,
            Kind::Delay => &self.delay,
            Kind::Success => &self.success,
        };
        c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Makes and queues notifications. Built once at start from the
/// configuration; [`Reporter::start`] runs it as a task over the queue
/// engine's events.
pub struct Reporter {
    /// What the configuration decides; [`Reconfigure`] replaces it.
    config: Arc<ArcSwap<ReportConfig>>,
    spool: Spool,
    ids: Arc<IdGenerator>,
    queued: mpsc::UnboundedSender<Queued>,
    counters: Arc<ReportCounters>,
}

/// The part of the reporter a configuration reload replaces: names, the
/// `[report.dsn]` settings, the DKIM keys and the routing of notifications.
struct ReportConfig {
    hostname: String,
    dsn: DsnConfig,
    signers: Signers,
    router: Router,
}

impl ReportConfig {
    fn from_config(config: &Config) -> Result<ReportConfig, KeyError> {
        Ok(ReportConfig {
            hostname: config.server.hostname.clone(),
            dsn: config.report.dsn.clone(),
            signers: Signers::from_config(config)?,
            router: Router::from_config(&config.queue),
        })
    }
}

/// Hands a reloaded configuration to a reporter, running or not: the
/// notifications composed after [`Reconfigure::apply`] use its names,
/// `[report.dsn]` settings, DKIM keys and routing.
#[derive(Clone)]
pub struct Reconfigure(Arc<ArcSwap<ReportConfig>>);

impl Reconfigure {
    /// Loads `config`'s keys (refusing, and keeping the current settings,
    /// if one cannot be used) and puts the new settings in force.
    pub fn apply(&self, config: &Config) -> Result<(), KeyError> {
        self.0.store(Arc::new(ReportConfig::from_config(config)?));
        Ok(())
    }
}

/// A notification ready to be accepted into the spool.
#[derive(Clone, Debug)]
pub struct Prepared {
    /// The message the notification is about.
    pub about: MessageId,
    /// Its kind.
    pub kind: Kind,
    /// The notification's envelope: null sender, one recipient, `source =
    /// 'dsn'`.
    pub envelope: Envelope,
    /// Its queue entries, routed.
    pub entries: Vec<QueueEntry>,
    /// Its contents, signed.
    pub contents: Vec<u8>,
}

/// The running reporter task.
pub struct Running {
    /// The task; ends after [`Running::finish`] or when the events channel
    /// closes, once every open group has been reported.
    pub task: JoinHandle<()>,
    stop: oneshot::Sender<()>,
}

impl Running {
    /// Asks the task to report what it holds (open groups and events
    /// already sent) without waiting for quiet times, and waits for it.
    pub async fn finish(self) {
        let _ = self.stop.send(());
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "report: the notification task ended abnormally");
        }
    }
}

impl Reporter {
    /// Builds the reporter: loads every DKIM key (failing on one that
    /// cannot be used) and the router. `ids` must be the generator receive
    /// uses, so ids stay unique on this node; `queued` is receive's channel
    /// to the queue engine.
    pub fn new(
        config: &Config,
        spool: Spool,
        ids: Arc<IdGenerator>,
        queued: mpsc::UnboundedSender<Queued>,
    ) -> Result<Reporter, KeyError> {
        Ok(Reporter {
            config: Arc::new(ArcSwap::from_pointee(ReportConfig::from_config(config)?)),
            spool,
            ids,
            queued,
            counters: Arc::default(),
        })
    }

    /// What a reload hands its new configuration to.
    pub fn reconfigurer(&self) -> Reconfigure {
        Reconfigure(self.config.clone())
    }

    /// The counters of the notifications this reporter queues, to be read
    /// while it runs.
    pub fn counters(&self) -> Arc<ReportCounters> {
        self.counters.clone()
    }

    /// Runs the reporter over `events` until [`Running::finish`] or until
    /// the channel closes.
    pub fn start(
        self,
        events: mpsc::UnboundedReceiver<Event>,
        settings: ReportSettings,
    ) -> Running {
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(self.run(events, settings, stopped));
        Running { task, stop }
    }

    async fn run(
        self,
        mut events: mpsc::UnboundedReceiver<Event>,
        settings: ReportSettings,
        mut stop: oneshot::Receiver<()>,
    ) {
        let mut batcher = Batcher::new(settings.quiet, settings.max_hold);
        let mut refused: Vec<Refused> = Vec::new();
        let mut renew = tokio::time::interval(settings.renew_owed.max(Duration::from_millis(10)));
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let due = batcher
                .next_due()
                .into_iter()
                .chain(refused.iter().map(|r| r.due))
                .min();
            let sleep = async {
                match due {
                    Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                ev = events.recv() => match ev {
                    Some(e) => self.take(&mut batcher, &mut refused, e),
                    None => break,
                },
                _ = sleep => {
                    let now = std::time::Instant::now();
                    let (again, later): (Vec<_>, Vec<_>) =
                        refused.drain(..).partition(|r| r.due <= now);
                    refused = later;
                    let fresh = batcher.take_due(now).into_iter().map(|b| (b, Duration::ZERO));
                    let retried = again.into_iter().map(|r| (r.batch, r.wait));
                    // The older ones first: a delay notification that
                    // waited goes before a fresh failure notification.
                    for (batch, waited) in retried.chain(fresh).collect::<Vec<_>>() {
                        if let Err(batch) = self.report(batch).await {
                            let wait = if waited.is_zero() {
                                settings.retry_first
                            } else {
                                (waited * 2).min(settings.retry_max)
                            };
                            refused.push(Refused {
                                due: std::time::Instant::now() + wait,
                                wait,
                                batch,
                            });
                        }
                    }
                }
                _ = renew.tick() => {
                    let held: Vec<ferrymail_spool::EntryKey> = batcher
                        .held()
                        .chain(refused.iter().flat_map(|r| {
                            r.batch.events.iter().map(Event::key)
                        }))
                        .collect();
                    if !held.is_empty()
                        && let Err(e) = self.spool.data.renew_owed(&held, now_millis()).await
                    {
                        tracing::warn!(error = %e, notices = held.len(), "report: cannot extend the hold on notices still to be sent; another node may send them too");
                    }
                }
                _ = &mut stop => {
                    while let Ok(e) = events.try_recv() {
                        self.take(&mut batcher, &mut refused, e);
                    }
                    break;
                }
            }
        }
        // Last tries; what the spool still refuses stays owed in the store
        // and is sent after the next start.
        let last = batcher
            .drain()
            .into_iter()
            .chain(refused.into_iter().map(|r| r.batch));
        for batch in last.collect::<Vec<_>>() {
            if let Err(batch) = self.report(batch).await {
                tracing::error!(
                    id = %batch.key.message,
                    kind = batch.key.kind.as_str(),
                    "report: the spool refused a notification until shutdown; it stays owed and is sent after the next start"
                );
            }
        }
    }

    /// Files an event under its group, or drops it when it calls for no
    /// notification.
    ///
    /// An event for a group the spool refused and that waits to be tried
    /// again joins that group instead of opening a new one: the same owed
    /// notice comes back when the store hands it over again (a shared
    /// store's takeover sweep, once its hold lapsed while the notification
    /// waited), and it must give one notification, not one per hand-over.
    ///
    /// A final outcome (delivered, relayed, failed, expired) also takes its
    /// recipient out of a delay notification of the same message that is
    /// still being collected or waits to be tried again, whether or not the
    /// outcome itself calls for a notification: sent after it, "still being
    /// retried" would contradict what happened. (The store replaced or
    /// removed that delay notice with the outcome already.)
    fn take(&self, batcher: &mut Batcher, refused: &mut Vec<Refused>, e: Event) {
        let notify = e
            .envelope
            .recipients
            .get(e.rcpt as usize)
            .map(|r| r.notify)
            .unwrap_or_default();
        if !matches!(e.kind, EventKind::Delayed { .. }) {
            let delay = batch::BatchKey {
                message: e.envelope.id,
                kind: Kind::Delay,
            };
            batcher.forget(delay, e.rcpt);
            for r in refused.iter_mut().filter(|r| r.batch.key == delay) {
                r.batch.events.retain(|old| old.rcpt != e.rcpt);
            }
            refused.retain(|r| !r.batch.events.is_empty());
        }
        match wanted(notify, &e.kind) {
            Some(kind) => {
                let key = batch::BatchKey {
                    message: e.envelope.id,
                    kind,
                };
                match refused.iter_mut().find(|r| r.batch.key == key) {
                    Some(waiting) => {
                        let events = &mut waiting.batch.events;
                        batch::put(events, e);
                        events.sort_by_key(|ev| ev.rcpt);
                    }
                    None => batcher.add(kind, e, std::time::Instant::now()),
                }
            }
            None => tracing::debug!(
                id = %e.envelope.id,
                rcpt = e.rcpt,
                action = e.action(),
                ?notify,
                "report: no notification due"
            ),
        }
    }

    /// Makes the notification of one closed group, queues it, and then
    /// discharges the notices it settles. Gives the group back when the
    /// spool refuses the notification, to be tried again later (the notices
    /// stay owed in the store meanwhile).
    async fn report(&self, batch: Batch) -> Result<(), Batch> {
        let Some(p) = self.prepare(&batch, now_millis()) else {
            // Nothing to send (e.g. a double bounce without a postmaster
            // copy): nothing stays owed either.
            self.discharge(&batch).await;
            return Ok(());
        };
        match self
            .spool
            .accept(&p.envelope, &p.entries, Bytes::from(p.contents.clone()))
            .await
        {
            Ok(()) => {
                tracing::info!(
                    id = %p.envelope.id,
                    about = %p.about,
                    kind = p.kind.as_str(),
                    to = %p.envelope.recipients[0].address,
                    recipients = batch.events.len(),
                    queue = %p.entries.first().map(|e| e.queue.as_str()).unwrap_or(""),
                    size = p.contents.len(),
                    "notification queued"
                );
                self.counters.count(p.kind);
                // The queue engine may be gone at shutdown: the entry is
                // durable and restart recovery schedules it.
                let _ = self
                    .queued
                    .send(Queued::with_envelope(p.entries, &p.envelope));
                self.discharge(&batch).await;
                Ok(())
            }
            Err(e) => {
                self.counters
                    .refused
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(about = %p.about, kind = p.kind.as_str(), error = %e, "report: the spool refused a notification; it stays owed and is tried again");
                Err(batch)
            }
        }
    }

    /// Settles the notices of a group whose notification is queued (or
    /// that calls for none): finished recipients leave the store, and the
    /// contents of a message left without entries are deleted. A failure
    /// leaves them owed: the next start sends the notification again
    /// rather than lose it.
    async fn discharge(&self, batch: &Batch) {
        let notices: Vec<_> = batch.events.iter().map(Event::discharge).collect();
        match self.spool.data.discharge(&notices).await {
            // One store for both removed the contents with the entries.
            Ok(_) if self.spool.unified => {}
            Ok(gone) => {
                for id in gone {
                    if let Err(e) = self.spool.blob.delete(id).await {
                        tracing::warn!(id = %id, error = %e, "report: cannot delete the contents of a finished message");
                    }
                }
            }
            Err(e) => tracing::warn!(
                about = %batch.key.message,
                error = %e,
                "report: cannot discharge the notices of a queued notification; they are sent again after the next start"
            ),
        }
    }

    /// Composes, signs and routes the notification of one group; `None`
    /// when none may be sent (null sender without a double-bounce address).
    pub fn prepare(&self, batch: &Batch, now: UnixMillis) -> Option<Prepared> {
        let config = self.config.load();
        let first = batch.events.first()?;
        let env = &first.envelope;
        let kind = batch.key.kind;
        let rcpts: Vec<&str> = batch.events.iter().map(Event::recipient).collect();
        let (to, double_bounce) = if env.is_null_sender() {
            if kind != Kind::Failure {
                tracing::debug!(id = %env.id, kind = kind.as_str(), "report: null sender, no notification");
                return None;
            }
            match &config.dsn.double_bounce {
                // A copy to the postmaster, unless this is such a copy.
                Some(pm)
                    if !(env.source == Source::Dsn
                        && rcpts.iter().all(|r| r.eq_ignore_ascii_case(pm))) =>
                {
                    tracing::warn!(id = %env.id, recipients = ?rcpts, postmaster = %pm, "double bounce: a message with the null sender failed; a copy goes to the postmaster");
                    (pm.clone(), true)
                }
                Some(pm) => {
                    tracing::warn!(id = %env.id, postmaster = %pm, "double bounce: the postmaster copy of a double bounce failed; discarded");
                    return None;
                }
                None => {
                    tracing::warn!(id = %env.id, recipients = ?rcpts, "double bounce: a message with the null sender failed; no notification is sent (RFC 3461 §6.2)");
                    return None;
                }
            }
        } else {
            (env.sender.clone(), false)
        };

        let id = self.ids.next();
        let vars = DsnVars {
            original: env,
            to: &to,
            queue: &first.queue,
        };
        let from_name = config.dsn.from_name.eval_string(&vars).unwrap_or_default();
        let from_address = config
            .dsn
            .from_address
            .eval_string(&vars)
            .filter(|a| a.contains('@'))
            .unwrap_or_else(|| format!("MAILER-DAEMON@{}", config.hostname));
        let recipients: Vec<RecipientReport> = batch.events.iter().map(recipient_report).collect();
        let original = batch.events.iter().find_map(|e| e.contents.as_deref());
        let message_id = format!("{id}.dsn@{}", config.hostname);
        let composed = compose::compose(&Notification {
            kind,
            reporting_mta: &config.hostname,
            from_name: &from_name,
            from_address: &from_address,
            to: &to,
            double_bounce,
            envelope: env,
            recipients: &recipients,
            original,
            max_returned_size: config.dsn.max_returned_size,
            date: now,
            message_id: &message_id,
        });

        // DKIM: every signer `sign` names, each over the unsigned message.
        let ids: BTreeSet<String> = config.dsn.sign.eval_strings(&vars).into_iter().collect();
        // Signed as it will travel: a next hop without 8BITMIME gets an
        // 8-bit notice converted to quoted-printable (RFC 6152 §3), which
        // would break a signature made over the 8-bit form. Converted
        // first, the notice is 7-bit for every hop. Not a notice about
        // SMTPUTF8 mail: its RFC 6533 parts carry UTF-8 as it is, and it
        // goes only to hops that take SMTPUTF8 (and 8BITMIME with it).
        let convert = composed.eight_bit && !env.smtputf8 && !ids.is_empty();
        let seven = convert
            .then(|| ferrymail_deliver::protocol::downgrade::to_seven_bit(&composed.message))
            .flatten();
        let (message, eight_bit) = match seven {
            Some(seven) => (seven, false),
            None => (composed.message, composed.eight_bit),
        };
        let mut contents = Vec::with_capacity(message.len() + 1024);
        for sid in &ids {
            match config.signers.sign(sid, &message) {
                Some(Ok(header)) => contents.extend_from_slice(header.as_bytes()),
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "report: notification left unsigned by this signer")
                }
                None => {
                    tracing::debug!(signature = %sid, "report: 'report.dsn.sign' names an undefined signature; skipped")
                }
            }
        }
        contents.extend_from_slice(&message);

        let envelope = Envelope {
            id,
            sender: String::new(),
            recipients: vec![Recipient {
                address: to.clone(),
                orcpt: None,
                notify: Notify::Default,
            }],
            size: contents.len() as u64,
            arrived: now,
            body: if eight_bit {
                BodyType::EightBitMime
            } else {
                BodyType::SevenBit
            },
            // Only when something in it needs it (RFC 6531 §3.4): an ASCII
            // notice about an SMTPUTF8 message can go to any next hop.
            smtputf8: env.smtputf8 && (!to.is_ascii() || !contents.is_ascii()),
            ret: None,
            envid: None,
            mt_priority: 0,
            source: Source::Dsn,
            remote_ip: None,
            helo: None,
            authenticated_as: None,
        };
        let entries = config.router.entries(&envelope, &contents, None, now);
        Some(Prepared {
            about: env.id,
            kind,
            envelope,
            entries,
            contents,
        })
    }
}

/// One recipient block from its event.
pub fn recipient_report(e: &Event) -> RecipientReport {
    let rcpt = e.envelope.recipients.get(e.rcpt as usize);
    let (action, reply, reason, will_retry_until) = match &e.kind {
        EventKind::Failed { reason, reply } => {
            (Action::Failed, reply.as_ref(), reason.clone(), None)
        }
        EventKind::Expired { reason, reply } => {
            (Action::Failed, reply.as_ref(), reason.clone(), None)
        }
        EventKind::Delayed {
            reason,
            reply,
            will_retry_until,
            ..
        } => (
            Action::Delayed,
            reply.as_ref(),
            reason.clone(),
            *will_retry_until,
        ),
        EventKind::Delivered { reply, .. } => {
            (Action::Delivered, Some(reply), "delivered".into(), None)
        }
        EventKind::Relayed { reply } => (Action::Relayed, Some(reply), "relayed".into(), None),
    };
    RecipientReport {
        address: e.recipient().to_string(),
        original: rcpt.and_then(|r| r.orcpt.clone()),
        action,
        status: e.status(),
        remote_mta: e.remote.as_ref().map(|r| r.host.clone()),
        diagnostic: reply.map(|r| r.to_string()),
        reason,
        last_attempt: e.attempt_at,
        will_retry_until,
    }
}

/// What `report.dsn` expressions (`from-name`, `from-address`, `sign`) see:
/// the notification's own recipient as `rcpt`/`rcpt_domain`, its null
/// sender as `sender`, `source = 'dsn'`, and of the original message its
/// queue, priority, size and client (`remote_ip`, `helo_domain`,
/// `authenticated_as`).
struct DsnVars<'a> {
    original: &'a Envelope,
    to: &'a str,
    queue: &'a str,
}

impl Variables for DsnVars<'_> {
    fn var(&self, v: Var) -> Value {
        let domain = |a: &str| ferrymail_spool::domain_of(a).unwrap_or_default();
        let o = self.original;
        match v {
            Var::Sender | Var::SenderDomain => Value::Str(String::new()),
            Var::Rcpt => Value::Str(ferrymail_spool::address_for_expressions(self.to)),
            Var::RcptDomain => Value::Str(domain(self.to)),
            Var::Source => Value::Str(Source::Dsn.as_str().to_string()),
            Var::Queue => Value::Str(self.queue.to_string()),
            Var::Priority => Value::Int(i64::from(o.mt_priority)),
            Var::Size => Value::Int(o.size as i64),
            Var::RemoteIp => o
                .remote_ip
                .map(|ip| Value::Str(ip.to_string()))
                .unwrap_or(Value::Null),
            Var::HeloDomain => o.helo.clone().map(Value::Str).unwrap_or(Value::Null),
            Var::AuthenticatedAs => o
                .authenticated_as
                .clone()
                .map(Value::Str)
                .unwrap_or(Value::Null),
            _ => Value::Null,
        }
    }
}

#[cfg(test)]
mod tests;
