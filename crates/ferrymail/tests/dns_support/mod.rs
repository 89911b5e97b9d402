//! A real DNS server for the connection-check tests: hickory-server on
//! 127.0.0.1 (UDP and TCP on one port), answering from a fixed zone, with
//! names that get SERVFAIL and names that get no answer at all. The tests
//! are blocking, so the server runs on its own tokio runtime, stopped on
//! drop. Learnt from crates/5-deliver/tests/common/mod.rs.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_server::Server;
use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{Metadata, ResponseCode};
use hickory_server::proto::rr::rdata::{A, AAAA, PTR};
use hickory_server::proto::rr::{Name, RData, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;

/// Records by (name, type), names that exist without records, and names
/// answered with SERVFAIL or not at all.
#[derive(Default, Clone)]
pub struct Zone {
    records: HashMap<(String, RecordType), Vec<Record>>,
    names: HashSet<String>,
    servfail: HashSet<String>,
    silent: HashSet<String>,
}

fn fqdn(name: &str) -> String {
    format!("{}.", name.trim_end_matches('.').to_ascii_lowercase())
}

impl Zone {
    pub fn new() -> Zone {
        Zone::default()
    }

    fn add(mut self, name: &str, rtype: RecordType, data: RData) -> Zone {
        let n = fqdn(name);
        let record = Record::from_rdata(Name::from_ascii(&n).unwrap(), 60, data);
        self.records
            .entry((n.clone(), rtype))
            .or_default()
            .push(record);
        self.names.insert(n);
        self
    }

    /// An A or AAAA record.
    pub fn addr(self, name: &str, ip: &str) -> Zone {
        match ip.parse::<IpAddr>().unwrap() {
            IpAddr::V4(v4) => self.add(name, RecordType::A, RData::A(A(v4))),
            IpAddr::V6(v6) => self.add(name, RecordType::AAAA, RData::AAAA(AAAA(v6))),
        }
    }

    /// A PTR record: `name` (e.g. `1.0.0.127.in-addr.arpa`) points to `host`.
    pub fn ptr(self, name: &str, host: &str) -> Zone {
        let target = Name::from_ascii(fqdn(host)).unwrap();
        self.add(name, RecordType::PTR, RData::PTR(PTR(target)))
    }

    /// Every query for `name` gets SERVFAIL.
    pub fn servfail(mut self, name: &str) -> Zone {
        self.servfail.insert(fqdn(name));
        self
    }

    /// Queries for `name` are never answered (a timeout at the client).
    pub fn silent(mut self, name: &str) -> Zone {
        self.silent.insert(fqdn(name));
        self
    }
}

struct Handler(Zone);

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let builder = MessageResponseBuilder::from_message_request(request);
        let query = &request.queries.queries()[0];
        let name = query.name().to_string().to_ascii_lowercase();
        let rtype = query.query_type();
        let zone = &self.0;
        let mut meta = Metadata::response_from_request(&request.metadata);
        meta.authoritative = true;
        meta.recursion_available = true;
        if zone.silent.contains(&name) {
            // Longer than any client waits; the answer is never seen.
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
        let result = if zone.servfail.contains(&name) {
            response_handle
                .send_response(builder.error_msg(&request.metadata, ResponseCode::ServFail))
                .await
        } else if let Some(records) = zone.records.get(&(name.clone(), rtype)) {
            response_handle
                .send_response(builder.build(meta, records.iter(), [], [], []))
                .await
        } else if zone.names.contains(&name) {
            response_handle
                .send_response(builder.build_no_records(meta))
                .await
        } else {
            meta.response_code = ResponseCode::NXDomain;
            response_handle
                .send_response(builder.build_no_records(meta))
                .await
        };
        result.unwrap_or_else(|e| panic!("DNS test server: {e}"))
    }
}

/// hickory-server answering a [`Zone`] on 127.0.0.1, on its own runtime.
pub struct DnsServer {
    pub addr: SocketAddr,
    _server: Server<Handler>,
    _runtime: tokio::runtime::Runtime,
}

impl DnsServer {
    pub fn start(zone: Zone) -> DnsServer {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (addr, server) = runtime.block_on(async {
            // The same port number for UDP and TCP.
            loop {
                let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
                let addr = udp.local_addr().unwrap();
                let Ok(tcp) = tokio::net::TcpListener::bind(addr).await else {
                    continue;
                };
                let mut server = Server::new(Handler(zone.clone()));
                server.register_socket(udp);
                server.register_listener(tcp, Duration::from_secs(5), 4096);
                return (addr, server);
            }
        });
        DnsServer {
            addr,
            _server: server,
            _runtime: runtime,
        }
    }

    /// The `[resolver]` section that sends Ferrymail's lookups here.
    pub fn resolver_toml(&self) -> String {
        format!(
            "[resolver]\ntype = \"custom\"\ncustom = [\"udp://{}\"]\n",
            self.addr
        )
    }
}

/// The reverse-DNS name of 127.0.0.1, where the tests connect from.
pub const LOOPBACK_PTR: &str = "1.0.0.127.in-addr.arpa";

/// `[session.rcpt]` accepting `local.test`, so recipients there reach the
/// connection checks (relaying is not what these tests are about).
pub const LOCAL_DOMAIN: &str = "[session.rcpt]\nlocal-domains = [\"local.test\"]\n";

/// Whether one line of the server's log contains every one of `needles`,
/// once terminal colour codes are removed (field names are styled, so
/// `zone=x` is not contiguous in the raw text).
pub fn log_has(log: &str, needles: &[&str]) -> bool {
    log.lines().any(|line| {
        let mut plain = String::with_capacity(line.len());
        let mut chars = line.chars();
        while let Some(ch) = chars.next() {
            if ch == '\u{1b}' {
                // CSI: ESC [ parameters final-byte
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            } else {
                plain.push(ch);
            }
        }
        needles.iter().all(|n| plain.contains(n))
    })
}
