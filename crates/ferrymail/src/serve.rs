//! `ferrymail serve`: wires the configuration into running listeners and
//! drains them on SIGTERM.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use arc_swap::{ArcSwap, ArcSwapOption};
use ferrymail_config::{Config, Protocol, StoreKind, Value};
use ferrymail_deliver::{SmtpTransport, Transport};
use ferrymail_operate::api::{
    ControlError, ControlFuture, LocalSubmit, Management, QueueControl, Reload, ReloadError,
    SubmitError,
};
use ferrymail_operate::metrics::MetricsSource;
use ferrymail_receive::defences::Defences;
use ferrymail_receive::protocol::dialect::Dialect;
use ferrymail_receive::server::ConnectionLimits;
use ferrymail_receive::verify::Verifier;
use ferrymail_receive::{
    AuthSettings, DkimSigning, EtrnAnswer, EtrnRequest, ReceiveCounters, Receiver, SessionParams,
};
use ferrymail_report::{ReportSettings, Reporter, Signers};
use ferrymail_route::Router;
use ferrymail_schedule::{ManagerSettings, QueueError, QueueHandle, QueueManager};
use ferrymail_spool::embedded::EmbeddedStore;
use ferrymail_spool::fs::{FsBlobStore, ORPHAN_MIN_AGE, SWEEP_EVERY};
use ferrymail_spool::postgres::{PgOptions, PgStore};
use ferrymail_spool::{BlobStore, DataStore, EntryKey, IdGenerator, NodeId, Queued, Spool};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics::NodeMetrics;
use crate::reload::{ReloadCounters, ReloadHandle, Reloader};

/// Why the server could not start. Each is reported as one line and exit 2
/// (configuration) or 1 (environment).
#[derive(Debug)]
pub(crate) struct StartError {
    pub code: u8,
    pub message: String,
}

impl StartError {
    fn config(message: impl Into<String>) -> Self {
        StartError {
            code: 2,
            message: message.into(),
        }
    }
    fn env(message: impl Into<String>) -> Self {
        StartError {
            code: 1,
            message: message.into(),
        }
    }
}

/// Entry point of `ferrymail serve`.
pub fn main(config_path: Option<PathBuf>) -> ExitCode {
    // Checked as `ferrymail check` and a reload check it, so that the
    // three accept and refuse the same files with the same messages.
    let config = match &config_path {
        None => Config::default(),
        Some(p) => match crate::load_checked(p) {
            Ok(c) => c,
            Err(errors) => {
                for e in errors {
                    eprintln!("{e}");
                }
                return ExitCode::from(2);
            }
        },
    };
    init_logging();
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferrymail: {}", e.message);
            ExitCode::from(e.code)
        }
    }
}

/// Logs go to stderr; `FERRYMAIL_LOG_FORMAT=json` gives one JSON object per line,
/// `RUST_LOG` filters (default `info`); colours only on a terminal.
fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,fjall=warn,lsm_tree=warn"));
    let json = std::env::var("FERRYMAIL_LOG_FORMAT").is_ok_and(|v| v == "json");
    // Colours only for a person at a terminal: a log file, journald or a
    // log shipper gets plain text (and `NO_COLOR` turns them off anyway).
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Where node identity and the self-signed certificate are kept: the
/// directory of the data store if it is local (embedded), else that of the
/// blob store if it is local (embedded), else `./data` (relative to the
/// working directory, like the embedded store's default path). So with a
/// PostgreSQL data store the generated node id does not live in any store.
/// Never an `fs` store's directory: every node sharing a PostgreSQL queue
/// shares that one too (README), and they would all take the node id kept
/// there.
pub(crate) fn state_dir(config: &Config) -> PathBuf {
    let local = |s: Option<&ferrymail_config::Store>| match s.map(|s| &s.kind) {
        Some(StoreKind::Embedded { path }) => Some(path.clone()),
        _ => None,
    };
    local(config.data_store())
        .or_else(|| local(config.blob_store()))
        .unwrap_or_else(|| PathBuf::from(ferrymail_config::DEFAULT_DATA_PATH))
}

/// A store opened for one or both roles.
enum Opened {
    Embedded(Arc<EmbeddedStore>),
    Pg(Arc<PgStore>),
    /// Contents only; the configuration never lets it hold queue data.
    Fs(Arc<FsBlobStore>),
}

/// Opens one `[store.<id>]`.
async fn open_store(store: &ferrymail_config::Store) -> Result<Opened, StartError> {
    match &store.kind {
        StoreKind::Embedded { path } => {
            EmbeddedStore::open(path)
                .map(Opened::Embedded)
                .map_err(|e| {
                    StartError::env(format!(
                        "cannot open embedded store at {}: {e}",
                        path.display()
                    ))
                })
        }
        StoreKind::PostgreSql {
            url,
            pool_size,
            tls,
        } => PgStore::open(&PgOptions {
            url: url.clone(),
            pool_size: *pool_size,
            tls: *tls,
        })
        .await
        .map(Opened::Pg)
        .map_err(|e| StartError::env(format!("store '{}': {e}", store.id))),
        StoreKind::Fs { path } => FsBlobStore::open(path).await.map(Opened::Fs).map_err(|e| {
            StartError::env(format!(
                "cannot open fs store '{}' at {}: {e}",
                store.id,
                path.display()
            ))
        }),
    }
}

/// Opens the data and blob stores `[storage]` names. A store serving both
/// roles is opened once, and is `unified`: a message and its contents are
/// then committed together ([`DataStore::insert_with_contents`]).
async fn open_stores(config: &Config) -> Result<Spool, StartError> {
    let data_cfg = config
        .data_store()
        .ok_or_else(|| StartError::config("[storage] data names no store"))?;
    let blob_cfg = config
        .blob_store()
        .ok_or_else(|| StartError::config("[storage] blob names no store"))?;
    let unified = blob_cfg.id == data_cfg.id;
    // The configuration refuses this (`ferrymail check` says where); kept
    // as a guard for a `Config` built some other way.
    if matches!(data_cfg.kind, StoreKind::Fs { .. }) {
        return Err(StartError::config(format!(
            "store '{}' of type 'fs' holds message contents only; [storage] data must name an embedded or postgresql store",
            data_cfg.id
        )));
    }
    let data_store = open_store(data_cfg).await?;
    if let Opened::Pg(s) = &data_store {
        // A notice owed is this node's to send for as long as its DSN layer
        // may batch it, plus a lease; then other nodes take it over.
        s.set_notice_hold(config.cluster.lease + config.report.dsn.batch_max_hold);
    }
    let blob_store = if unified {
        None
    } else {
        Some(open_store(blob_cfg).await?)
    };
    let data: Arc<dyn DataStore> = match &data_store {
        Opened::Embedded(s) => s.clone(),
        Opened::Pg(s) => s.clone(),
        Opened::Fs(_) => unreachable!("refused above"),
    };
    let blob: Arc<dyn BlobStore> = match blob_store.as_ref().unwrap_or(&data_store) {
        Opened::Embedded(s) => s.clone(),
        Opened::Pg(s) => s.clone(),
        Opened::Fs(s) => {
            sweep_orphans(s.clone(), data.clone());
            s.clone()
        }
    };
    Ok(Spool {
        data,
        blob,
        unified,
    })
}

/// Removes, in the background, contents files no envelope refers to (a
/// crash between a message's contents and its envelope, or deletes pending
/// at a crash), once they are [`ORPHAN_MIN_AGE`] old: younger ones may be
/// a message being accepted right now, here or on another node sharing the
/// path. Sweeps at start and then every [`SWEEP_EVERY`], so that the
/// orphans of a crash, young at the restart after it, do not stay until the
/// next restart. Logs how many each sweep removed. In the background
/// because a big store takes a while to list, and nothing waits for it:
/// mail is accepted and delivered meanwhile.
fn sweep_orphans(blob: Arc<FsBlobStore>, data: Arc<dyn DataStore>) {
    tokio::spawn(FsBlobStore::keep_sweeping(
        Arc::downgrade(&blob),
        data,
        ORPHAN_MIN_AGE,
        SWEEP_EVERY,
        |path, swept| match swept {
            Ok(swept) => tracing::info!(
                path = %path.display(),
                removed = swept.removed,
                kept = swept.kept,
                younger_than_min_age = swept.young,
                foreign = swept.foreign,
                "fs blob store: swept orphaned contents"
            ),
            Err(e) => tracing::warn!(
                path = %path.display(),
                error = %e,
                "fs blob store: the orphan sweep stopped; the next sweep tries again"
            ),
        },
    ));
}

/// The node's identity: configured, or generated once and kept in
/// `node-id` in the state directory (see [`state_dir`]) so it survives
/// restarts. It is the lease owner in the data store, so nodes sharing a
/// PostgreSQL store must each have their own: a configured `[server]
/// node-id`, or a state directory of their own. The generated id includes
/// the host name and the start time, so two nodes never generate the same.
fn node_id(config: &Config, dir: &Path) -> Result<(String, NodeId), StartError> {
    let name = match &config.server.node_id {
        Some(n) => n.clone(),
        None => {
            let file = dir.join("node-id");
            match std::fs::read_to_string(&file) {
                Ok(s) if !s.trim().is_empty() => s.trim().to_string(),
                _ => {
                    let generated = format!(
                        "{}-{:08x}",
                        config.server.hostname,
                        (ferrymail_spool::now_millis() as u32) ^ std::process::id()
                    );
                    std::fs::create_dir_all(dir)
                        .and_then(|_| std::fs::write(&file, &generated))
                        .map_err(|e| {
                            StartError::env(format!("cannot write {}: {e}", file.display()))
                        })?;
                    tracing::info!(node = %generated, file = %file.display(), "generated this node's id");
                    generated
                }
            }
        }
    };
    // FNV-1a: stable across releases, unlike std's hasher.
    let hash = name.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    });
    Ok((name, NodeId(hash)))
}

/// The 10-bit tag this node's message ids carry. A shared store hands out
/// one unique among its nodes and kept for this node's name across
/// restarts ([`DataStore::register_node`]); a store of its own leaves the
/// tag to a hash of the node id, which no other node can collide with.
async fn node_tag(spool: &Spool, name: &str, node: NodeId) -> Result<u64, StartError> {
    match spool.data.register_node(name, node).await {
        Ok(Some(tag)) => {
            tracing::info!(node = %name, tag, "registered with the shared queue");
            Ok(u64::from(tag))
        }
        Ok(None) => Ok(node.0 & 0x3ff),
        Err(e) => Err(StartError::env(format!(
            "cannot register node '{name}' with the queue store: {e}"
        ))),
    }
}

/// The `[certificate.<id>]` the listeners present: the one
/// `session.tls.certificate` names, else the first.
fn configured_certificate(config: &Config) -> Option<&ferrymail_config::Certificate> {
    config
        .session
        .tls
        .certificate
        .as_ref()
        .and_then(|id| config.certificates.get(id))
        .or_else(|| config.certificates.values().next())
}

/// The certificate this server presents on its TLS listeners, as the
/// queue CLI finds it in the same configuration: the configured one, or the
/// self-signed one generated in the state directory (empty if none was
/// generated yet).
pub(crate) fn own_certificates(
    config: &Config,
) -> Vec<ferrymail_receive::tls::CertificateDer<'static>> {
    use ferrymail_receive::tls::{certificates_from_pem, self_signed_path};
    match configured_certificate(config) {
        Some(cert) => certificates_from_pem(&cert.cert),
        None => std::fs::read_to_string(self_signed_path(&state_dir(config)))
            .map(|pem| certificates_from_pem(&pem))
            .unwrap_or_default(),
    }
}

/// The TLS acceptor of the listeners: for STARTTLS (unless
/// `session.tls.starttls = false`) and for listeners with `tls.implicit`
/// (SMTP, LMTP or the management API).
fn tls_acceptor(
    config: &Config,
    dir: &Path,
) -> Result<Option<ferrymail_receive::tls::Acceptor>, StartError> {
    let implicit = config.server.listeners.iter().any(|l| l.tls_implicit);
    if !config.session.tls.starttls && !implicit {
        return Ok(None);
    }
    if let Some(cert) = configured_certificate(config) {
        return ferrymail_receive::tls::acceptor_from_pem(&cert.cert, &cert.private_key)
            .map(Some)
            .map_err(|e| StartError::config(format!("TLS certificate: {e}")));
    }
    let (acceptor, generated) = ferrymail_receive::tls::self_signed(dir, &config.server.hostname)
        .map_err(|e| StartError::env(e.to_string()))?;
    if generated {
        tracing::warn!(
            dir = %dir.join("tls").display(),
            "no [certificate] configured: generated a self-signed certificate for STARTTLS"
        );
    } else {
        tracing::warn!("no [certificate] configured: using the self-signed certificate");
    }
    Ok(Some(acceptor))
}

async fn run(config: Config) -> Result<(), StartError> {
    let process_started = std::time::SystemTime::now();
    // At once: until a handler exists, SIGHUP's default action ends the
    // process, and a reload hook (systemd's ExecReload, logrotate) may
    // send one while the queue is still being recovered. One received
    // before the server runs reloads once it does.
    let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| StartError::env(format!("cannot handle SIGHUP: {e}")))?;
    let dir = state_dir(&config);
    std::fs::create_dir_all(&dir)
        .map_err(|e| StartError::env(format!("cannot create {}: {e}", dir.display())))?;
    let spool = open_stores(&config).await?;
    let (node_name, node) = node_id(&config, &dir)?;
    let tag = node_tag(&spool, &node_name, node).await?;
    let shutdown = CancellationToken::new();
    let (etrn_tx, etrn_rx) = mpsc::unbounded_channel::<EtrnRequest>();
    let (queued_tx, queued_rx) = mpsc::unbounded_channel::<Queued>();
    // One id generator for the node: receive and the notifications it
    // generates must never mint the same id.
    let ids = Arc::new(IdGenerator::new(tag));
    // After the newest id this node minted before: a clock that stepped
    // back across the restart must not mint a queued message's id again.
    match spool.data.newest_message(ids.node_tag()).await {
        Ok(Some(newest)) => ids.seed(newest),
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the newest message id; ids start from the clock")
        }
    }
    // Delivery status notifications: DKIM keys are loaded (and refused)
    // here, before anything listens. Notifications are accepted into the
    // spool and reach the queue engine through receive's channel.
    let reporter =
        Reporter::new(&config, spool.clone(), ids.clone(), queued_tx.clone()).map_err(|e| {
            match &config.source {
                Some(p) => StartError::config(format!("{}: {e}", p.display())),
                None => StartError::config(e.to_string()),
            }
        })?;

    // The queue engine: recovers the queue from the store, schedules newly
    // accepted mail (receive's `queued` channel), answers ETRN and flush,
    // and delivers through the SMTP/LMTP client.
    let smtp = Arc::new(
        SmtpTransport::new(&config)
            .map_err(|e| StartError::env(format!("cannot set up delivery: {e}")))?,
    );
    // MTA-STS policies outlive a restart (RFC 8461 §5.1: kept for their
    // max_age), per node, beside its other state.
    let policies = smtp.keep_mta_sts_policies(&dir.join("mta-sts-policies.json"));
    if policies > 0 {
        tracing::info!(policies, "MTA-STS policies kept from the last run");
    }
    let transport: Arc<dyn Transport> = smtp.clone();
    let queue = QueueManager::start(
        &config,
        spool.clone(),
        transport,
        ManagerSettings {
            shutdown_grace: config.server.shutdown_grace,
            ..ManagerSettings::with_cluster(node, &config.cluster)
        },
        queued_rx,
        shutdown.clone(),
    );
    tokio::spawn(answer_etrn(etrn_rx, queue.handle.clone()));
    // The queue engine's per-recipient events become notifications.
    let report_counters = reporter.counters();
    let report_reconfigure = reporter.reconfigurer();
    let reporter = reporter.start(
        queue.events,
        ReportSettings {
            quiet: config.report.dsn.batch_quiet,
            max_hold: config.report.dsn.batch_max_hold,
            // A third of the hold a shared store gives a recorded notice
            // (see `set_notice_hold` above).
            renew_owed: (config.cluster.lease + config.report.dsn.batch_max_hold) / 3,
            ..ReportSettings::default()
        },
    );
    let control: Arc<dyn QueueControl> = Arc::new(Control(queue.handle.clone()));
    let receive_counters = Arc::new(ReceiveCounters::default());
    let reload_counters = ReloadCounters::started();
    let message_memory = Arc::new(ferrymail_receive::memory::MessageMemory::default());
    let metrics: Arc<dyn MetricsSource> = Arc::new(NodeMetrics {
        receive: receive_counters.clone(),
        queue: queue.handle.clone(),
        report: report_counters,
        started: process_started,
        reloads: reload_counters.clone(),
        transport: smtp.clone(),
        message_memory: message_memory.clone(),
    });

    let parts = ReceiverParts {
        dir: dir.clone(),
        spool: spool.clone(),
        ids,
        etrn: etrn_tx,
        queued: queued_tx,
        shutdown: shutdown.clone(),
        counters: receive_counters,
        rate_counts: Default::default(),
        memory: message_memory.clone(),
    };
    let receiver = Arc::new(ArcSwap::from_pointee(build_receiver(
        &config, &parts, None,
    )?));
    let limits = ConnectionLimits::new(
        config.server.max_connections,
        config.server.max_connections_per_ip,
    );
    let reloader = Arc::new(Reloader {
        path: config.source.clone(),
        started: config.clone(),
        running: tokio::sync::Mutex::new(()),
        parts,
        receiver: receiver.clone(),
        limits: limits.clone(),
        queue: queue.handle.clone(),
        transport: smtp.clone(),
        report: report_reconfigure,
        management: Default::default(),
        counters: reload_counters,
    });
    let reload_api: Arc<dyn Reload> = Arc::new(ReloadHandle(reloader.clone()));
    let mut management = Vec::new();
    let sessions = TaskTracker::new();
    let listeners = TaskTracker::new();
    let mut bound = Vec::new();
    // Every address is bound before any is served: a server that cannot
    // bind one of its listeners exits without having answered on the
    // others, and once it answers on one, all of them are open.
    let mut sockets = Vec::new();
    for l in &config.server.listeners {
        for addr in &l.bind {
            let listener = TcpListener::bind(addr).await.map_err(|e| {
                StartError::env(format!("listener '{}': cannot bind {addr}: {e}", l.id))
            })?;
            bound.push(format!("{}={}/{}", l.id, addr, l.protocol.as_str()));
            sockets.push((l, listener));
        }
    }
    for (l, listener) in sockets {
        match l.protocol {
            // LMTP (RFC 2033) listeners queue exactly as SMTP ones do:
            // the same receiver (spool, routing, relay rules, limits,
            // connection limits, shutdown), only the session's dialect
            // differs.
            Protocol::Smtp | Protocol::Lmtp => {
                let dialect = Dialect::try_from(l.protocol)
                    .map_err(|e| StartError::config(format!("listener '{}': {e}", l.id)))?;
                listeners.spawn(ferrymail_receive::server::serve(
                    listener,
                    receiver.clone(),
                    limits.clone(),
                    sessions.clone(),
                    l.tls_implicit,
                    dialect,
                ));
            }
            Protocol::Http => {
                let mgmt = Arc::new(Management {
                    spool: spool.clone(),
                    token: ArcSwapOption::from_pointee(l.token.clone()),
                    submit_token: ArcSwapOption::from_pointee(l.submit_token.clone()),
                    tls: ArcSwapOption::new(if l.tls_implicit {
                        receiver.load().implicit_tls.clone().map(Arc::new)
                    } else {
                        None
                    }),
                    control: Some(control.clone()),
                    metrics: Some(metrics.clone()),
                    submit: Some(Arc::new(LocalSubmitter(receiver.clone()))),
                    reload: Some(reload_api.clone()),
                });
                management.push((l.id.clone(), mgmt.clone()));
                listeners.spawn(ferrymail_operate::api::serve(
                    listener,
                    mgmt,
                    shutdown.clone(),
                ));
            }
        }
    }
    *reloader
        .management
        .lock()
        .unwrap_or_else(|e| e.into_inner()) = management;
    tracing::info!(node = %node_name, tag, listeners = ?bound, "ferrymail started");

    let claim_lost = wait_for_signal(&reloader, hangup, spool.data.node_claim_lost()).await;
    tracing::info!("shutting down: no new connections; finishing sessions in progress");
    shutdown.cancel();
    listeners.close();
    listeners.wait().await;
    sessions.close();
    if tokio::time::timeout(config.server.shutdown_grace, sessions.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            grace = ?config.server.shutdown_grace,
            "sessions still open after the shutdown grace period; closing them"
        );
    }
    // The queue manager drained its deliveries in parallel, within the same
    // grace period; wait for it to finish, then say QUIT to idle next hops.
    if let Err(e) = queue.task.await {
        tracing::error!(error = %e, "queue manager ended abnormally");
    }
    // Notifications still being grouped are queued now (restart recovery
    // delivers them), within the same grace period.
    if tokio::time::timeout(config.server.shutdown_grace, reporter.finish())
        .await
        .is_err()
    {
        tracing::warn!("notifications still being written after the grace period; abandoning them");
    }
    smtp.close_idle().await;
    // Leave the stores quick to reopen (the embedded store writes its
    // memtables out so that no journal needs replaying at the next start).
    let started = std::time::Instant::now();
    if let Err(e) = spool.data.close().await {
        tracing::warn!(error = %e, "cannot close the data store cleanly; the next start recovers it");
    }
    if !spool.unified
        && let Err(e) = spool.blob.close().await
    {
        tracing::warn!(error = %e, "cannot close the blob store cleanly; the next start recovers it");
    }
    tracing::debug!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "stores closed"
    );
    tracing::info!("stopped");
    if claim_lost {
        return Err(StartError::env(
            "stopped because another process took this node's claim (see the log); \
             every process sharing the queue needs a server.node-id of its own",
        ));
    }
    Ok(())
}

/// The running server's parts a receiver is built with besides its
/// configuration; a reload keeps them and builds a new receiver.
#[derive(Clone)]
pub(crate) struct ReceiverParts {
    /// Where the self-signed certificate is kept.
    pub dir: PathBuf,
    pub spool: Spool,
    pub ids: Arc<IdGenerator>,
    pub etrn: mpsc::UnboundedSender<EtrnRequest>,
    pub queued: mpsc::UnboundedSender<Queued>,
    pub shutdown: CancellationToken,
    pub counters: Arc<ReceiveCounters>,
    /// The inbound rate limits' counts, which a reload keeps.
    pub rate_counts: Arc<ferrymail_receive::limiter::RateLimiter>,
    /// Message contents held by sessions, across reloads.
    pub memory: Arc<ferrymail_receive::memory::MessageMemory>,
}

/// The receiver of `config`: session limits and policy, defences, routing,
/// TLS certificate, AUTH directory and DKIM signing. Built at start and by
/// each reload; fails (with nothing listening yet, or the old receiver
/// still in force) on a certificate or key that cannot be used.
///
/// `previous` is the receiver a reload replaces: what it counted (AUTH
/// failures per address) carries over.
pub(crate) fn build_receiver(
    config: &Config,
    parts: &ReceiverParts,
    previous: Option<&Receiver>,
) -> Result<Receiver, StartError> {
    let s = &config.session;
    let acceptor = tls_acceptor(config, &parts.dir)?;
    Ok(Receiver {
        params: SessionParams {
            hostname: config.server.hostname.clone(),
            max_message_size: s.data.max_message_size,
            max_memory: s.data.max_memory(),
            max_recipients: s.rcpt.max_recipients,
            max_errors: s.max_errors,
            max_line_length: s.max_line_length,
            max_received_headers: s.data.max_received_headers,
            command_timeout: s.timeout.command,
            data_timeout: s.timeout.data_block,
            store_timeout: s.timeout.data_end,
            local_domains: s
                .rcpt
                .local_domains
                .iter()
                .map(|d| d.trim_end_matches('.').to_ascii_lowercase())
                .collect(),
            local_recipients: s
                .rcpt
                .directory
                .as_ref()
                .and_then(|id| config.directories.get(id))
                .map(|d| {
                    d.principals
                        .iter()
                        .flat_map(|p| p.emails.iter().map(|e| e.to_lowercase()))
                        .collect()
                }),
        },
        relay: s.rcpt.relay.clone(),
        defences: Arc::new(Defences::new(
            config.auth.iprev,
            s.connect.dnsbl.clone(),
            ferrymail_deliver::resolver_setup(&config.resolver),
        )),
        verify: Arc::new(Verifier::new(
            &config.auth,
            &config.server.hostname,
            ferrymail_deliver::resolver_setup(&config.resolver),
        )),
        etrn_allow: s.etrn.allow.clone(),
        router: Arc::new(Router::from_config(&config.queue)),
        limiters: config.queue.inbound_limiters.clone(),
        rate_counts: parts.rate_counts.clone(),
        memory: parts.memory.clone(),
        spool: parts.spool.clone(),
        ids: parts.ids.clone(),
        etrn: parts.etrn.clone(),
        queued: parts.queued.clone(),
        // STARTTLS is offered only where it is enabled; implicit-TLS
        // listeners use the certificate whatever that setting says.
        tls: acceptor.clone().filter(|_| config.session.tls.starttls),
        implicit_tls: acceptor,
        shutdown: parts.shutdown.clone(),
        counters: parts.counters.clone(),
        auth: AuthSettings::from_config(config, previous.and_then(|p| p.auth.as_deref()))
            .map(Arc::new),
        dkim: dkim_signing(config)?,
    })
}

/// Connects the management API to the queue engine (operate depends on
/// neither schedule nor receive; the binary joins them).
struct Control(QueueHandle);

impl QueueControl for Control {
    fn reread(&self, keys: Vec<EntryKey>, retried: bool) -> ControlFuture<()> {
        let handle = self.0.clone();
        Box::pin(async move {
            let _ = handle.reread(keys, retried).await;
        })
    }

    fn flush(&self, target: Option<String>) -> ControlFuture<Result<usize, ControlError>> {
        let handle = self.0.clone();
        Box::pin(async move {
            handle.flush(target.as_deref()).await.map_err(|e| match e {
                QueueError::Target(t) => ControlError::BadRequest(t.to_string()),
                QueueError::Closed => ControlError::Unavailable(e.to_string()),
            })
        })
    }

    fn requeue(&self, keys: Vec<EntryKey>) -> ControlFuture<Result<usize, ControlError>> {
        let handle = self.0.clone();
        Box::pin(async move {
            handle
                .requeue(keys)
                .await
                .map_err(|e| ControlError::Unavailable(e.to_string()))
        })
    }

    fn bounce(
        &self,
        keys: Vec<EntryKey>,
        reason: String,
    ) -> ControlFuture<Result<usize, ControlError>> {
        let handle = self.0.clone();
        Box::pin(async move {
            handle
                .bounce(keys, reason)
                .await
                .map_err(|e| ControlError::Unavailable(e.to_string()))
        })
    }
}

/// `[auth.dkim] sign`: the signers accepted mail is signed with, or `None`
/// when the expression can name none (the default `[]`, or `false`).
fn dkim_signing(config: &Config) -> Result<Option<Arc<DkimSigning>>, StartError> {
    let sign = &config.auth.dkim_sign;
    let never = sign.as_constant().is_some_and(|v| {
        matches!(v, Value::Bool(false)) || matches!(v, Value::List(l) if l.is_empty())
    });
    if never {
        return Ok(None);
    }
    let signers = Arc::new(
        Signers::from_config(config).map_err(|e| match &config.source {
            Some(p) => StartError::config(format!("{}: {e}", p.display())),
            None => StartError::config(e.to_string()),
        })?,
    );
    Ok(Some(Arc::new(DkimSigning {
        sign: sign.clone(),
        signer: Arc::new(move |id: &str, message: &[u8]| {
            signers
                .sign(id, message)
                .map(|r| r.map_err(|e| e.to_string()))
        }),
    })))
}

/// Local submission for the management API (`POST /api/submit`), through
/// receive's [`ferrymail_receive::local::submit`].
struct LocalSubmitter(Arc<ArcSwap<Receiver>>);

impl LocalSubmit for LocalSubmitter {
    fn max_size(&self) -> usize {
        usize::try_from(self.0.load().params.max_message_size).unwrap_or(usize::MAX)
    }

    fn submit(
        &self,
        sender: String,
        recipients: Vec<String>,
        contents: bytes::Bytes,
    ) -> ControlFuture<Result<String, SubmitError>> {
        let rx = self.0.load_full();
        Box::pin(async move {
            ferrymail_receive::local::submit(&rx, &sender, &recipients, &contents)
                .await
                .map(|id| id.to_string())
                .map_err(|e| match e {
                    ferrymail_receive::local::LocalError::Spool(_) => {
                        SubmitError::Unavailable(e.to_string())
                    }
                    _ => SubmitError::BadRequest(e.to_string()),
                })
        })
    }
}

/// Answers ETRN (RFC 1985 §5) from the queue engine: 251 when no message is
/// queued for the node, 253 with the number of messages started, 458 when
/// the argument names no domain or queue or the queue is not running.
async fn answer_etrn(mut requests: mpsc::UnboundedReceiver<EtrnRequest>, queue: QueueHandle) {
    while let Some(r) = requests.recv().await {
        let queue = queue.clone();
        tokio::spawn(async move {
            let answer = match queue.etrn(&r.argument).await {
                Ok(0) => EtrnAnswer::NoMessages,
                Ok(n) => EtrnAnswer::Pending(Some(n)),
                Err(e) => {
                    tracing::info!(node = %r.argument, error = %e, "ETRN refused");
                    EtrnAnswer::Unable
                }
            };
            let _ = r.reply.send(answer);
        });
    }
}

/// Waits for SIGTERM or SIGINT (shut down); reloads the configuration on
/// each SIGHUP meanwhile, logging what happened (a file that does not pass
/// is logged line by line and changes nothing).
///
/// Also returns, with `true`, when `claim_lost` completes: another process
/// took this node's claim on a shared store, and the server must stop.
async fn wait_for_signal(
    reloader: &Reloader,
    mut hup: tokio::signal::unix::Signal,
    claim_lost: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
) -> bool {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    let mut claim_lost = claim_lost;
    loop {
        tokio::select! {
            _ = term.recv() => return false,
            _ = int.recv() => return false,
            _ = &mut claim_lost => return true,
            _ = hup.recv() => {
                match reloader.reload().await {
                    Ok(_) => continue,
                    Err(ReloadError::Invalid(errors)) => {
                        for e in &errors {
                            tracing::error!("{e}");
                        }
                        tracing::error!("SIGHUP: configuration not reloaded; the one in force stays");
                    }
                    Err(e) => tracing::error!(error = %e, "SIGHUP: configuration not reloaded"),
                }
                // SIGHUP is also logrotate's: the delivery log is opened
                // again even when the file did not reload (a successful
                // reload opens it with the new settings).
                match reloader.transport.reopen_delivery_log() {
                    Ok(()) => tracing::info!("SIGHUP: delivery log opened again"),
                    Err(e) => tracing::error!(error = %e, "SIGHUP: cannot open the delivery log again"),
                }
            }
        }
    }
}
