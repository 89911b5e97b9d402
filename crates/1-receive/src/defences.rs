//! SMTP-level defences: reverse-DNS (iprev) checks and DNS blocklists.
//!
//! The lookups start when a connection is accepted and run while the client
//! greets and sends MAIL, so the 220 greeting never waits for the DNS. The
//! verdict is enforced at RCPT TO, like Postfix's `smtpd_delay_reject = yes`:
//! the recipient that would have been accepted gets the refusal instead, the
//! session stays usable (RSET, QUIT), the refusal names a recipient in the
//! logs, and `postmaster` (RFC 5321 §4.5.1) is still accepted so a blocked
//! sender can reach a human. A client that `session.rcpt.relay` trusts is
//! never refused either (Postfix's `permit_mynetworks` before
//! `reject_rbl_client`): internal clients often lack reverse DNS, and
//! turning the checks on must not cut them off.
//!
//! The pure parts (query names, classification of answers, the refusal) are
//! free functions tested here; [`Defences`] only asks the questions.
//!
//! Choices a postmaster should know:
//! * DNSBLs fail open: a lookup error or timeout counts as "not listed" and
//!   is logged as a warning, because a blocklist outage must not stop mail.
//! * iprev `strict` fails closed but temporarily: a DNS error gives 450, so
//!   a legitimate client retries later instead of bouncing.
//! * Queries go straight to the `[resolver]` name servers, without
//!   hickory's cache or its RFC 6761 local answers: hickory would answer the
//!   PTR of any 127.0.0.0/8 address with `localhost.` itself, and the name
//!   servers should decide that (a local caching resolver is the usual
//!   setup for DNSBL use anyway, and some lists require one).

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use ferrymail_config::IprevVerify;
use hickory_resolver::config::{ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::xfer::{DnsHandle, FirstAnswer};
use hickory_resolver::proto::op::{DnsRequestOptions, Query, ResponseCode};
use hickory_resolver::proto::rr::{Name, RData, RecordType};
use hickory_resolver::{NameServerPool, PoolContext, TlsConfig};
use tokio::task::JoinHandle;
use tokio_util::task::AbortOnDropHandle;

use crate::protocol::reply::{Reply, replies};

/// Longest wait for one DNS answer, on top of the resolver's own timeout
/// and retries; a lookup that takes longer counts as a DNS error.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

/// At most this many PTR names are checked for forward confirmation. RFC
/// 8601 §2.7.3 leaves the limit to the implementation; a client with more
/// names than this is unusual, and each name costs a lookup.
pub const MAX_PTR_NAMES: usize = 10;

// ---------------------------------------------------------------- pure parts

/// The labels of `ip` in reverse order, as both reverse DNS and DNSBLs
/// write them: `192.0.2.1` → `1.2.0.192`, and an IPv6 address as its 32
/// nibbles, least significant first (RFC 5782 §2.1 and §2.4, RFC 3596
/// §2.5). An IPv4-mapped IPv6 address is looked up as the IPv4 address.
pub fn reversed_labels(ip: IpAddr) -> String {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(v6) => {
            let mut out = String::with_capacity(63);
            for byte in v6.octets().iter().rev() {
                for nibble in [byte & 0x0f, byte >> 4] {
                    if !out.is_empty() {
                        out.push('.');
                    }
                    out.push(char::from_digit(u32::from(nibble), 16).unwrap_or('0'));
                }
            }
            out
        }
    }
}

/// The PTR query name of `ip`: under `in-addr.arpa` or `ip6.arpa`.
pub fn reverse_name(ip: IpAddr) -> String {
    let zone = match ip.to_canonical() {
        IpAddr::V4(_) => "in-addr.arpa",
        IpAddr::V6(_) => "ip6.arpa",
    };
    format!("{}.{zone}", reversed_labels(ip))
}

/// The DNSBL query name of `ip` in `zone` (RFC 5782 §2.1 for IPv4, §2.4
/// for IPv6): the reversed address, then the zone. The A record of this
/// name says whether the address is listed.
pub fn dnsbl_name(ip: IpAddr, zone: &str) -> String {
    format!("{}.{}", reversed_labels(ip), zone.trim_end_matches('.'))
}

/// One DNS answer, reduced to what the checks need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer<T> {
    /// Records of the type asked for.
    Found(T),
    /// NXDOMAIN, or NOERROR without records of the type (NODATA): a final
    /// "no".
    NotFound,
    /// SERVFAIL, REFUSED, a timeout, no usable resolver: ask again later.
    Failed(String),
}

/// What one DNSBL said about the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DnsblResult {
    /// Listed: the zone answered with an address in 127.0.0.0/8.
    Listed {
        /// The zone, as configured.
        zone: String,
        /// The first listing answer (lists use it as a reason code).
        answer: Ipv4Addr,
    },
    /// Not listed (NXDOMAIN, or no listing answer).
    NotListed {
        /// The zone, as configured.
        zone: String,
    },
    /// The lookup failed; treated as not listed (fail open), and logged.
    Error {
        /// The zone, as configured.
        zone: String,
        /// What went wrong.
        reason: String,
    },
}

/// Whether an A answer from a DNSBL means "listed". RFC 5782 §2.1: listed
/// entries answer with an address in 127.0.0.0/8. Spamhaus and others
/// answer 127.255.255.0/24 for *their* errors (query through a public
/// resolver, over quota, bad query name); those say nothing about the
/// client, and taking them as listings would refuse every sender while the
/// list refuses us, so they are not listings.
pub fn is_listing(answer: Ipv4Addr) -> bool {
    let o = answer.octets();
    o[0] == 127 && !(o[1] == 255 && o[2] == 255)
}

/// Classifies a DNSBL zone's A answer for the client (RFC 5782 §2.1).
pub fn classify_dnsbl(zone: &str, answer: Answer<Vec<Ipv4Addr>>) -> DnsblResult {
    let zone = zone.to_string();
    match answer {
        Answer::Found(addrs) => match addrs.iter().copied().find(|a| is_listing(*a)) {
            Some(answer) => DnsblResult::Listed { zone, answer },
            None if addrs.is_empty() => DnsblResult::NotListed { zone },
            None => DnsblResult::Error {
                zone,
                reason: format!(
                    "answer {} is not a listing (outside 127.0.0.0/8, or a list's error code)",
                    addrs
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            },
        },
        Answer::NotFound => DnsblResult::NotListed { zone },
        Answer::Failed(reason) => DnsblResult::Error { zone, reason },
    }
}

/// The iprev result of RFC 8601 §2.7.3 (first registered by RFC 7601).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Iprev {
    /// A PTR name of the address has an A/AAAA record equal to it
    /// (forward-confirmed reverse DNS).
    Pass {
        /// That name, without the trailing dot.
        name: String,
    },
    /// The address has PTR names, but none of them leads back to it.
    Fail,
    /// The address has no PTR name (NXDOMAIN or NODATA).
    PermError,
    /// A lookup failed in a way that may pass later (SERVFAIL, timeout).
    TempError {
        /// What went wrong.
        reason: String,
    },
}

impl Iprev {
    /// The result's name as RFC 8601 spells it, for logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            Iprev::Pass { .. } => "pass",
            Iprev::Fail => "fail",
            Iprev::PermError => "permerror",
            Iprev::TempError { .. } => "temperror",
        }
    }
}

/// Decides iprev from the PTR answer and the forward (A for an IPv4
/// client, AAAA for IPv6) answer of each PTR name (RFC 8601 §2.7.3).
/// A forward-confirmed name passes even when another name's lookup failed;
/// otherwise any failed lookup makes the result temporary.
pub fn classify_iprev(
    ip: IpAddr,
    ptr: &Answer<Vec<String>>,
    forward: &[(String, Answer<Vec<IpAddr>>)],
) -> Iprev {
    let ip = ip.to_canonical();
    match ptr {
        Answer::Failed(reason) => {
            return Iprev::TempError {
                reason: format!("PTR lookup: {reason}"),
            };
        }
        Answer::NotFound => return Iprev::PermError,
        Answer::Found(names) if names.is_empty() => return Iprev::PermError,
        Answer::Found(_) => {}
    }
    let mut failure = None;
    for (name, answer) in forward {
        match answer {
            Answer::Found(addrs) if addrs.iter().any(|a| a.to_canonical() == ip) => {
                return Iprev::Pass { name: name.clone() };
            }
            Answer::Failed(reason) if failure.is_none() => {
                failure = Some(format!("lookup of {name}: {reason}"));
            }
            _ => {}
        }
    }
    match failure {
        Some(reason) => Iprev::TempError { reason },
        None => Iprev::Fail,
    }
}

/// Everything the checks found out about one client.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    /// One result per configured DNSBL zone, in configuration order.
    pub dnsbl: Vec<DnsblResult>,
    /// The iprev result; `None` when `auth.iprev.verify = "disable"`.
    pub iprev: Option<Iprev>,
}

impl Verdict {
    /// The reply a recipient gets instead of 250, if any: a DNSBL listing
    /// first (the first listing zone in configuration order), then a
    /// failed iprev in strict mode.
    pub fn refusal(&self, ip: IpAddr, iprev: IprevVerify) -> Option<Reply> {
        for r in &self.dnsbl {
            if let DnsblResult::Listed { zone, .. } = r {
                return Some(replies::dnsbl_listed(ip.to_canonical(), zone));
            }
        }
        if iprev != IprevVerify::Strict {
            return None;
        }
        match self.iprev.as_ref()? {
            Iprev::Pass { .. } => None,
            Iprev::Fail | Iprev::PermError => Some(replies::iprev_failed()),
            Iprev::TempError { .. } => Some(replies::iprev_temporary()),
        }
    }
}

/// RFC 5321 §4.5.1: mail to `postmaster` (bare, or at a domain we accept
/// mail for) must be accepted, so the connection checks never refuse it.
pub fn is_postmaster(address: &str, local_domains: &std::collections::HashSet<String>) -> bool {
    if address.eq_ignore_ascii_case("postmaster") {
        return true;
    }
    match address.rsplit_once('@') {
        Some((local, domain)) => {
            local.eq_ignore_ascii_case("postmaster")
                && local_domains.contains(&domain.trim_end_matches('.').to_ascii_lowercase())
        }
        None => false,
    }
}

// ---------------------------------------------------------------- lookups

/// The connection checks of a server: what to check, and the name servers
/// to ask. Built once at start-up and shared by every session.
pub struct Defences {
    iprev: IprevVerify,
    dnsbl: Vec<String>,
    /// The name servers of `[resolver]`; `Err` when they could not be set up
    /// (then every lookup is a DNS error) or no check is configured.
    dns: Result<NameServerPool<TokioRuntimeProvider>, String>,
}

impl Defences {
    /// The checks `iprev` and `dnsbl` ask for, with the name servers of
    /// `[resolver]` (`setup` comes from `ferrymail_deliver::resolver_setup`,
    /// so receive and delivery ask the same servers the same way).
    pub fn new(
        iprev: IprevVerify,
        dnsbl: Vec<String>,
        setup: Result<(ResolverConfig, ResolverOpts), String>,
    ) -> Defences {
        let enabled = iprev != IprevVerify::Disable || !dnsbl.is_empty();
        let dns = if enabled {
            setup.and_then(|(config, options)| {
                let tls = TlsConfig::new().map_err(|e| format!("cannot set up DNS: {e}"))?;
                let cx = Arc::new(PoolContext::new(options, tls));
                Ok(NameServerPool::from_config(
                    config.name_servers,
                    cx,
                    TokioRuntimeProvider::default(),
                ))
            })
        } else {
            Err("no connection checks configured".to_string())
        };
        if enabled && let Err(e) = &dns {
            tracing::warn!(error = %e, "connection checks cannot use the DNS: DNSBLs will not list anyone, iprev will give temperror");
        }
        Defences { iprev, dnsbl, dns }
    }

    /// Starts the checks of a client at `ip` in the background; the session
    /// collects the verdict at its first RCPT TO.
    pub fn start(self: &Arc<Self>, ip: IpAddr) -> Checks {
        let ip = ip.to_canonical();
        if self.iprev == IprevVerify::Disable && self.dnsbl.is_empty() {
            return Checks {
                ip,
                iprev: self.iprev,
                state: State::Done(Verdict::default()),
            };
        }
        let this = self.clone();
        Checks {
            ip,
            iprev: self.iprev,
            state: State::Running(tokio::spawn(async move { this.check(ip).await })),
        }
    }

    async fn check(self: Arc<Self>, ip: IpAddr) -> Verdict {
        // Each lookup is aborted with the check (a client that closed at
        // once leaves no queries running behind it).
        let lists: Vec<AbortOnDropHandle<DnsblResult>> = self
            .dnsbl
            .iter()
            .map(|zone| {
                let this = self.clone();
                let zone = zone.clone();
                AbortOnDropHandle::new(tokio::spawn(
                    async move { this.dnsbl_lookup(ip, &zone).await },
                ))
            })
            .collect();
        let iprev = if self.iprev == IprevVerify::Disable {
            None
        } else {
            let r = self.iprev_lookup(ip).await;
            match &r {
                Iprev::Pass { name } => {
                    tracing::info!(remote = %ip, result = "pass", ptr = %name, "iprev")
                }
                Iprev::TempError { reason } => {
                    tracing::info!(remote = %ip, result = "temperror", reason = %reason, "iprev")
                }
                other => tracing::info!(remote = %ip, result = other.as_str(), "iprev"),
            }
            Some(r)
        };
        let mut dnsbl = Vec::with_capacity(lists.len());
        for (handle, zone) in lists.into_iter().zip(&self.dnsbl) {
            let r = handle.await.unwrap_or_else(|e| DnsblResult::Error {
                zone: zone.clone(),
                reason: format!("lookup task failed: {e}"),
            });
            match &r {
                DnsblResult::Listed { zone, answer } => {
                    tracing::info!(remote = %ip, zone = %zone, result = "listed", answer = %answer, "dnsbl")
                }
                DnsblResult::NotListed { zone } => {
                    tracing::info!(remote = %ip, zone = %zone, result = "not listed", "dnsbl")
                }
                DnsblResult::Error { zone, reason } => tracing::warn!(
                    remote = %ip,
                    zone = %zone,
                    result = "error",
                    reason = %reason,
                    "dnsbl lookup failed; client treated as not listed"
                ),
            }
            dnsbl.push(r);
        }
        Verdict { dnsbl, iprev }
    }

    async fn dnsbl_lookup(&self, ip: IpAddr, zone: &str) -> DnsblResult {
        let answer = self.query(&dnsbl_name(ip, zone), RecordType::A).await;
        classify_dnsbl(zone, map_records(answer, a_record))
    }

    async fn iprev_lookup(&self, ip: IpAddr) -> Iprev {
        let ptr = self.query(&reverse_name(ip), RecordType::PTR).await;
        let ptr = map_records(ptr, |r| match r {
            RData::PTR(name) => Some(name.to_ascii().trim_end_matches('.').to_string()),
            _ => None,
        });
        let forward_type = if ip.is_ipv4() {
            RecordType::A
        } else {
            RecordType::AAAA
        };
        let mut lookups = Vec::new();
        if let Answer::Found(names) = &ptr {
            let mut names = names.clone();
            names.sort();
            names.dedup();
            for name in names.into_iter().take(MAX_PTR_NAMES) {
                let dns = self.dns.clone();
                lookups.push((
                    name.clone(),
                    AbortOnDropHandle::new(tokio::spawn(async move {
                        query(&dns, &name, forward_type).await
                    })),
                ));
            }
        }
        let mut forward = Vec::with_capacity(lookups.len());
        for (name, handle) in lookups {
            let answer = handle
                .await
                .unwrap_or_else(|e| Answer::Failed(format!("lookup task failed: {e}")));
            let addrs = map_records(answer, |r| match r {
                RData::A(a) => Some(IpAddr::V4(a.0)),
                RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                _ => None,
            });
            forward.push((name, addrs));
        }
        classify_iprev(ip, &ptr, &forward)
    }

    async fn query(&self, name: &str, rtype: RecordType) -> Answer<Vec<RData>> {
        query(&self.dns, name, rtype).await
    }
}

fn a_record(r: RData) -> Option<Ipv4Addr> {
    match r {
        RData::A(a) => Some(a.0),
        _ => None,
    }
}

/// Keeps the records `f` understands; a NOERROR answer with none of them
/// is NODATA.
fn map_records<T>(answer: Answer<Vec<RData>>, f: impl FnMut(RData) -> Option<T>) -> Answer<Vec<T>> {
    match answer {
        Answer::Found(records) => {
            let out: Vec<T> = records.into_iter().filter_map(f).collect();
            if out.is_empty() {
                Answer::NotFound
            } else {
                Answer::Found(out)
            }
        }
        Answer::NotFound => Answer::NotFound,
        Answer::Failed(e) => Answer::Failed(e),
    }
}

/// One question to the name servers, bounded by [`QUERY_TIMEOUT`].
async fn query(
    dns: &Result<NameServerPool<TokioRuntimeProvider>, String>,
    name: &str,
    rtype: RecordType,
) -> Answer<Vec<RData>> {
    let pool = match dns {
        Ok(p) => p,
        Err(e) => return Answer::Failed(e.clone()),
    };
    let fqdn = format!("{}.", name.trim_end_matches('.'));
    let qname = match Name::from_ascii(&fqdn) {
        Ok(n) => n,
        Err(e) => return Answer::Failed(format!("bad query name {fqdn}: {e}")),
    };
    let lookup = pool
        .lookup(Query::query(qname, rtype), DnsRequestOptions::default())
        .first_answer();
    let response = match tokio::time::timeout(QUERY_TIMEOUT, lookup).await {
        Err(_) => return Answer::Failed(format!("{rtype} {fqdn}: timed out")),
        Ok(Err(e)) if e.is_nx_domain() || e.is_no_records_found() => return Answer::NotFound,
        Ok(Err(e)) => return Answer::Failed(format!("{rtype} {fqdn}: {e}")),
        Ok(Ok(r)) => r,
    };
    match response.metadata.response_code {
        ResponseCode::NoError => {
            let records: Vec<RData> = response
                .answers
                .iter()
                .filter(|r| r.record_type() == rtype)
                .map(|r| r.data.clone())
                .collect();
            if records.is_empty() {
                Answer::NotFound
            } else {
                Answer::Found(records)
            }
        }
        ResponseCode::NXDomain => Answer::NotFound,
        code => Answer::Failed(format!("{rtype} {fqdn}: {code}")),
    }
}

/// The checks of one connection: running in the background, or done.
/// Dropping it (the session ended) stops the lookups.
pub struct Checks {
    ip: IpAddr,
    iprev: IprevVerify,
    state: State,
}

enum State {
    Running(JoinHandle<Verdict>),
    Done(Verdict),
}

impl Checks {
    /// Waits for the lookups (each is bounded by [`QUERY_TIMEOUT`]) and
    /// returns what they found.
    pub async fn verdict(&mut self) -> &Verdict {
        if let State::Running(handle) = &mut self.state {
            let v = handle.await.unwrap_or_else(|e| {
                tracing::warn!(remote = %self.ip, error = %e, "connection checks failed");
                Verdict {
                    dnsbl: Vec::new(),
                    iprev: (self.iprev != IprevVerify::Disable).then(|| Iprev::TempError {
                        reason: format!("check task failed: {e}"),
                    }),
                }
            });
            self.state = State::Done(v);
        }
        match &self.state {
            State::Done(v) => v,
            State::Running(_) => unreachable!("set just above"),
        }
    }

    /// The iprev result, once [`Checks::verdict`] has been awaited and if
    /// iprev is checked at all: for the Authentication-Results field.
    pub fn iprev(&self) -> Option<&Iprev> {
        match &self.state {
            State::Done(v) => v.iprev.as_ref(),
            State::Running(_) => None,
        }
    }

    /// The refusal for a recipient that would otherwise be accepted, once
    /// [`Checks::verdict`] has been awaited; `None` before that.
    pub fn refusal(&self) -> Option<Reply> {
        match &self.state {
            State::Done(v) => v.refusal(self.ip, self.iprev),
            State::Running(_) => None,
        }
    }
}

impl Drop for Checks {
    fn drop(&mut self) {
        if let State::Running(handle) = &self.state {
            handle.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn query_names() {
        // RFC 5782 §2.1's example and its IPv4 test point.
        assert_eq!(
            dnsbl_name(ip("192.168.42.23"), "dnsbl.example.net"),
            "23.42.168.192.dnsbl.example.net"
        );
        assert_eq!(
            dnsbl_name(ip("127.0.0.2"), "bl.example."),
            "2.0.0.127.bl.example"
        );
        // RFC 5782 §2.4's example.
        assert_eq!(
            dnsbl_name(ip("2001:db8:1:2:3:4:567:89ab"), "ugly.example.com"),
            "b.a.9.8.7.6.5.0.4.0.0.0.3.0.0.0.2.0.0.0.1.0.0.0.8.b.d.0.1.0.0.2.ugly.example.com"
        );
        assert_eq!(reverse_name(ip("127.0.0.1")), "1.0.0.127.in-addr.arpa");
        assert_eq!(
            reverse_name(ip("2001:db8::1")),
            "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa"
        );
        // An IPv4 client on a dual-stack socket is looked up as IPv4.
        assert_eq!(
            reverse_name(ip("::ffff:192.0.2.7")),
            "7.2.0.192.in-addr.arpa"
        );
    }

    #[test]
    fn dnsbl_answers() {
        let a = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert_eq!(
            classify_dnsbl("bl.example", Answer::Found(vec![a("127.0.0.2")])),
            DnsblResult::Listed {
                zone: "bl.example".into(),
                answer: a("127.0.0.2")
            }
        );
        assert_eq!(
            classify_dnsbl(
                "bl.example",
                Answer::Found(vec![a("127.255.255.254"), a("127.0.0.10")])
            ),
            DnsblResult::Listed {
                zone: "bl.example".into(),
                answer: a("127.0.0.10")
            },
            "any listing answer counts"
        );
        assert_eq!(
            classify_dnsbl("bl.example", Answer::NotFound),
            DnsblResult::NotListed {
                zone: "bl.example".into()
            }
        );
        for (answer, why) in [
            ("127.255.255.254", "a list's own error code"),
            ("192.0.2.1", "outside 127.0.0.0/8"),
        ] {
            assert!(
                matches!(
                    classify_dnsbl("bl.example", Answer::Found(vec![a(answer)])),
                    DnsblResult::Error { .. }
                ),
                "{why}"
            );
        }
        assert!(matches!(
            classify_dnsbl("bl.example", Answer::Failed("SERVFAIL".into())),
            DnsblResult::Error { .. }
        ));
    }

    #[test]
    fn iprev_results() {
        let me = ip("192.0.2.1");
        let names = Answer::Found(vec!["a.example".to_string(), "b.example".to_string()]);
        let pass = classify_iprev(
            me,
            &names,
            &[
                ("a.example".into(), Answer::Failed("SERVFAIL".into())),
                ("b.example".into(), Answer::Found(vec![ip("192.0.2.9"), me])),
            ],
        );
        assert_eq!(
            pass,
            Iprev::Pass {
                name: "b.example".into()
            }
        );
        assert_eq!(
            classify_iprev(
                me,
                &names,
                &[
                    ("a.example".into(), Answer::Found(vec![ip("192.0.2.9")])),
                    ("b.example".into(), Answer::NotFound),
                ],
            ),
            Iprev::Fail,
            "names that do not lead back"
        );
        assert!(matches!(
            classify_iprev(
                me,
                &names,
                &[
                    ("a.example".into(), Answer::NotFound),
                    ("b.example".into(), Answer::Failed("timeout".into())),
                ],
            ),
            Iprev::TempError { .. }
        ));
        assert_eq!(classify_iprev(me, &Answer::NotFound, &[]), Iprev::PermError);
        assert!(matches!(
            classify_iprev(me, &Answer::Failed("SERVFAIL".into()), &[]),
            Iprev::TempError { .. }
        ));
        assert_eq!(
            classify_iprev(
                ip("::ffff:192.0.2.1"),
                &names,
                &[("a.example".into(), Answer::Found(vec![me]))]
            ),
            Iprev::Pass {
                name: "a.example".into()
            },
            "mapped addresses compare as IPv4"
        );
    }

    #[test]
    fn refusals() {
        let me = ip("192.0.2.1");
        let listed = Verdict {
            dnsbl: vec![
                DnsblResult::NotListed {
                    zone: "a.example".into(),
                },
                DnsblResult::Listed {
                    zone: "b.example".into(),
                    answer: Ipv4Addr::new(127, 0, 0, 2),
                },
            ],
            iprev: Some(Iprev::Fail),
        };
        assert_eq!(
            listed.refusal(me, IprevVerify::Relaxed).unwrap().to_line(),
            "554 5.7.1 Service unavailable; client [192.0.2.1] blocked using b.example"
        );
        let fail = Verdict {
            dnsbl: vec![],
            iprev: Some(Iprev::Fail),
        };
        assert_eq!(
            fail.refusal(me, IprevVerify::Relaxed),
            None,
            "relaxed only logs"
        );
        assert_eq!(
            fail.refusal(me, IprevVerify::Strict).unwrap().to_line(),
            "550 5.7.25 Reverse DNS validation failed"
        );
        let none = Verdict {
            dnsbl: vec![],
            iprev: Some(Iprev::PermError),
        };
        assert_eq!(none.refusal(me, IprevVerify::Strict).unwrap().code, 550);
        let temp = Verdict {
            dnsbl: vec![],
            iprev: Some(Iprev::TempError { reason: "x".into() }),
        };
        let r = temp.refusal(me, IprevVerify::Strict).unwrap();
        assert_eq!((r.code, r.status), (450, "4.7.25"));
        let pass = Verdict {
            dnsbl: vec![],
            iprev: Some(Iprev::Pass { name: "h".into() }),
        };
        assert_eq!(pass.refusal(me, IprevVerify::Strict), None);
        let error = Verdict {
            dnsbl: vec![DnsblResult::Error {
                zone: "a.example".into(),
                reason: "SERVFAIL".into(),
            }],
            iprev: None,
        };
        assert_eq!(
            error.refusal(me, IprevVerify::Strict),
            None,
            "DNSBLs fail open"
        );
    }

    #[test]
    fn postmaster_is_exempt() {
        let local: std::collections::HashSet<String> = ["local.test".to_string()].into();
        assert!(is_postmaster("postmaster", &local));
        assert!(is_postmaster("PostMaster", &local));
        assert!(is_postmaster("postmaster@LOCAL.test", &local));
        assert!(!is_postmaster("postmaster@elsewhere.example", &local));
        assert!(!is_postmaster("user@local.test", &local));
    }
}
