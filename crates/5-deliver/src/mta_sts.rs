//! MTA-STS (RFC 8461) for MX delivery: policy discovery and its cache.
//!
//! Before an MX delivery the transport asks [`StsCache::discover`] what
//! the recipient domain publishes: the TXT record at `_mta-sts.<domain>`
//! (§3.1) names a policy id, and a policy the cache does not hold under
//! that id is fetched from `https://mta-sts.<domain>/.well-known/mta-sts.txt`
//! (§3.3: HTTPS whose certificate verifies for that name, no redirects,
//! 200 only, `text/plain`, at most [`MAX_POLICY_BYTES`]). A policy is kept
//! for its `max_age`; while it is, a missing or unreadable TXT record, or a
//! failed fetch, leaves it in force (§5.1), so an attacker who can block
//! DNS or HTTPS cannot switch it off. What an `enforce` policy then means
//! for the connection (listed MX hosts only, STARTTLS with a certificate
//! that verifies for the MX name) is applied in [`crate::transport`].
//!
//! The cache lives in memory and, when the server gives it a file
//! ([`StsCache::keep_in`]), is written there after every new policy and read
//! back at start, so a restart does not open a window in which an attacker
//! who blocks the TXT lookup or the policy host gets plain-text delivery
//! again (§5.1 asks senders to keep a policy for its whole `max_age`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use ferrymail_config::IpStrategy;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;

use crate::dns::Dns;
use crate::protocol::mta_sts::{
    MAX_POLICY_BYTES, Mode, Policy, Step, next_step, parse_policy, record_id,
};

/// How long a failed fetch is not tried again for the same policy id, so
/// that a domain whose policy host is down does not hold every delivery to
/// it for the fetch timeout.
const FAILED_FETCH_BACKOFF: Duration = Duration::from_secs(300);

/// A kept policy is fetched again, in the background, once it is this old
/// or half its `max_age` old, whichever comes first (RFC 8461 §10: a sender
/// that refreshes only at expiry gives an attacker who blocks discovery
/// then a window every `max_age`). Its expiry then starts again.
const REFRESH_AFTER: Duration = Duration::from_secs(24 * 3600);

/// The most domains kept; beyond it expired entries go first, then any.
const MAX_DOMAINS: usize = 100_000;

/// Domains' policies, and fetches that failed recently.
#[derive(Default)]
pub struct StsCache {
    /// Never held across an await.
    entries: std::sync::Mutex<HashMap<String, Entry>>,
    /// One fetch per domain at a time: deliveries that find the same new
    /// id wait for the first one's fetch instead of each fetching.
    fetching: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    fetches: AtomicU64,
    /// Fetches that gave a policy. Counted apart, not as started minus
    /// failed: that difference counts a fetch in flight as a success and
    /// then goes down when it fails, and a Prometheus counter must not.
    fetched: AtomicU64,
    /// Fetches that failed (no policy, or the kept one stayed in force).
    failed_fetches: AtomicU64,
    /// Where the policies are kept across restarts; `None`: memory only.
    /// The mutex orders the writes.
    file: std::sync::Mutex<Option<PathBuf>>,
    /// A write of the file is scheduled ([`StsCache::save_soon`]).
    save_pending: std::sync::atomic::AtomicBool,
}

/// One kept policy as the file holds it: domain, record id, policy, end
/// of its `max_age`, and when its refresh is due.
type KeptNow = (String, String, Arc<Policy>, SystemTime, Option<SystemTime>);

/// How long [`StsCache::save_soon`] gathers changes before one write.
const SAVE_DELAY: Duration = Duration::from_secs(1);

#[derive(Default)]
struct Entry {
    /// The policy in force and its id, until its `max_age` runs out (wall
    /// clock, so that it means the same after a restart).
    policy: Option<(String, Arc<Policy>, SystemTime)>,
    /// When a refresh of the policy is due.
    refresh: Option<SystemTime>,
    /// A fetch of this id failed; not tried again before then.
    failed: Option<(String, Instant)>,
}

/// What the cache holds for a domain now: the unexpired policy with its
/// id, and the id whose fetch failed recently.
type Held = (Option<(String, Arc<Policy>)>, Option<String>);

/// MTA-STS figures for `/metrics`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StsStats {
    /// Policy fetches started.
    pub fetches: u64,
    /// Of those, the ones that gave a policy.
    pub succeeded_fetches: u64,
    /// Of those, the ones that failed.
    pub failed_fetches: u64,
    /// Unexpired policies kept in `enforce` mode.
    pub enforce: u64,
    /// ... in `testing` mode.
    pub testing: u64,
    /// ... in `none` mode.
    pub none: u64,
}

/// What discovery found for a domain.
#[derive(Clone, Debug)]
pub struct Discovery {
    /// The policy in force, if any (its mode may be `none`).
    pub policy: Option<Arc<Policy>>,
    /// Why there is none, or what went wrong on the way (a fetch that
    /// failed while a cached policy stayed in force): for the logs and the
    /// failure reason when a policy is required.
    pub note: Option<String>,
}

impl StsCache {
    /// Keeps the policies in `path` from now on, after reading the ones a
    /// previous run left there (expired ones are dropped). Returns how
    /// many were read. A file that cannot be read is reported and
    /// replaced at the next new policy; nothing else depends on it.
    pub fn keep_in(&self, path: &Path) -> usize {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => Some(t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "MTA-STS policy cache not read");
                None
            }
        };
        let loaded = text
            .map(|t| decode_policies(&t))
            .unwrap_or_else(|| Ok(Vec::new()));
        let loaded = loaded.unwrap_or_else(|e| {
            tracing::warn!(file = %path.display(), error = %e, "MTA-STS policy cache not read");
            Vec::new()
        });
        let now = SystemTime::now();
        let mut n = 0;
        {
            let mut map = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            for (domain, id, policy, until, refresh) in loaded {
                if until > now {
                    let entry = map.entry(domain).or_default();
                    entry.refresh = Some(refresh.unwrap_or(now));
                    entry.policy = Some((id, Arc::new(policy), until));
                    n += 1;
                }
            }
        }
        *self.file.lock().unwrap_or_else(|e| e.into_inner()) = Some(path.to_path_buf());
        n
    }

    /// Writes every unexpired policy to the file, if there is one: to a
    /// temporary name, then renamed over it, so a crash leaves the old
    /// file or the new one.
    fn save(&self) {
        let file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        let Some(path) = file.as_ref() else {
            return;
        };
        // A snapshot under the lock (every delivery's lookup takes it), the
        // encoding outside it.
        let kept: Vec<KeptNow> = {
            let map = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            map.iter()
                .filter_map(|(d, e)| {
                    e.policy
                        .as_ref()
                        .map(|(id, p, until)| (d.clone(), id.clone(), p.clone(), *until, e.refresh))
                })
                .collect()
        };
        let text =
            encode_policies(kept.iter().map(|(d, id, p, until, refresh)| {
                (d.as_str(), id.as_str(), &**p, *until, *refresh)
            }));
        let tmp = path.with_extension("tmp");
        let written = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = written {
            tracing::warn!(file = %path.display(), error = %e, "MTA-STS policy cache not written");
        }
    }

    /// Writes the file a little later, off the runtime's threads: the
    /// fetches of a busy second (a restart's refreshes, say) share one
    /// write of the whole cache instead of each rewriting it.
    fn save_soon(self: &Arc<Self>) {
        if self.save_pending.swap(true, Ordering::AcqRel) {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(SAVE_DELAY).await;
            me.save_pending.store(false, Ordering::Release);
            let _ = tokio::task::spawn_blocking(move || me.save()).await;
        });
    }

    /// Writes the file now if a write is scheduled: at shutdown, so that a
    /// policy fetched in the last second is kept too.
    pub fn flush(&self) {
        if self.save_pending.swap(false, Ordering::AcqRel) {
            self.save();
        }
    }

    /// Policy files fetched so far (tests and metrics).
    pub fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    /// For `/metrics`: fetches that failed, and the unexpired policies
    /// kept, by mode (enforce, testing, none).
    pub fn stats(&self) -> StsStats {
        let now = SystemTime::now();
        let map = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let mut by_mode = [0u64; 3];
        for (_, p, until) in map.values().filter_map(|e| e.policy.as_ref()) {
            if *until > now {
                by_mode[p.mode as usize] += 1;
            }
        }
        StsStats {
            fetches: self.fetches(),
            succeeded_fetches: self.fetched.load(Ordering::Relaxed),
            failed_fetches: self.failed_fetches.load(Ordering::Relaxed),
            enforce: by_mode[Mode::Enforce as usize],
            testing: by_mode[Mode::Testing as usize],
            none: by_mode[Mode::None as usize],
        }
    }

    /// The policy of `domain` (§5.1): the TXT record is read on every
    /// call (the resolver caches it), and the policy fetched only when the
    /// record names an id not cached. `verify` checks the policy host's
    /// certificate; `timeout` bounds the fetch.
    pub async fn discover(
        self: &Arc<Self>,
        dns: &Dns,
        verify: &Arc<rustls::ClientConfig>,
        strategy: IpStrategy,
        domain: &str,
        timeout: Duration,
    ) -> Discovery {
        // The policy host's name and the cache key are A-labels: an
        // SMTPUTF8 domain's U-labels would not pass as a TLS server name.
        let Some(domain) = ascii_domain(domain) else {
            return Discovery {
                policy: None,
                note: Some(format!("{domain} is not a domain name")),
            };
        };
        let record = match dns.txt(&format!("_mta-sts.{domain}")).await {
            Ok(records) if records.is_empty() => Err("no _mta-sts record".to_string()),
            Ok(records) => record_id(&records).map_err(|e| format!("_mta-sts record: {e}")),
            Err(e) => Err(format!("_mta-sts lookup failed: {e}")),
        };
        let id = match record {
            Ok(id) => id,
            // No usable record: a policy still within its max_age holds.
            Err(note) => {
                return Discovery {
                    policy: self.held(&domain).0.map(|(_, p)| p),
                    note: Some(note),
                };
            }
        };
        if let Some(found) = self.settled(&domain, &id) {
            if self.refresh_due(&domain, &id) {
                self.refresh_in_background(dns, verify, strategy, &domain, &id, timeout);
            }
            return found;
        }
        // A new id: fetch, once per domain at a time; whoever waited for
        // another delivery's fetch finds its result in the cache.
        let gate = self.gate(&domain);
        let held = gate.lock().await;
        let found = match self.settled(&domain, &id) {
            Some(found) => found,
            None => {
                self.fetch_and_keep(dns, verify, strategy, &domain, id, timeout)
                    .await
            }
        };
        drop(held);
        self.release_gate(&domain, gate);
        found
    }

    /// The domain's fetch gate (one fetch at a time per domain).
    fn gate(&self, domain: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.fetching.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(domain.to_string()).or_default().clone()
    }

    /// Forgets the domain's fetch gate once its fetch is over and nobody
    /// else waits for it (only the map's reference and `gate` are left):
    /// the map holds domains being fetched, not every domain ever fetched.
    fn release_gate(&self, domain: &str, gate: Arc<tokio::sync::Mutex<()>>) {
        let mut map = self.fetching.lock().unwrap_or_else(|e| e.into_inner());
        if Arc::strong_count(&gate) <= 2 {
            map.remove(domain);
        }
    }

    /// Whether the kept policy of `domain`, under record id `id`, is due
    /// for a refresh (and its last refresh did not just fail).
    fn refresh_due(&self, domain: &str, id: &str) -> bool {
        let map = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        map.get(domain).is_some_and(|e| {
            e.refresh.is_some_and(|at| at <= SystemTime::now())
                && e.failed.as_ref().is_none_or(|(failed, _)| failed != id)
        })
    }

    /// Fetches the policy again without holding up the delivery, unless a
    /// fetch for the domain is under way.
    fn refresh_in_background(
        self: &Arc<Self>,
        dns: &Dns,
        verify: &Arc<rustls::ClientConfig>,
        strategy: IpStrategy,
        domain: &str,
        id: &str,
        timeout: Duration,
    ) {
        let gate = self.gate(domain);
        let Ok(held) = gate.clone().try_lock_owned() else {
            return;
        };
        let (me, dns, verify) = (self.clone(), dns.clone(), verify.clone());
        let (domain, id) = (domain.to_string(), id.to_string());
        tokio::spawn(async move {
            me.fetch_and_keep(&dns, &verify, strategy, &domain, id, timeout)
                .await;
            drop(held);
            me.release_gate(&domain, gate);
        });
    }

    /// What the cache already says for record id `id`: the cached policy
    /// when its id is `id` (§5.1: no new fetch), or, when the fetch of `id`
    /// failed recently, the cached policy if any; `None` when `id` is to
    /// be fetched.
    fn settled(&self, domain: &str, id: &str) -> Option<Discovery> {
        let (cached, failed) = self.held(domain);
        match next_step(Some(id), cached.as_ref().map(|(c, _)| c.as_str())) {
            Step::UseCached => Some(Discovery {
                policy: cached.map(|(_, p)| p),
                note: None,
            }),
            _ if failed.as_deref() == Some(id) => Some(Discovery {
                policy: cached.map(|(_, p)| p),
                note: Some(format!(
                    "the MTA-STS policy fetch for {domain} (id {id}) failed recently"
                )),
            }),
            _ => None,
        }
    }

    /// The domain's unexpired policy and recently failed id, forgetting
    /// what has expired.
    fn held(&self, domain: &str) -> Held {
        let now = Instant::now();
        let wall = SystemTime::now();
        let mut map = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let Some(entry) = map.get_mut(domain) else {
            return (None, None);
        };
        if entry
            .policy
            .as_ref()
            .is_some_and(|(_, _, until)| *until <= wall)
        {
            entry.policy = None;
        }
        if entry
            .failed
            .as_ref()
            .is_some_and(|(_, until)| *until <= now)
        {
            entry.failed = None;
        }
        let held = (
            entry
                .policy
                .as_ref()
                .map(|(id, p, _)| (id.clone(), p.clone())),
            entry.failed.as_ref().map(|(id, _)| id.clone()),
        );
        if held.0.is_none() && held.1.is_none() {
            map.remove(domain);
        }
        held
    }

    /// Fetches the policy for record id `id` and keeps it; on failure the
    /// cached policy (if any) stays in force (§5.1) and `id` is not tried
    /// again for [`FAILED_FETCH_BACKOFF`].
    async fn fetch_and_keep(
        self: &Arc<Self>,
        dns: &Dns,
        verify: &Arc<rustls::ClientConfig>,
        strategy: IpStrategy,
        domain: &str,
        id: String,
        timeout: Duration,
    ) -> Discovery {
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let fetched = tokio::time::timeout(timeout, fetch(dns, verify, strategy, domain))
            .await
            .unwrap_or_else(|_| Err(format!("timed out after {timeout:?}")));
        let mut map = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let entry = map.entry(domain.to_string()).or_default();
        match fetched {
            Ok(policy) => {
                self.fetched.fetch_add(1, Ordering::Relaxed);
                let policy = Arc::new(policy);
                let now = SystemTime::now();
                entry.policy = Some((id, policy.clone(), now + policy.max_age));
                entry.refresh = Some(now + (policy.max_age / 2).min(REFRESH_AFTER));
                entry.failed = None;
                if map.len() > MAX_DOMAINS {
                    bound(&mut map, domain);
                }
                drop(map);
                self.save_soon();
                tracing::info!(domain, mode = policy.mode.as_str(), max_age = policy.max_age.as_secs(), mx = ?policy.mx, "MTA-STS policy fetched");
                Discovery {
                    policy: Some(policy),
                    note: None,
                }
            }
            Err(e) => {
                self.failed_fetches.fetch_add(1, Ordering::Relaxed);
                let cached = entry.policy.as_ref().map(|(_, p, _)| p.clone());
                tracing::warn!(domain, error = %e, cached = cached.is_some(), "MTA-STS policy not fetched");
                entry.failed = Some((id, Instant::now() + FAILED_FETCH_BACKOFF));
                Discovery {
                    policy: cached,
                    note: Some(format!("MTA-STS policy of {domain} not fetched: {e}")),
                }
            }
        }
    }
}

/// Shrinks the cache to [`MAX_DOMAINS`]: entries with nothing in force
/// first, then any but `keep`'s.
fn bound(map: &mut HashMap<String, Entry>, keep: &str) {
    let now = SystemTime::now();
    map.retain(|d, e| d == keep || e.policy.as_ref().is_some_and(|(_, _, until)| *until > now));
    let excess = map.len().saturating_sub(MAX_DOMAINS);
    let drop: Vec<String> = map
        .keys()
        .filter(|d| *d != keep)
        .take(excess)
        .cloned()
        .collect();
    for d in drop {
        map.remove(&d);
    }
}

/// `domain` in A-labels, lower case, without a trailing dot; `None` when
/// it is not a domain name.
fn ascii_domain(domain: &str) -> Option<String> {
    let name = hickory_resolver::proto::rr::Name::from_utf8(domain.trim_end_matches('.')).ok()?;
    let ascii = name.to_ascii().trim_end_matches('.').to_ascii_lowercase();
    (!ascii.is_empty()).then_some(ascii)
}

/// The cache file's text: one JSON object with the version and every
/// policy, its domain, id and expiry (Unix seconds).
fn encode_policies<'a>(
    policies: impl Iterator<Item = (&'a str, &'a str, &'a Policy, SystemTime, Option<SystemTime>)>,
) -> String {
    let unix = |t: SystemTime| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    };
    let list: Vec<serde_json::Value> = policies
        .map(|(domain, id, p, until, refresh)| {
            serde_json::json!({
                "domain": domain,
                "id": id,
                "mode": p.mode.as_str(),
                "max_age": p.max_age.as_secs(),
                "mx": p.mx,
                "until": unix(until),
                "refresh": refresh.map(unix),
            })
        })
        .collect();
    let mut text = serde_json::json!({ "version": 1, "policies": list }).to_string();
    text.push('\n');
    text
}

/// One kept policy: domain, id, policy, expiry, refresh due.
type Kept = (String, String, Policy, SystemTime, Option<SystemTime>);

/// Reads [`encode_policies`]' text back.
fn decode_policies(text: &str) -> Result<Vec<Kept>, String> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    if v["version"] != 1 {
        return Err(format!("unknown version {}", v["version"]));
    }
    let list = v["policies"].as_array().ok_or("no policy list")?;
    let mut out = Vec::with_capacity(list.len());
    for p in list {
        let s = |k: &str| p[k].as_str().map(str::to_string).ok_or(format!("no {k}"));
        let n = |k: &str| p[k].as_u64().ok_or(format!("no {k}"));
        let mode = match p["mode"].as_str() {
            Some("enforce") => Mode::Enforce,
            Some("testing") => Mode::Testing,
            Some("none") => Mode::None,
            other => return Err(format!("bad mode {other:?}")),
        };
        let mx = p["mx"]
            .as_array()
            .ok_or("no mx")?
            .iter()
            .map(|m| m.as_str().map(str::to_string).ok_or("bad mx"))
            .collect::<Result<Vec<_>, _>>()?;
        out.push((
            s("domain")?,
            s("id")?,
            Policy {
                mode,
                max_age: Duration::from_secs(n("max_age")?),
                mx,
            },
            SystemTime::UNIX_EPOCH + Duration::from_secs(n("until")?),
            p["refresh"]
                .as_u64()
                .map(|t| SystemTime::UNIX_EPOCH + Duration::from_secs(t)),
        ));
    }
    Ok(out)
}

/// Fetches and parses the policy of `domain` (§3.3), trying the policy
/// host's addresses in order.
async fn fetch(
    dns: &Dns,
    verify: &Arc<rustls::ClientConfig>,
    strategy: IpStrategy,
    domain: &str,
) -> Result<Policy, String> {
    let host = format!("mta-sts.{domain}");
    let addrs = dns
        .addresses(&host, strategy, 2)
        .await
        .map_err(|e| e.to_string())?;
    let mut errors = Vec::new();
    for ip in addrs {
        match fetch_from(&host, ip, verify).await {
            Ok(text) => return parse_policy(&text).map_err(|e| e.to_string()),
            Err(e) => errors.push(format!("{host}[{ip}]: {e}")),
        }
    }
    Err(errors.join("; "))
}

/// One HTTPS GET of the policy file from `ip`.
async fn fetch_from(
    host: &str,
    ip: IpAddr,
    verify: &Arc<rustls::ClientConfig>,
) -> Result<String, String> {
    let tcp = tokio::net::TcpStream::connect((ip, 443))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let name = ServerName::try_from(host.to_string()).map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(verify.clone())
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    let driver = tokio::spawn(conn);
    let result = async {
        let request = hyper::Request::get("/.well-known/mta-sts.txt")
            .header(hyper::header::HOST, host)
            .header(hyper::header::USER_AGENT, "ferrymail")
            .header(hyper::header::CONNECTION, "close")
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("HTTP: {e}"))?;
        // §3.3: redirects are not followed; only 200 is a policy.
        if response.status() != hyper::StatusCode::OK {
            return Err(format!("HTTP status {}", response.status()));
        }
        let media_type = response
            .headers()
            .get(hyper::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|v| v.trim().to_ascii_lowercase());
        if media_type.as_deref() != Some("text/plain") {
            return Err(format!(
                "Content-Type is {}, not text/plain",
                media_type.as_deref().unwrap_or("missing")
            ));
        }
        let body = Limited::new(response.into_body(), MAX_POLICY_BYTES)
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes();
        String::from_utf8(body.to_vec()).map_err(|_| "the policy is not UTF-8".to_string())
    }
    .await;
    driver.abort();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_file_round_trips() {
        let p = parse_policy(
            "version: STSv1\nmode: enforce\nmx: mx.a.test\nmx: *.b.test\nmax_age: 600\n",
        )
        .unwrap();
        let until = SystemTime::UNIX_EPOCH + Duration::from_secs(2_000_000_000);
        let refresh = Some(until - Duration::from_secs(300));
        let text = encode_policies([("a.test", "id1", &p, until, refresh)].into_iter());
        let back = decode_policies(&text).unwrap();
        assert_eq!(
            back,
            vec![("a.test".into(), "id1".into(), p, until, refresh)]
        );
        assert!(decode_policies("{\"version\": 2, \"policies\": []}").is_err());
        assert!(decode_policies("not json").is_err());
    }

    /// A cache holding `domain`'s policy under `id`, expiring in `ttl`,
    /// refresh due in `refresh_in` (negative: overdue).
    fn holding(domain: &str, id: &str, ttl: u64, refresh_overdue: bool) -> Arc<StsCache> {
        let cache = Arc::new(StsCache::default());
        let p =
            parse_policy("version: STSv1\nmode: enforce\nmx: mx.a.test\nmax_age: 600\n").unwrap();
        let now = SystemTime::now();
        let mut map = cache.entries.lock().unwrap();
        let e = map.entry(domain.into()).or_default();
        e.policy = Some((id.into(), Arc::new(p), now + Duration::from_secs(ttl)));
        e.refresh = Some(if refresh_overdue {
            now - Duration::from_secs(1)
        } else {
            now + Duration::from_secs(ttl / 2)
        });
        drop(map);
        cache
    }

    /// Records that fetching `domain`'s policy `id` just failed.
    fn failed_recently(cache: &StsCache, domain: &str, id: &str) {
        cache
            .entries
            .lock()
            .unwrap()
            .get_mut(domain)
            .unwrap()
            .failed = Some((id.into(), Instant::now() + FAILED_FETCH_BACKOFF));
    }

    #[test]
    fn what_the_cache_settles_without_a_fetch() {
        let cache = holding("a.test", "1", 600, false);
        // Same id: the kept policy, no fetch (§5.1).
        let found = cache.settled("a.test", "1").unwrap();
        assert_eq!(found.policy.unwrap().mx, ["mx.a.test"]);
        // A new id: to be fetched.
        assert!(cache.settled("a.test", "2").is_none());
        // ... unless its fetch failed recently: then the kept policy holds,
        // with a note, and nothing is fetched until the backoff ends.
        failed_recently(&cache, "a.test", "2");
        let found = cache.settled("a.test", "2").unwrap();
        assert!(found.policy.is_some());
        assert!(found.note.unwrap().contains("failed recently"));
        // A domain never seen: to be fetched.
        assert!(cache.settled("b.test", "1").is_none());
        // An expired policy is gone: the new fetch decides.
        let cache = holding("a.test", "1", 0, false);
        assert!(cache.settled("a.test", "1").is_none());
        assert!(cache.held("a.test").0.is_none());
    }

    #[test]
    fn refreshes_are_due_before_expiry_and_not_after_a_failure() {
        assert!(!holding("a.test", "1", 600, false).refresh_due("a.test", "1"));
        let cache = holding("a.test", "1", 600, true);
        assert!(cache.refresh_due("a.test", "1"));
        failed_recently(&cache, "a.test", "1");
        assert!(!cache.refresh_due("a.test", "1"));
    }

    #[test]
    fn domains_in_a_labels() {
        assert_eq!(ascii_domain("Example.COM.").as_deref(), Some("example.com"));
        assert_eq!(
            ascii_domain("bücher.example").as_deref(),
            Some("xn--bcher-kva.example")
        );
    }

    /// A fetch's write is put off a second and shared; a graceful stop
    /// writes it at once.
    #[tokio::test]
    async fn the_file_is_written_soon_after_and_at_shutdown() {
        let dir = std::env::temp_dir().join(format!("ferrymail-sts-soon-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("mta-sts.json");
        let read = || StsCache::default().keep_in(&file);
        let cache = holding("a.test", "1", 600, false);
        assert_eq!(cache.keep_in(&file), 0);
        cache.save_soon();
        cache.save_soon();
        assert_eq!(read(), 0, "not yet");
        cache.flush();
        assert_eq!(read(), 1, "written at the stop");
        cache.flush();
        // Without a stop, a second later.
        std::fs::remove_file(&file).unwrap();
        cache.save_soon();
        tokio::time::sleep(SAVE_DELAY * 3).await;
        assert_eq!(read(), 1, "written a second later");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_cache_is_bounded() {
        let cache = holding("keep.test", "1", 600, false);
        let mut map = cache.entries.lock().unwrap();
        for i in 0..MAX_DOMAINS + 10 {
            map.entry(format!("d{i}.test")).or_default().failed =
                Some(("1".into(), Instant::now()));
        }
        bound(&mut map, "keep.test");
        assert!(map.len() <= MAX_DOMAINS);
        assert!(map["keep.test"].policy.is_some());
    }

    #[test]
    fn kept_policies_survive_a_new_cache_and_expired_ones_do_not() {
        let dir = std::env::temp_dir().join(format!("ferrymail-sts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("mta-sts.json");
        let p =
            parse_policy("version: STSv1\nmode: enforce\nmx: mx.a.test\nmax_age: 600\n").unwrap();
        let soon = SystemTime::now() + Duration::from_secs(600);
        let past = SystemTime::now() - Duration::from_secs(1);
        std::fs::write(
            &file,
            encode_policies(
                [
                    ("a.test", "1", &p, soon, None),
                    ("gone.test", "1", &p, past, None),
                ]
                .into_iter(),
            ),
        )
        .unwrap();
        let cache = StsCache::default();
        assert_eq!(cache.keep_in(&file), 1);
        let (held, _) = cache.held("a.test");
        assert_eq!(
            held.map(|(id, p)| (id, p.mx.clone())),
            Some(("1".into(), vec!["mx.a.test".into()]))
        );
        assert!(cache.held("gone.test").0.is_none());
        // A new policy is written through, with the kept one.
        cache
            .entries
            .lock()
            .unwrap()
            .entry("b.test".into())
            .or_default()
            .policy = Some(("2".into(), Arc::new(p.clone()), soon));
        cache.save();
        let again = StsCache::default();
        assert_eq!(again.keep_in(&file), 2);
        // A file that is not ours is reported, not fatal.
        std::fs::write(&file, "garbage").unwrap();
        assert_eq!(StsCache::default().keep_in(&file), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
