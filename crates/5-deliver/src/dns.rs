//! Where the next hop is: MX resolution (RFC 5321 §5.1, RFC 7505 null MX)
//! and the addresses of each host, with hickory-resolver. The ordering rules
//! are pure functions; [`Dns`] only asks the questions.

use std::net::IpAddr;

use ferrymail_config::{DnsTransport, IpStrategy, ResolverKind};
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::NetError;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{Name, RData, RecordType};
use hickory_resolver::system_conf::read_system_conf;

/// Why no next hop could be found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DnsError {
    /// The domain cannot receive mail, now or later: NXDOMAIN (5.1.2), no
    /// MX and no address records (5.1.2), or a null MX (5.1.10, RFC 7505
    /// §4.2).
    Permanent {
        /// Enhanced status code for the DSN.
        status: &'static str,
        /// What the DNS said.
        reason: String,
    },
    /// Try again later: SERVFAIL, REFUSED, a timeout, no resolver.
    Transient {
        /// What went wrong.
        reason: String,
    },
}

impl std::fmt::Display for DnsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DnsError::Permanent { reason, .. } | DnsError::Transient { reason } => {
                f.write_str(reason)
            }
        }
    }
}

/// The result of an MX lookup, ordered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MxAnswer {
    /// RFC 7505: the domain accepts no mail.
    Null,
    /// Host names to try, in order (no trailing dot).
    Hosts(Vec<String>),
}

/// Orders MX records (RFC 5321 §5.1): lowest preference first, random
/// order among equal preferences (so load spreads as the domain intends),
/// at most `max` hosts. A lone `0 .` record is a null MX (RFC 7505 §3); a
/// `.` among real hosts is ignored, since RFC 7505 forbids the mix and the
/// real hosts are the better guess.
pub fn order_mx(
    mut records: Vec<(u16, String)>,
    max: usize,
    random: &mut impl FnMut() -> u64,
) -> MxAnswer {
    let is_root = |h: &str| h.is_empty() || h == ".";
    if !records.is_empty() && records.iter().all(|(_, h)| is_root(h)) {
        return MxAnswer::Null;
    }
    records.retain(|(_, h)| !is_root(h));
    // Shuffle everything, then sort stably by preference: equal preferences
    // stay in random order.
    for i in (1..records.len()).rev() {
        let j = (random() % (i as u64 + 1)) as usize;
        records.swap(i, j);
    }
    records.sort_by_key(|(pref, _)| *pref);
    let mut hosts: Vec<String> = Vec::new();
    for (_, h) in records {
        let h = h.trim_end_matches('.').to_ascii_lowercase();
        if !hosts.contains(&h) {
            hosts.push(h);
        }
    }
    hosts.truncate(max);
    MxAnswer::Hosts(hosts)
}

/// Combines a host's IPv4 and IPv6 addresses in the configured order, at
/// most `max` of them (`max-multihomed`).
pub fn pick_addresses(
    v4: Vec<IpAddr>,
    v6: Vec<IpAddr>,
    strategy: IpStrategy,
    max: usize,
) -> Vec<IpAddr> {
    let mut out = match strategy {
        IpStrategy::Ipv4ThenIpv6 => [v4, v6].concat(),
        IpStrategy::Ipv6ThenIpv4 => [v6, v4].concat(),
        IpStrategy::Ipv4Only => v4,
        IpStrategy::Ipv6Only => v6,
    };
    out.truncate(max);
    out
}

/// A pseudo-random number from the standard library's per-process random
/// keys; enough to spread load among equal MX preferences without a
/// dependency.
pub fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0x5eed);
    h.finish()
}

/// Parses an address literal domain (RFC 5321 §4.1.3): `[192.0.2.1]` or
/// `[IPv6:2001:db8::1]`.
pub fn address_literal(domain: &str) -> Option<IpAddr> {
    let inner = domain.strip_prefix('[')?.strip_suffix(']')?;
    match inner.get(..5) {
        Some(p) if p.eq_ignore_ascii_case("IPv6:") => {
            inner[5..].parse().ok().filter(IpAddr::is_ipv6)
        }
        _ => inner.parse().ok().filter(IpAddr::is_ipv4),
    }
}

/// The name servers and options `[resolver]` asks for: the system's
/// (`/etc/resolv.conf`) or the `custom` list. Public so that every part of
/// the server that asks the DNS (delivery here, receive's reverse-DNS and
/// DNSBL checks) asks the same servers the same way.
pub fn resolver_setup(
    config: &ferrymail_config::Resolver,
) -> Result<(ResolverConfig, ResolverOpts), String> {
    let (servers, mut options) = match config.kind {
        ResolverKind::System => read_system_conf()
            .map_err(|e| format!("cannot read the system DNS configuration: {e}"))?,
        ResolverKind::Custom => {
            let servers = config
                .servers
                .iter()
                .map(|ns| {
                    let mut conn = match ns.transport {
                        DnsTransport::Udp => ConnectionConfig::udp(),
                        DnsTransport::Tcp => ConnectionConfig::tcp(),
                    };
                    conn.port = ns.addr.port();
                    NameServerConfig::new(ns.addr.ip(), true, vec![conn])
                })
                .collect();
            (
                ResolverConfig::from_name_servers(servers),
                ResolverOpts::default(),
            )
        }
    };
    // Retry a failed query on TCP too; lookups are by FQDN, so the search
    // list never applies.
    options.try_tcp_on_error = true;
    Ok((servers, options))
}

/// One DNS answer, as resolution needs it.
enum Answer {
    Records(Vec<RData>),
    /// NOERROR with no records of the type (NODATA).
    NoData,
    /// The name does not exist.
    NxDomain,
}

/// The resolver: the system's (`/etc/resolv.conf`) or `[resolver] custom`
/// servers. Built once; hickory caches answers within their TTLs. Clones
/// share the resolver and its cache.
#[derive(Clone)]
pub struct Dns {
    resolver: Result<TokioResolver, String>,
}

impl Dns {
    /// Builds the resolver. A failure (no readable `/etc/resolv.conf`) is
    /// kept and reported as a transient error at each lookup, so relay-only
    /// setups work without DNS.
    pub fn new(config: &ferrymail_config::Resolver) -> Dns {
        let resolver = resolver_setup(config).and_then(|(servers, options)| {
            let mut b =
                TokioResolver::builder_with_config(servers, TokioRuntimeProvider::default());
            *b.options_mut() = options;
            b.build()
                .map_err(|e| format!("cannot start the DNS resolver: {e}"))
        });
        Dns { resolver }
    }

    async fn query(&self, name: &str, rtype: RecordType) -> Result<Answer, String> {
        let resolver = self.resolver.as_ref().map_err(Clone::clone)?;
        let fqdn = format!("{}.", name.trim_end_matches('.'));
        match resolver.lookup(fqdn.as_str(), rtype).await {
            Ok(lookup) => {
                let records: Vec<RData> = lookup
                    .answers()
                    .iter()
                    .filter(|r| r.record_type() == rtype)
                    .map(|r| r.data.clone())
                    .collect();
                Ok(if records.is_empty() {
                    Answer::NoData
                } else {
                    Answer::Records(records)
                })
            }
            Err(e) if e.is_nx_domain() => Ok(Answer::NxDomain),
            Err(e) if e.is_no_records_found() => Ok(Answer::NoData),
            Err(e) => Err(describe(&e, name, rtype)),
        }
    }

    /// The TXT records at `name`, each record's character-strings joined
    /// (RFC 8461 §3.1, as RFC 7208 §3.3 does for SPF); empty when the name
    /// or the records do not exist. `Err` for a failed lookup.
    pub async fn txt(&self, name: &str) -> Result<Vec<String>, String> {
        match self.query(name, RecordType::TXT).await? {
            Answer::Records(records) => Ok(records
                .into_iter()
                .filter_map(|r| match r {
                    RData::TXT(t) => Some(
                        t.txt_data
                            .iter()
                            .map(|chunk| String::from_utf8_lossy(chunk))
                            .collect::<String>(),
                    ),
                    _ => None,
                })
                .collect()),
            Answer::NoData | Answer::NxDomain => Ok(Vec::new()),
        }
    }

    /// The hosts to try for mail to `domain`, in order, each with its MX
    /// preference: its MX hosts, or the domain itself (preference 0) when
    /// it has no MX but has addresses (the implicit MX of RFC 5321 §5.1).
    pub async fn mx_hosts(
        &self,
        domain: &str,
        max_mx: usize,
    ) -> Result<Vec<(u16, String)>, DnsError> {
        let transient = |reason| DnsError::Transient { reason };
        match self
            .query(domain, RecordType::MX)
            .await
            .map_err(transient)?
        {
            Answer::NxDomain => Err(DnsError::Permanent {
                status: "5.1.2",
                reason: format!("domain {domain} does not exist (NXDOMAIN)"),
            }),
            Answer::Records(records) => {
                let records: Vec<(u16, String)> = records
                    .into_iter()
                    .filter_map(|r| match r {
                        RData::MX(mx) => Some((mx.preference, mx.exchange.to_ascii())),
                        _ => None,
                    })
                    .collect();
                // A host named twice counts at its best preference, where
                // `order_mx` keeps it.
                let preference = |host: &str| {
                    records
                        .iter()
                        .filter(|(_, h)| h.trim_end_matches('.').eq_ignore_ascii_case(host))
                        .map(|(p, _)| *p)
                        .min()
                        .unwrap_or(0)
                };
                match order_mx(records.clone(), max_mx, &mut random_u64) {
                    MxAnswer::Null => Err(DnsError::Permanent {
                        status: "5.1.10",
                        reason: format!("domain {domain} does not accept mail (null MX, RFC 7505)"),
                    }),
                    MxAnswer::Hosts(hosts) => {
                        Ok(hosts.into_iter().map(|h| (preference(&h), h)).collect())
                    }
                }
            }
            Answer::NoData => {
                // Implicit MX: the domain must have an address record.
                let (a, aaaa) = tokio::join!(
                    self.query(domain, RecordType::A),
                    self.query(domain, RecordType::AAAA)
                );
                match (a, aaaa) {
                    // In A-labels, as MX names are: the host name is what
                    // the certificate and an MTA-STS policy are checked
                    // against (`bücher.example` is `xn--bcher-kva.example`).
                    (Ok(Answer::Records(_)), _) | (_, Ok(Answer::Records(_))) => Ok(vec![(
                        0,
                        Name::from_utf8(domain.trim_end_matches('.')).map_or_else(
                            |_| domain.to_ascii_lowercase(),
                            |n| n.to_ascii().trim_end_matches('.').to_ascii_lowercase(),
                        ),
                    )]),
                    (Err(e), _) | (_, Err(e)) => Err(transient(e)),
                    _ => Err(DnsError::Permanent {
                        status: "5.1.2",
                        reason: format!("domain {domain} has no MX and no address records"),
                    }),
                }
            }
        }
    }

    /// The addresses of `host` in `strategy`'s order, at most `max`.
    pub async fn addresses(
        &self,
        host: &str,
        strategy: IpStrategy,
        max: usize,
    ) -> Result<Vec<IpAddr>, DnsError> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![ip]);
        }
        let want_v4 = strategy != IpStrategy::Ipv6Only;
        let want_v6 = strategy != IpStrategy::Ipv4Only;
        let skip = || async { Ok(Answer::NoData) };
        let (a, aaaa) = tokio::join!(
            async {
                if want_v4 {
                    self.query(host, RecordType::A).await
                } else {
                    skip().await
                }
            },
            async {
                if want_v6 {
                    self.query(host, RecordType::AAAA).await
                } else {
                    skip().await
                }
            }
        );
        let mut failure = None;
        let mut nx = false;
        let mut take = |answer: Result<Answer, String>| match answer {
            Ok(Answer::Records(records)) => records
                .into_iter()
                .filter_map(|r| match r {
                    RData::A(a) => Some(IpAddr::V4(a.0)),
                    RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                    _ => None,
                })
                .collect(),
            Ok(Answer::NoData) => Vec::new(),
            Ok(Answer::NxDomain) => {
                nx = true;
                Vec::new()
            }
            Err(e) => {
                failure = Some(e);
                Vec::new()
            }
        };
        let v4 = take(a);
        let v6 = take(aaaa);
        let addrs = pick_addresses(v4, v6, strategy, max);
        if !addrs.is_empty() {
            return Ok(addrs);
        }
        if let Some(reason) = failure {
            return Err(DnsError::Transient { reason });
        }
        let family = match strategy {
            IpStrategy::Ipv4Only => "IPv4 ",
            IpStrategy::Ipv6Only => "IPv6 ",
            _ => "",
        };
        Err(DnsError::Permanent {
            status: "5.1.2",
            reason: if nx {
                format!("host {host} does not exist (NXDOMAIN)")
            } else {
                format!("host {host} has no {family}address records")
            },
        })
    }
}

/// A transient DNS failure in words.
fn describe(e: &NetError, name: &str, rtype: RecordType) -> String {
    format!("DNS lookup of {rtype} for {name} failed: {e}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixed(values: Vec<u64>) -> impl FnMut() -> u64 {
        let mut i = 0;
        move || {
            i += 1;
            values[(i - 1) % values.len()]
        }
    }

    #[test]
    fn preference_order_and_limit() {
        let records = vec![
            (20, "b.example.".to_string()),
            (10, "A.example.".to_string()),
            (30, "c.example.".to_string()),
        ];
        assert_eq!(
            order_mx(records.clone(), 5, &mut fixed(vec![7, 3, 1])),
            MxAnswer::Hosts(vec![
                "a.example".into(),
                "b.example".into(),
                "c.example".into()
            ])
        );
        assert_eq!(
            order_mx(records, 2, &mut fixed(vec![0])),
            MxAnswer::Hosts(vec!["a.example".into(), "b.example".into()])
        );
    }

    #[test]
    fn equal_preferences_are_shuffled() {
        let records: Vec<(u16, String)> = (0..4)
            .map(|i| (10, format!("mx{i}.example.")))
            .chain([(5, "first.example.".to_string())])
            .collect();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let MxAnswer::Hosts(h) = order_mx(records.clone(), 10, &mut random_u64) else {
                panic!()
            };
            assert_eq!(h[0], "first.example");
            assert_eq!(h.len(), 5);
            seen.insert(h[1].clone());
        }
        assert_eq!(
            seen.len(),
            4,
            "every equal-preference host comes first sometimes"
        );
    }

    #[test]
    fn null_mx() {
        assert_eq!(
            order_mx(vec![(0, ".".into())], 5, &mut random_u64),
            MxAnswer::Null
        );
        assert_eq!(
            order_mx(vec![(0, "".into())], 5, &mut random_u64),
            MxAnswer::Null
        );
        assert_eq!(
            order_mx(
                vec![(0, ".".into()), (10, "mx.example.".into())],
                5,
                &mut random_u64
            ),
            MxAnswer::Hosts(vec!["mx.example".into()])
        );
        assert_eq!(
            order_mx(
                vec![(10, "mx.example".into()), (20, "MX.example.".into())],
                5,
                &mut random_u64
            ),
            MxAnswer::Hosts(vec!["mx.example".into()])
        );
    }

    #[test]
    fn address_order() {
        let v4: Vec<IpAddr> = vec!["192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap()];
        let v6: Vec<IpAddr> = vec!["2001:db8::1".parse().unwrap()];
        assert_eq!(
            pick_addresses(v4.clone(), v6.clone(), IpStrategy::Ipv4ThenIpv6, 5),
            [v4.clone(), v6.clone()].concat()
        );
        assert_eq!(
            pick_addresses(v4.clone(), v6.clone(), IpStrategy::Ipv6ThenIpv4, 2),
            vec![v6[0], v4[0]]
        );
        assert_eq!(
            pick_addresses(v4.clone(), v6.clone(), IpStrategy::Ipv4Only, 1),
            vec![v4[0]]
        );
        assert_eq!(pick_addresses(v4, v6.clone(), IpStrategy::Ipv6Only, 5), v6);
    }

    #[test]
    fn literals() {
        assert_eq!(
            address_literal("[192.0.2.1]"),
            Some("192.0.2.1".parse().unwrap())
        );
        assert_eq!(
            address_literal("[IPv6:2001:db8::1]"),
            Some("2001:db8::1".parse().unwrap())
        );
        assert_eq!(address_literal("[2001:db8::1]"), None);
        assert_eq!(address_literal("[IPv6:192.0.2.1]"), None);
        assert_eq!(address_literal("example.org"), None);
    }
}
