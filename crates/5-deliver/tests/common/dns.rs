//! The test DNS server both the delivery tests (MX resolution) and the
//! end-to-end connection-check and sender-verification tests (DNSBL,
//! iprev, SPF, DKIM, DMARC) use: hickory-server answering from a fixed
//! zone on 127.0.0.1, UDP and TCP on one port, with names that get
//! SERVFAIL and names that get no answer at all, and a log of the
//! questions it was asked. One file,
//! included by `crates/5-deliver/tests/common/mod.rs` and by
//! `crates/ferrymail/tests/dns_support/mod.rs` (`#[path]`), so the two
//! suites test against the same server.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_server::Server;
use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{Metadata, ResponseCode};
use hickory_server::proto::rr::rdata::{A, AAAA, MX, PTR, TXT};
use hickory_server::proto::rr::{Name, RData, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;

/// Records by (name, type), names that exist without records, and names
/// answered with SERVFAIL or not at all; and the questions asked, shared
/// by every clone (so a test can keep one to read them).
#[derive(Default, Clone)]
pub struct Zone {
    records: HashMap<(String, RecordType), Vec<Record>>,
    names: HashSet<String>,
    servfail: HashSet<String>,
    silent: HashSet<String>,
    asked: Arc<Mutex<Vec<(String, RecordType)>>>,
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

    /// An MX record (`"."` for a null MX).
    pub fn mx(self, domain: &str, pref: u16, host: &str) -> Zone {
        let exchange = Name::from_ascii(if host == "." {
            ".".to_string()
        } else {
            fqdn(host)
        })
        .unwrap();
        self.add(domain, RecordType::MX, RData::MX(MX::new(pref, exchange)))
    }

    /// A name that exists with no records (NODATA for every type).
    pub fn empty(mut self, name: &str) -> Zone {
        self.names.insert(fqdn(name));
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

    /// A TXT record, split into character-strings of at most 255 octets
    /// (RFC 1035 §3.3.14) as a long DKIM key must be.
    pub fn txt(self, name: &str, text: &str) -> Zone {
        let chunks: Vec<String> = text
            .as_bytes()
            .chunks(255)
            .map(|c| String::from_utf8(c.to_vec()).unwrap())
            .collect();
        self.add(name, RecordType::TXT, RData::TXT(TXT::new(chunks)))
    }

    /// The questions asked so far, as (name without the trailing dot,
    /// type), in order.
    pub fn asked(&self) -> Vec<(String, RecordType)> {
        self.asked.lock().unwrap().clone()
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

/// Answers queries from a [`Zone`].
pub struct Handler(Zone);

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let builder = MessageResponseBuilder::from_message_request(request);
        let query = &request.queries.queries()[0];
        let name = query.name().to_ascii().to_ascii_lowercase();
        let rtype = query.query_type();
        let zone = &self.0;
        zone.asked
            .lock()
            .unwrap()
            .push((name.trim_end_matches('.').to_string(), rtype));
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

/// Binds the zone's server on a free port (the same number for UDP and
/// TCP); runs on the caller's tokio runtime.
pub async fn serve(zone: Zone) -> (SocketAddr, Server<Handler>) {
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
}
