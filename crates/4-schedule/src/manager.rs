//! The async driver: [`QueueManager`] owns the scheduling core and carries
//! out what it decides against the real store and transport.
//!
//! # One loop, many helpers
//!
//! The manager's loop is the only owner of the [`Scheduler`], so the index
//! needs no lock. It never waits on the store itself: helper tasks read
//! (recovery scan, envelopes for new mail, re-reads after changes) and send
//! the results back as commands; each delivery job is its own task that
//! claims, delivers, records the outcome and returns a [`JobReport`]. The loop
//! sleeps until the earliest of: a command, a finished job, the core's next
//! wake time, or shutdown.
//!
//! # A delivery job
//!
//! 1. **Claim** the job's entries with a lease
//!    ([`DataStore::claim_job`](ferrymail_spool::DataStore::claim_job), the
//!    rules of `claim_keys`). The store refuses held entries and entries
//!    another node holds, so an operator's hold and a second node are
//!    respected even when the index is behind. Refused entries are re-read
//!    and re-indexed.
//! 2. **Load** the envelope and the contents (the only place the scheduler
//!    touches a body, and only to hand it to the transport). The claim
//!    returns the envelope, and the contents too when the data store is
//!    also the blob store: one round trip to PostgreSQL instead of three.
//! 3. **Deliver** through the [`Transport`], renewing the lease every
//!    `renew_every` while it runs.
//! 4. **Record** each recipient's outcome as the [`Policy`] decides:
//!    `complete` (and delete the contents once no recipient is left) or
//!    `defer` with the next due time, last error and notify count; then emit
//!    the [`Event`]. When the outcome owes the sender a notification
//!    ([`crate::notify::owes`]), the owed notice goes into the same store
//!    write: `complete` then keeps the entry, finished, with its envelope
//!    and contents, until the DSN layer discharges the notice
//!    ([`DataStore::discharge`](ferrymail_spool::DataStore::discharge));
//!    `defer` keeps the delay notice on the entry. A crash before the
//!    notification is queued therefore loses nothing (see Restart).
//!
//! # Restart
//!
//! At start the manager pages through [`DataStore::scan`](ferrymail_spool::DataStore::scan) (entries only,
//! never contents; one envelope read per message for the recipient domains)
//! and indexes what it finds while new mail already flows. Entries leased by
//! this node before the restart count as free.
//!
//! An entry with a notice owed is handed to the DSN layer as the [`Event`]
//! it recorded ([`Event::from_owed`], with the envelope and contents read
//! back); one whose notice is final is not indexed (it is finished), one
//! with a delay notice is indexed as usual. The notice may have been queued
//! before the crash and not yet discharged: then the sender gets it twice
//! (at least once, never lost).
//!
//! # Other nodes
//!
//! When the store is shared (PostgreSQL), every node indexes the whole
//! cluster's queue, and follows what the other nodes change through the
//! store's change feed ([`DataStore::feed_read`](ferrymail_spool::DataStore::feed_read)), read every
//! `poll_interval`: mail they accepted, deferred, completed, or an operator
//! acted on there, and ETRN or flush given to them. The feed is started
//! before the start-up scan, so nothing committed during the scan is
//! missed. Any node may then start any entry; the store's lease decides
//! which one delivers it. An entry under another node's live lease waits in
//! the index until the lease ends: if that node died, this one takes the
//! entry over then; if not, the feed reports the outcome first. ETRN and
//! flush given here are passed on through the feed
//! ([`DataStore::announce_expedite`](ferrymail_spool::DataStore::announce_expedite)).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use ferrymail_config::Config;
use ferrymail_deliver::{CommitGate, Job, Outcome, RecipientOutcome, Remote, Transport};
use ferrymail_spool::{
    EntryKey, Envelope, FEED_RESUME_LIMIT, FeedBatch, MessageId, NodeId, QueueEntry, Queued, Spool,
    StoreError, UnixMillis, now_millis,
};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::core::{
    CoreSettings, Dispatch, Health, JobId, JobReport, Location, Mode, Next, Notice, Origin,
    Scheduler, Stats, Target, TargetError,
};
use crate::event::{Event, EventKind};
use crate::notify::owes;
use crate::policy::{Attempt, Decision, Policy};

/// How long a store operation that failed waits before the entry is tried
/// again (the entry keeps this node's lease meanwhile, so nobody else takes
/// it before then).
const STORE_RETRY_MS: u64 = 60_000;

/// Waits between the tries of [`complete_retrying`]: about 3.5 s in all,
/// well inside a lease.
const COMPLETE_RETRIES: [Duration; 4] = [
    Duration::from_millis(250),
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(2),
];

/// Records a final outcome, trying the write again a few times when the
/// store fails. An outcome that is not recorded is retried as a delivery a
/// minute later: a message the next hop already took goes out twice. A
/// store blip (a PostgreSQL connection lost, a statement timeout) should
/// cost a second of waiting instead. A write that did commit though its
/// answer was lost finds the lease gone on the next try (`NotLeased`).
async fn complete_retrying(
    sh: &Shared,
    key: EntryKey,
    notice: Option<&ferrymail_spool::OwedNotice>,
) -> Result<ferrymail_spool::Removal, StoreError> {
    let node = sh.settings.node;
    let mut waits = COMPLETE_RETRIES.iter();
    loop {
        match sh.spool.data.complete(node, key, notice).await {
            Err(StoreError::NotLeased(k)) => return Err(StoreError::NotLeased(k)),
            Err(err) => match waits.next() {
                Some(wait) => {
                    tracing::warn!(id = %key.message, rcpt = key.rcpt, error = %err, "queue: cannot record a final outcome; trying the write again");
                    tokio::time::sleep(*wait).await;
                }
                None => return Err(err),
            },
            done => return done,
        }
    }
}

/// Recovery pages the start-up scan may read ahead of the loop that
/// indexes them: bounds its memory to a few pages instead of the whole queue.
const RECOVERY_PAGES_AHEAD: usize = 2;

/// How often a failed re-read of changed entries is retried, and how long to
/// wait between tries.
const RELOAD_TRIES: u32 = 6;
const RELOAD_BACKOFF: Duration = Duration::from_secs(5);

/// The longest wait between tries to read entries the store kept refusing
/// ([`strand`]), and between tries of a start-up scan page.
const STRANDED_BACKOFF_MAX: Duration = Duration::from_secs(300);

/// Tunables of the driver. [`ManagerSettings::new`] gives production values.
#[derive(Clone, Debug)]
pub struct ManagerSettings {
    /// This node: lease owner.
    pub node: NodeId,
    /// How long a claim lasts unless renewed. A node that dies holds its
    /// entries at most this long (`cluster.lease`).
    pub lease: Duration,
    /// How often a running delivery renews its lease: a third of `lease`,
    /// so one late or failed renewal does not lose it.
    pub renew_every: Duration,
    /// How often the change feed of a shared store is read
    /// (`cluster.poll-interval`).
    pub poll_interval: Duration,
    /// How long shutdown waits for deliveries in flight before abandoning
    /// them (their leases let this node reclaim them after a restart).
    pub shutdown_grace: Duration,
    /// Entries read per recovery scan page.
    pub scan_page: usize,
    /// Seed of the jitter generator.
    pub seed: u64,
}

impl ManagerSettings {
    /// Production values: `[cluster]`'s defaults (60 s leases renewed
    /// every 20 s, the feed read every second), 30 s grace, 4096-entry
    /// pages, a seed from the clock and the node.
    pub fn new(node: NodeId) -> ManagerSettings {
        Self::with_cluster(node, &ferrymail_config::Cluster::default())
    }

    /// Production values with the lease and feed interval of `cluster`.
    pub fn with_cluster(node: NodeId, cluster: &ferrymail_config::Cluster) -> ManagerSettings {
        ManagerSettings {
            node,
            lease: cluster.lease,
            renew_every: cluster.lease / 3,
            poll_interval: cluster.poll_interval,
            shutdown_grace: Duration::from_secs(30),
            scan_page: 4096,
            seed: now_millis() ^ node.0.rotate_left(17),
        }
    }
}

/// Why a request to the queue manager failed.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The manager is not running (shutting down, or never started).
    #[error("the queue manager is not running")]
    Closed,
    /// The ETRN or flush argument is not a domain or queue name.
    #[error("bad node name: {0}")]
    Target(#[from] TargetError),
}

/// What the loop is asked to do.
enum Command {
    /// Entries to index, with their recipient domains.
    Ingest {
        entries: Vec<(QueueEntry, String)>,
        origin: Origin,
        /// Held while the command waits in the channel (recovery pages only):
        /// the start-up scan reads the store faster than the loop indexes,
        /// and without it the whole queue would pile up in the channel.
        _page: Option<tokio::sync::OwnedSemaphorePermit>,
    },
    /// The start-up scan ended.
    Recovered {
        entries: usize,
        elapsed: Duration,
        error: Option<String>,
    },
    /// An operator's action changed these entries: re-read them (and, for a
    /// retry, probe their suspended destinations), then say so on `applied`.
    Reread {
        keys: Vec<EntryKey>,
        retry: bool,
        applied: oneshot::Sender<()>,
    },
    /// The result of a re-read: `found` holds the keys that still exist.
    Reloaded {
        keys: Vec<EntryKey>,
        found: Vec<(QueueEntry, String)>,
        /// Re-read for a retry (see [`Command::Reread`]).
        retry: bool,
        /// Told once the index holds what was read.
        applied: Option<oneshot::Sender<()>>,
    },
    /// ETRN or flush given to this node.
    Expedite {
        target: Target,
        reply: oneshot::Sender<usize>,
    },
    /// What other nodes changed, from the change feed.
    Changed(FeedBatch),
    /// Tokens taken from a queue's cluster-wide rate bucket.
    Tokens { queue: String, granted: u32 },
    /// An operator routes these entries again (`queue requeue`).
    Requeue {
        keys: Vec<EntryKey>,
        reply: oneshot::Sender<usize>,
    },
    /// An operator returns these entries to their senders now.
    Bounce {
        keys: Vec<EntryKey>,
        reason: String,
        reply: oneshot::Sender<usize>,
    },
    /// A reloaded configuration's `[queue]` section.
    Reconfigure {
        queue: Box<ferrymail_config::Queue>,
        applied: oneshot::Sender<()>,
    },
    /// Counters.
    Stats(oneshot::Sender<Stats>),
}

/// A cheap, clonable handle to a running [`QueueManager`]: what ETRN, the
/// management API and tests use.
#[derive(Clone, Debug)]
pub struct QueueHandle {
    /// The manager's command channel.
    tx: mpsc::UnboundedSender<Command>,
    /// What the manager has recorded since it started.
    counters: Arc<QueueCounters>,
}

/// Outcomes this node has recorded since it started, one per recipient
/// attempt, for `GET /metrics`: monotonic counters an operator graphs and
/// alerts on (a rising `failed` or `deferred` rate is the first sign of a
/// destination in trouble). Updated where the outcome is written, so each
/// counts only outcomes that reached the store.
#[derive(Debug, Default)]
pub struct QueueCounters {
    /// Accepted by the next hop (final delivery, or relayed to one that
    /// supports DSN).
    pub delivered: AtomicU64,
    /// Accepted by an SMTP next hop without DSN support.
    pub relayed: AtomicU64,
    /// Failed for good (5xx, null MX, ...).
    pub failed: AtomicU64,
    /// Given up on at the schedule's expiry or attempt limit.
    pub expired: AtomicU64,
    /// Failed for now: deferred to a later retry.
    pub deferred: AtomicU64,
}

/// A counter's value, for rendering.
fn load(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

impl QueueCounters {
    /// (outcome label, count) for every outcome, in a fixed order.
    pub fn outcomes(&self) -> [(&'static str, u64); 5] {
        [
            ("delivered", load(&self.delivered)),
            ("relayed", load(&self.relayed)),
            ("failed", load(&self.failed)),
            ("expired", load(&self.expired)),
            ("deferred", load(&self.deferred)),
        ]
    }

    fn count(&self, kind: &EventKind) {
        let c = match kind {
            EventKind::Delivered { .. } => &self.delivered,
            EventKind::Relayed { .. } => &self.relayed,
            EventKind::Failed { .. } => &self.failed,
            EventKind::Expired { .. } => &self.expired,
            EventKind::Delayed { .. } => return,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Command::Ingest { .. } => "Ingest",
            Command::Recovered { .. } => "Recovered",
            Command::Reloaded { .. } => "Reloaded",
            Command::Reread { .. } => "Reread",
            Command::Expedite { .. } => "Expedite",
            Command::Changed(_) => "Changed",
            Command::Tokens { .. } => "Tokens",
            Command::Bounce { .. } => "Bounce",
            Command::Requeue { .. } => "Requeue",
            Command::Reconfigure { .. } => "Reconfigure",
            Command::Stats(_) => "Stats",
        })
    }
}

impl QueueHandle {
    /// The outcomes recorded since the manager started.
    pub fn counters(&self) -> &QueueCounters {
        &self.counters
    }

    /// ETRN (RFC 1985): starts delivery of the queued mail for `argument`
    /// (`domain`, `@domain` or `#queue`) and returns how many messages have
    /// mail queued for it: 0 is reply 251, `n` is 253.
    pub async fn etrn(&self, argument: &str) -> Result<usize, QueueError> {
        let target = Target::parse(argument)?;
        self.expedite(target).await
    }

    /// `ferrymail queue flush [DOMAIN]`: like ETRN for `target` (same
    /// syntax), or for everything when `None`.
    pub async fn flush(&self, target: Option<&str>) -> Result<usize, QueueError> {
        let target = match target {
            None => Target::All,
            Some(t) => Target::parse(t)?,
        };
        self.expedite(target).await
    }

    async fn expedite(&self, target: Target) -> Result<usize, QueueError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Expedite { target, reply })
            .map_err(|_| QueueError::Closed)?;
        rx.await.map_err(|_| QueueError::Closed)
    }

    /// An operator's hold, release, retry or cancel changed these entries
    /// in the store: the manager re-reads them (for a retry, it also lets
    /// a suspended destination of theirs probe at once: an operator
    /// retrying mail expects an attempt, not another "delivery temporarily
    /// suspended"), and this returns once its index holds what it read. So `queue release` and then `queue flush` finds the
    /// released mail, where a re-read in the background could still be
    /// under way when the flush came.
    pub async fn reread(&self, keys: Vec<EntryKey>, retry: bool) -> Result<(), QueueError> {
        let (applied, rx) = oneshot::channel();
        self.tx
            .send(Command::Reread {
                keys,
                retry,
                applied,
            })
            .map_err(|_| QueueError::Closed)?;
        rx.await.map_err(|_| QueueError::Closed)
    }

    /// `ferrymail queue bounce` (Postfix's `postsuper -e`): these entries
    /// fail now, without another attempt, with `reason`; each sender gets
    /// the failure notice its NOTIFY asks for, as for any permanent failure.
    /// Entries being delivered right now (here, or under another node's
    /// live lease) and held ones are left alone. Answers how many
    /// recipients were returned.
    pub async fn bounce(&self, keys: Vec<EntryKey>, reason: String) -> Result<usize, QueueError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Bounce {
                keys,
                reason,
                reply,
            })
            .map_err(|_| QueueError::Closed)?;
        rx.await.map_err(|_| QueueError::Closed)
    }

    /// `ferrymail queue requeue` (Postfix's `postsuper -r`): these
    /// entries' schedule, route and priority are decided again by the
    /// routing expressions as configured now, and they are due at once; a
    /// route renamed or removed no longer holds its mail until expiry.
    /// Entries being delivered right now and held ones are left alone.
    /// Answers how many were routed again.
    pub async fn requeue(&self, keys: Vec<EntryKey>) -> Result<usize, QueueError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Requeue { keys, reply })
            .map_err(|_| QueueError::Closed)?;
        rx.await.map_err(|_| QueueError::Closed)
    }

    /// Takes up a reloaded configuration's `[queue]` section: virtual
    /// queue limits, retry/notify/expiry schedules and the routing
    /// expressions used by `queue requeue`. Every queued entry keeps its
    /// queue, route and schedule (`queue requeue` routes it again); each
    /// attempt from now on is decided under the new settings. Answers once
    /// the engine uses them.
    pub async fn reconfigure(&self, queue: &ferrymail_config::Queue) -> Result<(), QueueError> {
        let (applied, rx) = oneshot::channel();
        self.tx
            .send(Command::Reconfigure {
                queue: Box::new(queue.clone()),
                applied,
            })
            .map_err(|_| QueueError::Closed)?;
        rx.await.map_err(|_| QueueError::Closed)
    }

    /// The index's counters.
    pub async fn stats(&self) -> Result<Stats, QueueError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Stats(reply))
            .map_err(|_| QueueError::Closed)?;
        rx.await.map_err(|_| QueueError::Closed)
    }
}

/// What delivery tasks share.
struct Shared {
    spool: Spool,
    transport: Arc<dyn Transport>,
    /// Retry, notify and expiry; replaced by a reload.
    policy: ArcSwap<Policy>,
    /// The routing expressions, for `queue requeue`; replaced by a reload.
    router: ArcSwap<ferrymail_route::Router>,
    events: mpsc::UnboundedSender<Event>,
    settings: ManagerSettings,
    commands: mpsc::UnboundedSender<Command>,
    counters: Arc<QueueCounters>,
}

/// The queue engine's driver. See the module documentation.
pub struct QueueManager {
    core: Scheduler,
    shared: Arc<Shared>,
    commands: mpsc::UnboundedReceiver<Command>,
    /// Queues whose cluster-wide rate tokens are being fetched.
    fetching_tokens: std::collections::HashSet<String>,
}

/// A manager started with [`QueueManager::start`].
pub struct Running {
    /// Talks to it.
    pub handle: QueueHandle,
    /// Every [`Event`], for the DSN layer. Must be consumed: it is unbounded.
    pub events: mpsc::UnboundedReceiver<Event>,
    /// Ends after shutdown, once deliveries in flight finished or the grace
    /// period ran out.
    pub task: tokio::task::JoinHandle<()>,
}

impl QueueManager {
    /// A manager for `config`, delivering through `transport`. Returns the
    /// manager, a handle to it and the receiving end of its events.
    pub fn new(
        config: &Config,
        spool: Spool,
        transport: Arc<dyn Transport>,
        settings: ManagerSettings,
    ) -> (QueueManager, QueueHandle, mpsc::UnboundedReceiver<Event>) {
        let (tx, commands) = mpsc::unbounded_channel();
        let (events, events_rx) = mpsc::unbounded_channel();
        let core = Scheduler::new(CoreSettings {
            shared_rates: spool.data.shared(),
            ..CoreSettings::from_config(&config.queue, settings.node, settings.seed)
        });
        let counters = Arc::new(QueueCounters::default());
        let shared = Arc::new(Shared {
            spool,
            transport,
            policy: ArcSwap::from_pointee(Policy::from_config(&config.queue)),
            router: ArcSwap::from_pointee(ferrymail_route::Router::from_config(&config.queue)),
            events,
            settings,
            commands: tx.clone(),
            counters: counters.clone(),
        });
        (
            QueueManager {
                core,
                shared,
                commands,
                fetching_tokens: Default::default(),
            },
            QueueHandle { tx, counters },
            events_rx,
        )
    }

    /// [`QueueManager::new`] and [`QueueManager::run`] on a new task.
    pub fn start(
        config: &Config,
        spool: Spool,
        transport: Arc<dyn Transport>,
        settings: ManagerSettings,
        queued: mpsc::UnboundedReceiver<Queued>,
        shutdown: CancellationToken,
    ) -> Running {
        let (manager, handle, events) = QueueManager::new(config, spool, transport, settings);
        let task = tokio::spawn(manager.run(queued, shutdown));
        Running {
            handle,
            events,
            task,
        }
    }

    /// Runs until `shutdown` is cancelled: recovers the queue from the store,
    /// indexes entries arriving on `queued` (receive's channel of newly
    /// accepted mail), dispatches jobs, and finally drops the deliveries in
    /// flight that have not sent a message's end and waits up to the grace
    /// period for the others (see [`CommitGate`]).
    pub async fn run(
        mut self,
        queued: mpsc::UnboundedReceiver<Queued>,
        shutdown: CancellationToken,
    ) {
        tokio::spawn(follow(self.shared.clone(), shutdown.clone()));
        tokio::spawn(ingest(self.shared.clone(), queued, shutdown.clone()));
        if self.shared.spool.data.shared() {
            tokio::spawn(take_over_notices(self.shared.clone(), shutdown.clone()));
        }
        let mut jobs: JoinSet<(JobId, JobReport)> = JoinSet::new();
        let mut job_of_task: HashMap<tokio::task::Id, RunningJob> = HashMap::new();
        loop {
            let now = now_millis();
            for d in self.core.poll(now) {
                let job = d.job;
                let gate = CommitGate::default();
                let handle = jobs.spawn(run_job(self.shared.clone(), d, gate.clone()));
                job_of_task.insert(handle.id(), RunningJob { job, gate, handle });
            }
            self.log_notices();
            for (queue, rate) in self.core.token_requests() {
                if self.fetching_tokens.insert(queue.clone()) {
                    tokio::spawn(fetch_tokens(
                        self.shared.clone(),
                        queue,
                        rate,
                        shutdown.clone(),
                    ));
                }
            }
            let wake = self.core.next_wake();
            let sleep = async move {
                match wake {
                    Some(t) => {
                        let ms = t.saturating_sub(now_millis());
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                Some(done) = jobs.join_next_with_id(), if !jobs.is_empty() => {
                    self.job_done(done, &mut job_of_task);
                }
                Some(cmd) = self.commands.recv() => self.command(cmd),
                _ = sleep => {}
            }
        }
        self.drain(jobs, job_of_task).await;
    }

    /// Graceful end: no new jobs; abandon at once the deliveries that have
    /// not sent the end of a message (nothing is lost: they are tried again
    /// after the restart), wait up to the grace period for the others, then
    /// abandon the rest.
    async fn drain(
        mut self,
        mut jobs: JoinSet<(JobId, JobReport)>,
        mut job_of_task: HashMap<tokio::task::Id, RunningJob>,
    ) {
        let mut abandoned = 0;
        for running in job_of_task.values() {
            if running.gate.close() {
                running.handle.abort();
                abandoned += 1;
            }
        }
        if !jobs.is_empty() {
            tracing::info!(
                abandoned,
                waiting = jobs.len() - abandoned,
                "queue: abandoning deliveries that had not sent a message's end (their leases are taken back at restart); waiting for the others"
            );
        }
        let deadline = tokio::time::Instant::now() + self.shared.settings.shutdown_grace;
        while !jobs.is_empty() {
            tokio::select! {
                Some(done) = jobs.join_next_with_id() => self.job_done(done, &mut job_of_task),
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::warn!(
                        jobs = jobs.len(),
                        "queue: deliveries still running after the shutdown grace period; abandoning them (this node reclaims their leases at restart)"
                    );
                    jobs.abort_all();
                    while jobs.join_next().await.is_some() {}
                    break;
                }
            }
        }
        tracing::info!("queue: stopped");
    }

    fn job_done(
        &mut self,
        done: Result<(tokio::task::Id, (JobId, JobReport)), tokio::task::JoinError>,
        job_of_task: &mut HashMap<tokio::task::Id, RunningJob>,
    ) {
        let now = now_millis();
        let (job, report) = match done {
            Ok((id, (job, report))) => {
                job_of_task.remove(&id);

                (job, report)
            }
            Err(e) => {
                let Some(RunningJob { job, .. }) = job_of_task.remove(&e.id()) else {
                    return;
                };
                if e.is_panic() {
                    tracing::error!(error = %e, "queue: delivery task panicked");
                }
                (
                    job,
                    JobReport {
                        health: Health::NotAttempted,
                        next: Vec::new(),
                    },
                )
            }
        };
        let reload = self.core.finish(job, report, now);
        if !reload.is_empty() {
            tokio::spawn(reload_entries(self.shared.clone(), reload, false, None));
        }
    }

    fn command(&mut self, cmd: Command) {
        let now = now_millis();
        match cmd {
            Command::Ingest {
                entries, origin, ..
            } => {
                for (e, domain) in &entries {
                    self.core.insert(e, domain, origin, now);
                }
            }
            Command::Recovered {
                entries,
                elapsed,
                error,
            } => match error {
                None => tracing::info!(
                    entries,
                    elapsed_ms = elapsed.as_millis() as u64,
                    "queue: recovered the queue from the store"
                ),
                Some(e) => tracing::warn!(
                    entries,
                    elapsed_ms = elapsed.as_millis() as u64,
                    last_error = %e,
                    "queue: recovered the queue from the store after store errors"
                ),
            },
            Command::Reread {
                keys,
                retry,
                applied,
            } => {
                tokio::spawn(reload_entries(
                    self.shared.clone(),
                    keys,
                    retry,
                    Some(applied),
                ));
            }
            Command::Reloaded {
                keys,
                found,
                retry,
                applied,
            } => {
                let retried = retry.then(|| keys.clone());
                let mut found: HashMap<EntryKey, (QueueEntry, String)> =
                    found.into_iter().map(|(e, d)| (e.key, (e, d))).collect();
                for k in keys {
                    match found.remove(&k) {
                        Some((e, d)) => {
                            self.core.insert(&e, &d, Origin::Refresh, now);
                        }
                        None => {
                            self.core.remove(k, now);
                        }
                    }
                }
                if let Some(keys) = retried {
                    let lifted = self.core.probe_destinations_of(&keys, now);
                    if lifted > 0 {
                        tracing::info!(
                            destinations = lifted,
                            "queue: retry requested: probing suspended destinations now"
                        );
                    }
                }
                if let Some(applied) = applied {
                    let _ = applied.send(());
                }
            }
            Command::Expedite { target, reply } => {
                let n = self.core.expedite(&target, now);
                tracing::info!(target = ?target, messages = n, "queue: delivery requested (ETRN/flush)");
                let _ = reply.send(n);
                // Every other node starts its share too (a no-op when the
                // store is not shared).
                let sh = self.shared.clone();
                tokio::spawn(async move {
                    if let Err(e) = sh.spool.data.announce_expedite(&target.argument()).await {
                        tracing::warn!(target = ?target, error = %e, "queue: cannot pass ETRN/flush on to the other nodes");
                    }
                });
            }
            Command::Changed(batch) => self.changed(batch, now),
            Command::Tokens { queue, granted } => {
                self.fetching_tokens.remove(&queue);
                self.core.grant(&queue, granted);
            }
            Command::Requeue { keys, reply } => {
                let keys = self.take_for_operator(keys, now);
                tokio::spawn(requeue_entries(self.shared.clone(), keys, reply));
            }
            Command::Bounce {
                keys,
                reason,
                reply,
            } => {
                let keys = self.take_for_operator(keys, now);
                tokio::spawn(bounce_entries(self.shared.clone(), keys, reason, reply));
            }
            Command::Reconfigure { queue, applied } => {
                let sh = &self.shared;
                sh.policy.store(Arc::new(Policy::from_config(&queue)));
                sh.router
                    .store(Arc::new(ferrymail_route::Router::from_config(&queue)));
                self.core.reconfigure(CoreSettings::from_config(
                    &queue,
                    sh.settings.node,
                    sh.settings.seed,
                ));
                tracing::info!(
                    queues = queue.virtual_queues.len(),
                    "queue: took up the reloaded configuration"
                );
                let _ = applied.send(());
            }
            Command::Stats(reply) => {
                let _ = reply.send(self.core.stats());
            }
        }
    }

    /// The keys an operator action (bounce, requeue) may take: not those
    /// in a delivery right now, which decides them itself. They leave the
    /// index at once, so that no job picks them up meanwhile; whatever the
    /// action does not take (another node's lease, a store error) is
    /// re-read afterwards.
    fn take_for_operator(&mut self, keys: Vec<EntryKey>, now: UnixMillis) -> Vec<EntryKey> {
        let keys: Vec<EntryKey> = keys
            .into_iter()
            .filter(|k| !matches!(self.core.locate(*k), Some(Location::InFlight)))
            .collect();
        for k in &keys {
            self.core.remove(*k, now);
        }
        keys
    }

    /// Applies what other nodes changed: the entries of each message as
    /// they are now (one missing from the list is gone), then the ETRN and
    /// flush requests they passed on.
    fn changed(&mut self, batch: FeedBatch, now: UnixMillis) {
        for (id, entries) in batch.messages {
            for k in self.core.keys_of(id) {
                if !entries.iter().any(|(e, _)| e.key == k) {
                    self.core.remove(k, now);
                }
            }
            for (e, domain) in &entries {
                // Finished, waiting only for its notice to be queued (by the
                // node that finished it): nothing left to schedule.
                if e.is_notice_owed() {
                    self.core.remove(e.key, now);
                    continue;
                }
                // This node's own lease on an entry not in flight here: its
                // job has just ended and this read is older than the
                // outcome it recorded. Taking the stale copy would start a
                // deferred entry again before its time. (In flight, the
                // insert below marks it to be re-read when the job ends.)
                if e.lease
                    .is_some_and(|l| l.owner == self.shared.settings.node)
                    && !matches!(self.core.locate(e.key), Some(Location::InFlight))
                {
                    continue;
                }
                self.core.insert(e, domain, Origin::Refresh, now);
            }
        }
        for argument in batch.expedite {
            let target = if argument.is_empty() {
                Target::All
            } else {
                match Target::parse(&argument) {
                    Ok(t) => t,
                    Err(e) => {
                        tracing::warn!(argument = %argument, error = %e, "queue: another node passed on an ETRN/flush argument this node does not understand");
                        continue;
                    }
                }
            };
            let n = self.core.expedite(&target, now);
            tracing::info!(target = ?target, messages = n, "queue: delivery requested on another node (ETRN/flush)");
        }
    }

    fn log_notices(&mut self) {
        for n in self.core.take_notices() {
            match n {
                Notice::DynamicQueueCap { name, cap } => tracing::warn!(
                    queue = %name,
                    cap,
                    "queue: more virtual queues than queue.max-dynamic-queues; new queue names go to 'default' (said once)"
                ),
                Notice::InvalidQueueName { name } => tracing::warn!(
                    queue = %name,
                    "queue: invalid virtual queue name from queue.strategy.queue; using 'default'"
                ),
                Notice::Suspended {
                    queue,
                    destination,
                    until,
                    reason,
                } => tracing::warn!(
                    queue = %queue,
                    destination = %destination,
                    for_ms = until.saturating_sub(now_millis()),
                    reason = %reason,
                    "queue: destination suspended after repeated connection failures"
                ),
                Notice::Resumed { queue, destination } => tracing::info!(
                    queue = %queue,
                    destination = %destination,
                    "queue: suspended destination answered its probe; resuming"
                ),
            }
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Pairs the entries of one message with their recipient domains, reading
/// the envelope. `Ok(empty)` when the message is gone.
async fn with_domains(
    sh: &Shared,
    id: MessageId,
    entries: Vec<QueueEntry>,
) -> Result<Vec<(QueueEntry, String)>, StoreError> {
    let Some(env) = sh.spool.data.envelope(id).await? else {
        return Ok(Vec::new());
    };
    Ok(entries
        .into_iter()
        .map(|e| {
            let d = env.rcpt_domain(e.key.rcpt);
            (e, d)
        })
        .collect())
}

/// Entries of message `id` whose reads the store kept refusing: read again
/// in the background, the wait doubling up to [`STRANDED_BACKOFF_MAX`],
/// until they read (then indexed as a re-read is, or dropped from the
/// index if the store no longer has them) or the queue engine stops.
/// Without it they would sit in the store unscheduled, never tried, never
/// expired, until the next start.
fn strand(sh: Arc<Shared>, id: MessageId, mut keys: Vec<EntryKey>) {
    keys.sort();
    keys.dedup();
    tokio::spawn(async move {
        let mut wait = Duration::from_secs(1);
        loop {
            tokio::time::sleep(wait).await;
            if sh.commands.is_closed() {
                return;
            }
            match read_entries(&sh, id, &keys).await {
                Ok(found) => {
                    tracing::info!(id = %id, entries = found.len(), "queue: entries read after store errors; scheduled again");
                    let _ = sh.commands.send(Command::Reloaded {
                        keys,
                        found,
                        retry: false,
                        applied: None,
                    });
                    return;
                }
                Err(e) => {
                    wait = (wait * 2).min(STRANDED_BACKOFF_MAX);
                    tracing::error!(id = %id, error = %e, retry_in = ?wait, "queue: still cannot read entries; trying again");
                }
            }
        }
    });
}

/// Message `id`'s entries among the sorted `keys`, with their domains; a
/// finished entry waiting for its notice counts as gone (the index must
/// never schedule it again).
async fn read_entries(
    sh: &Shared,
    id: MessageId,
    keys: &[EntryKey],
) -> Result<Vec<(QueueEntry, String)>, StoreError> {
    let wanted: Vec<QueueEntry> = sh
        .spool
        .data
        .entries(id)
        .await?
        .into_iter()
        .filter(|e| keys.binary_search(&e.key).is_ok() && !e.is_notice_owed())
        .collect();
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    with_domains(sh, id, wanted).await
}

/// Splits entries into runs of one message each (they arrive in key order).
fn by_message(entries: Vec<QueueEntry>) -> Vec<(MessageId, Vec<QueueEntry>)> {
    let mut out: Vec<(MessageId, Vec<QueueEntry>)> = Vec::new();
    for e in entries {
        match out.last_mut() {
            Some((id, v)) if *id == e.key.message => v.push(e),
            _ => out.push((e.key.message, vec![e])),
        }
    }
    out
}

/// Entries and flush requests read from the change feed per read.
const FEED_PAGE: usize = 4096;

/// Starts the change feed (when the store has one), runs the start-up
/// scan, then follows the feed until shutdown. A feed that could not be
/// read for [`FEED_RESUME_LIMIT`] may have lost changes to pruning: it is
/// started afresh and the queue scanned again.
async fn follow(sh: Arc<Shared>, shutdown: CancellationToken) {
    let every = sh.settings.poll_interval.max(Duration::from_millis(10));
    'start: loop {
        // Before the scan: whatever commits while it runs is read after it.
        let mut cursor = loop {
            match sh.spool.data.feed_start().await {
                Ok(c) => break c,
                Err(e) => {
                    tracing::warn!(error = %e, "queue: cannot start the change feed; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(every.max(Duration::from_secs(1))) => {}
                    }
                }
            }
        };
        recover(&sh, &shutdown).await;
        let Some(cursor) = cursor.as_mut() else {
            return; // a single-node store: nobody else changes it
        };
        let mut read_all = Instant::now();
        let mut failing = false;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            loop {
                match sh.spool.data.feed_read(cursor, FEED_PAGE).await {
                    Ok(batch) => {
                        if failing {
                            tracing::info!("queue: reading the change feed again");
                            failing = false;
                        }
                        let more = batch.more;
                        if !more {
                            read_all = Instant::now();
                        }
                        if (!batch.messages.is_empty() || !batch.expedite.is_empty())
                            && sh.commands.send(Command::Changed(batch)).is_err()
                        {
                            return;
                        }
                        if !more {
                            break;
                        }
                    }
                    Err(e) => {
                        if !failing {
                            tracing::warn!(error = %e, "queue: cannot read the change feed; retrying");
                            failing = true;
                        }
                        break;
                    }
                }
            }
            if read_all.elapsed() > FEED_RESUME_LIMIT {
                tracing::warn!(
                    "queue: the change feed was not read for too long; starting it afresh and rescanning the queue"
                );
                continue 'start;
            }
        }
    }
}

/// Takes a batch of tokens from `queue`'s cluster-wide rate bucket in the
/// store (a tenth of a second's worth, at least one, at most the burst),
/// waiting for the bucket to refill if it is empty, and hands them to the
/// loop. One round trip per batch, not per message.
async fn fetch_tokens(
    sh: Arc<Shared>,
    queue: String,
    rate: ferrymail_config::Rate,
    shutdown: CancellationToken,
) {
    let period_ms = millis(rate.period).max(1) as f64;
    let per_ms = rate.count as f64 / period_ms;
    let want = ((per_ms * 100.0).ceil() as u64).clamp(1, rate.count.max(1));
    let want = u32::try_from(want).unwrap_or(u32::MAX);
    let one_token = Duration::from_millis(((1.0 / per_ms).ceil() as u64).clamp(5, 1000));
    loop {
        let pause = match sh
            .spool
            .data
            .take_tokens(&queue, rate.count, rate.period, want)
            .await
        {
            Ok(granted) if granted > 0 => {
                let _ = sh.commands.send(Command::Tokens { queue, granted });
                return;
            }
            Ok(_) => one_token,
            Err(e) => {
                tracing::warn!(queue = %queue, error = %e, "queue: cannot take rate tokens from the store; retrying");
                Duration::from_secs(1)
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

/// The start-up scan: pages through every entry and indexes it.
async fn recover(sh: &Arc<Shared>, shutdown: &CancellationToken) {
    let start = Instant::now();
    let shared = sh.spool.data.shared();
    let mut after = None;
    let mut total = 0usize;
    let mut error = None;
    // At most this many pages read but not yet indexed (see `Ingest::_page`).
    let pages = Arc::new(tokio::sync::Semaphore::new(RECOVERY_PAGES_AHEAD));
    while !shutdown.is_cancelled() {
        let Ok(permit) = pages.clone().acquire_owned().await else {
            break;
        };
        // A page the store does not give is asked for again, for as long
        // as it takes: the entries after it would otherwise wait for the
        // next start, never tried, never expired, never reported.
        let mut wait = Duration::from_secs(1);
        let page = loop {
            match sh.spool.data.scan(after, sh.settings.scan_page).await {
                Ok(p) => break Some(p),
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?wait, "queue: cannot read the queue at start-up; trying again");
                    error = Some(e.to_string());
                    tokio::select! {
                        _ = shutdown.cancelled() => break None,
                        _ = tokio::time::sleep(wait) => {}
                    }
                    wait = (wait * 2).min(STRANDED_BACKOFF_MAX);
                }
            }
        };
        let Some(page) = page else { break };
        let Some(last) = page.last() else { break };
        after = Some(last.key);
        let mut batch = Vec::with_capacity(page.len());
        for (id, mut entries) in by_message(page) {
            if entries.iter().any(|e| e.notice.is_some()) {
                // A shared store's owed notices may be another live node's
                // to send: `take_over_notices` takes this node's own and
                // the lapsed ones instead.
                if !shared && let Err(e) = hand_owed_notices(sh, id, &entries).await {
                    tracing::warn!(id = %id, error = %e, "queue: cannot read a message with notices owed during recovery; they are sent after the next start");
                }
                entries.retain(|e| !e.is_notice_owed());
                if entries.is_empty() {
                    continue;
                }
            }
            let keys: Vec<EntryKey> = entries.iter().map(|e| e.key).collect();
            match with_domains(sh, id, entries).await {
                Ok(v) => batch.extend(v),
                Err(e) => {
                    tracing::warn!(id = %id, error = %e, "queue: cannot read an envelope during recovery; trying again in the background");
                    strand(sh.clone(), id, keys);
                }
            }
        }
        total += batch.len();
        if sh
            .commands
            .send(Command::Ingest {
                entries: batch,
                origin: Origin::Recovered,
                _page: Some(permit),
            })
            .is_err()
        {
            return;
        }
    }
    let _ = sh.commands.send(Command::Recovered {
        entries: total,
        elapsed: start.elapsed(),
        error,
    });
}

/// Owed notices taken per store round trip by [`take_over_notices`].
const TAKE_OWED_PAGE: usize = 256;

/// A shared store's owed notices (see
/// [`DataStore::take_owed`](ferrymail_spool::DataStore::take_owed)): at the
/// start, this node takes back the ones it holds (recorded before a crash);
/// then, as often as leases are renewed, it takes over those whose holder
/// let its time lapse (a node that died and did not come back) and hands
/// them to the DSN layer as restart recovery does.
async fn take_over_notices(sh: Arc<Shared>, shutdown: CancellationToken) {
    let every = sh.settings.renew_every.max(Duration::from_millis(100));
    let mut own = true;
    let mut failing = false;
    loop {
        let mut taken = 0usize;
        loop {
            let page = match sh
                .spool
                .data
                .take_owed(sh.settings.node, now_millis(), own, TAKE_OWED_PAGE)
                .await
            {
                Ok(p) => p,
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "queue: cannot look for owed notices to take over; retrying");
                        failing = true;
                    }
                    break;
                }
            };
            failing = false;
            let full = page.len() >= TAKE_OWED_PAGE;
            taken += page.len();
            for (id, entries) in by_message(page) {
                if let Err(e) = hand_owed_notices(&sh, id, &entries).await {
                    tracing::warn!(id = %id, error = %e, "queue: cannot read a message with notices owed; another node takes them over when their time lapses");
                }
            }
            if !full {
                break;
            }
        }
        // Its own are taken back once, at the start.
        own &= failing;
        if taken > 0 {
            tracing::info!(
                notices = taken,
                "queue: took over owed notices nobody else is sending"
            );
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// Restart recovery of the notices a crash left owed: turns each entry's
/// owed notice back into its [`Event`] (with the envelope and the contents
/// read from the stores) and hands it to the DSN layer, which queues the
/// notification and discharges the notice.
async fn hand_owed_notices(
    sh: &Shared,
    id: MessageId,
    entries: &[QueueEntry],
) -> Result<(), StoreError> {
    let Some(envelope) = sh.spool.data.envelope(id).await? else {
        return Ok(());
    };
    let envelope = Arc::new(envelope);
    let contents = sh.spool.blob.get(id).await?;
    for e in entries {
        if let Some(notice) = &e.notice {
            tracing::info!(id = %id, rcpt = e.key.rcpt, action = notice.action(), "queue: a notice owed before the restart is sent now");
            let _ = sh.events.send(Event::from_owed(
                envelope.clone(),
                e.key.rcpt,
                notice,
                contents.clone(),
            ));
        }
    }
    Ok(())
}

/// Newly accepted mail from receive and the DSN layer: adds recipient
/// domains where the sender did not ([`Queued::domains`], reading the
/// envelope) and hands it to the loop.
async fn ingest(
    sh: Arc<Shared>,
    mut queued: mpsc::UnboundedReceiver<Queued>,
    shutdown: CancellationToken,
) {
    loop {
        let first = tokio::select! {
            e = queued.recv() => e,
            _ = shutdown.cancelled() => None,
        };
        let Some(first) = first else { return };
        // Take whatever else is already waiting: one command per burst.
        let mut count = first.entries.len();
        let mut all = vec![first];
        while count < 4096 {
            match queued.try_recv() {
                Ok(more) => {
                    count += more.entries.len();
                    all.push(more);
                }
                Err(_) => break,
            }
        }
        let mut batch = Vec::with_capacity(count);
        // Entries that came with their domains (receive and the DSN layer
        // knew the envelope) are indexed as they are; the others need
        // their envelope read.
        let mut unknown = Vec::new();
        for q in all {
            match q.domains {
                Some(domains) if domains.len() == q.entries.len() => {
                    batch.extend(q.entries.into_iter().zip(domains));
                }
                _ => unknown.extend(q.entries),
            }
        }
        for (id, entries) in by_message(unknown) {
            let mut tries = 0;
            loop {
                match with_domains(&sh, id, entries.clone()).await {
                    Ok(v) => {
                        batch.extend(v);
                        break;
                    }
                    Err(e) if tries < RELOAD_TRIES => {
                        tries += 1;
                        tracing::warn!(id = %id, error = %e, "queue: cannot read a new message's envelope; retrying");
                        tokio::time::sleep(RELOAD_BACKOFF).await;
                    }
                    Err(e) => {
                        tracing::error!(id = %id, error = %e, "queue: cannot read a new message's envelope; trying again in the background");
                        strand(sh.clone(), id, entries.iter().map(|e| e.key).collect());
                        break;
                    }
                }
            }
        }
        if sh
            .commands
            .send(Command::Ingest {
                entries: batch,
                origin: Origin::New,
                _page: None,
            })
            .is_err()
        {
            return;
        }
    }
}

/// One message's entries that an operator action claimed, with what the
/// action needs of the message.
struct Claimed {
    envelope: Arc<Envelope>,
    entries: Vec<QueueEntry>,
    /// The contents (routing may read headers; a RET=FULL notice returns
    /// them), read before anything can delete them; `None` if missing.
    contents: Option<Bytes>,
    /// When they were claimed.
    at: UnixMillis,
}

/// Claims `keys` (sorted and deduplicated in place) message by message, as
/// a delivery would: entries held, gone or under another node's live lease
/// are skipped. What `queue bounce` and `queue requeue` act on. `what`
/// names the action for the log.
async fn claim_for_operator(sh: &Shared, keys: &mut Vec<EntryKey>, what: &str) -> Vec<Claimed> {
    keys.sort();
    keys.dedup();
    let mut out = Vec::new();
    for group in keys.chunk_by(|a, b| a.message == b.message) {
        let id = group[0].message;
        let at = now_millis();
        let job = match sh
            .spool
            .data
            .claim_job(
                sh.settings.node,
                id,
                group,
                at,
                at + millis(sh.settings.lease),
                false,
            )
            .await
        {
            Ok(job) => job,
            Err(e) => {
                tracing::warn!(id = %id, error = %e, "queue: cannot claim entries to {what} them");
                continue;
            }
        };
        let Some(envelope) = job.envelope.map(Arc::new) else {
            continue;
        };
        let contents = sh.spool.blob.get(id).await.ok().flatten();
        out.push(Claimed {
            envelope,
            entries: job.entries,
            contents,
            at,
        });
    }
    out
}

/// Routes `keys` again for an operator ([`QueueHandle::requeue`]): claims
/// them as a delivery would, decides their schedule, route and priority
/// with the routing expressions as configured now (the queue stays), and
/// writes that with the lease released, due now. Answers the number moved
/// on `reply`, then has every key re-read.
async fn requeue_entries(sh: Arc<Shared>, mut keys: Vec<EntryKey>, reply: oneshot::Sender<usize>) {
    let node = sh.settings.node;
    let mut moved = 0;
    for c in claim_for_operator(&sh, &mut keys, "requeue").await {
        let contents = c.contents.unwrap_or_default();
        for e in &c.entries {
            let vars = ferrymail_route::RouteVars {
                envelope: &c.envelope,
                rcpt: e.key.rcpt as usize,
                contents: &contents,
                local_port: None,
                queue: None,
            };
            let routing = sh.router.load().reroute(&vars, &e.queue);
            let id = e.key.message;
            match sh.spool.data.reroute(node, e.key, &routing, c.at).await {
                Ok(()) => {
                    moved += 1;
                    if routing.route != e.route || routing.schedule != e.schedule {
                        tracing::info!(id = %id, rcpt = e.key.rcpt, queue = %e.queue, route = %routing.route, was = %e.route, schedule = %routing.schedule, "requeued on a new route");
                    }
                }
                Err(err) => {
                    tracing::warn!(id = %id, rcpt = e.key.rcpt, error = %err, "queue: cannot requeue an entry")
                }
            }
        }
    }
    tracing::info!(recipients = moved, "queue: requeued by the operator");
    let _ = reply.send(moved);
    reload_entries(sh, keys, false, None).await;
}

/// Fails `keys` now for an operator ([`QueueHandle::bounce`]): claims them
/// as a delivery would, then records a permanent failure through the same
/// path as a 5xx from a next hop, so the notice, the blob deletion, the
/// counters and the log are those of any failure. Answers the number
/// failed on `reply`, then has every key re-read.
async fn bounce_entries(
    sh: Arc<Shared>,
    mut keys: Vec<EntryKey>,
    reason: String,
    reply: oneshot::Sender<usize>,
) {
    let mut failed = 0;
    for c in claim_for_operator(&sh, &mut keys, "bounce").await {
        for e in &c.entries {
            let kind = EventKind::Failed {
                reason: reason.clone(),
                reply: None,
            };
            let next = record(
                &sh,
                &c.envelope,
                e,
                &e.queue,
                Decision::Complete(kind),
                None,
                c.at,
                c.contents.as_ref(),
            )
            .await;
            if matches!(next, Next::Gone) {
                failed += 1;
            }
        }
    }
    tracing::info!(recipients = failed, reason = %reason, "queue: returned to their senders by the operator");
    let _ = reply.send(failed);
    reload_entries(sh, keys, false, None).await;
}

/// Re-reads entries from the store and hands the result to the loop.
async fn reload_entries(
    sh: Arc<Shared>,
    mut keys: Vec<EntryKey>,
    retry: bool,
    applied: Option<oneshot::Sender<()>>,
) {
    keys.sort();
    keys.dedup();
    let mut found = Vec::new();
    let mut messages: Vec<MessageId> = keys.iter().map(|k| k.message).collect();
    messages.dedup();
    for id in messages {
        let mut tries = 0;
        loop {
            match read_entries(&sh, id, &keys).await {
                Ok(v) => {
                    found.extend(v);
                    break;
                }
                Err(e) if tries < RELOAD_TRIES => {
                    tries += 1;
                    tracing::warn!(id = %id, error = %e, "queue: cannot re-read changed entries; retrying");
                    tokio::time::sleep(RELOAD_BACKOFF).await;
                }
                Err(e) => {
                    tracing::error!(id = %id, error = %e, "queue: cannot re-read changed entries; trying again in the background");
                    // Leave them out of both lists here (the index keeps
                    // nothing stale) and index them once they read.
                    let stranded: Vec<EntryKey> =
                        keys.iter().filter(|k| k.message == id).copied().collect();
                    keys.retain(|k| k.message != id);
                    strand(sh.clone(), id, stranded);
                    break;
                }
            }
        }
    }
    let _ = sh.commands.send(Command::Reloaded {
        keys,
        found,
        retry,
        applied,
    });
}

/// Runs the transport while renewing the job's leases. The delivery runs
/// inside the job's own task (no task of its own: one spawn and one wake-up
/// less per message); a panic in it becomes a transient outcome for every
/// recipient, as a failed delivery task's did.
async fn deliver_with_renewal(sh: &Shared, job: Job, keys: &[EntryKey]) -> Vec<RecipientOutcome> {
    use futures_util::FutureExt;
    let rcpts = job.recipients.clone();
    let delivery = std::panic::AssertUnwindSafe(sh.transport.deliver(job)).catch_unwind();
    tokio::pin!(delivery);
    let every = sh.settings.renew_every.max(Duration::from_millis(10));
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        tokio::select! {
            r = &mut delivery => {
                return match r {
                    Ok(v) => v,
                    Err(panic) => rcpts
                        .into_iter()
                        .map(|rcpt| RecipientOutcome {
                            rcpt,
                            outcome: Outcome::Transient {
                                reason: format!(
                                    "delivery failed internally: panicked: {}",
                                    panic_text(&*panic)
                                ),
                                reply: None,
                            },
                            remote: None,
                            answered: false,
                        })
                        .collect(),
                };
            }
            _ = tick.tick() => {
                let until = now_millis() + millis(sh.settings.lease);
                match sh.spool.data.renew(sh.settings.node, keys, until).await {
                    Ok(n) if n < keys.len() => tracing::debug!(
                        renewed = n,
                        of = keys.len(),
                        "queue: some leases of a running delivery were lost (cancelled?)"
                    ),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "queue: cannot renew delivery leases"),
                }
            }
        }
    }
}

/// The message of a panic payload, as the standard panic hook prints it.
fn panic_text(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

/// What a finished delivery says about its destination. A job is a
/// connection-level failure when no recipient got an answer from the next
/// hop: every outcome is transient without a reply (refused, timed out, TLS
/// or DNS failure) or with a 421 (service not available, RFC 5321 §3.8).
/// Anything else, a 2xx, 4xx or 5xx to a command, means the host is alive,
/// also when the transaction then failed without a reply (a timeout at the
/// end of one large message: [`RecipientOutcome::answered`]).
fn classify(results: &[RecipientOutcome]) -> Health {
    let answered = results.iter().any(|r| {
        r.answered
            || match &r.outcome {
                Outcome::Delivered { .. } | Outcome::Permanent { .. } => true,
                Outcome::Transient {
                    reply: Some(rep), ..
                } => rep.code != 421,
                Outcome::Transient { reply: None, .. } => false,
            }
    });
    if answered {
        return Health::Answered;
    }
    match results.first().map(|r| &r.outcome) {
        Some(Outcome::Transient { reason, reply }) => Health::ConnectionFailed {
            reason: match reply {
                Some(r) => format!("{r}"),
                None => reason.clone(),
            },
        },
        _ => Health::NotAttempted,
    }
}

/// The outcome of recipients nothing was sent for: transient, for `reason`.
fn not_sent(keys: &[EntryKey], reason: &str) -> Vec<RecipientOutcome> {
    keys.iter()
        .map(|k| RecipientOutcome {
            rcpt: k.rcpt,
            outcome: Outcome::Transient {
                reason: reason.to_string(),
                reply: None,
            },
            remote: None,
            answered: false,
        })
        .collect()
}

/// A job's task as the loop tracks it.
struct RunningJob {
    job: JobId,
    /// Closed at shutdown to abandon the job if it can be (see [`CommitGate`]).
    gate: CommitGate,
    handle: tokio::task::AbortHandle,
}

/// One job, start to end. Never fails: problems become [`Next`] values.
/// `gate` is the delivery's point of no return: once it is closed (shutdown)
/// the job records nothing and its task is dropped.
async fn run_job(sh: Arc<Shared>, d: Dispatch, gate: CommitGate) -> (JobId, JobReport) {
    let keys = d.keys();
    let node = sh.settings.node;
    let lease = millis(sh.settings.lease);
    let now = now_millis();
    let not_attempted = |next| JobReport {
        health: Health::NotAttempted,
        next,
    };
    let retry_all = |keys: &[EntryKey]| -> Vec<(EntryKey, Next)> {
        let due = now_millis() + STORE_RETRY_MS;
        keys.iter().map(|k| (*k, Next::Retry { due })).collect()
    };
    // Claim, envelope and (when the data store holds them, and they are
    // needed) contents in one store operation: one round trip to a
    // PostgreSQL store instead of three.
    let want_contents = sh.spool.unified && matches!(d.mode, Mode::Deliver);
    let job = match sh
        .spool
        .data
        .claim_job(node, d.message, &keys, now, now + lease, want_contents)
        .await
    {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(id = %d.message, error = %e, "queue: cannot claim entries or read their envelope; retrying later");
            return (d.job, not_attempted(retry_all(&keys)));
        }
    };
    let claimed = job.entries;
    // Entries not claimed (held, another node's, gone) are left out of the
    // report: the core re-reads them.
    if claimed.is_empty() {
        return (d.job, not_attempted(Vec::new()));
    }
    let claimed_keys: Vec<EntryKey> = claimed.iter().map(|e| e.key).collect();
    let envelope = match job.envelope {
        Some(e) => Arc::new(e),
        None => {
            // Entries without an envelope: nothing can be delivered or
            // reported. Remove them so they do not come back.
            tracing::error!(id = %d.message, "queue: entries without an envelope; removing them");
            let mut next = Vec::new();
            for k in &claimed_keys {
                if let Ok(r) = sh.spool.data.complete(node, *k, None).await {
                    if r.remaining == 0 && !(sh.spool.unified && r.contents_removed) {
                        let _ = sh.spool.blob.delete(d.message).await;
                    }
                    next.push((*k, Next::Gone));
                }
            }
            return (d.job, not_attempted(next));
        }
    };

    // The contents as loaded for delivery; events carry them to the DSN
    // layer (the blob may be deleted before it reads them).
    let mut loaded: Option<Bytes> = None;
    let no_route = matches!(d.mode, Mode::Deliver) && !sh.policy.load().has_route(&d.route);
    let (results, health, not_before) = match &d.mode {
        Mode::Deliver if no_route => {
            tracing::warn!(id = %d.message, route = %d.route, "queue: the route is not configured; the mail waits (`ferrymail queue requeue` routes it again)");
            let reason = ferrymail_deliver::unconfigured_route(&d.route);
            (not_sent(&claimed_keys, &reason), Health::NotAttempted, None)
        }
        Mode::Suspended { reason, until } => (
            not_sent(&claimed_keys, reason),
            Health::NotAttempted,
            Some(*until),
        ),
        Mode::Deliver => {
            // Read by the claim (one store holds data and contents), or now.
            let read = match job.contents {
                Some(read) => Ok(read),
                None => sh.spool.blob.get(d.message).await,
            };
            match read {
                Ok(Some(contents)) => {
                    loaded = Some(contents.clone());
                    let job = Job {
                        envelope: envelope.clone(),
                        contents,
                        recipients: claimed_keys.iter().map(|k| k.rcpt).collect(),
                        route: d.route.clone(),
                        domain: d.domain.clone(),
                        queue: d.queue.clone(),
                        gate: gate.clone(),
                    };
                    let results = deliver_with_renewal(&sh, job, &claimed_keys).await;
                    let health = classify(&results);
                    (results, health, None)
                }
                // An entry without contents is a fault of the stores, not of
                // the mail: an `fs` store on a file system that is not
                // mounted, contents kept on another node's disk. Bouncing
                // would turn one mistake into a failure notice for every
                // queued message; the entry waits for its retry instead,
                // and expires (with a notice) if the contents never come.
                Ok(None) => {
                    tracing::error!(id = %d.message, "queue: the message contents are missing from the blob store; deferring (check that every node's blob store is the same and mounted)");
                    let reason = "4.3.0 the message contents are missing from the blob store";
                    (not_sent(&claimed_keys, reason), Health::NotAttempted, None)
                }
                Err(e) => {
                    tracing::warn!(id = %d.message, error = %e, "queue: cannot read message contents; retrying later");
                    return (d.job, not_attempted(retry_all(&claimed_keys)));
                }
            }
        }
    };

    // From here on the outcomes must be recorded; a shutdown that got here
    // first abandons the job instead (its task is being dropped).
    if !gate.seal() {
        return (d.job, not_attempted(Vec::new()));
    }
    let by_rcpt: HashMap<u32, &RecipientOutcome> = results.iter().map(|r| (r.rcpt, r)).collect();
    let at = now_millis();
    let mut decided = Vec::with_capacity(claimed.len());
    let mut load_tried = loaded.is_some();
    for e in &claimed {
        let missing;
        let (outcome, remote) = match by_rcpt.get(&e.key.rcpt) {
            Some(r) => (&r.outcome, r.remote.as_ref()),
            None => {
                missing = Outcome::Transient {
                    reason: "the transport returned no outcome for this recipient".into(),
                    reply: None,
                };
                (&missing, None)
            }
        };
        let attempt = Attempt {
            envelope: &envelope,
            entry: e,
            queue: &d.queue,
            remote,
            attempted: !no_route && !matches!(d.mode, Mode::Suspended { .. }),
        };
        let decision = sh
            .policy
            .load()
            .decide(&attempt, outcome, at, d.jitter, not_before);
        // Not delivered (suspended destination) but an event is due: read
        // the contents once for the notification, before completing the
        // last recipient deletes them.
        let emits = matches!(
            decision,
            Decision::Complete(_)
                | Decision::Defer {
                    delayed: Some(_),
                    ..
                }
        );
        if emits && !load_tried {
            load_tried = true;
            loaded = sh.spool.blob.get(d.message).await.ok().flatten();
        }
        decided.push((e, decision, remote));
    }
    // Every recipient's outcome is its own store write; writing them all at
    // once lets the store commit them together (one batch of the embedded
    // store's writer, one connection each from PostgreSQL's pool) instead of
    // one round trip after another: a job for 100 recipients waited for
    // 100 commits in a row.
    let (sh, envelope, loaded) = (&sh, &envelope, loaded.as_ref());
    let queue = d.queue.as_str();
    let next = futures_util::future::join_all(decided.into_iter().map(
        |(e, decision, remote)| async move {
            let n = record(sh, envelope, e, queue, decision, remote, at, loaded).await;
            (e.key, n)
        },
    ))
    .await;
    (d.job, JobReport { health, next })
}

/// Writes one recipient's decision to the store and emits its event.
#[allow(clippy::too_many_arguments)]
async fn record(
    sh: &Shared,
    envelope: &Arc<Envelope>,
    e: &QueueEntry,
    queue: &str,
    decision: Decision,
    remote: Option<&Remote>,
    at: UnixMillis,
    contents: Option<&Bytes>,
) -> Next {
    let node = sh.settings.node;
    let event = |kind: EventKind| Event {
        envelope: envelope.clone(),
        rcpt: e.key.rcpt,
        queue: queue.to_string(),
        kind,
        attempt_at: at,
        attempts: e.attempts.saturating_add(1),
        remote: remote.cloned(),
        contents: contents.cloned(),
    };
    let store_failed = |what: &str, err: StoreError| {
        tracing::warn!(id = %e.key.message, rcpt = e.key.rcpt, error = %err, "queue: cannot record {what}; retrying later");
        Next::Retry {
            due: at + STORE_RETRY_MS,
        }
    };
    let mut deferral = decision.deferral();
    // The notice this outcome owes, if any, goes into the same write.
    let owed = |kind: &EventKind| {
        owes(envelope, e.key.rcpt, kind).map(|_| event(kind.clone()).owed_notice())
    };
    match decision {
        Decision::Complete(kind) => {
            match complete_retrying(sh, e.key, owed(&kind).as_ref()).await {
                Ok(removal) => {
                    if removal.remaining == 0
                        && !(sh.spool.unified && removal.contents_removed)
                        && let Err(err) = sh.spool.blob.delete(e.key.message).await
                    {
                        tracing::warn!(id = %e.key.message, error = %err, "queue: cannot delete the contents of a finished message");
                    }
                    log_final(e, queue, &kind);
                    sh.counters.count(&kind);
                    let _ = sh.events.send(event(kind));
                    Next::Gone
                }
                Err(StoreError::NotLeased(_)) => Next::Reload,
                Err(err) => store_failed("an outcome", err),
            }
        }
        Decision::Defer { due, delayed, .. } => {
            let Some(mut deferral) = deferral.take() else {
                return Next::Reload;
            };
            deferral.notice = delayed.as_ref().and_then(owed);
            match sh.spool.data.defer(node, e.key, &deferral).await {
                Ok(()) => {
                    sh.counters.deferred.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(
                        id = %e.key.message,
                        rcpt = e.key.rcpt,
                        queue,
                        attempts = e.attempts + 1,
                        retry_in_ms = due.saturating_sub(at),
                        reason = %deferral.last_error,
                        "deferred"
                    );
                    if let Some(kind) = delayed {
                        tracing::info!(id = %e.key.message, rcpt = e.key.rcpt, queue, notify = deferral.notify_count, reason = %deferral.last_error, "delayed: notify age reached");
                        let _ = sh.events.send(event(kind));
                    }
                    Next::Retry { due }
                }
                Err(StoreError::NotLeased(_)) => Next::Reload,
                Err(err) => store_failed("a deferral", err),
            }
        }
    }
}

fn log_final(e: &QueueEntry, queue: &str, kind: &EventKind) {
    let (what, detail) = match kind {
        EventKind::Delivered { reply, .. } | EventKind::Relayed { reply } => {
            ("delivered", reply.to_string())
        }
        EventKind::Failed { reason, reply } => (
            "failed",
            reply
                .as_ref()
                .map_or_else(|| reason.clone(), |r| r.to_string()),
        ),
        EventKind::Expired { reason, .. } => ("expired", reason.clone()),
        EventKind::Delayed { reason, .. } => ("delayed", reason.clone()),
    };
    tracing::info!(id = %e.key.message, rcpt = e.key.rcpt, queue, attempts = e.attempts + 1, detail = %detail, "{what}");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lost(answered: bool, reply: Option<u16>) -> RecipientOutcome {
        RecipientOutcome {
            rcpt: 0,
            outcome: Outcome::Transient {
                reason: "4.4.2 connection lost".into(),
                reply: reply.map(|code| ferrymail_deliver::RemoteReply {
                    code,
                    status: None,
                    text: "x".into(),
                }),
            },
            remote: None,
            answered,
        }
    }

    /// A transaction the next hop answered, lost afterwards (a timeout at
    /// the end of one large message), says the host is alive; one never
    /// answered, or answered only with 421, says it is not.
    #[test]
    fn a_host_that_answered_the_transaction_is_alive() {
        assert_eq!(classify(&[lost(true, None)]), Health::Answered);
        assert!(matches!(
            classify(&[lost(false, None)]),
            Health::ConnectionFailed { .. }
        ));
        assert!(matches!(
            classify(&[lost(false, Some(421))]),
            Health::ConnectionFailed { .. }
        ));
        assert_eq!(classify(&[lost(false, Some(451))]), Health::Answered);
    }
}
