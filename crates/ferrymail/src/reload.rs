//! Configuration reload without a restart: `ferrymail reload` (through the
//! management API) and SIGHUP, as Postfix's `postfix reload`.
//!
//! A reload reads the file the server was started with, checks it exactly
//! as `ferrymail check` does, builds everything that can fail (the
//! receiver with its certificate and keys, the transport's settings), and
//! only then puts the new settings in force, stage by stage:
//!
//! - **receive**: sessions accepted from then on get the new receiver
//!   (session limits and rules, relay and ETRN expressions, defences,
//!   routing, certificate, AUTH directory, DKIM signing); sessions in
//!   progress finish under the one they started with. Connection limits
//!   change at once; no open connection is closed.
//! - **queue engine**: virtual queue limits, schedules and the routing used
//!   by `queue requeue`; queued entries keep their queue, route and
//!   schedule (`queue requeue` routes them again).
//! - **delivery**: routes, `[queue.outbound]`, resolver, hostname; idle
//!   pooled connections are closed, and connections in use are closed when
//!   their delivery ends, since a route may now lead elsewhere.
//! - **notifications**: `[report.dsn]`, DKIM keys, routing.
//! - **management API**: each listener's token.
//!
//! Listeners, stores, the node identity, the cluster settings, the
//! shutdown grace and the DSN batching take effect only at a restart; a
//! reload that sees them changed says so (and keeps them as they were).
//! A file that does not pass changes nothing.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use ferrymail_config::{Config, Listener};
use ferrymail_deliver::SmtpTransport;
use ferrymail_operate::api::{ControlFuture, Management, Reload, ReloadError, ReloadReport};
use ferrymail_operate::client::ClientError;
use ferrymail_receive::Receiver;
use ferrymail_receive::server::ConnectionLimits;
use ferrymail_schedule::QueueHandle;

use crate::serve::{ReceiverParts, build_receiver};

/// How reloads went, for `GET /metrics`: operators alert on a reload
/// that did not take (the file on disk is then not what runs).
#[derive(Debug, Default)]
pub(crate) struct ReloadCounters {
    /// Reloads that put a file in force.
    pub succeeded: std::sync::atomic::AtomicU64,
    /// Reloads that changed nothing (a file that does not pass, or a
    /// server that could not take it).
    pub failed: std::sync::atomic::AtomicU64,
    /// Whether the last reload (if any) succeeded: 1 or 0.
    pub last_ok: std::sync::atomic::AtomicU64,
    /// When the configuration in force was loaded (start or reload),
    /// seconds since the epoch.
    pub loaded_at: std::sync::atomic::AtomicU64,
}

impl ReloadCounters {
    /// Counters for a process that just loaded its configuration.
    pub fn started() -> Arc<ReloadCounters> {
        let c = ReloadCounters::default();
        c.last_ok.store(1, std::sync::atomic::Ordering::Relaxed);
        c.loaded_at
            .store(now_secs(), std::sync::atomic::Ordering::Relaxed);
        Arc::new(c)
    }

    fn record(&self, ok: bool) {
        use std::sync::atomic::Ordering::Relaxed;
        if ok {
            self.succeeded.fetch_add(1, Relaxed);
            self.loaded_at.store(now_secs(), Relaxed);
        } else {
            self.failed.fetch_add(1, Relaxed);
        }
        self.last_ok.store(u64::from(ok), Relaxed);
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// What a reload replaces, and what it compares the new file with.
pub(crate) struct Reloader {
    /// The file the server was started with; `None`: built-in defaults.
    pub path: Option<PathBuf>,
    /// The configuration the server started with: what only a restart
    /// changes is compared with it, so every reload until the restart
    /// reports what is still pending.
    pub started: Config,
    /// One reload at a time.
    pub running: tokio::sync::Mutex<()>,
    pub parts: ReceiverParts,
    pub receiver: Arc<ArcSwap<Receiver>>,
    pub limits: Arc<ConnectionLimits>,
    pub queue: QueueHandle,
    pub transport: Arc<SmtpTransport>,
    pub report: ferrymail_report::Reconfigure,
    /// The management listeners by id, for their tokens; filled in once
    /// they are set up.
    pub management: Mutex<Vec<(String, Arc<Management>)>>,
    /// Successes and failures, for the metrics.
    pub counters: Arc<ReloadCounters>,
}

impl Reloader {
    /// Reads, checks and applies the configuration file; see the module
    /// documentation. Counted in [`ReloadCounters`].
    pub async fn reload(&self) -> Result<ReloadReport, ReloadError> {
        let result = self.reload_once().await;
        self.counters.record(result.is_ok());
        result
    }

    async fn reload_once(&self) -> Result<ReloadReport, ReloadError> {
        let Some(path) = &self.path else {
            return Err(ReloadError::Refused(
                "the server runs on its built-in defaults (started without -c): there is no file to reload".into(),
            ));
        };
        let _one = self.running.lock().await;
        let new = crate::load_checked(path).map_err(ReloadError::Invalid)?;
        let restart_needed = restart_needed(&self.started, &new);

        // Everything that can fail, before anything changes. The
        // listeners stay as started until a restart, so whether they need
        // a certificate is decided by the running ones (a file that drops
        // `tls.implicit` must not leave an HTTPS listener without one).
        let for_receiver = Config {
            server: ferrymail_config::Server {
                listeners: self.started.server.listeners.clone(),
                ..new.server.clone()
            },
            ..new.clone()
        };
        let previous = self.receiver.load_full();
        let receiver =
            build_receiver(&for_receiver, &self.parts, Some(&previous)).map_err(|e| {
                let message = format!("{}: {}", path.display(), e.message);
                if e.code == 2 {
                    ReloadError::Invalid(vec![message])
                } else {
                    ReloadError::Refused(message)
                }
            })?;
        self.transport
            .reconfigure(&new)
            .await
            .map_err(|e| ReloadError::Refused(format!("{}: delivery: {e}", path.display())))?;
        // Keys were loaded once by `load_checked`; this cannot fail unless
        // a key file changed in between.
        if let Err(e) = self.report.apply(&new) {
            tracing::error!(error = %e, "reload: notifications keep their previous DKIM keys");
        }
        self.queue
            .reconfigure(&new.queue)
            .await
            .map_err(|e| ReloadError::Refused(format!("queue engine: {e}")))?;
        let implicit_tls = receiver.implicit_tls.clone();
        self.receiver.store(Arc::new(receiver));
        self.limits.set(
            new.server.max_connections,
            new.server.max_connections_per_ip,
        );
        for (id, mgmt) in self
            .management
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            if let Some(l) = new.server.listeners.iter().find(|l| &l.id == id) {
                mgmt.token.store(l.token.clone().map(Arc::new));
                mgmt.submit_token
                    .store(l.submit_token.clone().map(Arc::new));
            }
            // Its certificate, if it speaks HTTPS (whether it does is
            // fixed until the restart, its certificate is not).
            if mgmt.tls.load().is_some() {
                mgmt.tls.store(implicit_tls.clone().map(Arc::new));
            }
        }

        let warnings: Vec<String> = new.warnings.iter().map(ToString::to_string).collect();
        for w in &warnings {
            tracing::warn!("{w}");
        }
        for r in &restart_needed {
            tracing::warn!(setting = %r, "reload: changed, but takes effect only at the next restart");
        }
        tracing::info!(file = %path.display(), "configuration reloaded");
        Ok(ReloadReport {
            file: path.display().to_string(),
            warnings,
            restart_needed,
        })
    }
}

/// The reloader as the management API holds it (its future must own what
/// it works on).
pub(crate) struct ReloadHandle(pub Arc<Reloader>);

impl Reload for ReloadHandle {
    fn reload(&self) -> ControlFuture<Result<ReloadReport, ReloadError>> {
        let this = self.0.clone();
        // On a task of its own: a client that hangs up (Ctrl-C) must not
        // cut a reload off halfway, with some stages on the new settings.
        Box::pin(async move {
            tokio::spawn(async move { this.reload().await })
                .await
                .unwrap_or_else(|e| Err(ReloadError::Refused(format!("reload failed: {e}"))))
        })
    }
}

/// The settings of `new` that differ from `started` but that only a
/// restart puts in force, by their configuration names.
fn restart_needed(started: &Config, new: &Config) -> Vec<String> {
    // A listener's tokens are reloaded; the rest of it is its sockets.
    let sockets = |c: &Config| -> Vec<Listener> {
        c.server
            .listeners
            .iter()
            .map(|l| Listener {
                token: None,
                submit_token: None,
                ..l.clone()
            })
            .collect()
    };
    let mut out = Vec::new();
    if sockets(started) != sockets(new) {
        out.push("server.listener".to_string());
    }
    if started.server.node_id != new.server.node_id {
        out.push("server.node-id".to_string());
    }
    if started.server.shutdown_grace != new.server.shutdown_grace {
        out.push("server.shutdown-timeout".to_string());
    }
    if started.stores != new.stores {
        out.push("store".to_string());
    }
    if started.storage != new.storage {
        out.push("storage".to_string());
    }
    if started.cluster != new.cluster {
        out.push("cluster".to_string());
    }
    if started.report.dsn.batch_quiet != new.report.dsn.batch_quiet
        || started.report.dsn.batch_max_hold != new.report.dsn.batch_max_hold
    {
        out.push("report.dsn.batch-quiet, batch-max-hold".to_string());
    }
    out
}

/// Entry point of `ferrymail reload`: asks the running server (through its
/// management listener, as the queue commands do) to reload. Exit 0 once
/// it did; 2 when the file does not pass (the server keeps what it had);
/// 1 when the server cannot be reached or refuses.
pub fn main(config: Option<PathBuf>) -> ExitCode {
    let (_, client) = match crate::cli::client_for(config.as_deref()) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let answer = match crate::cli::block_on("ferrymail", client.call("POST", "/api/reload", None)) {
        Ok(a) => a,
        Err(code) => return code,
    };
    match answer {
        Ok(body) => {
            let report: ReloadReport = match serde_json::from_slice(&body) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("ferrymail: unexpected answer: {e}");
                    return ExitCode::from(1);
                }
            };
            for w in &report.warnings {
                eprintln!("warning: {w}");
            }
            for r in &report.restart_needed {
                eprintln!("warning: {r} changed; it takes effect at the next restart");
            }
            println!("reloaded {}", report.file);
            ExitCode::SUCCESS
        }
        Err(ClientError::Api {
            status: 400,
            message,
        }) => {
            eprintln!("{message}");
            eprintln!("ferrymail: configuration not reloaded; the server keeps the one in force");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("ferrymail: {e}");
            if matches!(
                &e,
                ClientError::Api { status: 401, .. } | ClientError::Http(_)
            ) {
                // The command reads the file as it is now: a changed token or
                // certificate is not the server's until it reloads.
                eprintln!(
                    "ferrymail: if the management token or certificate changed in the file, reload with SIGHUP (kill -HUP <pid>)"
                );
            }
            ExitCode::from(1)
        }
    }
}
