//! Loader tests: the operator contract (INTERFACE.md and the seed blocks,
//! verbatim), every error kind with its exact `FILE:LINE:` text, macros,
//! defaults and the relations between sections.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::*;

const FILE: &str = "/etc/ferrymail.toml";

fn ok(text: &str) -> Config {
    parse(text, Path::new(FILE)).unwrap_or_else(|e| panic!("{e}\n--- config:\n{text}"))
}

/// The first error, as `ferrymail check` prints it.
/// A configuration's warnings as the server prints them.
fn warnings(c: &Config) -> Vec<String> {
    c.warnings.iter().map(ToString::to_string).collect()
}

fn err(text: &str) -> String {
    match parse(text, Path::new(FILE)) {
        Ok(_) => panic!("expected an error for:\n{text}"),
        Err(e) => e.to_string(),
    }
}

/// Every error, one per line.
fn errs(text: &str) -> Vec<String> {
    match check(text, Path::new(FILE)) {
        Ok(_) => panic!("expected errors for:\n{text}"),
        Err(e) => e.iter().map(ToString::to_string).collect(),
    }
}

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "ferrymail-config-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn write(&self, name: &str, contents: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, contents).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const PEM_KEY: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIJ+DYvh6SEqVTm50DFtMDoQikTmiCqirVv9mWG9qfSnF\n-----END PRIVATE KEY-----\n";

/// The example configuration of INTERFACE.md, extracted from the document
/// itself so the test follows the contract if it changes.
fn interface_example() -> String {
    let candidates = [
        "../../../shared/design/INTERFACE.md",
        "/work/shared/design/INTERFACE.md",
    ];
    let doc = candidates
        .iter()
        .map(|p| Path::new(env!("CARGO_MANIFEST_DIR")).join(p))
        .find_map(|p| std::fs::read_to_string(p).ok());
    let Some(doc) = doc else {
        // Outside the workspace checkout: fall back to a copy.
        return INTERFACE_EXAMPLE_COPY.to_string();
    };
    let start = doc.find("```toml\n[server]").expect("example block") + "```toml\n".len();
    let end = start + doc[start..].find("```").expect("end of example");
    doc[start..end].to_string()
}

/// Copy of the INTERFACE.md example, for checkouts without shared/.
const INTERFACE_EXAMPLE_COPY: &str = r#"[server]
hostname = "mx.example.org"            # EHLO/banner name, Reporting-MTA in DSNs

[server.listener.smtp]                   # any number of listeners, any ids
bind = ["0.0.0.0:25"]
protocol = "smtp"                        # smtp | lmtp | http (management API)

[server.listener.management]
bind = ["127.0.0.1:8025"]
protocol = "http"

[store.local]                            # any number of stores, any ids
type = "embedded"                        # embedded | postgresql | fs
path = "/var/lib/ferrymail"

[store.shared]                           # a PostgreSQL store, for several nodes
type = "postgresql"
url = "postgresql://ferry@db.example.org:5432/ferry"

[storage]
data = "local"                           # which store holds envelopes/queue state
blob = "local"                           # which store holds message contents

[session.rcpt]
relay = "false"                          # expr: may this session relay to non-local domains

[queue.schedule]                         # the default schedule (seed syntax, verbatim)
retry  = "[2m, 5m, 10m, 15m, 30m, 1h, 2h]"   # expr; the last interval repeats
notify = "[1d, 3d]"                      # expr; delay DSNs at these ages
expire = "5d"                            # expr; then a failure DSN

[queue.route.sink]                       # named routes
type = "relay"                           # mx | relay
address = "127.0.0.1"
port = 2526
protocol = "smtp"                        # smtp | lmtp

[queue.strategy]
route = "'mx'"                           # expr returning a route id; 'mx' is built in

[report.dsn]                             # seed syntax, verbatim
from-name = "'Mail Delivery Subsystem'"
from-address = "'MAILER-DAEMON@example.org'"
sign = "['rsa']"

[signature.rsa]                          # DKIM signer referenced by report.dsn.sign
private-key = "%{file:/etc/ferrymail/dkim-rsa.pem}%"
domain = "example.org"
selector = "ferry"
algorithm = "rsa-sha256"                 # rsa-sha256 | ed25519-sha256
canonicalization = "relaxed/relaxed"
headers = ["From", "To", "Date", "Subject", "Message-ID"]

[resolver]                               # where MX/A/AAAA/TXT/PTR lookups go
type = "system"                          # system | custom
custom = ["udp://127.0.0.1:5353"]
"#;

fn mins(m: u64) -> Duration {
    Duration::from_secs(m * 60)
}

fn days(d: u64) -> Duration {
    Duration::from_secs(d * 86400)
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

// ------------------------------------------------------------ the contract

const SEED_SCHEDULE: &str = r#"[queue.schedule]
retry = "[2m, 5m, 10m, 15m, 30m, 1h, 2h]"
notify = "[1d, 3d]"
expire = "5d"
"#;

const SEED_DSN: &str = r#"[report.dsn]
from-name = "'Mail Delivery Subsystem'"
from-address = "'MAILER-DAEMON@example.org'"
sign = "['rsa']"
"#;

#[test]
fn seed_schedule_block_verbatim() {
    let c = ok(SEED_SCHEDULE);
    let s = &c.queue.schedules["default"];
    assert_eq!(
        s.retry.eval_durations(&()),
        [2, 5, 10, 15, 30, 60, 120].map(mins).to_vec()
    );
    assert_eq!(s.notify.eval_durations(&()), vec![days(1), days(3)]);
    assert_eq!(s.expire.as_ref().unwrap().eval_duration(&()), Some(days(5)));
    assert!(s.max_attempts.is_none());
    assert!(c.warnings.is_empty());
}

#[test]
fn seed_dsn_block_verbatim() {
    let c = ok(SEED_DSN);
    let dsn = &c.report.dsn;
    assert_eq!(
        dsn.from_name.eval_string(&()).as_deref(),
        Some("Mail Delivery Subsystem")
    );
    assert_eq!(
        dsn.from_address.eval_string(&()).as_deref(),
        Some("MAILER-DAEMON@example.org")
    );
    assert_eq!(dsn.sign.eval_strings(&()), vec!["rsa"]);
    // No [signature.rsa] here: allowed, but worth a warning at the sign line.
    assert_eq!(
        warnings(&c),
        vec![
            "/etc/ferrymail.toml:4: 'report.dsn.sign' names signature 'rsa', which is not defined under [signature.rsa]; DSNs will not be signed with it"
        ]
    );
}

#[test]
fn seed_blocks_together() {
    let c = ok(&format!("{SEED_SCHEDULE}\n{SEED_DSN}"));
    // `default`, and `bounce` (always present, a copy of it).
    assert_eq!(c.queue.schedules.len(), 2);
    assert_eq!(c.report.dsn.sign.eval_strings(&()), vec!["rsa"]);
}

#[test]
fn interface_example_parses() {
    let dir = TempDir::new();
    let key = dir.write("dkim-rsa.pem", PEM_KEY);
    let example = interface_example();
    assert!(example.contains("%{file:/etc/ferrymail/dkim-rsa.pem}%"));
    let text = example.replace("/etc/ferrymail/dkim-rsa.pem", key.to_str().unwrap());
    let c = ok(&text);

    assert_eq!(c.source.as_deref(), Some(Path::new(FILE)));
    assert_eq!(c.server.hostname, "mx.example.org");
    assert_eq!(c.server.listeners.len(), 2);
    let smtp = &c.server.listeners[0];
    assert_eq!(
        (smtp.id.as_str(), &smtp.bind, smtp.protocol),
        ("smtp", &vec![addr("0.0.0.0:25")], Protocol::Smtp)
    );
    let mgmt = c.listener(Protocol::Http).unwrap();
    assert_eq!(
        (mgmt.id.as_str(), &mgmt.bind),
        ("management", &vec![addr("127.0.0.1:8025")])
    );
    assert_eq!(mgmt.token, None);

    assert_eq!(
        c.stores["local"].kind,
        StoreKind::Embedded {
            path: "/var/lib/ferrymail".into()
        }
    );
    assert_eq!(
        c.stores["shared"].kind,
        StoreKind::PostgreSql {
            url: "postgresql://ferry@db.example.org:5432/ferry".into(),
            pool_size: 10,
            tls: false
        }
    );
    assert_eq!(c.stores.len(), 2, "no implicit store when ids are used");
    assert_eq!(c.data_store().unwrap().id, "local");
    assert_eq!(c.blob_store().unwrap().id, "local");

    assert!(!c.session.rcpt.relay.eval_bool(&()));
    let s = &c.queue.schedules["default"];
    assert_eq!(s.retry.eval_durations(&()).len(), 7);
    assert_eq!(s.expire.as_ref().unwrap().eval_duration(&()), Some(days(5)));

    let sink = &c.queue.routes["sink"];
    assert_eq!(
        sink.kind,
        RouteKind::Relay {
            address: "127.0.0.1".into()
        }
    );
    assert_eq!(sink.port, 2526);
    assert_eq!(sink.protocol, DeliveryProtocol::Smtp);
    assert_eq!(c.queue.routes["mx"], Route::mx());
    assert_eq!(
        c.queue.strategy.route.eval_string(&()).as_deref(),
        Some("mx")
    );

    assert_eq!(c.report.dsn.sign.eval_strings(&()), vec!["rsa"]);
    let rsa = &c.signatures["rsa"];
    assert_eq!(rsa.private_key, PEM_KEY.trim_end_matches('\n'));
    assert_eq!(rsa.domain, "example.org");
    assert_eq!(rsa.selector, "ferry");
    assert_eq!(rsa.algorithm, DkimAlgorithm::RsaSha256);
    assert_eq!(
        rsa.canonicalization,
        Canonicalization {
            header: Canon::Relaxed,
            body: Canon::Relaxed
        }
    );
    assert_eq!(rsa.headers, ["From", "To", "Date", "Subject", "Message-ID"]);

    assert_eq!(c.resolver.kind, ResolverKind::System);
    assert_eq!(c.resolver.custom, ["udp://127.0.0.1:5353"]);
    assert_eq!(
        c.resolver.servers,
        [NameServer {
            transport: DnsTransport::Udp,
            addr: addr("127.0.0.1:5353")
        }]
    );
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}

#[test]
fn interface_example_verbatim_only_lacks_the_key_file() {
    let example = interface_example();
    if Path::new("/etc/ferrymail/dkim-rsa.pem").exists() {
        return;
    }
    let line = example.lines().position(|l| l.contains("%{file:")).unwrap() + 1;
    assert_eq!(
        errs(&example),
        vec![format!(
            "/etc/ferrymail.toml:{line}: cannot read '/etc/ferrymail/dkim-rsa.pem' (used as %{{file:/etc/ferrymail/dkim-rsa.pem}}%): No such file or directory (os error 2)"
        )]
    );
}

#[test]
fn interface_conditional_retry() {
    struct Rcpt(&'static str);
    impl Variables for Rcpt {
        fn var(&self, v: Var) -> Value {
            match v {
                Var::RcptDomain => self.0.into(),
                _ => Value::Null,
            }
        }
    }
    let c = ok(r#"
[queue.schedule]
retry = [ { if = "rcpt_domain == 'slow.example'", then = "[10m, 1h]" },
          { else = "[2m, 5m, 10m]" } ]
"#);
    let retry = &c.queue.schedules["default"].retry;
    assert_eq!(
        retry.eval_durations(&Rcpt("slow.example")),
        vec![mins(10), mins(60)]
    );
    assert_eq!(
        retry.eval_durations(&Rcpt("other.example")),
        vec![mins(2), mins(5), mins(10)]
    );
}

// ------------------------------------------------------------ defaults

#[test]
fn defaults() {
    let d = Config::default();
    assert_eq!(d.source, None);
    assert_eq!(d.server.listeners.len(), 2);
    assert_eq!(d.server.listeners[0].bind, [addr("127.0.0.1:2525")]);
    assert_eq!(d.server.listeners[0].protocol, Protocol::Smtp);
    assert_eq!(
        d.listener(Protocol::Http).unwrap().bind,
        [addr("127.0.0.1:8025")]
    );
    assert!(!d.server.hostname.is_empty());
    assert_eq!(d.server.max_connections, 8192);
    assert_eq!(d.server.max_connections_per_ip, 256);
    assert_eq!(d.server.shutdown_grace, Duration::from_secs(30));
    assert_eq!(
        d.data_store().unwrap().kind,
        StoreKind::Embedded {
            path: "./data".into()
        }
    );
    assert_eq!(d.blob_store(), d.data_store());
    assert_eq!(d.session.timeout.command, mins(5));
    assert_eq!(d.session.timeout.data_block, mins(3));
    assert_eq!(d.session.timeout.data_end, mins(5));
    assert_eq!(d.session.max_errors, 10);
    assert_eq!(d.session.max_line_length, 4096);
    assert_eq!(d.session.data.max_message_size, 50 << 20);
    assert_eq!(d.session.data.max_received_headers, 50);
    assert_eq!(d.session.rcpt.max_recipients, 1000);
    assert!(!d.session.rcpt.relay.eval_bool(&()));
    assert!(d.session.tls.starttls);
    assert_eq!(d.queue.max_dynamic_queues, 1000);
    assert_eq!(d.queue.virtual_queues["default"].concurrency, 32);
    assert_eq!(
        d.queue.strategy.queue.eval_string(&()).as_deref(),
        Some("default")
    );
    assert_eq!(
        d.queue.strategy.schedule.eval_string(&()).as_deref(),
        Some("default")
    );
    assert_eq!(
        d.queue.strategy.route.eval_string(&()).as_deref(),
        Some("mx")
    );
    assert_eq!(
        d.report.dsn.from_address.eval_string(&()),
        Some(format!("MAILER-DAEMON@{}", d.server.hostname))
    );
    assert!(d.report.dsn.sign.eval_strings(&()).is_empty());
    assert_eq!(d.resolver.kind, ResolverKind::System);

    // An empty file is the defaults.
    let mut empty = ok("");
    assert_eq!(empty.source.take().as_deref(), Some(Path::new(FILE)));
    assert_eq!(empty, d);
    let mut comments = ok("# nothing but a comment\n");
    comments.source = None;
    assert_eq!(comments, d);
}

#[test]
fn etrn_default_is_loopback_only() {
    struct Ip(&'static str);
    impl Variables for Ip {
        fn var(&self, v: Var) -> Value {
            match v {
                Var::RemoteIp => self.0.into(),
                _ => Value::Null,
            }
        }
    }
    let allow = &Config::default().session.etrn.allow;
    assert!(allow.eval_bool(&Ip("127.0.0.1")));
    assert!(allow.eval_bool(&Ip("::1")));
    assert!(!allow.eval_bool(&Ip("192.0.2.1")));
    assert!(!allow.eval_bool(&()));
}

// ------------------------------------------------------------ sections

#[test]
fn server_and_listeners() {
    let c = ok(r#"
[server]
hostname = "mx1.example.net"
node-id = "node-a"
max-connections = 100
max-connections-per-ip = 5
shutdown-timeout = "10s"

[server.listener.submission]
bind = "[::]:587"

[server.listener.smtps]
bind = ["0.0.0.0:465", "[::]:465"]
tls.implicit = true

[server.listener.lmtp]
bind = ["127.0.0.1:24"]
protocol = "lmtp"

[server.listener.api]
bind = ["127.0.0.1:9000"]
protocol = "http"
token = "s3cret"
"#);
    assert_eq!(c.server.hostname, "mx1.example.net");
    assert_eq!(c.server.node_id.as_deref(), Some("node-a"));
    assert_eq!(c.server.max_connections, 100);
    assert_eq!(c.server.max_connections_per_ip, 5);
    assert_eq!(c.server.shutdown_grace, Duration::from_secs(10));
    let ids: Vec<_> = c.server.listeners.iter().map(|l| l.id.as_str()).collect();
    assert_eq!(ids, ["submission", "smtps", "lmtp", "api"], "file order");
    let l = &c.server.listeners;
    assert_eq!(l[0].bind, [addr("[::]:587")]);
    assert_eq!(
        l[0].protocol,
        Protocol::Smtp,
        "smtp is the default protocol"
    );
    assert!(!l[0].tls_implicit);
    assert!(l[1].tls_implicit);
    assert_eq!(l[1].bind.len(), 2);
    assert_eq!(l[2].protocol, Protocol::Lmtp);
    assert_eq!(l[3].token.as_deref(), Some("s3cret"));
    assert_eq!(
        c.report.dsn.from_address.eval_string(&()).as_deref(),
        Some("MAILER-DAEMON@mx1.example.net"),
        "the DSN sender follows the configured hostname"
    );
}

#[test]
fn lmtp_on_port_25_is_warned_about() {
    let c = ok("[server.listener.lmtp]\nbind = [\"127.0.0.1:24\"]\nprotocol = \"lmtp\"\n");
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    let c = ok("[server.listener.lmtp]\nbind = [\"0.0.0.0:25\"]\nprotocol = \"lmtp\"\n");
    assert_eq!(c.server.listeners[0].protocol, Protocol::Lmtp);
    assert_eq!(
        warnings(&c),
        [
            "/etc/ferrymail.toml:2: 'server.listener.lmtp.bind': LMTP must not be used on port 25 (RFC 2033 §5), which SMTP clients expect to speak SMTP"
        ]
    );
}

#[test]
fn a_token_over_plain_http_beyond_loopback_is_warned_about() {
    let api = |bind: &str, tls: &str| {
        ok(&format!(
            "[server.listener.api]\nbind = [\"{bind}\"]\nprotocol = \"http\"\ntoken = \"t\"\n{tls}"
        ))
    };
    assert!(api("127.0.0.1:8025", "").warnings.is_empty());
    assert!(api("[::1]:8025", "").warnings.is_empty());
    assert!(
        api("0.0.0.0:8443", "tls.implicit = true\n")
            .warnings
            .is_empty()
    );
    assert_eq!(
        warnings(&api("0.0.0.0:8025", "")),
        [
            "/etc/ferrymail.toml:4: 'server.listener.api.token': the management API takes its token in clear text on a non-loopback address; set tls.implicit = true (HTTPS)"
        ]
    );
}

#[test]
fn session_settings() {
    let dir = TempDir::new();
    let cert = dir.write(
        "cert.pem",
        "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
    );
    let key = dir.write("key.pem", PEM_KEY);
    let c = ok(&format!(
        r#"
[certificate.main]
cert = "%{{file:{}}}%"
private-key = "%{{file:{}}}%"

[session]
max-errors = 3
max-line-length = 1000

[session.timeout]
command = "6m"
data-block = "4m"
data-end = "11m"

[session.data]
max-message-size = "10M"
max-received-headers = 30

[session.rcpt]
relay = "in_network(remote_ip, '10.0.0.0/8') || !is_empty(authenticated_as)"
local-domains = ["Example.ORG.", "example.net"]
max-recipients = 100

[session.etrn]
allow = false

[session.tls]
certificate = "main"
starttls = false
"#,
        cert.display(),
        key.display()
    ));
    let s = &c.session;
    assert_eq!(s.max_errors, 3);
    assert_eq!(s.max_line_length, 1000);
    assert_eq!(
        (s.timeout.command, s.timeout.data_block, s.timeout.data_end),
        (mins(6), mins(4), mins(11))
    );
    assert_eq!(s.data.max_message_size, 10 << 20);
    assert_eq!(s.data.max_received_headers, 30);
    assert_eq!(s.rcpt.local_domains, ["example.org", "example.net"]);
    assert_eq!(s.rcpt.max_recipients, 100);
    assert!(
        !s.etrn.allow.eval_bool(&()),
        "a bare TOML boolean is an expression"
    );
    assert_eq!(s.tls.certificate.as_deref(), Some("main"));
    assert!(!s.tls.starttls);
    assert!(
        c.certificates["main"]
            .cert
            .starts_with("-----BEGIN CERTIFICATE-----")
    );
    assert_eq!(
        ok("[session.data]\nmax-message-size = 1000\n")
            .session
            .data
            .max_message_size,
        1000
    );
}

#[test]
fn stores_and_storage() {
    // A value in [storage] may be a supported type: an implicit store with defaults.
    let c = ok("[storage]\ndata = \"postgresql\"\nblob = \"fs\"\n");
    assert_eq!(c.storage.data, "postgresql");
    assert_eq!(
        c.data_store().unwrap().kind,
        StoreKind::PostgreSql {
            url: DEFAULT_POSTGRESQL_URL.into(),
            pool_size: 10,
            tls: false
        }
    );
    assert_eq!(
        c.blob_store().unwrap().kind,
        StoreKind::Fs {
            path: "./data/blobs".into()
        }
    );
    assert_eq!(c.stores.len(), 2);

    // A configured id wins over a type of the same name.
    let c = ok(
        "[store.embedded]\ntype = \"embedded\"\npath = \"/srv/q\"\n[storage]\ndata = \"embedded\"\nblob = \"embedded\"\n",
    );
    assert_eq!(
        c.data_store().unwrap().kind,
        StoreKind::Embedded {
            path: "/srv/q".into()
        }
    );

    // One store and no [storage]: it holds everything.
    let c = ok(
        "[store.pg]\ntype = \"postgresql\"\nurl = \"postgres://db/x\"\npool-size = 4\ntls = true\n",
    );
    assert_eq!(
        (c.storage.data.as_str(), c.storage.blob.as_str()),
        ("pg", "pg")
    );
    assert_eq!(
        c.stores["pg"].kind,
        StoreKind::PostgreSql {
            url: "postgres://db/x".into(),
            pool_size: 4,
            tls: true
        }
    );

    // Only one of data/blob given: the other goes to the same store.
    let c =
        ok("[store.a]\ntype = \"fs\"\n[store.b]\ntype = \"embedded\"\n[storage]\ndata = \"b\"\n");
    assert_eq!(
        (c.storage.data.as_str(), c.storage.blob.as_str()),
        ("b", "b")
    );
    let c = ok("[storage]\nblob = \"postgresql\"\n");
    assert_eq!(c.storage.data, "postgresql");
    assert_eq!(c.stores.len(), 1);

    // Data in PostgreSQL, contents on the file system.
    let c = ok(
        "[store.pg]\ntype = \"postgresql\"\nurl = \"postgresql://db/x\"\n[store.files]\ntype = \"fs\"\npath = \"/var/spool/ferry\"\n[storage]\ndata = \"pg\"\nblob = \"files\"\n",
    );
    assert_eq!(c.blob_store().unwrap().id, "files");
    assert_eq!(c.stores.len(), 2);
}

#[test]
fn unsupported_store_type_lists_the_supported_ones() {
    // The seed's own example names a backend Ferrymail does not have.
    let text = "[storage]\ndata = \"foundationdb\"\nblob = \"foundationdb\"\n";
    assert_eq!(
        errs(text),
        vec![
            "/etc/ferrymail.toml:2: 'storage.data' = 'foundationdb' is neither a store defined under [store.<id>] nor a supported store type (supported types: embedded, postgresql, fs)",
            "/etc/ferrymail.toml:3: 'storage.blob' = 'foundationdb' is neither a store defined under [store.<id>] nor a supported store type (supported types: embedded, postgresql, fs)",
        ]
    );
    assert_eq!(
        err("[store.local]\ntype = \"embedded\"\n[storage]\ndata = \"lcoal\"\nblob = \"local\"\n"),
        "/etc/ferrymail.toml:4: 'storage.data' = 'lcoal' is neither a store defined under [store.<id>] (defined: local) nor a supported store type (supported types: embedded, postgresql, fs)"
    );
    assert_eq!(
        err("[store.x]\ntype = \"foundationdb\"\n"),
        "/etc/ferrymail.toml:2: 'store.x.type' must be one of embedded, postgresql, fs, found 'foundationdb'"
    );
    assert_eq!(
        err("[store.a]\ntype = \"fs\"\n[store.b]\ntype = \"fs\"\n"),
        "/etc/ferrymail.toml:1: [storage] must say which store holds data and blob, because several are defined (a, b)"
    );
}

#[test]
fn fs_store_holds_no_queue_data() {
    // Named in [storage] data, as a configured store or as a type.
    assert_eq!(
        err(
            "[store.files]\ntype = \"fs\"\n[store.q]\ntype = \"embedded\"\n[storage]\ndata = \"files\"\nblob = \"files\"\n"
        ),
        "/etc/ferrymail.toml:6: 'storage.data' = 'files': an fs store holds message contents only; queue data needs an embedded or postgresql store"
    );
    assert_eq!(
        err("[storage]\ndata = \"fs\"\nblob = \"fs\"\n"),
        "/etc/ferrymail.toml:2: 'storage.data' = 'fs': an fs store holds message contents only; queue data needs an embedded or postgresql store"
    );
    // Only blob given: data would follow it.
    assert_eq!(
        err("[store.files]\ntype = \"fs\"\n[storage]\nblob = \"files\"\n"),
        "/etc/ferrymail.toml:4: 'storage.blob' = 'files' and [storage] data is not set, so queue data would go there too: an fs store holds message contents only; queue data needs an embedded or postgresql store; set [storage] data"
    );
    // The only store, no [storage]: it would hold everything.
    assert_eq!(
        err(
            "[server]\nhostname = \"mx.example.org\"\n\n[store.files]\ntype = \"fs\"\npath = \"/srv/blobs\"\n"
        ),
        "/etc/ferrymail.toml:4: store 'files' is the only store, so it would hold queue data: an fs store holds message contents only; queue data needs an embedded or postgresql store; define one and name it in [storage] data"
    );
    // Contents in files with data elsewhere is fine.
    let c = ok(
        "[store.files]\ntype = \"fs\"\n[store.q]\ntype = \"embedded\"\n[storage]\ndata = \"q\"\nblob = \"files\"\n",
    );
    assert_eq!(
        (c.storage.data.as_str(), c.storage.blob.as_str()),
        ("q", "files")
    );
}

#[test]
fn queue_sections() {
    let c = ok(r#"
[queue]
priority = [ { if = "size > 1000000", then = 1 }, { else = 10 } ]
max-dynamic-queues = 50

[queue.schedule]
retry = "[1m, 10m]"
notify = "[1h]"
expire = "2d"

[queue.schedule.bulk]
retry = "[30m]"

[queue.schedule.tries]
max-attempts = 5

[queue.virtual.default]
concurrency = 16

[queue.virtual.bulk]
concurrency = 4
rate = "500/1s"
schedule = "bulk"

[queue.virtual.trickle]
rate = "10/m"

[queue.strategy]
queue = [ { if = "ends_with(rcpt_domain, '.bulk')", then = "'bulk'" }, { else = "'default'" } ]
schedule = "'default'"
route = "'relay1'"

[queue.route.relay1]
type = "relay"
address = "smarthost.example.net"
port = 587
tls.mode = "require"
tls.allow-invalid-certs = true
auth.username = "user"
auth.secret = "pass"

[queue.route.local]
type = "relay"
address = "127.0.0.1"
port = 24
protocol = "lmtp"
tls.implicit = true

[queue.route.mx]
type = "mx"
port = 2525
"#);
    let q = &c.queue;
    struct Size(i64);
    impl Variables for Size {
        fn var(&self, v: Var) -> Value {
            match v {
                Var::Size => Value::Int(self.0),
                _ => Value::Null,
            }
        }
    }
    let priority = q.priority.as_ref().unwrap();
    assert_eq!(priority.eval_int(&Size(2_000_000)), Some(1));
    assert_eq!(priority.eval_int(&Size(2_000)), Some(10));
    assert_eq!(q.max_dynamic_queues, 50);
    // Named schedules inherit what they do not set from [queue.schedule].
    let bulk = &q.schedules["bulk"];
    assert_eq!(bulk.retry.eval_durations(&()), vec![mins(30)]);
    assert_eq!(bulk.notify.eval_durations(&()), vec![mins(60)]);
    assert_eq!(
        bulk.expire.as_ref().unwrap().eval_duration(&()),
        Some(days(2))
    );
    let tries = &q.schedules["tries"];
    assert_eq!(tries.max_attempts.as_ref().unwrap().eval_int(&()), Some(5));
    assert!(
        tries.expire.is_none(),
        "max-attempts replaces an inherited expire"
    );
    // default, bounce (always present), bulk, tries.
    assert_eq!(q.schedules.len(), 4);

    assert_eq!(q.virtual_queues["default"].concurrency, 16);
    let vb = &q.virtual_queues["bulk"];
    assert_eq!(vb.concurrency, 4);
    assert_eq!(
        vb.rate,
        Some(Rate {
            count: 500,
            period: Duration::from_secs(1)
        })
    );
    assert_eq!(vb.schedule.as_deref(), Some("bulk"));
    assert_eq!(
        q.virtual_queues["trickle"].rate,
        Some(Rate {
            count: 10,
            period: mins(1)
        })
    );

    let r = &q.routes["relay1"];
    assert_eq!(r.port, 587);
    assert_eq!(r.tls.mode, TlsMode::Require);
    assert!(r.tls.allow_invalid_certs);
    assert!(!r.tls.implicit);
    assert_eq!(
        r.auth,
        Some(RouteAuth {
            username: "user".into(),
            secret: "pass".into()
        })
    );
    let l = &q.routes["local"];
    assert_eq!(l.protocol, DeliveryProtocol::Lmtp);
    assert!(l.tls.implicit);
    assert_eq!(q.routes["mx"].kind, RouteKind::Mx);
    assert_eq!(q.routes["mx"].port, 2525, "the mx route may be redefined");
    assert_eq!(q.strategy.route.eval_string(&()).as_deref(), Some("relay1"));
}

#[test]
fn signatures_and_resolver() {
    let dir = TempDir::new();
    let key = dir.write("ed.pem", PEM_KEY);
    let c = ok(&format!(
        r#"
[signature.ed]
private-key = "%{{file:{}}}%"
domain = "example.org"
selector = "ed"
algorithm = "ed25519-sha256"
canonicalization = "relaxed"

[report.dsn]
sign = "['ed']"

[resolver]
type = "custom"
custom = ["tcp://[2001:db8::53]:5353", "192.0.2.53", "udp://192.0.2.54"]
"#,
        key.display()
    ));
    let ed = &c.signatures["ed"];
    assert_eq!(ed.algorithm, DkimAlgorithm::Ed25519Sha256);
    assert_eq!(
        ed.canonicalization,
        Canonicalization {
            header: Canon::Relaxed,
            body: Canon::Simple
        },
        "one word sets the header algorithm; the body stays simple (RFC 6376 3.5 c=)"
    );
    assert_eq!(
        ed.headers,
        DEFAULT_SIGNED_HEADERS.map(String::from).to_vec()
    );
    assert!(c.warnings.is_empty());
    assert_eq!(c.resolver.kind, ResolverKind::Custom);
    assert_eq!(
        c.resolver.servers,
        [
            NameServer {
                transport: DnsTransport::Tcp,
                addr: addr("[2001:db8::53]:5353")
            },
            NameServer {
                transport: DnsTransport::Udp,
                addr: addr("192.0.2.53:53")
            },
            NameServer {
                transport: DnsTransport::Udp,
                addr: addr("192.0.2.54:53")
            },
        ]
    );
}

// ------------------------------------------------------------ macros

#[test]
fn env_macro() {
    // PATH is set wherever tests run; reading it avoids mutating the
    // process environment from a multi-threaded test binary.
    let path = std::env::var("PATH").expect("PATH is set");
    let c = ok(
        "[server.listener.api]\nbind = \"127.0.0.1:9000\"\nprotocol = \"http\"\ntoken = \"%{env:PATH}%\"\n",
    );
    assert_eq!(c.server.listeners[0].token.as_deref(), Some(path.as_str()));
    let c = ok("[server]\nnode-id = \"a-%{env:PATH}%-b\"\n");
    assert_eq!(c.server.node_id, Some(format!("a-{path}-b")));
    assert_eq!(
        err("[server]\nhostname = \"mx\"\nnode-id = \"%{env:FERRYMAIL_SURELY_UNSET_VARIABLE}%\"\n"),
        "/etc/ferrymail.toml:3: environment variable 'FERRYMAIL_SURELY_UNSET_VARIABLE' is not set (used as %{env:FERRYMAIL_SURELY_UNSET_VARIABLE}%)"
    );
}

#[test]
fn file_macro() {
    let dir = TempDir::new();
    let secret = dir.write("secret", "tok3n\n");
    let sec = secret.display();
    // Whole value: one trailing newline dropped.
    let c = ok(&format!(
        "[server.listener.api]\nbind = \"127.0.0.1:9000\"\nprotocol = \"http\"\ntoken = \"%{{file:{sec}}}%\"\n"
    ));
    assert_eq!(c.server.listeners[0].token.as_deref(), Some("tok3n"));
    // Embedded: inserted verbatim.
    let c = ok(&format!("[server]\nnode-id = \"<%{{file:{sec}}}%>\"\n"));
    assert_eq!(c.server.node_id.as_deref(), Some("<tok3n\n>"));
    // CRLF files lose their CRLF too; only one line ending goes.
    let crlf = dir.write("crlf", "x\r\n\r\n");
    let c = ok(&format!(
        "[server]\nnode-id = \"%{{file:{}}}%\"\n",
        crlf.display()
    ));
    assert_eq!(c.server.node_id.as_deref(), Some("x\r\n"));
    // Macros feed expressions, inside arrays too.
    let expr = dir.write("retry", "[3m, 7m]\n");
    let c = ok(&format!(
        "[queue.schedule]\nretry = \"%{{file:{}}}%\"\n[server.listener.a]\nbind = [\"%{{file:{}}}%\"]\n",
        expr.display(),
        dir.write("bind", "127.0.0.1:2600\n").display()
    ));
    assert_eq!(
        c.queue.schedules["default"].retry.eval_durations(&()),
        vec![mins(3), mins(7)]
    );
    assert_eq!(c.server.listeners[0].bind, [addr("127.0.0.1:2600")]);
    // Missing file.
    let missing = dir.0.join("nope");
    assert_eq!(
        err(&format!(
            "\n[server]\nnode-id = \"%{{file:{}}}%\"\n",
            missing.display()
        )),
        format!(
            "/etc/ferrymail.toml:3: cannot read '{}' (used as %{{file:{}}}%): No such file or directory (os error 2)",
            missing.display(),
            missing.display()
        )
    );
}

#[test]
fn file_macro_relative_to_config_dir() {
    let dir = TempDir::new();
    dir.write("token.txt", "from-dir\n");
    let cfg = dir.write(
        "ferrymail.toml",
        "[server.listener.api]\nbind = \"127.0.0.1:9000\"\nprotocol = \"http\"\ntoken = \"%{file:token.txt}%\"\n",
    );
    let c = load(&cfg).unwrap();
    assert_eq!(c.server.listeners[0].token.as_deref(), Some("from-dir"));
    assert_eq!(c.source.as_deref(), Some(cfg.as_path()));
}

#[test]
fn bad_macros() {
    assert_eq!(
        err("[server]\nnode-id = \"%{envv:X}%\"\n"),
        "/etc/ferrymail.toml:2: unknown macro '%{envv:...}%': macros are written %{env:NAME}% or %{file:PATH}%"
    );
    assert_eq!(
        err("[server]\nnode-id = \"%{env:X\"\n"),
        "/etc/ferrymail.toml:2: unterminated macro '%{env:X': macros are written %{env:NAME}% or %{file:PATH}%"
    );
    assert_eq!(
        err("[server]\nnode-id = \"%{env:}%\"\n"),
        "/etc/ferrymail.toml:2: empty variable name in %{env:}%"
    );
}

// ------------------------------------------------------------ every error kind

#[test]
fn error_kinds_exact_text() {
    let table: Vec<(&str, &str)> = vec![
        // TOML syntax
        (
            "[server]\nhostname = \n",
            "/etc/ferrymail.toml:2: invalid TOML: string values must be quoted, expected literal string",
        ),
        (
            "[server]\nhostname = \"a\"\nhostname = \"b\"\n",
            "/etc/ferrymail.toml:3: invalid TOML: duplicate key",
        ),
        // unknown keys, with and without a suggestion, at every level
        (
            "[sever]\nhostname = \"x\"\n",
            "/etc/ferrymail.toml:1: unknown key 'sever' in the top-level table; did you mean 'server'?",
        ),
        (
            "\n[queue.schedule]\nretry = \"[1m]\"\nretyr = \"[2m]\"\n",
            "/etc/ferrymail.toml:4: unknown key 'retyr' in [queue.schedule]; did you mean 'retry'?",
        ),
        (
            "[queue.schedule.slow]\nnotfy = \"[1d]\"\n",
            "/etc/ferrymail.toml:2: unknown key 'notfy' in [queue.schedule.slow]; did you mean 'notify'?",
        ),
        (
            "[server]\ncolour = \"blue\"\n",
            "/etc/ferrymail.toml:2: unknown key 'colour' in [server]",
        ),
        (
            "[server.listener.smtp]\nbind = \"127.0.0.1:25\"\nprotocl = \"smtp\"\n",
            "/etc/ferrymail.toml:3: unknown key 'protocl' in [server.listener.smtp]; did you mean 'protocol'?",
        ),
        (
            "[server.listener.smtp]\nbind = \"127.0.0.1:25\"\ntls.implict = true\n",
            "/etc/ferrymail.toml:3: unknown key 'implict' in [server.listener.smtp.tls]; did you mean 'implicit'?",
        ),
        (
            "[session.timeout]\ncomand = \"5m\"\n",
            "/etc/ferrymail.toml:2: unknown key 'comand' in [session.timeout]; did you mean 'command'?",
        ),
        (
            "[store.db]\ntype = \"embedded\"\nurl = \"postgresql://x\"\n",
            "/etc/ferrymail.toml:3: unknown key 'url' in [store.db]",
        ),
        (
            "[report.dsn]\nfrom-adress = \"'a@b'\"\n",
            "/etc/ferrymail.toml:2: unknown key 'from-adress' in [report.dsn]; did you mean 'from-address'?",
        ),
        (
            "[queue.virtual]\nconcurrency = 3\n",
            "/etc/ferrymail.toml:2: 'queue.virtual.concurrency' must be a table, found an integer",
        ),
        // wrong types
        (
            "[session]\nmax-errors = \"ten\"\n",
            "/etc/ferrymail.toml:2: 'session.max-errors' must be an integer, found a string",
        ),
        (
            "[server]\nhostname = 5\n",
            "/etc/ferrymail.toml:2: 'server.hostname' must be a string, found an integer",
        ),
        (
            "server = \"x\"\n",
            "/etc/ferrymail.toml:1: 'server' must be a table, found a string",
        ),
        (
            "[session.tls]\nstarttls = \"yes\"\n",
            "/etc/ferrymail.toml:2: 'session.tls.starttls' must be a boolean (true or false), found a string",
        ),
        (
            "[server.listener.a]\nbind = [25]\n",
            "/etc/ferrymail.toml:2: 'server.listener.a.bind' must be a string (in this array), found an integer",
        ),
        (
            "[server]\nshutdown-timeout = 30\n",
            "/etc/ferrymail.toml:2: 'server.shutdown-timeout' must be a duration string such as \"30s\", found an integer",
        ),
        (
            "[queue.schedule]\nretry = 1.5\n",
            "/etc/ferrymail.toml:2: 'queue.schedule.retry' must be an expression (a string, integer or boolean) or an if/then/else array, found a float",
        ),
        // ranges
        (
            "[session]\nmax-line-length = 100\n",
            "/etc/ferrymail.toml:2: 'session.max-line-length' must be at least 512, found 100",
        ),
        (
            "[queue.route.r]\ntype = \"relay\"\naddress = \"x\"\nport = 70000\n",
            "/etc/ferrymail.toml:4: 'queue.route.r.port' must be between 1 and 65535, found 70000",
        ),
        // durations and sizes
        (
            "[server]\nshutdown-timeout = \"5 minutes\"\n",
            "/etc/ferrymail.toml:2: invalid duration '5 minutes' for 'server.shutdown-timeout': unknown unit ' minutes'; use a number followed by ms, s, m, h, d or w, e.g. 30s",
        ),
        (
            "[session.timeout]\ndata-end = \"10\"\n",
            "/etc/ferrymail.toml:2: invalid duration '10' for 'session.timeout.data-end': missing unit; use a number followed by ms, s, m, h, d or w, e.g. 30s",
        ),
        (
            "[session.data]\nmax-message-size = \"10T\"\n",
            "/etc/ferrymail.toml:2: invalid size '10T' for 'session.data.max-message-size': unknown size unit 't'; use a number of bytes or a number followed by K, M or G, e.g. 50M",
        ),
        (
            "[queue.virtual.q]\nrate = \"fast\"\n",
            "/etc/ferrymail.toml:2: invalid rate 'fast' for 'queue.virtual.q.rate': write COUNT/PERIOD, e.g. 500/1s",
        ),
        // socket addresses
        (
            "[server.listener.smtp]\nbind = [\"0.0.0.0\"]\n",
            "/etc/ferrymail.toml:2: invalid socket address '0.0.0.0' for 'server.listener.smtp.bind': expected IP:PORT, e.g. 0.0.0.0:25 or [::]:25",
        ),
        (
            "[server.listener.smtp]\nbind = [\n  \"127.0.0.1:25\",\n  \"localhost:25\",\n]\n",
            "/etc/ferrymail.toml:4: invalid socket address 'localhost:25' for 'server.listener.smtp.bind': expected IP:PORT, e.g. 0.0.0.0:25 or [::]:25",
        ),
        (
            "[server.listener.a]\nbind = \"127.0.0.1:25\"\n[server.listener.b]\nbind = \"127.0.0.1:25\"\n",
            "/etc/ferrymail.toml:4: address 127.0.0.1:25 of listener 'b' is already bound by listener 'a'",
        ),
        // expressions
        (
            "[session.rcpt]\nrelay = \"rcpt_domian == 'x'\"\n",
            "/etc/ferrymail.toml:2: invalid expression for 'session.rcpt.relay': unknown variable 'rcpt_domian'; did you mean 'rcpt_domain'? (column 1)",
        ),
        (
            "[queue.strategy]\nroute = \"'dom-' + rcpt_domain + \"\n",
            "/etc/ferrymail.toml:2: invalid expression for 'queue.strategy.route': expected a value, found end of expression (column 24)",
        ),
        (
            "[session.etrn]\nallow = \"is_local(remote_ip)\"\n",
            "/etc/ferrymail.toml:2: invalid expression for 'session.etrn.allow': unknown function 'is_local'; did you mean 'is_loopback'? (column 1)",
        ),
        (
            "[queue.schedule]\nretry = [ { if = \"size > 10\", then = \"[1m]\" },\n          { if = \"sizee > 100\", then = \"[2m]\" },\n          { else = \"[3m]\" } ]\n",
            "/etc/ferrymail.toml:3: invalid expression for 'queue.schedule.retry': unknown variable 'sizee'; did you mean 'size'? (column 1)",
        ),
        (
            "[queue.schedule]\nretry = [ { if = \"size > 10\", then = \"[1m]\" } ]\n",
            "/etc/ferrymail.toml:2: 'queue.schedule.retry' must end with { else = \"...\" }, the value when no condition holds",
        ),
        (
            "[queue.schedule]\nretry = [ { else = \"[1m]\" },\n  { if = \"true\", then = \"[1m]\" } ]\n",
            "/etc/ferrymail.toml:2: 'else' in 'queue.schedule.retry' must be in the last element of the array",
        ),
        (
            "[queue.schedule]\nretry = [ { if = \"true\" },\n  { else = \"[1m]\" } ]\n",
            "/etc/ferrymail.toml:2: each element of 'queue.schedule.retry' needs both 'if' and 'then', except the last, which is { else = \"...\" }",
        ),
        (
            "[queue.schedule]\nretry = [ { if = \"true\", then = \"[1m]\", than = 1 },\n  { else = \"[1m]\" } ]\n",
            "/etc/ferrymail.toml:2: unknown key 'than' in [queue.schedule.retry[0]]; did you mean 'then'?",
        ),
        (
            "[queue.schedule]\nretry = \"'soon'\"\n",
            "/etc/ferrymail.toml:2: 'queue.schedule.retry' must give a non-empty list of durations longer than 0s, such as [2m, 5m, 1h], but gives 'soon'",
        ),
        (
            "[queue.schedule]\nretry = \"[1m, 0s]\"\n",
            "/etc/ferrymail.toml:2: 'queue.schedule.retry' must give a non-empty list of durations longer than 0s, such as [2m, 5m, 1h], but gives [1m, 0s]",
        ),
        (
            "[queue.schedule]\nmax-attempts = 0\nexpire = \"1d\"\n",
            "/etc/ferrymail.toml:2: 'queue.schedule.max-attempts' and 'expire' are alternatives; set only one of them in [queue.schedule]",
        ),
        (
            "[report.dsn]\nfrom-address = \"'postmaster'\"\n",
            "/etc/ferrymail.toml:2: 'report.dsn.from-address' must give an address such as 'MAILER-DAEMON@example.org', but gives 'postmaster'",
        ),
        // choices
        (
            "[server.listener.smtp]\nbind = \"127.0.0.1:25\"\nprotocol = \"smpt\"\n",
            "/etc/ferrymail.toml:3: 'server.listener.smtp.protocol' must be one of smtp, lmtp, http, found 'smpt'; did you mean 'smtp'?",
        ),
        (
            "[queue.route.r]\ntype = \"relay\"\naddress = \"x\"\ntls.mode = \"required\"\n",
            "/etc/ferrymail.toml:4: 'queue.route.r.tls.mode' must be one of optional, require, disable, found 'required'; did you mean 'require'?",
        ),
        (
            "[resolver]\ntype = \"google\"\n",
            "/etc/ferrymail.toml:2: 'resolver.type' must be one of system, custom, found 'google'",
        ),
        // missing keys
        (
            "\n[server.listener.smtp]\nprotocol = \"smtp\"\n",
            "/etc/ferrymail.toml:2: missing required key 'bind' in [server.listener.smtp]",
        ),
        (
            "[queue.route.r]\ntype = \"relay\"\n",
            "/etc/ferrymail.toml:1: missing required key 'address' in [queue.route.r] (type = \"relay\")",
        ),
        (
            "[store.s]\npath = \"/x\"\n",
            "/etc/ferrymail.toml:1: missing required key 'type' in [store.s]",
        ),
        // references
        (
            "[session.tls]\ncertificate = \"main\"\n",
            "/etc/ferrymail.toml:2: 'session.tls.certificate' refers to certificate 'main', which is not defined",
        ),
        (
            "[queue.schedule.bulk]\nretry = \"[1h]\"\n[queue.virtual.q]\nschedule = \"blk\"\n",
            "/etc/ferrymail.toml:4: 'queue.virtual.q.schedule' refers to schedule 'blk', which is not defined; did you mean 'bulk'?",
        ),
        (
            "[queue.strategy]\nroute = \"'relay'\"\n",
            "/etc/ferrymail.toml:2: 'queue.strategy.route' refers to route 'relay', which is not defined",
        ),
        (
            "[queue.schedule.default]\nretry = \"[1h]\"\n",
            "/etc/ferrymail.toml:1: schedule id 'default' is reserved for the keys of [queue.schedule] itself; pick another id",
        ),
        // other invalid values
        (
            "[server.listener.smtp]\nbind = \"127.0.0.1:25\"\ntoken = \"t\"\n",
            "/etc/ferrymail.toml:3: 'server.listener.smtp.token' is only used by listeners with protocol = \"http\" (the management API)",
        ),
        (
            "[server.listener.api]\nbind = \"127.0.0.1:8025\"\nprotocol = \"http\"\nsubmit-token = \"s\"\n",
            "/etc/ferrymail.toml:4: 'server.listener.api.submit-token' needs 'server.listener.api.token': without a token the whole API is open to loopback clients",
        ),
        (
            "[server.listener.api]\nbind = \"127.0.0.1:8025\"\nprotocol = \"http\"\ntoken = \"t\"\nsubmit-token = \"t\"\n",
            "/etc/ferrymail.toml:5: 'server.listener.api.submit-token' must differ from 'server.listener.api.token', or it grants everything the token does",
        ),
        (
            "[queue.route.m]\ntype = \"mx\"\naddress = \"x\"\n",
            "/etc/ferrymail.toml:3: 'queue.route.m.address' is only used by relay routes; an mx route looks the host up in DNS",
        ),
        (
            "[signature.s]\nprivate-key = \"abc\"\ndomain = \"d\"\nselector = \"s\"\n",
            "/etc/ferrymail.toml:2: 'signature.s.private-key' is not a PEM private key (no '-----BEGIN' line); use %{file:/path/to/key.pem}%",
        ),
        (
            "[resolver]\ncustom = [\"dns.google\"]\n",
            "/etc/ferrymail.toml:2: invalid name server 'dns.google' for 'resolver.custom': write udp://IP[:PORT], tcp://IP[:PORT], IP or IP:PORT",
        ),
        (
            "[store.pg]\ntype = \"postgresql\"\nurl = \"mysql://x\"\n",
            "/etc/ferrymail.toml:3: 'store.pg.url' must be a postgresql:// URL, e.g. postgresql://user@host:5432/db",
        ),
    ];
    let mut failures = Vec::new();
    for (text, want) in &table {
        let got = match parse(text, Path::new(FILE)) {
            Ok(_) => "<parsed without error>".to_string(),
            Err(e) => e.to_string(),
        };
        if got != *want {
            failures.push(format!("config:\n{text}\n  want: {want}\n  got:  {got}\n"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn error_struct_fields() {
    let e = parse("[server]\n\nhostnme = \"x\"\n", Path::new("/tmp/x.toml")).unwrap_err();
    assert_eq!(e.path, PathBuf::from("/tmp/x.toml"));
    assert_eq!(e.line, 3);
    assert_eq!(
        *e.problem,
        Problem::UnknownKey {
            key: "hostnme".into(),
            section: "[server]".into(),
            suggestion: Some("hostname".into())
        }
    );
}

#[test]
fn all_errors_sorted_by_line() {
    let text = "[session]\nmax-errors = \"x\"\n[server]\nhostnme = \"a\"\n[storage]\ndata = \"foundationdb\"\n[queue.schedule]\nretry = \"bogus\"\n";
    let all = errs(text);
    let lines: Vec<&str> = all.iter().map(|e| e.split(':').nth(1).unwrap()).collect();
    assert_eq!(lines, ["2", "4", "6", "8"], "{all:#?}");
    assert_eq!(err(text), all[0], "parse returns the first");
}

#[test]
fn load_errors() {
    let dir = TempDir::new();
    let missing = dir.0.join("missing.toml");
    let e = load(&missing).unwrap_err();
    assert_eq!(e.line, 1);
    assert_eq!(
        e.to_string(),
        format!(
            "{}:1: cannot read configuration: No such file or directory (os error 2)",
            missing.display()
        )
    );
    let bad = dir.0.join("latin1.toml");
    std::fs::write(&bad, b"[server]\nhostname = \"caf\xe9\"\n").unwrap();
    assert_eq!(
        load(&bad).unwrap_err().to_string(),
        format!(
            "{}:1: cannot read configuration: the file is not valid UTF-8",
            bad.display()
        )
    );
    let good = dir.write("ok.toml", "[server]\nhostname = \"h\"\n");
    assert_eq!(load(&good).unwrap().server.hostname, "h");
    assert!(check_file(&good).is_ok());
}

/// Fuzz-ish property: arbitrary short documents built from TOML and
/// configuration fragments never make the loader panic.
#[test]
fn parsing_never_panics() {
    let fragments = [
        "",
        "\n",
        "[server]\n",
        "[queue.schedule]\n",
        "[queue.schedule.x]\n",
        "[storage]\n",
        "[store.a]\n",
        "[[server]]\n",
        "retry = \"[1m]\"\n",
        "retry = [ { if = \"true\", then = \"1m\" }, { else = \"2m\" } ]\n",
        "retry = [ {}, 1 ]\n",
        "retry = []\n",
        "type = \"fs\"\n",
        "data = \"a\"\n",
        "bind = [\"[::]:1\"]\n",
        "hostname = 1990-01-01\n",
        "x = { y = { z = 1 } }\n",
        "a.b.c = \"%{env:\"\n",
        "\"quoted key\" = \"%{file:}%\"\n",
        "= =\n",
        "[",
        "é = 'é'\n",
    ];
    let mut n = 0;
    for a in fragments {
        for b in fragments {
            for c in fragments {
                let text = format!("{a}{b}{c}");
                let _ = check(&text, Path::new(FILE));
                n += 1;
            }
        }
    }
    assert_eq!(n, fragments.len().pow(3));
}

// ---------------------------------------------------------------- [queue.outbound]

#[test]
fn outbound_defaults_are_rfc_5321_client_timeouts() {
    let c = ok("");
    let o = &c.queue.outbound;
    assert_eq!(o.timeout.connect, Duration::from_secs(30));
    assert_eq!(o.timeout.greeting, Duration::from_secs(300));
    assert_eq!(o.timeout.ehlo, Duration::from_secs(300));
    assert_eq!(o.timeout.mail, Duration::from_secs(300));
    assert_eq!(o.timeout.rcpt, Duration::from_secs(300));
    assert_eq!(o.timeout.data, Duration::from_secs(600));
    assert_eq!(o.max_mx, 5);
    assert_eq!(o.max_multihomed, 2);
    assert_eq!(o.ip_strategy, IpStrategy::Ipv4ThenIpv6);
    assert_eq!(o.max_messages_per_connection, 100);
    assert_eq!(o.idle_timeout, Duration::from_secs(30));
    assert_eq!(o.delivery_log, None);
    assert_eq!(*o, Outbound::default());
}

#[test]
fn outbound_keys_all_read() {
    let c = ok(r#"
[queue.outbound]
timeout.connect = "5s"
timeout.greeting = "1m"
timeout.ehlo = "2m"
timeout.mail = "3m"
timeout.rcpt = "4m"
timeout.data = "20m"
max-mx = 3
max-multihomed = 1
ip-strategy = "ipv6-then-ipv4"
max-messages-per-connection = 7
idle-timeout = "250ms"
delivery-log = "/var/log/ferrymail/delivery.jsonl"
"#);
    let o = &c.queue.outbound;
    assert_eq!(o.timeout.connect, Duration::from_secs(5));
    assert_eq!(o.timeout.greeting, Duration::from_secs(60));
    assert_eq!(o.timeout.ehlo, Duration::from_secs(120));
    assert_eq!(o.timeout.mail, Duration::from_secs(180));
    assert_eq!(o.timeout.rcpt, Duration::from_secs(240));
    assert_eq!(o.timeout.data, Duration::from_secs(1200));
    assert_eq!(o.max_mx, 3);
    assert_eq!(o.max_multihomed, 1);
    assert_eq!(o.ip_strategy, IpStrategy::Ipv6ThenIpv4);
    assert_eq!(o.max_messages_per_connection, 7);
    assert_eq!(o.idle_timeout, Duration::from_millis(250));
    assert_eq!(
        o.delivery_log,
        Some(PathBuf::from("/var/log/ferrymail/delivery.jsonl"))
    );
    // The table form of the timeouts means the same.
    let t = ok("[queue.outbound.timeout]\nrcpt = \"9s\"\n");
    assert_eq!(t.queue.outbound.timeout.rcpt, Duration::from_secs(9));
    for (text, want) in [
        ("ipv4-then-ipv6", IpStrategy::Ipv4ThenIpv6),
        ("ipv6-then-ipv4", IpStrategy::Ipv6ThenIpv4),
        ("ipv4-only", IpStrategy::Ipv4Only),
        ("ipv6-only", IpStrategy::Ipv6Only),
    ] {
        let c = ok(&format!("[queue.outbound]\nip-strategy = \"{text}\"\n"));
        assert_eq!(c.queue.outbound.ip_strategy, want);
    }
}

#[test]
fn outbound_errors() {
    for (text, want) in [
        (
            "[queue.outbound]\nmax-mxx = 3\n",
            "/etc/ferrymail.toml:2: unknown key 'max-mxx' in [queue.outbound]; did you mean 'max-mx'?",
        ),
        (
            "[queue.outbound]\ntimeout.conect = \"1s\"\n",
            "/etc/ferrymail.toml:2: unknown key 'conect' in [queue.outbound.timeout]; did you mean 'connect'?",
        ),
        (
            "[queue.outbound]\ntimeout.data = \"0s\"\n",
            "/etc/ferrymail.toml:2: 'queue.outbound.timeout.data' must be longer than 0s",
        ),
        (
            "[queue.outbound]\nmax-mx = 0\n",
            "/etc/ferrymail.toml:2: 'queue.outbound.max-mx' must be at least 1, found 0",
        ),
        (
            "[queue.outbound]\ndelivery-log = \"\"\n",
            "/etc/ferrymail.toml:2: 'queue.outbound.delivery-log' must not be empty",
        ),
    ] {
        assert_eq!(err(text), want, "{text}");
    }
    let e = err("[queue.outbound]\nip-strategy = \"ipv4-then-ipv7\"\n");
    assert!(e.starts_with("/etc/ferrymail.toml:2: "), "{e}");
    assert!(e.contains("ipv4-then-ipv6"), "{e}");
    let e = err("[queue.outbound]\nidle-timeout = \"soon\"\n");
    assert!(e.contains("invalid duration 'soon'"), "{e}");
    let e = err("[queue]\noutbund = 1\n");
    assert!(e.contains("did you mean 'outbound'?"), "{e}");
}

// ------------------------------------------------------------ virtual queues (issue 3)

/// The bounce queue and schedule always exist; the built-in strategy sends
/// DSNs there and everything else to `default`.
#[test]
fn bounce_queue_and_schedule_are_built_in() {
    struct Src(&'static str);
    impl Variables for Src {
        fn var(&self, v: Var) -> Value {
            match v {
                Var::Source => Value::Str(self.0.to_string()),
                _ => Value::Null,
            }
        }
    }
    for c in [Config::default(), ok("")] {
        let q = &c.queue;
        assert!(q.virtual_queues.contains_key(BOUNCE_QUEUE));
        assert_eq!(
            q.virtual_queues[BOUNCE_QUEUE].schedule.as_deref(),
            Some(BOUNCE_SCHEDULE)
        );
        assert_eq!(q.schedules[BOUNCE_SCHEDULE], q.schedules[DEFAULT_SCHEDULE]);
        for (source, want) in [("dsn", "bounce"), ("smtp", "default"), ("local", "default")] {
            assert_eq!(
                q.strategy.queue.eval_string(&Src(source)).as_deref(),
                Some(want)
            );
            assert_eq!(
                q.strategy.schedule.eval_string(&Src(source)).as_deref(),
                Some(want)
            );
        }
    }
    // The bounce schedule inherits the configured default schedule...
    let c = ok("[queue.schedule]\nretry = \"[1m]\"\n");
    assert_eq!(
        c.queue.schedules[BOUNCE_SCHEDULE].retry.eval_durations(&()),
        vec![mins(1)]
    );
    // ...unless it is configured itself, and then inherits what it does not set.
    let c = ok(
        "[queue.schedule]\nretry = \"[1m]\"\nnotify = \"[2h]\"\n[queue.schedule.bounce]\nretry = \"[7m]\"\n",
    );
    let b = &c.queue.schedules[BOUNCE_SCHEDULE];
    assert_eq!(b.retry.eval_durations(&()), vec![mins(7)]);
    assert_eq!(b.notify.eval_durations(&()), vec![mins(120)]);
    // Configuring [queue.virtual.bounce] keeps its schedule unless set.
    let c = ok("[queue.virtual.bounce]\nconcurrency = 3\n");
    let vb = &c.queue.virtual_queues[BOUNCE_QUEUE];
    assert_eq!(vb.concurrency, 3);
    assert_eq!(vb.schedule.as_deref(), Some(BOUNCE_SCHEDULE));
    // A strategy set in the file replaces the built-in one.
    let c = ok("[queue.strategy]\nqueue = \"'q1'\"\n");
    assert_eq!(
        c.queue.strategy.queue.eval_string(&Src("dsn")).as_deref(),
        Some("q1")
    );
}

/// `destination.*` keys of a virtual queue, their defaults and their errors.
#[test]
fn virtual_queue_destination_limits() {
    let d = DestinationLimits::default();
    assert_eq!(d.concurrency, 10);
    assert_eq!(d.failure_limit, 5);
    assert_eq!(d.suspend, mins(5));
    let c = ok(r#"
[queue.virtual.slow]
concurrency = 8
destination.concurrency = 3
destination.rate = "100/1m"
destination.failure-limit = 2
destination.suspend = "90s"

[queue.virtual.other]
destination.concurrency = 4
"#);
    let q = &c.queue.virtual_queues;
    assert_eq!(
        q["slow"].destination,
        DestinationLimits {
            concurrency: 3,
            rate: Some(Rate {
                count: 100,
                period: mins(1),
            }),
            failure_limit: 2,
            suspend: Duration::from_secs(90),
        }
    );
    assert_eq!(q["other"].destination.concurrency, 4);
    assert_eq!(q["other"].destination.failure_limit, 5);
    assert_eq!(q["default"].destination, DestinationLimits::default());

    for (text, want) in [
        (
            "[queue.virtual.q]\ndestination.concurrency = 0\n",
            "'queue.virtual.q.destination.concurrency'",
        ),
        (
            "[queue.virtual.q]\ndestination.suspend = \"0s\"\n",
            "'queue.virtual.q.destination.suspend' must be longer than 0s",
        ),
        (
            "[queue.virtual.q]\ndestination.limit = 1\n",
            "unknown key 'limit' in [queue.virtual.q.destination]",
        ),
        (
            "[queue.virtual.\"bad name\"]\nconcurrency = 1\n",
            "invalid virtual queue name 'bad name'",
        ),
        (
            "[queue.strategy]\nqueue = \"'a b'\"\n",
            "must give a queue name",
        ),
    ] {
        let e = err(text);
        assert!(e.contains(want), "{text:?}: {e}");
    }
}

/// The queue name rule the scheduler and the loader share.
#[test]
fn queue_name_rule() {
    for good in [
        "default",
        "dom-example.org",
        "a",
        "Q_1+x=y@z:w",
        "dom-bücher.example",
        &"x".repeat(MAX_QUEUE_NAME_LEN),
    ] {
        assert!(is_valid_queue_name(good), "{good}");
    }
    for bad in [
        "",
        "a b",
        "l<news.example.org>",
        "#q",
        "a/b",
        "tab\t",
        "q'",
        &"x".repeat(MAX_QUEUE_NAME_LEN + 1),
    ] {
        assert!(!is_valid_queue_name(bad), "{bad:?}");
    }
}

// ------------------------------------------------- [report.dsn] (DSN issue)

/// `batch-quiet` and `batch-max-hold`: the reporter's grouping window,
/// 1 s and 10 s by default, any duration when given, refused when not one.
#[test]
fn dsn_batch_window() {
    let d = ok("").report.dsn;
    assert_eq!(d.batch_quiet, Duration::from_secs(1));
    assert_eq!(d.batch_max_hold, Duration::from_secs(10));
    let d = ok("[report.dsn]\nbatch-quiet = \"5m\"\nbatch-max-hold = \"1h\"\n")
        .report
        .dsn;
    assert_eq!(d.batch_quiet, Duration::from_secs(300));
    assert_eq!(d.batch_max_hold, Duration::from_secs(3600));
    assert!(
        err("[report.dsn]\nbatch-quiet = \"soon\"\n").contains("batch-quiet"),
        "a bad duration names its key"
    );
}

/// `max-returned-size` and `double-bounce`: defaults, sizes in both forms,
/// angle brackets tolerated, and exact errors on the right line.
#[test]
fn dsn_returned_size_and_double_bounce() {
    let d = ok("").report.dsn;
    assert_eq!(d.max_returned_size, DEFAULT_MAX_RETURNED_SIZE);
    assert_eq!(DEFAULT_MAX_RETURNED_SIZE, 256 * 1024);
    assert_eq!(d.double_bounce, None);

    let d = ok(
        "[report.dsn]\nmax-returned-size = \"1M\"\ndouble-bounce = \"postmaster@example.org\"\n",
    )
    .report
    .dsn;
    assert_eq!(d.max_returned_size, 1 << 20);
    assert_eq!(d.double_bounce.as_deref(), Some("postmaster@example.org"));
    let d = ok("[report.dsn]\nmax-returned-size = 1000\ndouble-bounce = \"<pm@example.org>\"\n")
        .report
        .dsn;
    assert_eq!(d.max_returned_size, 1000);
    assert_eq!(d.double_bounce.as_deref(), Some("pm@example.org"));

    assert_eq!(
        err("[report.dsn]\n\ndouble-bounce = \"postmaster\"\n"),
        "/etc/ferrymail.toml:3: 'report.dsn.double-bounce' must be an address such as 'postmaster@example.org', found 'postmaster'"
    );
    assert_eq!(
        err("[report.dsn]\ndouble-bounce = \"\"\n"),
        "/etc/ferrymail.toml:2: 'report.dsn.double-bounce' must not be empty"
    );
    assert!(
        err("[report.dsn]\nmax-returned-size = \"lots\"\n").starts_with(
            "/etc/ferrymail.toml:2: invalid size 'lots' for 'report.dsn.max-returned-size'"
        ),
    );
    assert_eq!(
        err("[report.dsn]\nmax-return-size = 10\n"),
        "/etc/ferrymail.toml:2: unknown key 'max-return-size' in [report.dsn]; did you mean 'max-returned-size'?"
    );
}

#[test]
fn cluster_lease_and_poll_interval() {
    let d = ok("");
    assert_eq!(d.cluster.lease, Duration::from_secs(60), "default lease");
    assert_eq!(d.cluster.poll_interval, Duration::from_secs(1));
    let c = ok("[cluster]\nlease = \"5s\"\npoll-interval = \"250ms\"\n");
    assert_eq!(c.cluster.lease, Duration::from_secs(5));
    assert_eq!(c.cluster.poll_interval, Duration::from_millis(250));
    assert_eq!(
        err("[cluster]\nlease = \"1s\"\n"),
        "/etc/ferrymail.toml:2: 'cluster.lease' must be between 3s and 1d, found 1s"
    );
    assert_eq!(
        err("[cluster]\npoll-interval = \"10ms\"\n"),
        "/etc/ferrymail.toml:2: 'cluster.poll-interval' must be between 50ms and 1m, found 10ms"
    );
    assert_eq!(
        err("[cluster]\nlease = \"5s\"\npoll-interval = \"10s\"\n"),
        "/etc/ferrymail.toml:3: 'cluster.poll-interval' (10s) must be shorter than 'cluster.lease' (5s): a node must hear of other nodes' changes before their leases run out"
    );
    assert!(err("[cluster]\nleese = \"5s\"\n").contains("did you mean 'lease'"));
}

const AUTH_OK: &str = r#"[session.auth]
directory = "'users'"
mechanisms = "[plain, login]"
require = "local_port == 587"
allow-plain-text = false

[session.auth.errors]
total = 5
wait = "2s"

[directory.users]
type = "memory"

[[directory.users.principals]]
name = "alice"
class = "individual"
secret = "$6$salt$abc"
email = ["alice@example.org"]

[[directory.users.principals]]
name = "bob"
secret = "plain-password"
"#;

#[test]
fn session_auth_and_a_memory_directory_parse() {
    let c = ok(AUTH_OK);
    let a = &c.session.auth;
    assert_eq!(a.directory.as_deref(), Some("users"));
    assert_eq!(
        a.mechanisms,
        vec![AuthMechanism::Plain, AuthMechanism::Login]
    );
    assert_eq!(a.errors_total, 5);
    assert_eq!(
        a.must_match_sender,
        Expr::constant(Value::Bool(true)),
        "a user sends as itself unless told otherwise"
    );
    assert_eq!(a.errors_wait, Duration::from_secs(2));
    let d = &c.directories["users"];
    assert_eq!(d.principals.len(), 2);
    assert_eq!(d.principals[0].name, "alice");
    assert_eq!(
        d.principals[0].emails,
        vec!["alice@example.org".to_string()]
    );
    assert_eq!(d.principals[1].secret, "plain-password");
    // Without [session.auth], AUTH is off.
    assert_eq!(ok("").session.auth.directory, None);
}

#[test]
fn session_auth_errors_name_the_line() {
    assert_eq!(
        err(&AUTH_OK.replace("directory = \"'users'\"", "directory = \"people\"")),
        "/etc/ferrymail.toml:2: 'session.auth.directory' refers to directory 'people', which is not defined"
    );
    assert_eq!(
        err(&AUTH_OK.replace("\"[plain, login]\"", "[\"plain\", \"cram-md5\"]")),
        "/etc/ferrymail.toml:3: 'session.auth.mechanisms': mechanism 'cram-md5' is not offered; use plain and/or login"
    );
    assert_eq!(
        err(&AUTH_OK.replace("$6$salt$abc", "$1$salt$abc")),
        "/etc/ferrymail.toml:17: 'directory.users.principals[0].secret': hash scheme '$1$' is not supported; use $argon2id$, $6$ (SHA-512-crypt) or $5$ (SHA-256-crypt)"
    );
    assert_eq!(
        err(&AUTH_OK.replace("name = \"bob\"", "name = \"alice\"")),
        "/etc/ferrymail.toml:21: 'directory.users.principals[1].name': principal 'alice' is listed twice in [directory.users]"
    );
    assert_eq!(
        err(&AUTH_OK.replace("type = \"memory\"", "type = \"ldap\"")),
        "/etc/ferrymail.toml:12: 'directory.users.type' is \"ldap\"; the directory type this release has is \"memory\""
    );
    let e = err(&AUTH_OK.replace("class = \"individual\"", "clas = \"individual\""));
    assert!(e.starts_with("/etc/ferrymail.toml:16: "), "{e}");
    assert!(e.contains("clas"), "{e}");
    let e = err(&AUTH_OK.replace("require = \"local_port == 587\"", "require = \"'yes'\""));
    assert!(e.starts_with("/etc/ferrymail.toml:4: "), "{e}");
}

#[test]
fn iprev_and_dnsbl_settings() {
    let d = ok("");
    assert_eq!(
        d.auth.iprev,
        IprevVerify::Disable,
        "iprev is off by default"
    );
    assert!(d.session.connect.dnsbl.is_empty(), "no DNSBL by default");
    for (text, want) in [
        ("disable", IprevVerify::Disable),
        ("relaxed", IprevVerify::Relaxed),
        ("strict", IprevVerify::Strict),
    ] {
        let c = ok(&format!("[auth.iprev]\nverify = \"{text}\"\n"));
        assert_eq!(c.auth.iprev, want, "{text}");
    }
    let c = ok("[auth]\niprev.verify = \"strict\"\n");
    assert_eq!(c.auth.iprev, IprevVerify::Strict, "dotted key form");
    let c =
        ok("[session.connect]\ndnsbl = [\"zen.spamhaus.org\", \"BL.Example.\", \"bl.example\"]\n");
    assert_eq!(
        c.session.connect.dnsbl,
        ["zen.spamhaus.org", "bl.example"],
        "lowercase, no trailing dot, no duplicates"
    );
    let c = ok("[session.connect]\ndnsbl = \"bl.example\"\n");
    assert_eq!(
        c.session.connect.dnsbl,
        ["bl.example"],
        "one zone as a string"
    );
}

#[test]
fn iprev_and_dnsbl_errors_name_file_and_line() {
    assert_eq!(
        err("[auth.iprev]\nverify = \"strikt\"\n"),
        "/etc/ferrymail.toml:2: 'auth.iprev.verify' must be one of disable, relaxed, strict, found 'strikt'; did you mean 'strict'?"
    );
    assert_eq!(
        err("[auth.iprev]\nverfy = \"strict\"\n"),
        "/etc/ferrymail.toml:2: unknown key 'verfy' in [auth.iprev]; did you mean 'verify'?"
    );
    assert!(
        err("[auth]\narc = true\n")
            .starts_with("/etc/ferrymail.toml:2: unknown key 'arc' in [auth]")
    );
    assert_eq!(
        err("[session.connect]\ndnsbl = [\"bl.example\",\n  \"not a zone\"]\n"),
        "/etc/ferrymail.toml:3: invalid DNSBL zone 'not a zone' for 'session.connect.dnsbl': write a domain name such as zen.spamhaus.org"
    );
    assert!(
        err("[session.connect]\ndnsbls = [\"bl.example\"]\n")
            .starts_with("/etc/ferrymail.toml:2: unknown key 'dnsbls' in [session.connect]")
    );
    assert!(
        err("[session.connect]\ndnsbl = 1\n").starts_with("/etc/ferrymail.toml:2: "),
        "a wrong type names the line"
    );
}

#[test]
fn implicit_tls_is_for_every_listener() {
    let c = ok(
        "[server.listener.submissions]\nbind = [\"127.0.0.1:465\"]\nprotocol = \"smtp\"\ntls.implicit = true\n",
    );
    assert!(
        c.server
            .listeners
            .iter()
            .any(|l| l.id == "submissions" && l.tls_implicit)
    );
    let c = ok(
        "[server.listener.api]\nbind = [\"127.0.0.1:8443\"]\nprotocol = \"http\"\ntls.implicit = true\n",
    );
    assert!(
        c.server
            .listeners
            .iter()
            .any(|l| l.id == "api" && l.tls_implicit)
    );
}

#[test]
fn expressions_reading_variables_their_stage_never_has_are_warned_about() {
    // Routing happens once, at acceptance: a route on `retry_num` would
    // never match, and a queue expression cannot read the queue it decides.
    // Relay is decided at RCPT TO, before the message has a size.
    let c = ok(r#"[queue.route.backup]
type = "relay"
address = "127.0.0.1"

[queue.strategy]
queue = "'q-' + queue"
route = [ { if = "retry_num > 3", then = "'backup'" },
          { if = "queue == 'bulk' && local_port == 587", then = "'backup'" },
          { else = "'mx'" } ]

[session.rcpt]
relay = "size < 1000"
"#);
    assert_eq!(
        warnings(&c),
        vec![
            "/etc/ferrymail.toml:6: 'queue.strategy.queue' reads 'queue', which has no value there (each recipient is routed once, when the message is accepted), so it is always Null",
            "/etc/ferrymail.toml:7: 'queue.strategy.route' reads 'retry_num', which has no value there (each recipient is routed once, when the message is accepted), so it is always Null",
            "/etc/ferrymail.toml:12: 'session.rcpt.relay' reads 'size', which has no value there (relay is decided at RCPT TO), so it is always Null",
        ]
    );
}

#[test]
fn stalwart_spellings_of_the_outbound_settings_load() {
    // A Stalwart [queue.outbound] block, as its users would bring it.
    let c = ok(r#"[queue.outbound]
ip-strategy = "ipv6_then_ipv4"

[queue.outbound.limits]
mx = 4
multihomed = 3

[queue.outbound.timeouts]
connect = "1m"
greeting = "2m"
tls = "90s"
ehlo = "3m"
mail-from = "4m"
rcpt-to = "5m"
data = "6m"
mta-sts = "2m"
"#);
    let o = &c.queue.outbound;
    assert_eq!((o.max_mx, o.max_multihomed), (4, 3));
    assert_eq!(o.ip_strategy, IpStrategy::Ipv6ThenIpv4);
    let t = &o.timeout;
    assert_eq!(
        [
            t.connect, t.greeting, t.tls, t.ehlo, t.mail, t.rcpt, t.data, t.mta_sts
        ],
        [60, 120, 90, 180, 240, 300, 360, 120].map(Duration::from_secs)
    );
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    // Both spellings of one setting: which wins would be a guess.
    assert_eq!(
        err("[queue.outbound]\nmax-mx = 2\n[queue.outbound.limits]\nmx = 4\n"),
        "/etc/ferrymail.toml:4: 'queue.outbound.limits.mx' and 'queue.outbound.max-mx' are the same setting; keep one"
    );
    assert_eq!(
        err("[queue.outbound.timeout]\ndata = \"1m\"\n[queue.outbound.timeouts]\ndata = \"2m\"\n"),
        "/etc/ferrymail.toml:3: 'queue.outbound.timeouts' and 'queue.outbound.timeout' are the same settings; keep one"
    );
    // Each table keeps its own key names.
    assert!(err("[queue.outbound.timeouts]\nmail = \"1m\"\n").contains("mail"));
}

#[test]
fn dkim_signing_of_accepted_mail_names_known_signers() {
    let key = format!(
        "[signature.rsa]\nprivate-key = \"\"\"\n{PEM_KEY}\"\"\"\ndomain = \"example.org\"\nselector = \"s\"\nalgorithm = \"ed25519-sha256\"\n"
    );
    let c = ok(&format!(
        "[auth.dkim]\nsign = [ {{ if = \"sender_domain == 'example.org'\", then = \"['rsa']\" }}, {{ else = false }} ]\n{key}"
    ));
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    assert!(c.auth.dkim_sign.as_constant().is_none());
    // A constant id that names no signer: the mail would go out unsigned.
    assert!(
        err(&format!("[auth.dkim]\nsign = \"['rsa', 'nope']\"\n{key}"))
            .starts_with("/etc/ferrymail.toml:2: 'auth.dkim.sign' refers to signature 'nope'"),
    );
    // Signing happens once per message: no single recipient to read.
    let c = ok(&format!(
        "[auth.dkim]\nsign = [ {{ if = \"rcpt_domain == 'x'\", then = \"['rsa']\" }}, {{ else = false }} ]\n{key}"
    ));
    assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
    assert!(c.warnings[0].to_string().contains("reads 'rcpt_domain'"));
}

#[test]
fn rcpt_directory_names_a_directory() {
    let dir = "[directory.users]\ntype = \"memory\"\n";
    let c = ok(&format!("[session.rcpt]\ndirectory = \"'users'\"\n{dir}"));
    assert_eq!(c.session.rcpt.directory.as_deref(), Some("users"));
    assert!(
        err(&format!("[session.rcpt]\ndirectory = \"'nobody'\"\n{dir}")).starts_with(
            "/etc/ferrymail.toml:2: 'session.rcpt.directory' refers to directory 'nobody'"
        ),
    );
}

#[test]
fn sender_verification_is_off_by_default_and_takes_stalwarts_words() {
    let d = ok("");
    assert!(d.auth.verifies_nothing(), "nothing verified by default");
    for e in [
        &d.auth.spf_ehlo,
        &d.auth.spf_mail_from,
        &d.auth.dkim_verify,
        &d.auth.dmarc_verify,
    ] {
        assert_eq!(VerifyMode::constant(e), Some(VerifyMode::Disable));
    }
    // The brief's block, as a Stalwart user writes it: bare words.
    let c = ok(r#"[auth.spf.verify]
ehlo = "relaxed"
mail-from = "strict"
[auth.dkim]
verify = "relaxed"
[auth.dmarc]
verify = "strict"
"#);
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    assert!(!c.auth.verifies_nothing());
    let mode = |e: &Expr| VerifyMode::constant(e).unwrap();
    assert_eq!(mode(&c.auth.spf_ehlo), VerifyMode::Relaxed);
    assert_eq!(mode(&c.auth.spf_mail_from), VerifyMode::Strict);
    assert_eq!(mode(&c.auth.dkim_verify), VerifyMode::Relaxed);
    assert_eq!(mode(&c.auth.dmarc_verify), VerifyMode::Strict);
    // Quoted strings as in Ferrymail's other expressions, dotted keys.
    let c = ok("[auth]\nspf.verify.mail-from = \"'relaxed'\"\ndkim.verify = \"'disable'\"\n");
    assert_eq!(mode(&c.auth.spf_mail_from), VerifyMode::Relaxed);
    assert_eq!(mode(&c.auth.dkim_verify), VerifyMode::Disable);
    // Stalwart's if/then/else with bare constants; the condition reads
    // what MAIL FROM has.
    let c = ok(r#"[auth.spf.verify]
mail-from = [ { if = "local_port == 25 && sender_domain != 'example.org'", then = "strict" },
              { else = "disable" } ]
"#);
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    assert_eq!(VerifyMode::constant(&c.auth.spf_mail_from), None);
    struct Port(i64);
    impl Variables for Port {
        fn var(&self, v: Var) -> Value {
            match v {
                Var::LocalPort => Value::Int(self.0),
                Var::SenderDomain => Value::Str("example.net".into()),
                _ => Value::Null,
            }
        }
    }
    assert_eq!(
        VerifyMode::eval(&c.auth.spf_mail_from, &Port(25)),
        VerifyMode::Strict
    );
    assert_eq!(
        VerifyMode::eval(&c.auth.spf_mail_from, &Port(587)),
        VerifyMode::Disable
    );
}

#[test]
fn sender_verification_errors_name_file_and_line() {
    assert_eq!(
        err("[auth.spf.verify]\nehlo = \"relaxed\"\nmail-from = \"strikt\"\n"),
        "/etc/ferrymail.toml:3: 'auth.spf.verify.mail-from' must be one of disable, relaxed, strict, found 'strikt'; did you mean 'strict'?"
    );
    assert_eq!(
        err(
            "[auth.dmarc]\nverify = [ { if = \"local_port == 25\", then = \"rejct\" },\n  { else = \"disable\" } ]\n"
        ),
        "/etc/ferrymail.toml:2: 'auth.dmarc.verify' must be one of disable, relaxed, strict, found 'rejct'"
    );
    assert_eq!(
        err("[auth.dkim]\nverify = \"'yes'\"\n"),
        "/etc/ferrymail.toml:2: 'auth.dkim.verify' must give one of 'disable', 'relaxed', 'strict', but gives 'yes'"
    );
    assert_eq!(
        err("[auth.dkim]\nverify = true\n"),
        "/etc/ferrymail.toml:2: 'auth.dkim.verify' must give one of 'disable', 'relaxed', 'strict', but gives true"
    );
    assert_eq!(
        err("[auth.spf.verify]\nmailfrom = \"strict\"\n"),
        "/etc/ferrymail.toml:2: unknown key 'mailfrom' in [auth.spf.verify]; did you mean 'mail-from'?"
    );
    assert_eq!(
        err("[auth.spf]\nverify = \"strict\"\n"),
        "/etc/ferrymail.toml:2: 'auth.spf.verify' must be a table, found a string"
    );
    assert!(
        err("[auth.dmarc]\nverify = \"local_port ==\"\n")
            .starts_with("/etc/ferrymail.toml:2: invalid expression for 'auth.dmarc.verify'"),
    );
}

#[test]
fn sender_verification_warns_about_variables_it_never_sees() {
    let c = ok(r#"[auth.spf.verify]
ehlo = [ { if = "sender_domain == 'x'", then = "strict" }, { else = "relaxed" } ]
mail-from = [ { if = "is_empty(authenticated_as) && rcpt_domain == 'x'", then = "strict" },
              { else = "relaxed" } ]

[auth.dkim]
verify = [ { if = "size > 1000 && helo_domain != ''", then = "relaxed" }, { else = "strict" } ]
"#);
    assert_eq!(
        warnings(&c),
        vec![
            "/etc/ferrymail.toml:2: 'auth.spf.verify.ehlo' reads 'sender_domain', which has no value there (the HELO name is checked at EHLO, before any transaction), so it is always Null",
            "/etc/ferrymail.toml:3: 'auth.spf.verify.mail-from' reads 'authenticated_as', which has no value there (mail from authenticated sessions is never verified), so it is always Null",
            "/etc/ferrymail.toml:3: 'auth.spf.verify.mail-from' reads 'rcpt_domain', which has no value there (the sender is checked at MAIL FROM, before any recipient), so it is always Null",
        ]
    );
}

#[test]
fn inbound_limiters_take_stalwarts_keys() {
    let c = ok(r#"
[queue.limiter.inbound.ip]
key = ["remote_ip"]
rate = "5/1s"

[queue.limiter.inbound.sender]
key = ["sender_domain", "rcpt"]
rate = "25/1h"
match = "local_port == 25"

[queue.limiter.inbound.off]
rate = "1/1s"
enable = false
"#);
    let l = &c.queue.inbound_limiters;
    assert_eq!(l.len(), 2, "the disabled one is left out");
    assert_eq!(l[0].id, "ip");
    assert_eq!(l[0].key, [Var::RemoteIp]);
    assert_eq!(l[0].rate.count, 5);
    assert_eq!(l[1].key, [Var::SenderDomain, Var::Rcpt]);
    assert_eq!(l[1].rate.period, std::time::Duration::from_secs(3600));
}

#[test]
fn inbound_limiter_mistakes_name_file_and_line() {
    assert_eq!(
        err("[queue.limiter.inbound.ip]\nkey = [\"remote_ipp\"]\nrate = \"5/1s\"\n"),
        "/etc/ferrymail.toml:2: 'queue.limiter.inbound.ip.key' names 'remote_ipp', which is not a variable; did you mean 'remote_ip'?"
    );
    assert_eq!(
        err("[queue.limiter.inbound.ip]\nkey = [\"size\"]\nrate = \"5/1s\"\n"),
        "/etc/ferrymail.toml:2: 'queue.limiter.inbound.ip.key' names 'size', which has no value there (rate limits are counted at RCPT TO)"
    );
    assert!(
        err("[queue.limiter.inbound.ip]\nkey = [\"remote_ip\"]\nrate = \"5 per second\"\n")
            .starts_with("/etc/ferrymail.toml:3: invalid rate '5 per second'"),
    );
    assert!(
        err("[queue.limiter.inbound.ip]\nkey = [\"remote_ip\"]\n")
            .contains("'queue.limiter.inbound.ip.rate' is required"),
    );
    assert!(
        err("[queue.limiter.outbound.mx]\nrate = \"5/1s\"\n")
            .contains("'queue.limiter.outbound' is not supported"),
    );
}

#[test]
fn mta_sts_setting() {
    // Stalwart's key, an expression per delivery.
    let c = ok(r#"[queue.outbound.tls]
mta-sts = [ { if = "rcpt_domain == 'bank.test'", then = "require" },
            { else = "'optional'" } ]
"#);
    assert!(c.queue.outbound.mta_sts.is_some());
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    assert_eq!(
        Config::default().queue.outbound.timeout.mta_sts,
        Duration::from_secs(60)
    );
    assert!(Config::default().queue.outbound.mta_sts.is_none());
    // A constant that is not one of the three names the line.
    assert!(
        ok("[queue.outbound.tls]\nmta-sts = \"disable\"\n")
            .queue
            .outbound
            .mta_sts
            .is_some()
    );
    let e = err("[queue.outbound.tls]\nmta-sts = \"'enforce'\"\n");
    assert!(e.starts_with("/etc/ferrymail.toml:2:"), "{e}");
    assert!(e.contains("'optional', 'require', 'disable'"), "{e}");
    // DANE is Stalwart's too, but not done: said, not silently dropped.
    let c = ok("[queue.outbound.tls]\ndane = \"optional\"\n");
    assert_eq!(
        warnings(&c),
        [
            "/etc/ferrymail.toml:2: 'queue.outbound.tls.dane' is ignored: Ferrymail does not do DANE (RFC 7672); MTA-STS is 'queue.outbound.tls.mta-sts'"
        ]
    );
    assert!(err("[queue.outbound.tls]\nstarttls = \"require\"\n").contains("starttls"));
}

#[test]
fn message_memory_limit() {
    assert_eq!(Config::default().session.data.max_memory(), 1 << 30);
    let c = ok("[session.data]\nmax-message-size = \"1G\"\n");
    assert_eq!(c.session.data.max_memory(), 2 << 30, "twice a large size");
    let c = ok("[session.data]\nmax-memory = \"256M\"\nmax-message-size = \"10M\"\n");
    assert_eq!(c.session.data.max_memory(), 256 << 20);
    let e = err("[session.data]\nmax-message-size = \"10M\"\nmax-memory = \"5M\"\n");
    assert!(e.starts_with("/etc/ferrymail.toml:3:"), "{e}");
    assert!(
        e.contains("smaller than 'session.data.max-message-size'"),
        "{e}"
    );
}

/// A client command's load leaves out the secrets it cannot read (a file
/// that is not there, an unset variable): the listener, its token where
/// readable and the certificate to pin remain; the server's load refuses
/// the same file. Other problems are still errors, on their line.
#[test]
fn client_load_leaves_unreadable_secrets_out() {
    let dir = TempDir::new();
    let cert = dir.write(
        "cert.pem",
        "-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n",
    );
    let text = format!(
        r#"[server.listener.api]
bind = ["127.0.0.1:8443"]
protocol = "http"
tls.implicit = true
token = "%{{env:FERRY_TEST_TOKEN_OF_CLIENT_LOAD}}%"

[certificate.main]
cert = "%{{file:{cert}}}%"
private-key = "%{{file:{missing}}}%"

[signature.rsa]
private-key = "%{{file:{missing}}}%"
domain = "example.org"
selector = "s"
"#,
        cert = cert.display(),
        missing = dir.0.join("missing.pem").display(),
    );
    let path = dir.write("f.toml", &text);
    // The token is the one secret a client needs: unset, it is an error on
    // its line for the client too.
    let e = load_for_client(&path).unwrap_err();
    assert_eq!(e.line, 5, "{e}");
    // SAFETY: no other test reads or writes this variable.
    unsafe { std::env::set_var("FERRY_TEST_TOKEN_OF_CLIENT_LOAD", "t0k") };
    assert!(load(&path).is_err(), "the server's load refuses it");
    let c = load_for_client(&path).unwrap();
    let l = c.listener(Protocol::Http).expect("the management listener");
    assert!(l.tls_implicit);
    assert_eq!(l.token.as_deref(), Some("t0k"));
    assert!(c.certificates["main"].cert.contains("BEGIN CERTIFICATE"));

    let broken = dir.write(
        "g.toml",
        &text.replace("protocol = \"http\"", "protocol = 7"),
    );
    let e = load_for_client(&broken).unwrap_err();
    assert_eq!(e.line, 3, "{e}");
}

/// With a `submit-token`, a client that cannot read the full `token` (kept
/// from local users) leaves it out and keeps the submit token, which
/// `sendmail` presents; the submit token itself must be readable.
#[test]
fn client_load_with_a_submit_token_may_leave_the_full_token_out() {
    let dir = TempDir::new();
    let submit = dir.write("submit", "s-token");
    let text = format!(
        "[server.listener.api]\nbind = [\"127.0.0.1:8025\"]\nprotocol = \"http\"\n\
         token = \"%{{file:{missing}}}%\"\nsubmit-token = \"%{{file:{submit}}}%\"\n",
        missing = dir.0.join("root-only").display(),
        submit = submit.display(),
    );
    let path = dir.write("f.toml", &text);
    let c = load_for_client(&path).unwrap();
    let l = c.listener(Protocol::Http).unwrap();
    assert_eq!(l.token, None);
    assert_eq!(l.submit_token.as_deref(), Some("s-token"));
    assert!(load(&path).is_err(), "the server needs both");
    let no_submit = dir.write(
        "g.toml",
        &text.replace(&submit.display().to_string(), "/nonexistent/submit"),
    );
    let e = load_for_client(&no_submit).unwrap_err();
    assert_eq!(e.line, 5, "the unreadable submit token: {e}");
}
