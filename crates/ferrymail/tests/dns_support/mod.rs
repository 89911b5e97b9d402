//! A real DNS server for the connection-check tests: the delivery tests'
//! hickory-server (`crates/5-deliver/tests/common/dns.rs`, included here),
//! on its own tokio runtime since these tests are blocking, stopped on
//! drop; and what the connection-check scenarios share.
#![allow(dead_code)]

use std::net::SocketAddr;

#[path = "../../../5-deliver/tests/common/dns.rs"]
mod dns;

pub use dns::Zone;

/// hickory-server answering a [`Zone`] on 127.0.0.1, on its own runtime.
pub struct DnsServer {
    pub addr: SocketAddr,
    /// A clone of the zone served, to read the questions asked.
    zone: Zone,
    _server: hickory_server::Server<dns::Handler>,
    _runtime: tokio::runtime::Runtime,
}

impl DnsServer {
    pub fn start(zone: Zone) -> DnsServer {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (addr, server) = runtime.block_on(dns::serve(zone.clone()));
        DnsServer {
            addr,
            zone,
            _server: server,
            _runtime: runtime,
        }
    }

    /// The questions asked so far: (name without the trailing dot, type).
    pub fn asked(&self) -> Vec<(String, hickory_server::proto::rr::RecordType)> {
        self.zone.asked()
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

/// The DNS server for `zone`, and a Ferrymail resolving through it that
/// accepts `local.test`, with `checks` (its connection-check settings).
/// Keep the DNS server alive as long as the Ferrymail.
pub fn checked_server(zone: Zone, checks: &str) -> (DnsServer, crate::common::Server) {
    let dns = DnsServer::start(zone);
    let s =
        crate::common::Server::start(&format!("{}{LOCAL_DOMAIN}\n{checks}", dns.resolver_toml()));
    (dns, s)
}

/// One message from a@example.org to user@local.test whose body says
/// `body`; the reply to its end of data.
pub fn send_to_local(s: &crate::common::Server, body: &str) -> crate::common::Reply {
    let mut c = s.client();
    c.ehlo();
    c.send_message(
        "a@example.org",
        &["user@local.test"],
        format!("Subject: hello\r\n\r\n{body}\r\n").as_bytes(),
    )
}

/// Whether one line of the server's log contains every one of `needles`
/// (terminal colour codes removed, should there be any).
pub fn log_has(log: &str, needles: &[&str]) -> bool {
    crate::common::strip_ansi(log)
        .lines()
        .any(|line| needles.iter().all(|n| line.contains(n)))
}
