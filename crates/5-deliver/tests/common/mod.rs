//! Shared fixtures for the delivery tests: real next hops (Postfix's
//! smtp-sink, an aiosmtpd peer, a private Postfix), a recording TCP proxy,
//! an in-process DNS server (hickory-server), and job/config builders.
//! Every process is killed on drop; every wait is bounded.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferrymail_config::Config;
use ferrymail_deliver::{Job, RecipientOutcome, SmtpTransport, Transport};
use ferrymail_spool::{BodyType, Envelope, MessageId, Notify, Recipient, Source};

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process killed (and reaped) on drop.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// Waits (at most 15 s) until something on `port` sends a 220 greeting.
pub fn wait_banner(port: u16, child: &mut Child) {
    wait_banner_at("127.0.0.1", port, child)
}

/// [`wait_banner`] on another loopback address.
pub fn wait_banner_at(ip: &str, port: u16, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("peer on port {port} exited early: {status}");
        }
        if let Ok(mut s) = TcpStream::connect((ip, port)) {
            s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            let mut buf = [0u8; 512];
            if let Ok(n) = s.read(&mut buf)
                && buf[..n].starts_with(b"220")
            {
                let _ = s.write_all(b"QUIT\r\n");
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("no 220 banner on port {port} within 15s");
}

/// Waits (at most 15 s) until `port` accepts connections.
pub fn wait_listening(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on port {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------- smtp-sink

/// Postfix's smtp-sink on 127.0.0.1, dumping each transaction to a file.
pub struct Sink {
    pub port: u16,
    pub dir: tempfile::TempDir,
    _proc: Proc,
}

/// One transaction as smtp-sink dumped it (line ends become LF there).
#[derive(Debug)]
pub struct Dumped {
    /// `X-Mail-Args:` value.
    pub mail_args: String,
    /// `X-Rcpt-Args:` values.
    pub rcpt_args: Vec<String>,
    /// The message as received, after smtp-sink's own Received header.
    pub body: Vec<u8>,
}

impl Sink {
    /// Starts smtp-sink with `args` (e.g. `["-r", "RCPT"]`).
    pub fn start(args: &[&str]) -> Sink {
        Self::start_with(args, true)
    }

    /// Starts smtp-sink and waits only for its port to accept (for `-q
    /// CONNECT`, which never greets).
    pub fn start_silent(args: &[&str]) -> Sink {
        Self::start_with(args, false)
    }

    /// Starts smtp-sink on `ip:port` (any 127.0.0.0/8 address).
    pub fn start_at(ip: &str, port: u16, args: &[&str]) -> Sink {
        Self::start_full(ip, port, args, true)
    }

    fn start_with(args: &[&str], banner: bool) -> Sink {
        Self::start_full("127.0.0.1", free_port(), args, banner)
    }

    fn start_full(ip: &str, port: u16, args: &[&str], banner: bool) -> Sink {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o777),
        )
        .unwrap();
        let mut cmd = Command::new("/usr/sbin/smtp-sink");
        if is_root() {
            cmd.args(["-u", "nobody"]);
        }
        cmd.arg("-d")
            .arg(format!("{}/%M.", dir.path().display()))
            .args(args)
            .arg(format!("{ip}:{port}"))
            .arg("64")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // Owned by `Proc` before waiting, so a failed start kills it too.
        let mut proc = Proc(cmd.spawn().expect("smtp-sink (run scripts/test-deps)"));
        if banner {
            wait_banner_at(ip, port, &mut proc.0);
        } else {
            wait_listening(port);
        }
        Sink {
            port,
            dir,
            _proc: proc,
        }
    }

    /// The transactions dumped so far (each file is one).
    pub fn dumped(&self) -> Vec<Dumped> {
        let mut out = Vec::new();
        let mut paths: Vec<PathBuf> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        paths.sort();
        for p in paths {
            let text = std::fs::read(&p).unwrap();
            let mut mail_args = String::new();
            let mut rcpt_args = Vec::new();
            let mut rest = &text[..];
            // Header lines until the three-line Received header; a file
            // without one is a transaction that never reached DATA.
            let Some(received) = memchr_find(&text, b"\nReceived: ") else {
                continue;
            };
            if !text[received..].ends_with(b"\n\n") {
                continue;
            }
            loop {
                let nl = rest.iter().position(|&b| b == b'\n').unwrap();
                let line = String::from_utf8_lossy(&rest[..nl]).to_string();
                rest = &rest[nl + 1..];
                if let Some(v) = line.strip_prefix("X-Mail-Args: ") {
                    mail_args = v.to_string();
                } else if let Some(v) = line.strip_prefix("X-Rcpt-Args: ") {
                    rcpt_args.push(v.to_string());
                } else if line.starts_with("Received: ") {
                    for _ in 0..2 {
                        let nl = rest.iter().position(|&b| b == b'\n').unwrap();
                        rest = &rest[nl + 1..];
                    }
                    break;
                }
            }
            // smtp-sink appends an empty line.
            let body = rest.strip_suffix(b"\n").unwrap_or(rest).to_vec();
            out.push(Dumped {
                mail_args,
                rcpt_args,
                body,
            });
        }
        out
    }

    /// Waits (at most 10 s) for `n` dumped transactions.
    pub fn wait_dumped(&self, n: usize) -> Vec<Dumped> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let d = self.dumped();
            if d.len() >= n || Instant::now() > deadline {
                return d;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn memchr_find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// What smtp-sink's dump shows for `contents`: line ends as LF.
pub fn as_dumped(contents: &[u8]) -> Vec<u8> {
    String::from_utf8_lossy(contents)
        .replace("\r\n", "\n")
        .into_bytes()
}

// ---------------------------------------------------------------- aiosmtpd

/// The aiosmtpd peer script (`tests/peers/aiosmtpd_peer.py`).
pub struct PyPeer {
    pub port: u16,
    pub record: PathBuf,
    _dir: tempfile::TempDir,
    proc: Proc,
}

impl PyPeer {
    /// Starts the peer with `options` (see the script) plus port and record.
    pub fn start(options: serde_json::Value) -> PyPeer {
        Self::start_at("127.0.0.1", free_port(), options)
    }

    /// Starts the peer on `ip:port` (any 127.0.0.0/8 address).
    pub fn start_at(ip: &str, port: u16, mut options: serde_json::Value) -> PyPeer {
        options["host"] = ip.into();
        let dir = tempfile::tempdir().unwrap();
        let record = dir.path().join("record.jsonl");
        options["port"] = port.into();
        options["record"] = record.display().to_string().into();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/aiosmtpd_peer.py");
        let proc = Proc(ready::spawn_python_ready(&script, &options));
        PyPeer {
            port,
            record,
            _dir: dir,
            proc,
        }
    }

    /// The transactions recorded so far.
    pub fn transactions(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.record)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

/// The bytes of a recorded transaction's contents.
pub fn recorded_data(t: &serde_json::Value) -> Vec<u8> {
    let hex = t["data_hex"].as_str().unwrap();
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

// ---------------------------------------------------------------- TLS

/// A certificate and key in PEM files, and the certificate's DER.
pub struct Cert {
    pub dir: tempfile::TempDir,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub der: rustls_der::CertificateDer<'static>,
}

/// Re-exported for tests that pass extra roots.
pub mod rustls_der {
    pub use rustls::pki_types::CertificateDer;
}

fn write_pair(cert_pem: String, key_pem: String, der: Vec<u8>) -> Cert {
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&cert, cert_pem).unwrap();
    std::fs::write(&key, key_pem).unwrap();
    Cert {
        dir,
        cert,
        key,
        der: rustls::pki_types::CertificateDer::from(der),
    }
}

/// A self-signed certificate for `names`.
pub fn self_signed(names: &[&str]) -> Cert {
    let ck =
        rcgen::generate_simple_self_signed(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
    write_pair(
        ck.cert.pem(),
        ck.signing_key.serialize_pem(),
        ck.cert.der().to_vec(),
    )
}

/// A CA certificate, and a leaf for `names` signed by it: (ca, leaf).
pub fn ca_and_leaf(names: &[&str]) -> (Cert, Cert) {
    let (ca, mut leaves) = ca_and_leaves(&[names]);
    (ca, leaves.remove(0))
}

/// A CA certificate, and one leaf signed by it for each list of names.
pub fn ca_and_leaves(leaves: &[&[&str]]) -> (Cert, Vec<Cert>) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Ferrymail Test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaves = leaves
        .iter()
        .map(|names| {
            let leaf_key = KeyPair::generate().unwrap();
            let leaf_params =
                CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                    .unwrap();
            let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
            write_pair(leaf.pem(), leaf_key.serialize_pem(), leaf.der().to_vec())
        })
        .collect();
    let ca = write_pair(ca_cert.pem(), String::new(), ca_cert.der().to_vec());
    (ca, leaves)
}

// ---------------------------------------------------------------- proxy

/// What a recording proxy saw on one connection, in order.
#[derive(Clone, Debug)]
pub enum Event {
    /// Bytes from the client (Ferrymail).
    Client(Vec<u8>),
    /// Bytes from the server.
    Server(Vec<u8>),
    /// The client closed its side.
    ClientClosed,
}

/// A TCP proxy in front of a next hop that counts connections and records
/// both directions, so tests can see pipelining, BDAT and reuse on the
/// wire whatever the server is.
pub struct Proxy {
    pub port: u16,
    pub conns: Arc<Mutex<Vec<Vec<Event>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Proxy {
    /// Listens on a free port and forwards to 127.0.0.1:`upstream`.
    pub async fn start(upstream: u16) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let conns: Arc<Mutex<Vec<Vec<Event>>>> = Arc::default();
        let state = conns.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let idx = {
                    let mut c = state.lock().unwrap();
                    c.push(Vec::new());
                    c.len() - 1
                };
                let state = state.clone();
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                    else {
                        return;
                    };
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let s1 = state.clone();
                    let up = async move {
                        use tokio::io::{AsyncReadExt, AsyncWriteExt};
                        let mut buf = vec![0u8; 65536];
                        loop {
                            match cr.read(&mut buf).await {
                                Ok(0) | Err(_) => {
                                    s1.lock().unwrap()[idx].push(Event::ClientClosed);
                                    let _ = sw.shutdown().await;
                                    return;
                                }
                                Ok(n) => {
                                    s1.lock().unwrap()[idx].push(Event::Client(buf[..n].to_vec()));
                                    if sw.write_all(&buf[..n]).await.is_err() {
                                        return;
                                    }
                                }
                            }
                        }
                    };
                    let s2 = state.clone();
                    let down = async move {
                        use tokio::io::{AsyncReadExt, AsyncWriteExt};
                        let mut buf = vec![0u8; 65536];
                        loop {
                            match sr.read(&mut buf).await {
                                Ok(0) | Err(_) => {
                                    let _ = cw.shutdown().await;
                                    return;
                                }
                                Ok(n) => {
                                    s2.lock().unwrap()[idx].push(Event::Server(buf[..n].to_vec()));
                                    if cw.write_all(&buf[..n]).await.is_err() {
                                        return;
                                    }
                                }
                            }
                        }
                    };
                    tokio::join!(up, down);
                });
            }
        });
        Proxy { port, conns, task }
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.conns.lock().unwrap().len()
    }

    /// Connection `i`'s client bytes grouped into turns: the bytes the
    /// client sent between two server transmissions.
    pub fn client_turns(&self, i: usize) -> Vec<String> {
        let conns = self.conns.lock().unwrap();
        let mut turns = Vec::new();
        let mut current: Option<Vec<u8>> = None;
        for e in &conns[i] {
            match e {
                Event::Client(b) => current.get_or_insert_with(Vec::new).extend_from_slice(b),
                Event::Server(_) | Event::ClientClosed => {
                    if let Some(t) = current.take() {
                        turns.push(String::from_utf8_lossy(&t).into_owned());
                    }
                }
            }
        }
        if let Some(t) = current.take() {
            turns.push(String::from_utf8_lossy(&t).into_owned());
        }
        turns
    }

    /// Everything the client sent on connection `i`.
    pub fn client_bytes(&self, i: usize) -> String {
        self.client_turns(i).concat()
    }

    /// Connection `i` as it happened, for a failure message: `C:` what the
    /// client sent, `S:` what the server answered, in order.
    pub fn transcript(&self, i: usize) -> String {
        let mut out = String::new();
        for e in &self.conns.lock().unwrap()[i] {
            match e {
                Event::Client(b) => out.push_str(&format!("C: {}", String::from_utf8_lossy(b))),
                Event::Server(b) => out.push_str(&format!("S: {}", String::from_utf8_lossy(b))),
                Event::ClientClosed => out.push_str("(client closed)\n"),
            }
        }
        out
    }

    /// Whether the client closed connection `i`.
    pub fn client_closed(&self, i: usize) -> bool {
        self.conns.lock().unwrap()[i]
            .iter()
            .any(|e| matches!(e, Event::ClientClosed))
    }
}

// ---------------------------------------------------------------- DNS

#[allow(unused_imports)]
pub use dns::Zone;

mod ready;

mod dns;

/// hickory-server answering `zone` on 127.0.0.1 (UDP and TCP, one port).
pub struct DnsServer {
    pub addr: SocketAddr,
    _server: hickory_server::Server<dns::Handler>,
}

impl DnsServer {
    pub async fn start(zone: Zone) -> DnsServer {
        let (addr, server) = dns::serve(zone).await;
        DnsServer {
            addr,
            _server: server,
        }
    }
}

// ---------------------------------------------------------------- jobs

/// A configuration from TOML text (errors panic with their text).
pub fn config(text: &str) -> Config {
    let text = format!("[server]\nhostname = \"client.ferry.test\"\n\n{text}");
    ferrymail_config::parse(&text, Path::new("test.toml")).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// A relay route `hop` to 127.0.0.1:`port` plus `extra` TOML.
pub fn relay_config(port: u16, protocol: &str, extra: &str) -> Config {
    config(&format!(
        "[queue.route.hop]\ntype = \"relay\"\naddress = \"127.0.0.1\"\nport = {port}\nprotocol = \"{protocol}\"\n{extra}\n"
    ))
}

/// An envelope from `sender` to `rcpts`.
pub fn envelope(sender: &str, rcpts: &[&str]) -> Envelope {
    Envelope {
        id: MessageId(0x0123_4567_89ab_cdef),
        sender: sender.to_string(),
        recipients: rcpts
            .iter()
            .map(|r| Recipient {
                address: r.to_string(),
                orcpt: None,
                notify: Notify::Default,
            })
            .collect(),
        size: 0,
        arrived: 0,
        body: BodyType::SevenBit,
        smtputf8: false,
        ret: None,
        envid: None,
        mt_priority: 0,
        source: Source::Smtp,
        remote_ip: Some("192.0.2.7".parse().unwrap()),
        helo: Some("client.example".into()),
        authenticated_as: None,
    }
}

/// A job for all recipients of `env`.
pub fn job(env: Envelope, contents: &[u8], route: &str, domain: &str) -> Job {
    let n = env.recipients.len() as u32;
    let mut env = env;
    env.size = contents.len() as u64;
    Job {
        envelope: Arc::new(env),
        contents: Bytes::copy_from_slice(contents),
        recipients: (0..n).collect(),
        route: route.to_string(),
        domain: domain.to_string(),
        queue: "default".to_string(),
        gate: Default::default(),
    }
}

/// A small message with CRLF line ends.
pub fn message(subject: &str) -> Vec<u8> {
    format!(
        "From: a@client.test\r\nTo: b@hop.test\r\nSubject: {subject}\r\nMessage-ID: <{subject}@client.test>\r\n\r\nHello.\r\n.leading dot\r\n..two dots\r\nEnd.\r\n"
    )
    .into_bytes()
}

/// Delivers with a time limit, so a hung next hop fails the test.
pub async fn deliver(t: &SmtpTransport, job: Job) -> Vec<RecipientOutcome> {
    tokio::time::timeout(Duration::from_secs(60), t.deliver(job))
        .await
        .expect("delivery did not finish within 60s")
}

/// The outcome kind as a word.
pub fn kind(o: &RecipientOutcome) -> &'static str {
    match o.outcome {
        ferrymail_deliver::Outcome::Delivered { .. } => "delivered",
        ferrymail_deliver::Outcome::Transient { .. } => "transient",
        ferrymail_deliver::Outcome::Permanent { .. } => "permanent",
    }
}

/// The remote reply of an outcome, as text.
pub fn reply_text(o: &RecipientOutcome) -> Option<String> {
    match &o.outcome {
        ferrymail_deliver::Outcome::Delivered { reply } => Some(reply.to_string()),
        ferrymail_deliver::Outcome::Transient { reply, .. }
        | ferrymail_deliver::Outcome::Permanent { reply, .. } => {
            reply.as_ref().map(|r| r.to_string())
        }
    }
}

/// The reason of a failed outcome.
pub fn reason(o: &RecipientOutcome) -> String {
    match &o.outcome {
        ferrymail_deliver::Outcome::Delivered { .. } => String::new(),
        ferrymail_deliver::Outcome::Transient { reason, .. }
        | ferrymail_deliver::Outcome::Permanent { reason, .. } => reason.clone(),
    }
}
