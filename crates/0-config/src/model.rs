//! The typed configuration every other crate reads. Values here are already
//! checked: ids that reference each other resolve, numbers are in range,
//! addresses parse. Each `Default` is the built-in default that an absent key
//! gets.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use crate::error::ConfigError;
use crate::expr::{Expr, Value, Var};

/// Longest SMTP command line accepted by default, CRLF included.
/// RFC 5321 4.5.3.1.4 sets 512 octets and lets each extension add to it
/// (ESMTP parameters, SMTPUTF8 addresses), so leave generous room.
pub const DEFAULT_MAX_LINE_LENGTH: usize = 4096;
/// The smallest `max-line-length` accepted: RFC 5321 4.5.3.1.4's 512 octets.
pub const MIN_MAX_LINE_LENGTH: usize = 512;
/// Default largest message accepted (SIZE, RFC 1870): 50 MiB.
pub const DEFAULT_MAX_MESSAGE_SIZE: u64 = 50 << 20;
/// Default cap on `Received:` headers before a message is treated as looping
/// (RFC 5321 6.3 asks for a limit; Postfix's `hopcount_limit` is 50).
pub const DEFAULT_MAX_RECEIVED_HEADERS: usize = 50;
/// Default recipients per transaction; RFC 5321 4.5.3.1.8 requires at least 100.
pub const DEFAULT_MAX_RECIPIENTS: usize = 1000;
/// The store types `[store.<id>] type` and `[storage]` accept.
pub const STORE_TYPES: [&str; 3] = ["embedded", "postgresql", "fs"];
/// Where the embedded store lives when no path is given.
pub const DEFAULT_DATA_PATH: &str = "./data";
/// Where an `fs` blob store lives when no path is given.
pub const DEFAULT_BLOB_PATH: &str = "./data/blobs";
/// URL of an implicit `postgresql` store (`[storage] data = "postgresql"`).
pub const DEFAULT_POSTGRESQL_URL: &str = "postgresql://localhost/ferrymail";
/// The route that delivers by MX lookup; always defined.
pub const MX_ROUTE: &str = "mx";
/// The schedule made of `[queue.schedule]`'s own keys; always defined.
pub const DEFAULT_SCHEDULE: &str = "default";
/// The virtual queue messages go to unless the strategy says otherwise; always defined.
pub const DEFAULT_QUEUE: &str = "default";
/// The virtual queue delivery status notifications (`source == 'dsn'`) go to
/// under the built-in strategy, so bounces never compete with regular mail
/// (qmail's dedicated bounce queue); always defined.
pub const BOUNCE_QUEUE: &str = "bounce";
/// The schedule of the bounce queue; always defined. Unless configured as
/// `[queue.schedule.bounce]`, it is a copy of the default schedule.
pub const BOUNCE_SCHEDULE: &str = "bounce";
/// Longest virtual queue name accepted, in bytes. Names are built from
/// addresses (`'dom-' + rcpt_domain`), and an address path is at most 256
/// octets (RFC 5321 4.5.3.1.3), so this never cuts a real name; it only stops a
/// header-derived name from growing without bound.
pub const MAX_QUEUE_NAME_LEN: usize = 1024;

/// Whether `name` may name a virtual queue: 1 to [`MAX_QUEUE_NAME_LEN`] bytes,
/// each character a letter or digit (any script, so internationalised domains
/// work) or one of `. _ - + = @ :`. No spaces, control characters, quotes,
/// brackets or slashes, so a name is safe in logs, JSON, file names and an
/// ETRN `#queue` argument. The scheduler puts entries whose queue name fails
/// this rule into [`DEFAULT_QUEUE`] and logs a warning; the loader rejects such
/// names under `[queue.virtual]`.
pub fn is_valid_queue_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_QUEUE_NAME_LEN
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '.' | '_' | '-' | '+' | '=' | '@' | ':'))
}

/// Parses a built-in default expression. The texts are constants of this
/// crate and covered by tests, so a failure is a bug here, not user input.
pub(crate) fn builtin(text: &str) -> Expr {
    Expr::parse(text).unwrap_or_else(|e| panic!("built-in expression {text:?}: {e}"))
}

/// The whole configuration, as loaded from one file (or built-in defaults).
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// The file it came from; `None` for [`Config::default`]. The queue CLI
    /// uses it to find the management listener of the running server.
    pub source: Option<PathBuf>,
    /// `[server]`: identity, listeners, connection limits.
    pub server: Server,
    /// `[certificate.<id>]`: TLS certificates by id.
    pub certificates: BTreeMap<String, Certificate>,
    /// `[auth]`: checks of who the client is (reverse DNS).
    pub auth: AuthChecks,
    /// `[session]`: limits and policy for inbound SMTP/LMTP sessions.
    pub session: Session,
    /// `[store.<id>]` plus implicit stores named in `[storage]` by type.
    pub stores: BTreeMap<String, Store>,
    /// `[storage]`: which store holds what.
    pub storage: Storage,
    /// `[queue]`: schedules, virtual queues, strategy, routes.
    pub queue: Queue,
    /// `[report]`: delivery status notifications.
    pub report: Report,
    /// `[signature.<id>]`: DKIM signers by id.
    pub signatures: BTreeMap<String, Signature>,
    /// `[resolver]`: where DNS lookups go.
    pub resolver: Resolver,
    /// `[cluster]`: how nodes sharing a PostgreSQL queue work together.
    pub cluster: Cluster,
    /// `[directory.<id>]`: who may log in with SMTP AUTH, by id.
    pub directories: BTreeMap<String, Directory>,
    /// Things that are allowed but probably not meant (e.g. `report.dsn.sign`
    /// naming an undefined signer); `ferrymail check` prints them.
    pub warnings: Vec<ConfigError>,
}

/// Built-in defaults: SMTP on 127.0.0.1:2525, management API on
/// 127.0.0.1:8025, an embedded store under `./data`; what `ferrymail serve`
/// runs with when given no `-c`.
impl Default for Config {
    fn default() -> Self {
        let server = Server::default();
        let report = Report::for_hostname(&server.hostname);
        let store = Store {
            id: "embedded".to_string(),
            kind: StoreKind::Embedded {
                path: PathBuf::from(DEFAULT_DATA_PATH),
            },
        };
        Config {
            source: None,
            server,
            certificates: BTreeMap::new(),
            auth: AuthChecks::default(),
            session: Session::default(),
            stores: BTreeMap::from([(store.id.clone(), store)]),
            storage: Storage::default(),
            queue: Queue::default(),
            report,
            signatures: BTreeMap::new(),
            resolver: Resolver::default(),
            cluster: Cluster::default(),
            directories: BTreeMap::new(),
            warnings: Vec::new(),
        }
    }
}

impl Config {
    /// The store holding envelopes and queue state (`[storage] data`).
    /// Always `Some` for a loaded configuration.
    pub fn data_store(&self) -> Option<&Store> {
        self.stores.get(&self.storage.data)
    }

    /// The store holding message contents (`[storage] blob`).
    /// Always `Some` for a loaded configuration.
    pub fn blob_store(&self) -> Option<&Store> {
        self.stores.get(&self.storage.blob)
    }

    /// The first listener with `protocol`; the queue CLI uses it to find the
    /// management API.
    pub fn listener(&self, protocol: Protocol) -> Option<&Listener> {
        self.server
            .listeners
            .iter()
            .find(|l| l.protocol == protocol)
    }
}

/// `[server]`: who this node is and where it listens.
#[derive(Clone, Debug, PartialEq)]
pub struct Server {
    /// `hostname`: the EHLO/banner name and Reporting-MTA of DSNs. Default:
    /// the machine's hostname, or `localhost` if it cannot be read.
    pub hostname: String,
    /// `node-id`: distinguishes nodes sharing a PostgreSQL queue (lease owner).
    pub node_id: Option<String>,
    /// `[server.listener.<id>]`, in file order. Default: `smtp` on
    /// 127.0.0.1:2525 and `management` (http) on 127.0.0.1:8025.
    pub listeners: Vec<Listener>,
    /// `max-connections`: concurrent inbound connections over all listeners.
    pub max_connections: usize,
    /// `max-connections-per-ip`: concurrent connections from one client address.
    pub max_connections_per_ip: usize,
    /// `shutdown-timeout`: how long a graceful shutdown waits for sessions and
    /// deliveries to finish.
    pub shutdown_grace: Duration,
}

impl Default for Server {
    fn default() -> Self {
        Server {
            hostname: machine_hostname(),
            node_id: None,
            listeners: vec![
                Listener {
                    id: "smtp".to_string(),
                    bind: vec![SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 2525)],
                    protocol: Protocol::Smtp,
                    token: None,
                    submit_token: None,
                    tls_implicit: false,
                },
                Listener {
                    id: "management".to_string(),
                    bind: vec![SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8025)],
                    protocol: Protocol::Http,
                    token: None,
                    submit_token: None,
                    tls_implicit: false,
                },
            ],
            max_connections: 8192,
            max_connections_per_ip: 256,
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// The machine's name for the SMTP banner, read without libc: the kernel's
/// idea first, then `/etc/hostname`, then `localhost`.
pub fn machine_hostname() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().to_string())
        .find(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// `[server.listener.<id>]`: one set of sockets speaking one protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listener {
    /// The `<id>`, for logs.
    pub id: String,
    /// `bind`: addresses to listen on (a string or a list of strings).
    pub bind: Vec<SocketAddr>,
    /// `protocol`: `smtp` (default), `lmtp` or `http`.
    pub protocol: Protocol,
    /// `token`: bearer token the management API (http) demands; without it
    /// the API answers loopback clients only. Only valid on http listeners.
    pub token: Option<String>,
    /// `submit-token`: a second bearer token that lets its holder submit
    /// mail (`POST /api/submit`, what `ferrymail sendmail` does) and
    /// nothing else, so that local users and programs can send mail
    /// without being able to read, cancel or bounce everyone's. Needs
    /// `token`. Only valid on http listeners.
    pub submit_token: Option<String>,
    /// `tls.implicit`: TLS from the first byte (SMTPS, RFC 8314) instead of STARTTLS.
    pub tls_implicit: bool,
}

/// What a listener speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// SMTP (RFC 5321), for MX and submission traffic.
    Smtp,
    /// LMTP (RFC 2033), for local delivery agents handing mail in.
    Lmtp,
    /// The management API (HTTP/JSON) used by `ferrymail queue`.
    Http,
}

impl Protocol {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Smtp => "smtp",
            Protocol::Lmtp => "lmtp",
            Protocol::Http => "http",
        }
    }
}

/// `[certificate.<id>]`: a TLS certificate chain and its key, both PEM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Certificate {
    /// `cert`: PEM certificate chain, usually `%{file:...}%`.
    pub cert: String,
    /// `private-key`: PEM private key, usually `%{file:...}%`.
    pub private_key: String,
}

/// `[session]`: limits and policy for inbound sessions.
#[derive(Clone, Debug, PartialEq)]
pub struct Session {
    /// `[session.connect]`.
    pub connect: ConnectPolicy,
    /// `[session.timeout]`.
    pub timeout: Timeouts,
    /// `max-errors`: bad commands tolerated before the session is dropped.
    pub max_errors: u32,
    /// `max-line-length`: longest command line accepted, CRLF included; see
    /// [`DEFAULT_MAX_LINE_LENGTH`]. At least [`MIN_MAX_LINE_LENGTH`].
    pub max_line_length: usize,
    /// `[session.data]`.
    pub data: DataLimits,
    /// `[session.rcpt]`.
    pub rcpt: RcptPolicy,
    /// `[session.etrn]`.
    pub etrn: EtrnPolicy,
    /// `[session.tls]`.
    pub tls: SessionTls,
    /// `[session.auth]`.
    pub auth: SessionAuth,
}

impl Default for Session {
    fn default() -> Self {
        Session {
            connect: ConnectPolicy::default(),
            timeout: Timeouts::default(),
            max_errors: 10,
            max_line_length: DEFAULT_MAX_LINE_LENGTH,
            data: DataLimits::default(),
            rcpt: RcptPolicy::default(),
            etrn: EtrnPolicy::default(),
            tls: SessionTls::default(),
            auth: SessionAuth::default(),
        }
    }
}

/// `[session.auth]`: SMTP AUTH (RFC 4954), so that users and applications
/// with a password may relay (`session.rcpt.relay` sees `authenticated_as`).
/// Keys follow Stalwart's.
#[derive(Clone, Debug, PartialEq)]
pub struct SessionAuth {
    /// `directory`: the `[directory.<id>]` that checks names and passwords.
    /// `None` (the default): AUTH is not offered.
    pub directory: Option<String>,
    /// `mechanisms`: what EHLO offers. Default PLAIN and LOGIN.
    pub mechanisms: Vec<AuthMechanism>,
    /// `require`: expression; true makes MAIL before AUTH fail with 530
    /// 5.7.0 (a submission port). Default false.
    pub require: Expr,
    /// `allow-plain-text`: expression; true offers AUTH on a connection
    /// without TLS, where the password crosses the network in the clear.
    /// Default false (RFC 4954 §4 and RFC 4616 §6 advise against it).
    pub allow_plain_text: Expr,
    /// `must-match-sender`: expression; true makes an authenticated
    /// client's MAIL FROM one of its principal's `email` addresses (or its
    /// name, when that is an address) or the null sender, else 553 5.7.1:
    /// a user cannot send as someone else (Postfix's
    /// reject_sender_login_mismatch). Default true.
    pub must_match_sender: Expr,
    /// `errors.total`: failed AUTH attempts after which the session is
    /// closed with 421. Default 3.
    pub errors_total: u32,
    /// `errors.wait`: how long each failed attempt's 535 is held back, to
    /// slow password guessing. Default 5 s.
    pub errors_wait: Duration,
    /// `errors.per-ip`: failed attempts from one address (an IPv6 /64),
    /// across sessions, after which its AUTH gets 454 4.7.0 until
    /// `errors.per-ip-window` has passed since its first failure. Default
    /// 10.
    pub errors_per_ip: u32,
    /// `errors.per-ip-window`. Default 15 minutes.
    pub errors_per_ip_window: Duration,
}

impl Default for SessionAuth {
    fn default() -> Self {
        SessionAuth {
            directory: None,
            mechanisms: vec![AuthMechanism::Plain, AuthMechanism::Login],
            require: Expr::constant(crate::expr::Value::Bool(false)),
            allow_plain_text: Expr::constant(crate::expr::Value::Bool(false)),
            must_match_sender: Expr::constant(crate::expr::Value::Bool(true)),
            errors_total: 3,
            errors_wait: Duration::from_secs(5),
            errors_per_ip: 10,
            errors_per_ip_window: Duration::from_secs(15 * 60),
        }
    }
}

/// A SASL mechanism `session.auth.mechanisms` may name, and the one type
/// receive's AUTH works with. Both send the password itself, so they are
/// offered only over TLS unless `allow-plain-text` says otherwise (RFC 4954
/// §4, RFC 4616 §6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMechanism {
    /// `plain` (RFC 4616): one message, `authzid NUL authcid NUL passwd`.
    Plain,
    /// `login` (draft-murchison-sasl-login): user name and password in two
    /// steps; what many older clients only speak.
    Login,
}

impl AuthMechanism {
    /// The name as EHLO advertises it.
    pub fn name(self) -> &'static str {
        match self {
            AuthMechanism::Plain => "PLAIN",
            AuthMechanism::Login => "LOGIN",
        }
    }
}

/// `[directory.<id>]`: who may log in with SMTP AUTH. The one type built
/// in is Stalwart's `memory`: principals listed in the configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Directory {
    /// The `<id>`.
    pub id: String,
    /// `[[directory.<id>.principals]]`.
    pub principals: Vec<Principal>,
}

/// One `[[directory.<id>.principals]]` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// `name`: the login name, matched exactly.
    pub name: String,
    /// `secret`: a crypt(3)-style hash (`$argon2id$...`, `$6$...`
    /// SHA-512-crypt, `$5$...` SHA-256-crypt) or the password itself; use
    /// `%{file:...}%` or `%{env:...}%` to keep it out of the file.
    pub secret: String,
    /// `email`: the addresses that are this principal's; with
    /// `session.auth.must-match-sender` (the default) the user's MAIL FROM
    /// must be one of them, so a login cannot send as someone else.
    pub emails: Vec<String>,
}

/// `[session.connect]`: checks of the connecting client, started when the
/// connection is accepted and enforced at RCPT TO.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ConnectPolicy {
    /// `dnsbl`: DNS blocklist zones (RFC 5782) the client's IP is looked up
    /// in. A client listed in any of them has its recipients refused with
    /// 554 5.7.1, except postmaster. Stored lowercase, without a trailing
    /// dot. Default empty: no lookups.
    pub dnsbl: Vec<String>,
}

/// `[auth]`: checks of who the client claims or appears to be. Named after
/// Stalwart's `auth.*` settings, so a postmaster who knows one knows the other.
#[derive(Clone, Debug, PartialEq)]
pub struct AuthChecks {
    /// `[auth.iprev] verify`: the reverse-DNS check (RFC 8601 §2.7.3).
    pub iprev: IprevVerify,
    /// `[auth.dkim] sign` (Stalwart's key): the `[signature.<id>]` ids to
    /// DKIM-sign each accepted message with, evaluated once the message is
    /// complete; `false` or `[]` (the default) signs nothing. Senders of
    /// bulk mail sign at the MTA so that every application's mail passes
    /// DMARC without each holding a key.
    pub dkim_sign: Expr,
    /// `[auth.spf.verify] ehlo` (Stalwart's key): whether to check the
    /// HELO/EHLO name's SPF record (RFC 7208 §2.3) for the client's
    /// address, as a [`VerifyMode`] expression evaluated at EHLO. Default
    /// `disable`.
    pub spf_ehlo: Expr,
    /// `[auth.spf.verify] mail-from`: the same for the MAIL FROM identity
    /// (RFC 7208 §2.4), evaluated at MAIL FROM. Default `disable`.
    pub spf_mail_from: Expr,
    /// `[auth.dkim] verify`: whether to verify the message's DKIM
    /// signatures (RFC 6376 §6) at the end of DATA. Default `disable`.
    pub dkim_verify: Expr,
    /// `[auth.dmarc] verify`: whether to evaluate the From domain's DMARC
    /// policy (RFC 7489 §6.6) at the end of DATA. Default `disable`.
    pub dmarc_verify: Expr,
}

impl Default for AuthChecks {
    fn default() -> Self {
        let off = || Expr::constant(Value::Str(VerifyMode::Disable.as_str().to_string()));
        AuthChecks {
            iprev: IprevVerify::default(),
            dkim_sign: Expr::constant(Value::List(Vec::new())),
            spf_ehlo: off(),
            spf_mail_from: off(),
            dkim_verify: off(),
            dmarc_verify: off(),
        }
    }
}

impl AuthChecks {
    /// Whether no sender verification (SPF, DKIM, DMARC) can ever run:
    /// every one of the four settings is the constant `disable`. Then the
    /// server builds no resolver for them and sessions skip them at no
    /// cost.
    pub fn verifies_nothing(&self) -> bool {
        [
            &self.spf_ehlo,
            &self.spf_mail_from,
            &self.dkim_verify,
            &self.dmarc_verify,
        ]
        .into_iter()
        .all(|e| VerifyMode::constant(e) == Some(VerifyMode::Disable))
    }
}

/// What to do with one sender-authentication check (SPF, DKIM, DMARC):
/// the values of Stalwart's `auth.spf.verify.*`, `auth.dkim.verify` and
/// `auth.dmarc.verify` expressions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum VerifyMode {
    /// `disable`: no lookups and no result (the default).
    #[default]
    Disable,
    /// `relaxed`: check, and state the result in the
    /// Authentication-Results field (RFC 8601); never refuse.
    Relaxed,
    /// `strict`: also refuse mail the check does not pass.
    Strict,
}

impl VerifyMode {
    /// The names, as written in the configuration.
    pub const NAMES: [&'static str; 3] = ["disable", "relaxed", "strict"];

    /// The name as written in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            VerifyMode::Disable => "disable",
            VerifyMode::Relaxed => "relaxed",
            VerifyMode::Strict => "strict",
        }
    }

    /// The mode a value names (`'relaxed'`), if it names one.
    pub fn from_value(v: &Value) -> Option<VerifyMode> {
        match v.as_str()? {
            "disable" => Some(VerifyMode::Disable),
            "relaxed" => Some(VerifyMode::Relaxed),
            "strict" => Some(VerifyMode::Strict),
            _ => None,
        }
    }

    /// Evaluates a mode expression. A computed value that names no mode
    /// (the loader checks the constant ones) counts as `disable`: a
    /// mistake must not start refusing mail.
    pub fn eval(e: &Expr, vars: &dyn crate::expr::Variables) -> VerifyMode {
        match e.as_constant() {
            Some(v) => VerifyMode::from_value(v),
            None => VerifyMode::from_value(&e.eval(vars)),
        }
        .unwrap_or(VerifyMode::Disable)
    }

    /// The mode of an expression that reads nothing, if it is one.
    pub fn constant(e: &Expr) -> Option<VerifyMode> {
        e.as_constant().and_then(VerifyMode::from_value)
    }
}

/// What to do with the iprev result of a client: whether its IP address
/// has a PTR name whose A/AAAA records lead back to it ("forward-confirmed
/// reverse DNS", RFC 8601 §2.7.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum IprevVerify {
    /// `disable`: no lookups (the default: many legitimate senders lack
    /// matching reverse DNS).
    #[default]
    Disable,
    /// `relaxed`: look up and log the result, accept anyway.
    Relaxed,
    /// `strict`: refuse the recipients of a client whose check fails
    /// (550 5.7.25, RFC 7372) or cannot be completed now (450 4.7.25).
    Strict,
}

/// `[session.timeout]`: server-side timeouts of RFC 5321 4.5.3.2.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// `command`: waiting for the next command; at least 5 minutes per
    /// RFC 5321 4.5.3.2.7. Default 5m.
    pub command: Duration,
    /// `data-block`: waiting for each chunk of DATA/BDAT (4.5.3.2.5). Default 3m.
    pub data_block: Duration,
    /// `data-end`: how long the spool may take to make a message durable
    /// after its last byte arrived, before the client is answered 451
    /// 4.3.0: the client itself waits 10 minutes for that reply (RFC 5321
    /// 4.5.3.2.6), so a store that hangs must be given up on sooner.
    /// Default 5m.
    pub data_end: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            command: Duration::from_secs(5 * 60),
            data_block: Duration::from_secs(3 * 60),
            data_end: Duration::from_secs(5 * 60),
        }
    }
}

/// `[session.data]`: limits on message content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataLimits {
    /// `max-message-size`: bytes, as an integer or a size string (`"50M"`,
    /// 1024-based). Advertised in EHLO SIZE. Default 50 MiB.
    pub max_message_size: u64,
    /// `max-received-headers`: more `Received:` headers than this means a mail
    /// loop; the message is rejected. Default 50.
    pub max_received_headers: usize,
    /// `max-memory`: bytes of message contents all sessions together may
    /// hold in memory while they receive; a message that would go beyond
    /// gets 452 4.3.1 and is tried again later. Without it, clients sending
    /// slowly to many sessions could make the server run out of memory.
    /// `None`: 1 GiB, or twice `max-message-size` if that is more.
    pub max_memory: Option<u64>,
}

impl DataLimits {
    /// `max-memory` as configured, or its default.
    pub fn max_memory(&self) -> u64 {
        self.max_memory
            .unwrap_or_else(|| (1u64 << 30).max(self.max_message_size.saturating_mul(2)))
    }
}

impl Default for DataLimits {
    fn default() -> Self {
        DataLimits {
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            max_received_headers: DEFAULT_MAX_RECEIVED_HEADERS,
            max_memory: None,
        }
    }
}

/// `[session.rcpt]`: who may send where.
#[derive(Clone, Debug, PartialEq)]
pub struct RcptPolicy {
    /// `relay`: expression; true lets this session send to non-local domains.
    /// Default `false` (an open relay must be asked for).
    pub relay: Expr,
    /// `local-domains`: domains accepted from anyone. Stored lowercase,
    /// without a trailing dot.
    pub local_domains: Vec<String>,
    /// `max-recipients`: RCPT TO per transaction. Default 1000.
    pub max_recipients: usize,
    /// `directory` (Stalwart's key): the `[directory.<id>]` whose
    /// principals' `email` addresses are the only ones accepted in the
    /// local domains; any other gets 550 5.1.1 at RCPT, instead of a
    /// bounce later from the mailbox server (backscatter). `None` (the
    /// default): every local part is accepted.
    pub directory: Option<String>,
}

impl Default for RcptPolicy {
    fn default() -> Self {
        RcptPolicy {
            relay: Expr::constant(Value::Bool(false)),
            local_domains: Vec::new(),
            max_recipients: DEFAULT_MAX_RECIPIENTS,
            directory: None,
        }
    }
}

/// `[session.etrn]`: remote queue starting (RFC 1985).
#[derive(Clone, Debug, PartialEq)]
pub struct EtrnPolicy {
    /// `allow`: expression; true lets this session use ETRN. Default
    /// `is_loopback(remote_ip)`: only local clients may trigger queue runs.
    pub allow: Expr,
}

impl Default for EtrnPolicy {
    fn default() -> Self {
        EtrnPolicy {
            allow: builtin("is_loopback(remote_ip)"),
        }
    }
}

/// `[session.tls]`: inbound TLS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionTls {
    /// `certificate`: id of a `[certificate.<id>]` to present. `None`: no
    /// STARTTLS and no implicit TLS can be offered.
    pub certificate: Option<String>,
    /// `starttls`: advertise STARTTLS (RFC 3207) when a certificate is set. Default true.
    pub starttls: bool,
}

impl Default for SessionTls {
    fn default() -> Self {
        SessionTls {
            certificate: None,
            starttls: true,
        }
    }
}

/// `[store.<id>]`: one storage backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Store {
    /// The `<id>`; for implicit stores, the type name.
    pub id: String,
    /// `type` and its settings.
    pub kind: StoreKind,
}

/// A store backend and its settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreKind {
    /// `type = "embedded"`: a local database file tree, for one node.
    Embedded {
        /// `path`: directory. Default `./data`.
        path: PathBuf,
    },
    /// `type = "postgresql"`: shared by several nodes.
    PostgreSql {
        /// `url`: `postgresql://user@host:port/db`. Default
        /// [`DEFAULT_POSTGRESQL_URL`].
        url: String,
        /// `pool-size`: connections kept open. Default 10.
        pool_size: usize,
        /// `tls`: connect with TLS. Default false.
        tls: bool,
    },
    /// `type = "fs"`: one file per blob under a directory (blob storage).
    Fs {
        /// `path`: directory. Default `./data/blobs`.
        path: PathBuf,
    },
}

impl StoreKind {
    /// The `type` spelling.
    pub fn type_name(&self) -> &'static str {
        match self {
            StoreKind::Embedded { .. } => "embedded",
            StoreKind::PostgreSql { .. } => "postgresql",
            StoreKind::Fs { .. } => "fs",
        }
    }

    /// The default settings of store type `name`; used for implicit stores.
    pub fn default_of(name: &str) -> Option<StoreKind> {
        match name {
            "embedded" => Some(StoreKind::Embedded {
                path: PathBuf::from(DEFAULT_DATA_PATH),
            }),
            "postgresql" => Some(StoreKind::PostgreSql {
                url: DEFAULT_POSTGRESQL_URL.to_string(),
                pool_size: 10,
                tls: false,
            }),
            "fs" => Some(StoreKind::Fs {
                path: PathBuf::from(DEFAULT_BLOB_PATH),
            }),
            _ => None,
        }
    }
}

/// `[storage]`: which store holds what. Both are ids present in
/// [`Config::stores`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Storage {
    /// `data`: envelopes and per-recipient queue entries.
    pub data: String,
    /// `blob`: message contents.
    pub blob: String,
}

impl Default for Storage {
    fn default() -> Self {
        Storage {
            data: "embedded".to_string(),
            blob: "embedded".to_string(),
        }
    }
}

/// `[queue]`: how outbound mail is scheduled and routed.
#[derive(Clone, Debug, PartialEq)]
pub struct Queue {
    /// `[queue.schedule]` (id `default`) and `[queue.schedule.<id>]`;
    /// `default` and `bounce` always exist.
    pub schedules: BTreeMap<String, Schedule>,
    /// `[queue.virtual.<name>]`; `default` and `bounce` always exist.
    pub virtual_queues: BTreeMap<String, VirtualQueue>,
    /// `[queue.strategy]`.
    pub strategy: Strategy,
    /// `[queue.route.<id>]`; `mx` always exists.
    pub routes: BTreeMap<String, Route>,
    /// `priority`: expression giving a message's priority weight (higher
    /// first); `None` means every message has the same priority.
    pub priority: Option<Expr>,
    /// `max-dynamic-queues`: how many queues not defined under
    /// `[queue.virtual]` the strategy may create by name. Each gets the
    /// limits of `[queue.virtual.default]` (concurrency, rate,
    /// `destination.*`) but not its `schedule`; beyond the cap, entries go
    /// to `default`.
    pub max_dynamic_queues: usize,
    /// `[queue.outbound]`: how the SMTP/LMTP client behaves.
    pub outbound: Outbound,
    /// `[queue.limiter.inbound.<id>]` (Stalwart's names), in file order:
    /// rate limits on the recipients clients hand in. Disabled ones
    /// (`enable = false`) are left out.
    pub inbound_limiters: Vec<InboundLimiter>,
}

/// `[queue.limiter.inbound.<id>]`: at most `rate` recipients per value of
/// `key`, counted at RCPT TO when `match` holds; beyond it a recipient
/// gets 451 4.4.5 and the client tries again later. This is how one noisy
/// client, a compromised account or a runaway application is slowed
/// without refusing anyone else.
#[derive(Clone, Debug, PartialEq)]
pub struct InboundLimiter {
    /// The `<id>` (its counts are kept under it).
    pub id: String,
    /// `key`: the variables whose values the count is kept per (e.g.
    /// `["remote_ip"]`, or `["sender_domain", "rcpt"]`); empty: one count
    /// for every client together.
    pub key: Vec<Var>,
    /// `rate`: `COUNT/PERIOD`, e.g. `5/1s`; `COUNT` recipients at once,
    /// then one per `PERIOD / COUNT`.
    pub rate: Rate,
    /// `match`: when the limit applies (default: always).
    pub when: Expr,
}

impl Default for Queue {
    fn default() -> Self {
        Queue {
            schedules: BTreeMap::from([
                (DEFAULT_SCHEDULE.to_string(), Schedule::default()),
                (BOUNCE_SCHEDULE.to_string(), Schedule::default()),
            ]),
            virtual_queues: BTreeMap::from([
                (DEFAULT_QUEUE.to_string(), VirtualQueue::default()),
                (BOUNCE_QUEUE.to_string(), VirtualQueue::bounce()),
            ]),
            strategy: Strategy::default(),
            routes: BTreeMap::from([(MX_ROUTE.to_string(), Route::mx())]),
            priority: None,
            max_dynamic_queues: 1000,
            outbound: Outbound::default(),
            inbound_limiters: Vec::new(),
        }
    }
}

/// `[queue.outbound]`: the delivery client's timeouts, MX limits, address
/// family order, connection reuse and delivery log.
#[derive(Clone, Debug, PartialEq)]
pub struct Outbound {
    /// `[queue.outbound.timeout]`: one limit per protocol phase.
    pub timeout: OutboundTimeouts,
    /// `max-mx`: MX hosts tried per attempt, in preference order. Default 5.
    pub max_mx: usize,
    /// `max-multihomed`: addresses tried per MX host. Default 2.
    pub max_multihomed: usize,
    /// `ip-strategy`: which address families to use, in which order.
    pub ip_strategy: IpStrategy,
    /// `max-messages-per-connection`: transactions on one connection before
    /// it is closed. Default 100.
    pub max_messages_per_connection: usize,
    /// `idle-timeout`: how long an unused connection stays open for reuse.
    /// Default 30s.
    pub idle_timeout: Duration,
    /// `delivery-log`: file receiving one JSON line per recipient per
    /// attempt. `None`: the lines become `tracing` events (target `delivery`).
    pub delivery_log: Option<PathBuf>,
    /// `hostname` (Stalwart's key; `ehlo-hostname` too): the EHLO/LHLO
    /// name, an expression evaluated per delivery (say, per virtual queue,
    /// to match the PTR record of its source address). `None`:
    /// `server.hostname`.
    pub hostname: Option<Expr>,
    /// `[queue.outbound.source-ip] v4`: the local IPv4 addresses to connect
    /// from, an expression giving a list, evaluated per delivery; one is
    /// picked at random for each new connection. `None` or empty: the
    /// kernel's choice. This is how a sender keeps a pool of addresses per
    /// kind of mail (and their reputations apart).
    pub source_ip_v4: Option<Expr>,
    /// `[queue.outbound.source-ip] v6`: the same for IPv6.
    pub source_ip_v6: Option<Expr>,
    /// `[queue.outbound.tls] mta-sts` (Stalwart's key): whether MX
    /// deliveries follow the recipient domain's MTA-STS policy (RFC 8461),
    /// an expression giving `optional` (when the domain publishes one),
    /// `require` (no delivery without one) or `disable`. `None`: optional.
    pub mta_sts: Option<Expr>,
}

impl Default for Outbound {
    fn default() -> Self {
        Outbound {
            timeout: OutboundTimeouts::default(),
            max_mx: 5,
            max_multihomed: 2,
            ip_strategy: IpStrategy::Ipv4ThenIpv6,
            max_messages_per_connection: 100,
            idle_timeout: Duration::from_secs(30),
            delivery_log: None,
            hostname: None,
            source_ip_v4: None,
            source_ip_v6: None,
            mta_sts: None,
        }
    }
}

/// `[queue.outbound.timeout]`: client-side limits of RFC 5321 4.5.3.2, one
/// per phase, so a hung next hop costs a bounded time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboundTimeouts {
    /// `connect`: TCP connect (and implicit TLS handshake). Default 30s.
    pub connect: Duration,
    /// `greeting`: the 220 banner (4.5.3.2.1: 5 minutes). Default 5m.
    pub greeting: Duration,
    /// `tls`: the TLS handshake after STARTTLS's 220 (Stalwart's key).
    /// Default 3m.
    pub tls: Duration,
    /// `ehlo`: EHLO/LHLO/HELO, STARTTLS, AUTH, RSET and QUIT replies. Default 5m.
    pub ehlo: Duration,
    /// `mail`: the MAIL reply (4.5.3.2.2: 5 minutes). Default 5m.
    pub mail: Duration,
    /// `rcpt`: each RCPT reply (4.5.3.2.3: 5 minutes). Default 5m.
    pub rcpt: Duration,
    /// `data`: DATA/BDAT, sending the contents and the final reply
    /// (4.5.3.2.4-6; the end-of-data wait is 10 minutes). Default 10m.
    pub data: Duration,
    /// `mta-sts`: fetching an MTA-STS policy over HTTPS (RFC 8461 §3.3),
    /// from the connection to the last byte. Default 1m.
    pub mta_sts: Duration,
}

impl Default for OutboundTimeouts {
    fn default() -> Self {
        OutboundTimeouts {
            connect: Duration::from_secs(30),
            greeting: Duration::from_secs(5 * 60),
            tls: Duration::from_secs(3 * 60),
            ehlo: Duration::from_secs(5 * 60),
            mail: Duration::from_secs(5 * 60),
            rcpt: Duration::from_secs(5 * 60),
            data: Duration::from_secs(10 * 60),
            mta_sts: Duration::from_secs(60),
        }
    }
}

/// `ip-strategy`: the address families tried for a next-hop host, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IpStrategy {
    /// `ipv4-then-ipv6` (default): A records first, then AAAA.
    Ipv4ThenIpv6,
    /// `ipv6-then-ipv4`: AAAA records first, then A.
    Ipv6ThenIpv4,
    /// `ipv4-only`: A records only.
    Ipv4Only,
    /// `ipv6-only`: AAAA records only.
    Ipv6Only,
}

/// A retry/notify/expire schedule. All fields are expressions, evaluated per
/// recipient.
#[derive(Clone, Debug, PartialEq)]
pub struct Schedule {
    /// `retry`: intervals between attempts; the last one repeats.
    /// Default `[2m, 5m, 10m, 15m, 30m, 1h, 2h]`.
    pub retry: Expr,
    /// `notify`: message ages at which a delay DSN is sent. Default `[1d, 3d]`.
    pub notify: Expr,
    /// `expire`: age after which delivery stops with a failure DSN. Default
    /// `5d`. `None` when `max-attempts` is used instead.
    pub expire: Option<Expr>,
    /// `max-attempts`: attempts after which delivery stops; the alternative to `expire`.
    pub max_attempts: Option<Expr>,
}

impl Default for Schedule {
    fn default() -> Self {
        Schedule {
            retry: builtin("[2m, 5m, 10m, 15m, 30m, 1h, 2h]"),
            notify: builtin("[1d, 3d]"),
            expire: Some(builtin("5d")),
            max_attempts: None,
        }
    }
}

/// `[queue.virtual.<name>]`: a queue with its own limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VirtualQueue {
    /// `concurrency`: deliveries in flight at once from this queue. Default 32.
    pub concurrency: usize,
    /// `rate`: at most `count` deliveries per `period` (`"500/1s"`).
    pub rate: Option<Rate>,
    /// `schedule`: a schedule id used for this queue's messages instead of
    /// the strategy's choice.
    pub schedule: Option<String>,
    /// `destination.*`: limits of each per-destination ready queue inside
    /// this queue.
    pub destination: DestinationLimits,
}

impl Default for VirtualQueue {
    fn default() -> Self {
        VirtualQueue {
            concurrency: 32,
            rate: None,
            schedule: None,
            destination: DestinationLimits::default(),
        }
    }
}

impl VirtualQueue {
    /// The built-in `bounce` queue: default limits, schedule `bounce`.
    pub fn bounce() -> Self {
        VirtualQueue {
            schedule: Some(BOUNCE_SCHEDULE.to_string()),
            ..VirtualQueue::default()
        }
    }
}

/// `[queue.virtual.<name>] destination.*`: how the scheduler treats one next
/// hop (MX domain or relay route) inside a virtual queue, so that a slow or
/// dead destination holds only its own slots.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DestinationLimits {
    /// `destination.concurrency`: deliveries in flight to one destination at
    /// once, reached by slow start. Default 10.
    pub concurrency: usize,
    /// `destination.rate`: deliveries started to one destination per
    /// period (`100/1m`), a token bucket per destination and node; what
    /// large receivers allow one sending address. `None`: no limit.
    pub rate: Option<Rate>,
    /// `destination.failure-limit`: consecutive connection-level failures
    /// after which the destination is suspended. Default 5.
    pub failure_limit: u32,
    /// `destination.suspend`: how long a suspended destination waits before
    /// one probe delivery is tried. Default 5m.
    pub suspend: Duration,
}

impl Default for DestinationLimits {
    fn default() -> Self {
        DestinationLimits {
            concurrency: 10,
            rate: None,
            failure_limit: 5,
            suspend: Duration::from_secs(5 * 60),
        }
    }
}

/// A rate limit: `count` per `period`, written `"500/1s"` (or `"500/s"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    /// Events allowed per period; at least 1.
    pub count: u64,
    /// The period; not zero.
    pub period: Duration,
}

/// `[queue.strategy]`: per-recipient choices, each an expression yielding an id.
#[derive(Clone, Debug, PartialEq)]
pub struct Strategy {
    /// `queue`: virtual queue name. Default `'bounce'` for `source == 'dsn'`,
    /// else `'default'`.
    pub queue: Expr,
    /// `schedule`: schedule id. Default `'bounce'` for `source == 'dsn'`,
    /// else `'default'`.
    pub schedule: Expr,
    /// `route`: route id. Default `'mx'`.
    pub route: Expr,
}

/// The built-in strategy sends delivery status notifications to the bounce
/// queue and schedule and everything else to `default`:
/// `[ { if = "source == 'dsn'", then = "'bounce'" }, { else = "'default'" } ]`.
/// A strategy set in the file replaces it whole; to keep bounces apart then,
/// include the same condition.
impl Default for Strategy {
    fn default() -> Self {
        let by_source = |dsn: &str, other: &str| {
            Expr::conditional(
                vec![(
                    builtin("source == 'dsn'"),
                    Expr::constant(Value::Str(dsn.to_string())),
                )],
                Expr::constant(Value::Str(other.to_string())),
            )
            .unwrap_or_else(|e| panic!("built-in strategy: {e}"))
        };
        Strategy {
            queue: by_source(BOUNCE_QUEUE, DEFAULT_QUEUE),
            schedule: by_source(BOUNCE_SCHEDULE, DEFAULT_SCHEDULE),
            route: Expr::constant(Value::Str(MX_ROUTE.to_string())),
        }
    }
}

/// `[queue.route.<id>]`: how to reach the next hop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// The `<id>`.
    pub id: String,
    /// `type` (`mx` or `relay`) and, for relays, `address`.
    pub kind: RouteKind,
    /// `port`: TCP port of the next hop. Default 25 (also for MX routes, where
    /// changing it is mostly useful in tests).
    pub port: u16,
    /// `protocol`: `smtp` (default) or `lmtp`.
    pub protocol: DeliveryProtocol,
    /// `tls.*`.
    pub tls: RouteTls,
    /// `tls.ca`: PEM certificates of the authorities this route's next
    /// hop may chain to besides Mozilla's roots (a relay with a private
    /// CA), usually `%{file:/etc/ssl/internal-ca.pem}%`. Used where the
    /// route verifies (`tls.mode = "require"`, implicit TLS).
    pub tls_ca: Option<String>,
    /// `auth.username` / `auth.secret`: SMTP AUTH at a relay.
    pub auth: Option<RouteAuth>,
}

impl Route {
    /// The built-in `mx` route: MX lookup, port 25, opportunistic STARTTLS.
    pub fn mx() -> Route {
        Route {
            id: MX_ROUTE.to_string(),
            kind: RouteKind::Mx,
            port: 25,
            protocol: DeliveryProtocol::Smtp,
            tls: RouteTls::default(),
            tls_ca: None,
            auth: None,
        }
    }
}

/// Where a route's next hop comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RouteKind {
    /// `type = "mx"`: the recipient domain's MX records (RFC 5321 5.1).
    Mx,
    /// `type = "relay"`: one fixed smarthost.
    Relay {
        /// `address`: host name or IP address.
        address: String,
    },
}

/// What a route speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeliveryProtocol {
    /// SMTP (RFC 5321).
    Smtp,
    /// LMTP (RFC 2033): one reply per recipient after DATA.
    Lmtp,
}

/// `[queue.route.<id>.tls]`: outbound TLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteTls {
    /// `tls.implicit`: TLS from the first byte (port 465 style). Default false.
    pub implicit: bool,
    /// `tls.mode`: STARTTLS policy when not implicit. Default `optional`.
    pub mode: TlsMode,
    /// `tls.allow-invalid-certs`: accept any certificate. Default false.
    pub allow_invalid_certs: bool,
}

impl Default for RouteTls {
    fn default() -> Self {
        RouteTls {
            implicit: false,
            mode: TlsMode::Optional,
            allow_invalid_certs: false,
        }
    }
}

/// STARTTLS policy of a route (`tls.mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TlsMode {
    /// `optional`: use STARTTLS when offered, else plain text (RFC 3207 opportunistic).
    Optional,
    /// `require`: fail the attempt (temporarily) if STARTTLS is unavailable.
    Require,
    /// `disable`: never use STARTTLS.
    Disable,
}

/// SMTP AUTH credentials for a relay route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteAuth {
    /// `auth.username`.
    pub username: String,
    /// `auth.secret`, usually `%{env:...}%` or `%{file:...}%`.
    pub secret: String,
}

/// `[report]`: what Ferrymail sends about mail.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    /// `[report.dsn]`.
    pub dsn: DsnConfig,
}

impl Report {
    fn for_hostname(hostname: &str) -> Report {
        Report {
            dsn: DsnConfig::for_hostname(hostname),
        }
    }
}

/// `[report.dsn]`: delivery status notifications (RFC 3464).
#[derive(Clone, Debug, PartialEq)]
pub struct DsnConfig {
    /// `from-name`: display name in the DSN's From. Default `'Mail Delivery Subsystem'`.
    pub from_name: Expr,
    /// `from-address`: address in the DSN's From. Default
    /// `'MAILER-DAEMON@<server.hostname>'`.
    pub from_address: Expr,
    /// `sign`: list of `[signature.<id>]` ids to DKIM-sign DSNs with. Default `[]`.
    pub sign: Expr,
    /// `max-returned-size`: the most of the original message a notification
    /// returns. A RET=FULL message larger than this comes back as its
    /// headers only (RFC 3461 §4.3 leaves the amount to the MTA), so a bounce
    /// never carries a large body back across the net. Default
    /// [`DEFAULT_MAX_RETURNED_SIZE`].
    pub max_returned_size: u64,
    /// `double-bounce`: where a failure notification about a message with
    /// the null sender goes (a "double bounce", RFC 3461 §6.2 forbids
    /// returning it to `<>`). Default none: the double bounce is only
    /// logged.
    pub double_bounce: Option<String>,
    /// `batch-quiet`: a notification waits this long for further events
    /// about the same message and kind before it is made (so one notice
    /// covers the recipients of one job). Default 1 s. Owed notices are
    /// kept in the store meanwhile, so a longer wait risks nothing.
    pub batch_quiet: Duration,
    /// `batch-max-hold`: the longest a notification waits for further
    /// events, however busy. Default 10 s.
    pub batch_max_hold: Duration,
}

/// Default `report.dsn.max-returned-size`: 256 KiB, enough for the headers
/// and the text of ordinary mail, small enough that bounces of large
/// attachments stay small.
pub const DEFAULT_MAX_RETURNED_SIZE: u64 = 256 << 10;

impl DsnConfig {
    pub(crate) fn for_hostname(hostname: &str) -> DsnConfig {
        DsnConfig {
            from_name: Expr::constant(Value::Str("Mail Delivery Subsystem".to_string())),
            from_address: Expr::constant(Value::Str(format!("MAILER-DAEMON@{hostname}"))),
            sign: Expr::constant(Value::List(Vec::new())),
            max_returned_size: DEFAULT_MAX_RETURNED_SIZE,
            double_bounce: None,
            batch_quiet: Duration::from_secs(1),
            batch_max_hold: Duration::from_secs(10),
        }
    }
}

/// `[signature.<id>]`: a DKIM signer (RFC 6376).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signature {
    /// The `<id>`, as referenced by `report.dsn.sign`.
    pub id: String,
    /// `private-key`: PEM (PKCS#1 or PKCS#8), usually `%{file:...}%`.
    pub private_key: String,
    /// `domain`: the `d=` tag.
    pub domain: String,
    /// `selector`: the `s=` tag.
    pub selector: String,
    /// `algorithm`: `rsa-sha256` or `ed25519-sha256` (RFC 8463).
    pub algorithm: DkimAlgorithm,
    /// `canonicalization`: `header/body`, default `relaxed/relaxed`.
    pub canonicalization: Canonicalization,
    /// `headers`: header fields to sign; must include `From` (RFC 6376 5.4).
    pub headers: Vec<String>,
}

/// Default `headers` of a signature: RFC 6376 5.4.1's recommended set.
pub const DEFAULT_SIGNED_HEADERS: [&str; 11] = [
    "From",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "Reply-To",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
];

/// DKIM signing algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DkimAlgorithm {
    /// `rsa-sha256` (RFC 6376).
    RsaSha256,
    /// `ed25519-sha256` (RFC 8463).
    Ed25519Sha256,
}

/// DKIM canonicalization for header and body (RFC 6376 3.4), written
/// `relaxed/simple`; a single word sets the header and leaves the body
/// `simple`, as the `c=` tag does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Canonicalization {
    /// How headers are canonicalized.
    pub header: Canon,
    /// How the body is canonicalized.
    pub body: Canon,
}

/// One canonicalization algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Canon {
    /// `simple`: (almost) no changes tolerated.
    Simple,
    /// `relaxed`: whitespace and header-name case changes tolerated.
    Relaxed,
}

/// `[resolver]`: where MX/A/AAAA/TXT/PTR lookups go.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Resolver {
    /// `type`: `system` (`/etc/resolv.conf`, default) or `custom`.
    pub kind: ResolverKind,
    /// `custom`: name servers as written, used when `type = "custom"`:
    /// `udp://IP[:PORT]`, `tcp://IP[:PORT]`, `IP` or `IP:PORT`.
    pub custom: Vec<String>,
    /// `custom`, parsed.
    pub servers: Vec<NameServer>,
}

/// Which resolver configuration applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum ResolverKind {
    /// The operating system's (`/etc/resolv.conf`).
    #[default]
    System,
    /// The servers in `custom`.
    Custom,
}

/// One name server of a custom resolver.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NameServer {
    /// UDP (default) or TCP.
    pub transport: DnsTransport,
    /// Address; port 53 when not written.
    pub addr: SocketAddr,
}

/// How to reach a name server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DnsTransport {
    /// `udp://` or no scheme.
    Udp,
    /// `tcp://`.
    Tcp,
}

/// `[cluster]`: the settings that matter when several nodes share one
/// PostgreSQL queue. Harmless (leases still apply) with an embedded store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cluster {
    /// `lease`: how long a node's claim on the entries it is delivering
    /// lasts unless renewed; a running delivery renews it every third of
    /// it. It is how long the entries of a node that died wait before
    /// another node takes them over. Default 60 s; at least 3 s.
    pub lease: Duration,
    /// `poll-interval`: how often a node reads the change feed to learn of
    /// mail accepted, deferred, completed or acted on by other nodes, and
    /// of ETRN and flush given to them. Default 1 s; 50 ms to 1 min.
    pub poll_interval: Duration,
}

/// The shortest `cluster.lease`: renewals every third of it must not be
/// outrun by a store round trip under load.
pub const MIN_LEASE: Duration = Duration::from_secs(3);

impl Default for Cluster {
    fn default() -> Self {
        Cluster {
            lease: Duration::from_secs(60),
            poll_interval: Duration::from_secs(1),
        }
    }
}
