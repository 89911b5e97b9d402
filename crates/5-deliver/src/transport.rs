//! [`SmtpTransport`]: the [`Transport`] that speaks SMTP and LMTP. It finds
//! the next hop (route, MX, addresses), takes a pooled connection or opens
//! one, runs the transaction, logs every recipient's outcome, and keeps the
//! connection for the next job to the same destination.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use ferrymail_config::expr::{Expr, Value, Var, Variables};
use ferrymail_config::{Config, DeliveryProtocol, Outbound, Route, RouteKind};
use ferrymail_spool::Recipient;
use rustls::pki_types::CertificateDer;

use crate::dns::{Dns, DnsError, address_literal};
use crate::log::{DeliveryLog, Entry};
use crate::mta_sts::StsCache;
use crate::pool::Pool;
use crate::protocol::mta_sts::{Mode, Policy};
use crate::session::{Peer, Session, SessionError};
use crate::tls::{TlsConfigs, TlsSetupError};
use crate::{Job, Outcome, RecipientOutcome, Remote, Transport, destination_key};

/// Why a transport could not be built from the configuration.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The TLS client configuration (roots, versions).
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
    /// A route's TLS settings cannot be used (its `tls.ca`).
    #[error("route '{route}': {reason}")]
    Route {
        /// The route id.
        route: String,
        /// Why.
        reason: String,
    },
    /// `[queue.outbound] delivery-log` cannot be opened for appending.
    #[error("cannot open the delivery log {path}: {source}")]
    DeliveryLog {
        /// The configured path.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

/// The SMTP/LMTP client. Cheap to clone; clones share the connection pool.
#[derive(Clone)]
pub struct SmtpTransport {
    inner: Arc<Inner>,
}

struct Inner {
    /// What the configuration decides; [`SmtpTransport::reconfigure`]
    /// replaces it, and an attempt keeps the settings it started with.
    settings: ArcSwap<Settings>,
    tls: TlsConfigs,
    pool: Pool,
    /// The idle reaper runs (started with the first pooled connection).
    reaper: AtomicBool,
    /// MTA-STS policies (RFC 8461), kept across reloads.
    sts: Arc<StsCache>,
}

/// `[queue.outbound.tls] mta-sts` for one job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StsSetting {
    /// Follow the domain's policy when it publishes one.
    Optional,
    /// No delivery to a domain without a policy.
    Require,
    /// Ignore policies.
    Disable,
}

/// The part of the transport a configuration reload replaces.
struct Settings {
    /// EHLO/LHLO name (`server.hostname`).
    hostname: String,
    /// `[queue.route.<id>]`.
    routes: BTreeMap<String, Route>,
    /// `[queue.outbound]`.
    outbound: Outbound,
    dns: Dns,
    log: DeliveryLog,
    /// The verifying TLS configurations of routes with a `tls.ca`.
    route_tls: std::collections::HashMap<String, Arc<rustls::ClientConfig>>,
    /// How connections are made when no `[queue.outbound]` hostname or
    /// source-ip setting depends on the job: `server.hostname`, the
    /// kernel's choice of address (built once, not per delivery).
    default_local: Local,
    /// Which configuration this is: a pooled connection opened under an
    /// earlier one is closed instead of reused, since its route may have
    /// moved.
    generation: u64,
    /// This server, as an MX host (RFC 5321 §5.1 loop detection).
    me: Me,
}

/// How this server is known as a next hop: its name and the addresses
/// its SMTP and LMTP listeners take mail on. An MX host is this server
/// when it is reached on a listener's port and either has this server's
/// name or resolves to an address that listener answers on (its own
/// address, or any address of this machine for a wildcard listener).
/// A public address behind NAT is not seen as this server's.
#[derive(Debug, Default)]
struct Me {
    hostname: String,
    listeners: Vec<SocketAddr>,
}

impl Me {
    fn from_config(config: &Config) -> Me {
        Me {
            hostname: config
                .server
                .hostname
                .trim_end_matches('.')
                .to_ascii_lowercase(),
            listeners: config
                .server
                .listeners
                .iter()
                .filter(|l| l.protocol != ferrymail_config::Protocol::Http)
                .flat_map(|l| l.bind.iter().copied())
                .collect(),
        }
    }

    /// Whether `host`, with addresses `addrs`, reached on `port`, is this
    /// server.
    fn is(&self, host: &str, addrs: &[IpAddr], port: u16) -> bool {
        let on_port: Vec<&SocketAddr> =
            self.listeners.iter().filter(|l| l.port() == port).collect();
        if on_port.is_empty() {
            return false;
        }
        if host
            .trim_end_matches('.')
            .eq_ignore_ascii_case(&self.hostname)
        {
            return true;
        }
        addrs.iter().any(|ip| {
            let ip = ip.to_canonical();
            on_port.iter().any(|l| {
                l.ip().to_canonical() == ip || (l.ip().is_unspecified() && is_local_address(ip))
            })
        })
    }
}

/// Whether `ip` is an address of this machine: one a socket can be bound
/// to (the kernel refuses any other with EADDRNOTAVAIL).
fn is_local_address(ip: IpAddr) -> bool {
    ip.is_loopback() || ip.is_unspecified() || std::net::UdpSocket::bind((ip, 0)).is_ok()
}

impl Settings {
    fn from_config(
        config: &Config,
        tls: &TlsConfigs,
        generation: u64,
    ) -> Result<Settings, BuildError> {
        let mut route_tls = std::collections::HashMap::new();
        for (id, route) in &config.queue.routes {
            if let Some(pem) = &route.tls_ca {
                let c = tls.verify_also(pem).map_err(|e| BuildError::Route {
                    route: id.clone(),
                    reason: e.to_string(),
                })?;
                route_tls.insert(id.clone(), c);
            }
        }
        let outbound = config.queue.outbound.clone();
        let log = DeliveryLog::open(outbound.delivery_log.as_deref()).map_err(|source| {
            BuildError::DeliveryLog {
                path: outbound
                    .delivery_log
                    .as_deref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                source,
            }
        })?;
        Ok(Settings {
            default_local: Local {
                hostname: config.server.hostname.clone(),
                v4: Vec::new(),
                v6: Vec::new(),
            },
            hostname: config.server.hostname.clone(),
            routes: config.queue.routes.clone(),
            outbound,
            dns: Dns::new(&config.resolver),
            log,
            route_tls,
            generation,
            me: Me::from_config(config),
        })
    }
}

/// Where and as whom one delivery connects: the EHLO name and the local
/// addresses to connect from (`[queue.outbound] hostname`, `source-ip`),
/// decided per job.
#[derive(Debug, PartialEq, Eq)]
struct Local {
    hostname: String,
    v4: Vec<IpAddr>,
    v6: Vec<IpAddr>,
}

impl Local {
    /// A source address of `remote`'s family, picked at random; `None`
    /// when none is configured for that family (the kernel chooses).
    fn source_for(&self, remote: IpAddr) -> Option<IpAddr> {
        let pool = if remote.is_ipv4() { &self.v4 } else { &self.v6 };
        match pool.len() {
            0 => None,
            1 => Some(pool[0]),
            n => Some(pool[(crate::dns::random_u64() % n as u64) as usize]),
        }
    }
}

/// The variables of the connection expressions: the queued message and the
/// job's queue and destination.
struct JobVars<'a>(&'a Job);

impl Variables for JobVars<'_> {
    fn var(&self, v: Var) -> Value {
        let job = self.0;
        let env = &job.envelope;
        let domain = |a: &str| ferrymail_spool::domain_of(a).unwrap_or_default();
        match v {
            Var::Sender => ferrymail_spool::address_for_expressions(&env.sender).into(),
            Var::SenderDomain => domain(&env.sender).into(),
            Var::Rcpt => job
                .recipients
                .first()
                .and_then(|&i| env.recipients.get(i as usize))
                .map(|r| ferrymail_spool::address_for_expressions(&r.address))
                .into(),
            Var::RcptDomain => job.domain.clone().into(),
            Var::RemoteIp => env.remote_ip.into(),
            Var::AuthenticatedAs => env.authenticated_as.clone().into(),
            Var::HeloDomain => env.helo.clone().into(),
            Var::Priority => Value::Int(i64::from(env.mt_priority)),
            Var::Size => env.size.into(),
            Var::Queue => job.queue.clone().into(),
            Var::Source => env.source.as_str().into(),
            _ => Value::Null,
        }
    }
}

impl Settings {
    /// The EHLO name and source addresses for `job`. Values that are not
    /// addresses of the right family are skipped with a warning (a
    /// constant list was checked when the configuration was loaded).
    fn local_for(&self, job: &Job) -> Local {
        let o = &self.outbound;
        let vars = JobVars(job);
        let hostname = o
            .hostname
            .as_ref()
            .and_then(|e| e.eval_string(&vars))
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| self.hostname.clone());
        let addresses = |e: &Option<Expr>, v6: bool| -> Vec<IpAddr> {
            let Some(e) = e else { return Vec::new() };
            e.eval_strings(&vars)
                .into_iter()
                .filter_map(|text| match text.parse::<IpAddr>() {
                    Ok(ip) if ip.is_ipv6() == v6 => Some(ip),
                    _ => {
                        tracing::warn!(value = %text, "queue.outbound.source-ip: not an address of the right family; ignored");
                        None
                    }
                })
                .collect()
        };
        Local {
            hostname,
            v4: addresses(&o.source_ip_v4, false),
            v6: addresses(&o.source_ip_v6, true),
        }
    }

    /// The MTA-STS setting for `job` (optional unless configured).
    fn sts_setting(&self, job: &Job) -> StsSetting {
        let Some(e) = &self.outbound.mta_sts else {
            return StsSetting::Optional;
        };
        match e.eval_string(&JobVars(job)).as_deref() {
            Some("require") => StsSetting::Require,
            Some("disable") => StsSetting::Disable,
            Some("optional") | None => StsSetting::Optional,
            Some(other) => {
                tracing::warn!(value = %other, "queue.outbound.tls.mta-sts: not optional, require or disable; taken as optional");
                StsSetting::Optional
            }
        }
    }

    /// Whether any connection setting depends on the job.
    fn per_job_local(&self) -> bool {
        let o = &self.outbound;
        o.hostname.is_some() || o.source_ip_v4.is_some() || o.source_ip_v6.is_some()
    }
}

/// The routes whose `tls.ca` cannot be used, with why: what `ferrymail
/// check` reports (the server would refuse to start, or a reload refuse
/// the file).
pub fn unusable_route_cas(config: &Config) -> Vec<(String, String)> {
    config
        .queue
        .routes
        .iter()
        .filter_map(|(id, r)| {
            let pem = r.tls_ca.as_ref()?;
            crate::tls::route_ca(pem)
                .err()
                .map(|e| (id.clone(), e.to_string()))
        })
        .collect()
}

/// A job that got no session: what every recipient gets.
struct Failure {
    outcome: Outcome,
    remote: Option<Remote>,
}

impl SmtpTransport {
    /// A transport for `config`: its hostname, routes, resolver and
    /// `[queue.outbound]` settings, with Mozilla's roots for TLS.
    pub fn new(config: &Config) -> Result<SmtpTransport, BuildError> {
        Self::with_roots(config, &[])
    }

    /// Like [`SmtpTransport::new`], trusting `extra_roots` too (a private
    /// CA of a relay; tests).
    pub fn with_roots(
        config: &Config,
        extra_roots: &[CertificateDer<'static>],
    ) -> Result<SmtpTransport, BuildError> {
        let tls = TlsConfigs::new(extra_roots)?;
        Ok(SmtpTransport {
            inner: Arc::new(Inner {
                settings: ArcSwap::from_pointee(Settings::from_config(config, &tls, 0)?),
                tls,
                pool: Pool::default(),
                reaper: AtomicBool::new(false),
                sts: Arc::new(StsCache::default()),
            }),
        })
    }

    /// Takes up a reloaded configuration: its hostname, routes, resolver and
    /// `[queue.outbound]` settings. Deliveries in progress finish with the
    /// settings they started with; idle pooled connections are closed, and
    /// connections in use are closed when they come back, since a route may
    /// now lead elsewhere.
    pub async fn reconfigure(&self, config: &Config) -> Result<(), BuildError> {
        let generation = self.inner.settings.load().generation + 1;
        self.inner.settings.store(Arc::new(Settings::from_config(
            config,
            &self.inner.tls,
            generation,
        )?));
        self.close_idle().await;
        Ok(())
    }

    /// Keeps MTA-STS policies in `path` across restarts (see
    /// [`crate::mta_sts::StsCache::keep_in`]); returns how many a previous
    /// run left that are still in force.
    pub fn keep_mta_sts_policies(&self, path: &std::path::Path) -> usize {
        self.inner.sts.keep_in(path)
    }

    /// Opens the delivery log file again at its path (see
    /// [`DeliveryLog::reopen`]).
    pub fn reopen_delivery_log(&self) -> std::io::Result<()> {
        self.inner.settings.load().log.reopen()
    }

    /// MTA-STS policy files fetched so far.
    pub fn mta_sts_fetches(&self) -> u64 {
        self.inner.sts.fetches()
    }

    /// MTA-STS figures for `/metrics`.
    pub fn mta_sts_stats(&self) -> crate::mta_sts::StsStats {
        self.inner.sts.stats()
    }

    /// Connections idle in the pool now.
    pub fn idle_connections(&self) -> usize {
        self.inner.pool.len()
    }

    /// Sends QUIT on every idle connection and closes it, and writes the
    /// MTA-STS policy file if a write is pending; for a graceful shutdown.
    /// Connections in use are not touched.
    pub async fn close_idle(&self) {
        let sessions = self.inner.pool.drain();
        futures_join_all(sessions.into_iter().map(Session::quit)).await;
        let sts = self.inner.sts.clone();
        let _ = tokio::task::spawn_blocking(move || sts.flush()).await;
    }
}

/// Runs futures concurrently to completion (QUITs at shutdown).
async fn futures_join_all<F: std::future::Future<Output = ()> + Send + 'static>(
    futures: impl Iterator<Item = F>,
) {
    let mut set = tokio::task::JoinSet::new();
    for f in futures {
        set.spawn(f);
    }
    while set.join_next().await.is_some() {}
}

#[async_trait]
impl Transport for SmtpTransport {
    async fn deliver(&self, job: Job) -> Vec<RecipientOutcome> {
        let started = Instant::now();
        let (outcomes, sts) = self.inner.attempt(&job).await;
        let duration_ms = started.elapsed().as_millis() as u64;
        let entries: Vec<Entry<'_>> = outcomes
            .iter()
            .map(|o| Entry {
                queue: &job.queue,
                message_id: job.envelope.id.to_string(),
                rcpt: job
                    .envelope
                    .recipients
                    .get(o.rcpt as usize)
                    .map(|r| r.address.as_str())
                    .unwrap_or(""),
                route: &job.route,
                domain: &job.domain,
                remote: o.remote.as_ref(),
                outcome: &o.outcome,
                duration_ms,
                mta_sts: sts.map(Mode::as_str),
            })
            .collect();
        self.inner.settings.load().log.record(&entries);
        outcomes
    }
}

impl Inner {
    /// One attempt for `job`: the outcomes, and the mode of the MTA-STS
    /// policy that applied.
    async fn attempt(self: &Arc<Self>, job: &Job) -> (Vec<RecipientOutcome>, Option<Mode>) {
        let settings = self.settings.load_full();
        let env = &job.envelope;
        let (valid, invalid): (Vec<u32>, Vec<u32>) = job
            .recipients
            .iter()
            .partition(|&&i| (i as usize) < env.recipients.len());
        let mut out: Vec<RecipientOutcome> = invalid
            .into_iter()
            .map(|rcpt| RecipientOutcome {
                rcpt,
                outcome: Outcome::Permanent {
                    reason: "5.3.0 no such recipient in the envelope (internal error)".into(),
                    reply: None,
                },
                remote: None,
                answered: false,
            })
            .collect();
        if valid.is_empty() {
            return (out, None);
        }
        let recipients: Vec<&Recipient> =
            valid.iter().map(|&i| &env.recipients[i as usize]).collect();
        let all = |outcome: Outcome, remote: Option<Remote>| {
            valid
                .iter()
                .map(|&rcpt| RecipientOutcome {
                    rcpt,
                    outcome: outcome.clone(),
                    remote: remote.clone(),
                    answered: false,
                })
                .collect::<Vec<_>>()
        };

        let Some(route) = settings.routes.get(&job.route) else {
            out.extend(all(
                Outcome::Transient {
                    reason: crate::unconfigured_route(&job.route),
                    reply: None,
                },
                None,
            ));
            return (out, None);
        };
        let is_relay = matches!(route.kind, RouteKind::Relay { .. });
        let mut key = destination_key(&job.route, &job.domain, is_relay);
        if !is_relay {
            // Two mx routes (say, one that requires TLS) to one domain
            // never share a connection: each opens its own under its own
            // port, protocol and TLS settings.
            key = format!("{key}\u{1f}{}", job.route);
        }
        if settings.generation != 0 {
            // After a reload, connections opened under an earlier
            // configuration are never taken from the pool, even one put
            // back while the reload was emptying it.
            key = format!("{key}\u{1f}{}", settings.generation);
        }
        let per_job;
        let local = if settings.per_job_local() {
            per_job = settings.local_for(job);
            // A pooled connection is reused only by jobs that would have
            // opened it the same way (same EHLO name, same address pool).
            key = format!(
                "{key}\u{1f}{}\u{1f}{:?}\u{1f}{:?}",
                per_job.hostname, per_job.v4, per_job.v6
            );
            &per_job
        } else {
            &settings.default_local
        };

        // MTA-STS (RFC 8461) applies to MX delivery to a domain name. (A
        // relay route's next hop is the operator's choice, not the
        // domain's, so no policy of the recipient domain can apply.)
        let mut sts: Option<Arc<Policy>> = None;
        if matches!(route.kind, RouteKind::Mx) {
            let setting = settings.sts_setting(job);
            if setting == StsSetting::Require && address_literal(&job.domain).is_some() {
                out.extend(all(
                    Outcome::Transient {
                        reason: format!(
                            "4.7.5 MTA-STS is required but {} is an address literal, which has no policy",
                            job.domain
                        ),
                        reply: None,
                    },
                    None,
                ));
                return (out, None);
            }
            if setting != StsSetting::Disable && address_literal(&job.domain).is_none() {
                let found = self
                    .sts
                    .discover(
                        &settings.dns,
                        &self.tls.verify,
                        settings.outbound.ip_strategy,
                        &job.domain,
                        settings.outbound.timeout.mta_sts,
                    )
                    .await;
                sts = found.policy.filter(|p| p.mode != Mode::None);
                if setting == StsSetting::Require && sts.is_none() {
                    let why = found
                        .note
                        .unwrap_or_else(|| "its policy's mode is none".into());
                    out.extend(all(
                        Outcome::Transient {
                            reason: format!(
                                "4.7.5 MTA-STS is required for {} but no policy is available ({why})",
                                job.domain
                            ),
                            reply: None,
                        },
                        None,
                    ));
                    return (out, None);
                }
            }
        }
        let enforce = sts.as_deref().filter(|p| p.mode == Mode::Enforce);
        if let Some(policy) = enforce {
            // A connection opened without this policy (say, in plain text,
            // or to a host an earlier policy listed) is never reused under
            // it.
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            policy.mx.hash(&mut h);
            key.push_str(&format!("\u{1f}mta-sts:{:x}", h.finish()));
        }
        let sts_mode = sts.as_ref().map(|p| p.mode);

        let mut fresh_only = false;
        loop {
            let session = if fresh_only {
                self.connect(&settings, local, route, &job.domain, sts.as_deref(), &[])
                    .await
            } else {
                self.session(&settings, local, &key, route, &job.domain, sts.as_deref())
                    .await
            };
            let mut session = match session {
                Err(f) => {
                    out.extend(all(f.outcome, f.remote));
                    break;
                }
                Ok(s) => s,
            };
            let tx = session.send(job, &recipients).await;
            if tx.stale {
                // A pooled connection the next hop had closed: nothing was
                // sent, so try again, on a new connection this time.
                tracing::debug!(host = %session.remote.host, "pooled connection was closed; reconnecting");
                fresh_only = true;
                continue;
            }
            let remote = session.remote.clone();
            let fresh = session.transactions == 1;
            let mut outcomes: Vec<RecipientOutcome> = valid
                .iter()
                .zip(tx.outcomes)
                .map(|(&rcpt, outcome)| RecipientOutcome {
                    rcpt,
                    outcome,
                    remote: Some(remote.clone()),
                    answered: tx.answered,
                })
                .collect();
            self.release(&settings, &key, session, tx.usable);
            // A new connection to an MX host that put recipients off (a
            // primary that greylists, a 452 for a full disk) while the
            // conversation went on cleanly: those recipients are tried on
            // the next MX host now, once (Postfix's smtp_mx_session_limit
            // of 2), instead of waiting a whole retry interval. Not after a
            // lost connection: the message may have arrived there.
            if fresh && tx.usable && matches!(route.kind, RouteKind::Mx) {
                self.next_mx(
                    &settings,
                    local,
                    route,
                    job,
                    &recipients,
                    &mut outcomes,
                    sts.as_deref(),
                    &key,
                )
                .await;
            }
            out.extend(outcomes);
            break;
        }
        (out, sts_mode)
    }

    /// Tries the recipients `outcomes` has as transient on another MX host
    /// than the one that gave those outcomes, and puts the new outcomes in
    /// their place if a host took the transaction; if none can be reached,
    /// the first host's outcomes stand (they say more).
    #[allow(clippy::too_many_arguments)]
    async fn next_mx(
        self: &Arc<Self>,
        settings: &Settings,
        local: &Local,
        route: &Route,
        job: &Job,
        recipients: &[&Recipient],
        outcomes: &mut [RecipientOutcome],
        sts: Option<&Policy>,
        key: &str,
    ) {
        let again: Vec<usize> = (0..outcomes.len())
            .filter(|&i| matches!(outcomes[i].outcome, Outcome::Transient { .. }))
            .collect();
        let Some(first) = outcomes.first().and_then(|o| o.remote.as_ref()) else {
            return;
        };
        if again.is_empty() {
            return;
        }
        let skip = [first.ip];
        let Ok(mut session) = self
            .connect(settings, local, route, &job.domain, sts, &skip)
            .await
        else {
            return;
        };
        tracing::info!(domain = %job.domain, put_off_by = %first.host, host = %session.remote.host, recipients = again.len(), "trying the next MX host for recipients put off");
        let subset: Vec<&Recipient> = again.iter().map(|&i| recipients[i]).collect();
        let tx = session.send(job, &subset).await;
        if tx.stale || tx.outcomes.len() != again.len() {
            return;
        }
        let remote = session.remote.clone();
        for (&i, outcome) in again.iter().zip(tx.outcomes) {
            outcomes[i].outcome = outcome;
            outcomes[i].remote = Some(remote.clone());
            outcomes[i].answered |= tx.answered;
        }
        self.release(settings, key, session, tx.usable);
    }

    /// A pooled session, or a new one. One reused at once is not probed: if
    /// the next hop closed it meanwhile, the transaction finds out before
    /// anything is sent on and says so ([`crate::session::Transaction::stale`]).
    async fn session(
        self: &Arc<Self>,
        settings: &Settings,
        local: &Local,
        key: &str,
        route: &Route,
        domain: &str,
        sts: Option<&Policy>,
    ) -> Result<Session, Failure> {
        loop {
            let (found, stale) = self.pool.take(key, settings.outbound.idle_timeout);
            for s in stale {
                tokio::spawn(s.quit());
            }
            let Some(mut s) = found else { break };
            // Back-to-back reuse (the common case under load) goes straight
            // to MAIL. A connection that sat idle for a while is probed with
            // RSET first (RFC 5321 §4.1.1.5): the next hop may have dropped
            // it meanwhile, and finding that out before the transaction is
            // cheaper than inside it.
            if s.last_used.elapsed() < PROBE_IDLE_AFTER {
                return Ok(s);
            }
            match s.reset().await {
                Ok(()) => return Ok(s),
                Err(e) => {
                    tracing::debug!(host = %s.remote.host, error = %e, "pooled connection unusable")
                }
            }
        }
        self.connect(settings, local, route, domain, sts, &[]).await
    }

    /// Opens a session to the first next hop that works: for `mx`, the MX
    /// hosts in order (each with up to `max-multihomed` addresses); for a
    /// relay, its address. Every failure of a host is transient for the
    /// mail (the next host, or the next attempt, may do better); only DNS
    /// can make the whole attempt permanent.
    ///
    /// Under an `enforce` MTA-STS policy (RFC 8461 §4.2, §5) only the MX
    /// hosts the policy lists are tried, each with STARTTLS required and a
    /// certificate that verifies for the MX host's name; a host that fails
    /// that fails with 4.7.x and the next is tried. A `testing` policy
    /// changes nothing but a warning for each host it would skip.
    async fn connect(
        &self,
        settings: &Settings,
        local: &Local,
        route: &Route,
        domain: &str,
        sts: Option<&Policy>,
        skip: &[IpAddr],
    ) -> Result<Session, Failure> {
        let o = &settings.outbound;
        let enforce = sts.is_some_and(|p| p.mode == Mode::Enforce);
        // (host, its address if it is a literal, MX preference); only MX
        // hosts from the DNS can be this server (a relay route or an
        // address literal names its next hop on purpose).
        let from_dns = matches!(route.kind, RouteKind::Mx) && address_literal(domain).is_none();
        let hosts: Vec<(String, Option<IpAddr>, u16)> = match &route.kind {
            RouteKind::Relay { address } => {
                vec![(address.clone(), address_literal(address), 0)]
            }
            RouteKind::Mx => match address_literal(domain) {
                Some(ip) => vec![(domain.to_string(), Some(ip), 0)],
                // Under an enforced policy the unlisted hosts are dropped
                // before `max-mx` counts, so that unlisted hosts in front
                // (an attacker's among them) cannot crowd the listed out.
                None => match settings
                    .dns
                    .mx_hosts(domain, if enforce { usize::MAX } else { o.max_mx })
                    .await
                {
                    Ok(hosts) => hosts.into_iter().map(|(p, h)| (h, None, p)).collect(),
                    Err(DnsError::Permanent { status, reason }) => {
                        return Err(Failure {
                            outcome: Outcome::Permanent {
                                reason: format!("{status} {reason}"),
                                reply: None,
                            },
                            remote: None,
                        });
                    }
                    Err(DnsError::Transient { reason }) => {
                        return Err(Failure {
                            outcome: Outcome::Transient {
                                reason: format!("4.4.3 {reason}"),
                                reply: None,
                            },
                            remote: None,
                        });
                    }
                },
            },
        };

        let mut errors: Vec<String> = Vec::new();
        let mut status = "4.4.1";
        let mut last_reply = None;
        let mut last_remote = None;
        let mut hosts = hosts;
        match sts {
            Some(policy) if enforce => {
                let (listed, unlisted): (Vec<_>, Vec<_>) =
                    hosts.into_iter().partition(|(h, _, _)| {
                        // §4.2: the certificate is checked for the MX name,
                        // so a name that cannot be one is not used.
                        policy.matches(h) && is_dns_name(h)
                    });
                // Named up to a few: a domain may publish hundreds of MX
                // records, and the reason goes into the queue, the log and
                // the DSN.
                const NAMED: usize = 3;
                for (host, _, _) in unlisted.iter().take(NAMED) {
                    status = "4.7.5";
                    errors.push(format!(
                        "{host}: not an MX host of the MTA-STS policy of {domain} (mx: {})",
                        shortened(&policy.mx)
                    ));
                }
                if unlisted.len() > NAMED {
                    errors.push(format!(
                        "{} more MX hosts not in the policy",
                        unlisted.len() - NAMED
                    ));
                }
                hosts = listed;
                hosts.truncate(o.max_mx);
            }
            Some(policy) => {
                for (host, _, _) in hosts.iter().filter(|(h, _, _)| !policy.matches(h)) {
                    tracing::warn!(domain, host = %host, mx = ?policy.mx, "MTA-STS (testing): MX host not in the policy; delivering anyway");
                }
            }
            None => {}
        }
        // RFC 5321 §5.1: MX records of which none is usable are an error to
        // report, not to retry until the message expires: when every host
        // the DNS gave is one the DNS says cannot be (NXDOMAIN, no address
        // records), and nothing else failed, the mail bounces (5.4.4).
        let hosts_to_try = hosts.len();
        let unlisted = errors.len();
        let mut no_such_host = 0usize;
        // RFC 5321 §5.1: when this server is among the MX hosts, it and
        // every host of its preference or a less preferred one are
        // discarded (a backup MX hands mail only to better MX hosts; two
        // backups of one preference would hand it to each other). Each
        // preference level is resolved whole before any of it is tried,
        // and tried before the next is resolved.
        // (host, why it is this server)
        let mut looped: Option<(String, String)> = None;
        let mut next = 0;
        while next < hosts.len() {
            let level = hosts[next].2;
            let end = hosts[next..]
                .iter()
                .position(|h| h.2 != level)
                .map_or(hosts.len(), |n| next + n);
            let mut group = Vec::new();
            let errors_before = errors.len();
            for (host, literal, _) in &hosts[next..end] {
                let addrs = match literal {
                    Some(ip) => vec![*ip],
                    None => match settings
                        .dns
                        .addresses(host, o.ip_strategy, o.max_multihomed)
                        .await
                    {
                        Ok(a) => a,
                        Err(e) => {
                            status = "4.4.3";
                            // With one address family only, a host without
                            // records of it may still have the other's.
                            if matches!(e, DnsError::Permanent { .. })
                                && !matches!(
                                    o.ip_strategy,
                                    ferrymail_config::IpStrategy::Ipv4Only
                                        | ferrymail_config::IpStrategy::Ipv6Only
                                )
                            {
                                no_such_host += 1;
                            }
                            errors.push(format!("{host}: {e}"));
                            continue;
                        }
                    },
                };
                if from_dns && settings.me.is(host, &addrs, route.port) {
                    looped = Some((
                        host.clone(),
                        format!("{host}:{} is this server", route.port),
                    ));
                }
                group.push((host.clone(), addrs));
            }
            // This level, before any less preferred one is looked up (not
            // at all when one of its hosts is this server). What its
            // failures set is kept aside, for a level discarded below.
            let before_level = (status, last_reply.clone(), last_remote.clone());
            'level: for (host, addrs) in group.into_iter().filter(|_| looped.is_none()) {
                for ip in addrs.into_iter().filter(|ip| !skip.contains(ip)) {
                    let peer = Peer {
                        host: host.clone(),
                        addr: SocketAddr::new(ip, route.port),
                        lmtp: route.protocol == DeliveryProtocol::Lmtp,
                        tls: if enforce {
                            // STARTTLS, verified against the trusted roots for
                            // the MX host's name, whatever the route says.
                            ferrymail_config::RouteTls {
                                implicit: route.tls.implicit,
                                mode: ferrymail_config::TlsMode::Require,
                                allow_invalid_certs: false,
                            }
                        } else {
                            route.tls
                        },
                        auth: route.auth.clone(),
                        source: local.source_for(ip),
                        verify_with: settings.route_tls.get(&route.id).cloned(),
                        own_name: from_dns.then(|| settings.me.hostname.clone()),
                    };
                    match Session::open(&peer, &local.hostname, &o.timeout, &self.tls).await {
                        Ok(s) => return Ok(s),
                        // This server behind an address it does not know
                        // as its own: discarded with its level, as above.
                        Err(SessionError::LoopsBack(name)) => {
                            tracing::warn!(host = %host, %ip, name = %name, "MX host greets with this server's own name: a mail loop; it and less preferred MX hosts are not tried");
                            looped = Some((
                                host.clone(),
                                format!(
                                    "{host}[{ip}]:{} greets as {name}, this server's name",
                                    route.port
                                ),
                            ));
                            break 'level;
                        }
                        Err(e) => {
                            tracing::debug!(host = %host, %ip, error = %e, "next hop failed");
                            status = e.status();
                            errors.push(format!("{host}[{ip}]:{}: {e}", route.port));
                            last_reply = e.reply().map(|r| r.to_remote());
                            let connected = !matches!(
                                e,
                                SessionError::Connect(_) | SessionError::Timeout("connect")
                            );
                            last_remote = connected.then(|| Remote {
                                host: host.clone(),
                                ip,
                                port: route.port,
                                tls: None,
                                dsn: false,
                                lmtp: peer.lmtp,
                                source: peer.source,
                            });
                        }
                    }
                }
            }
            if looped.is_some() {
                // This level is discarded whole, its failures with it.
                errors.truncate(errors_before.max(unlisted));
                (status, last_reply, last_remote) = before_level;
                break;
            }
            next = end;
        }
        if let Some((_, why)) = &looped
            && errors.len() == unlisted
        {
            // Nothing better than this server: the mail has nowhere to go.
            return Err(Failure {
                outcome: Outcome::Permanent {
                    reason: format!("5.4.6 mail for {domain} loops back to myself ({why})"),
                    reply: None,
                },
                remote: None,
            });
        }
        if let Some((me, _)) = &looped {
            errors.push(format!(
                "{me}: this server; it and less preferred MX hosts are not tried"
            ));
        }
        if matches!(route.kind, RouteKind::Mx)
            && looped.is_none()
            && hosts_to_try > 0
            && unlisted == 0
            && no_such_host == hosts_to_try
        {
            return Err(Failure {
                outcome: Outcome::Permanent {
                    reason: format!(
                        "5.4.4 no MX host of {domain} can be reached: {}",
                        errors.join("; ")
                    ),
                    reply: None,
                },
                remote: None,
            });
        }
        if errors.is_empty() {
            errors.push("no next-hop host to try".into());
        }
        Err(Failure {
            outcome: Outcome::Transient {
                reason: format!("{status} {}", errors.join("; ")),
                reply: last_reply,
            },
            remote: last_remote,
        })
    }

    /// After a transaction: back to the pool, or closed when unusable, at
    /// `max-messages-per-connection`, or opened under a configuration that
    /// has since been reloaded.
    fn release(self: &Arc<Self>, settings: &Settings, key: &str, session: Session, usable: bool) {
        if !usable {
            return;
        }
        if session.transactions >= settings.outbound.max_messages_per_connection
            || settings.generation != self.settings.load().generation
        {
            tokio::spawn(session.quit());
            return;
        }
        self.pool.put(key, session);
        if !self.reaper.swap(true, Ordering::AcqRel) {
            tokio::spawn(reap(Arc::downgrade(self)));
        }
    }
}

/// Whether `host` is a DNS name a certificate can be checked for (not an
/// address, and acceptable to rustls as a name).
fn is_dns_name(host: &str) -> bool {
    matches!(
        rustls::pki_types::ServerName::try_from(host.trim_end_matches('.')),
        Ok(rustls::pki_types::ServerName::DnsName(_))
    )
}

/// A policy's MX patterns for a failure reason: the first few, so that a
/// long list does not fill every recipient's record and notice.
fn shortened(mx: &[String]) -> String {
    const SHOWN: usize = 4;
    let mut text = mx
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if mx.len() > SHOWN {
        text.push_str(&format!(", and {} more", mx.len() - SHOWN));
    }
    text
}

/// A pooled connection idle for longer than this is probed with RSET before
/// it is reused; one reused sooner is not.
const PROBE_IDLE_AFTER: Duration = Duration::from_millis(500);

/// Closes connections idle for `idle-timeout` (as configured now), until
/// the transport is gone.
async fn reap(inner: Weak<Inner>) {
    loop {
        let Some(idle_timeout) = inner
            .upgrade()
            .map(|i| i.settings.load().outbound.idle_timeout)
        else {
            return;
        };
        let tick = (idle_timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(5));
        tokio::time::sleep(tick).await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        for s in inner.pool.expired(idle_timeout) {
            tokio::spawn(s.quit());
        }
    }
}
