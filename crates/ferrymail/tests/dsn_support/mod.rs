//! What the delivery status notification scenarios share: a failing (or
//! accepting) next hop that is a real server (Postfix's smtp-sink with its
//! fault injection), a recording sink where the notifications themselves
//! are delivered (aiosmtpd, `tests/python/dsn_sink.py`), test DKIM keys made
//! by openssl, a configuration joining them, and the independent judges
//! every notification must pass: Python's email package, flufl.bounce and
//! dkimpy (`tests/python/dsn_judges.py`) and Sisimai
//! (`tests/perl/dsn_sisimai.pl`).
//!
//! Mail for the original senders' domain `sender.test` (and for the
//! postmaster domain `admin.test`) is routed to the recording sink; every
//! other recipient goes to the next hop under test.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::{Server, free_port, openssl, require, rsa_key_file, run_bounded};

/// A child process, killed and reaped on drop.
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

/// Waits (at most 15 s) for a 220 greeting on 127.0.0.1:`port`.
fn wait_banner(port: u16, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if let Ok(Some(st)) = child.try_wait() {
            panic!("peer on port {port} exited early: {st}");
        }
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
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

/// Postfix's smtp-sink as the next hop, with fault injection: `-f RCPT -B
/// "550 ..."` refuses recipients for good, `-r RCPT -b "450 ..."` for now,
/// `-L` speaks LMTP, `-N` does not announce DSN.
pub struct Hop {
    pub port: u16,
    _proc: Proc,
}

impl Hop {
    pub fn start(args: &[&str]) -> Hop {
        require("smtp-sink");
        let port = free_port();
        let mut cmd = Command::new("smtp-sink");
        if is_root() {
            cmd.args(["-u", "nobody"]);
        }
        cmd.args(args)
            .arg(format!("127.0.0.1:{port}"))
            .arg("64")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut proc = Proc(cmd.spawn().expect("smtp-sink (run scripts/test-deps)"));
        wait_banner(port, &mut proc.0);
        Hop { port, _proc: proc }
    }
}

/// One transaction the recording sink received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub mail_from: String,
    pub mail_options: Vec<String>,
    pub rcpt_tos: Vec<String>,
    pub data: Vec<u8>,
}

/// The aiosmtpd sink where notifications are delivered.
pub struct Sink {
    pub port: u16,
    record: PathBuf,
    _dir: tempfile::TempDir,
    _proc: Proc,
}

fn tests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests")
}

impl Sink {
    /// The recording sink.
    pub fn start() -> Sink {
        Self::spawn(None)
    }

    /// A failing next hop with SMTPUTF8: every RCPT TO gets `reply`.
    pub fn refusing(reply: &str) -> Sink {
        Self::spawn(Some(reply))
    }

    fn spawn(rcpt_reply: Option<&str>) -> Sink {
        require("python3");
        let dir = tempfile::tempdir().unwrap();
        let record = dir.path().join("record.jsonl");
        let port = free_port();
        let mut cmd = Command::new("python3");
        cmd.arg(tests_dir().join("python/dsn_sink.py"))
            .arg(port.to_string())
            .arg(&record);
        if let Some(r) = rcpt_reply {
            cmd.arg(r);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(
            line.trim(),
            "READY",
            "dsn_sink.py did not start (aiosmtpd?)"
        );
        let mut proc = Proc(child);
        wait_banner(port, &mut proc.0);
        Sink {
            port,
            record,
            _dir: dir,
            _proc: proc,
        }
    }

    /// Every transaction received so far.
    pub fn received(&self) -> Vec<Recorded> {
        std::fs::read_to_string(&self.record)
            .unwrap_or_default()
            .lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                let strings = |k: &str| -> Vec<String> {
                    v[k].as_array()
                        .unwrap()
                        .iter()
                        .map(|s| s.as_str().unwrap().to_string())
                        .collect()
                };
                let hex = v["data_hex"].as_str().unwrap();
                Recorded {
                    mail_from: v["mail_from"].as_str().unwrap().to_string(),
                    mail_options: strings("mail_options"),
                    rcpt_tos: strings("rcpt_tos"),
                    data: (0..hex.len())
                        .step_by(2)
                        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                        .collect(),
                }
            })
            .collect()
    }

    /// Waits (at most `limit`) for `n` transactions; the server log is
    /// shown on failure.
    pub fn wait(&self, n: usize, limit: Duration, server: &Server) -> Vec<Recorded> {
        let deadline = Instant::now() + limit;
        loop {
            let got = self.received();
            if got.len() >= n {
                return got;
            }
            if Instant::now() > deadline {
                panic!(
                    "{n} notification(s) expected at the sink within {limit:?}, got {}\n--- server log:\n{}",
                    got.len(),
                    server.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The test DKIM keys, made by openssl: an RSA and an Ed25519 signer with
/// the DNS records dkimpy is given for them.
pub struct Keys {
    pub rsa_pem: PathBuf,
    pub ed_pem: PathBuf,
    /// `rsa._domainkey.ferry.test` → its TXT record, and the same for `ed`.
    pub records: Value,
    _dir: tempfile::TempDir,
}

fn base64(bytes: &[u8]) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for c in bytes.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                s.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

impl Keys {
    pub fn generate() -> Keys {
        require("openssl");
        let dir = tempfile::tempdir().unwrap();
        let rsa = dir.path().join("rsa.pem");
        let ed = dir.path().join("ed.pem");
        let p = |p: &Path| p.to_str().unwrap().to_string();
        rsa_key_file(&rsa);
        openssl(&["genpkey", "-algorithm", "ed25519", "-out", &p(&ed)]);
        let spki = |key: &Path| openssl(&["pkey", "-in", &p(key), "-pubout", "-outform", "DER"]);
        let rsa_pub = spki(&rsa);
        // RFC 8463 §4: the raw 32-byte key, not the SubjectPublicKeyInfo.
        let ed_spki = spki(&ed);
        let ed_pub = &ed_spki[ed_spki.len() - 32..];
        Keys {
            records: json!({
                "rsa._domainkey.ferry.test": format!("v=DKIM1; k=rsa; p={}", base64(&rsa_pub)),
                "ed._domainkey.ferry.test": format!("v=DKIM1; k=ed25519; p={}", base64(ed_pub)),
            }),
            rsa_pem: rsa,
            ed_pem: ed,
            _dir: dir,
        }
    }

    /// `[signature.rsa]` and `[signature.ed]`, both for `ferry.test`.
    pub fn toml(&self) -> String {
        format!(
            "[signature.rsa]\nprivate-key = \"%{{file:{}}}%\"\ndomain = \"ferry.test\"\nselector = \"rsa\"\n\
             algorithm = \"rsa-sha256\"\ncanonicalization = \"relaxed/relaxed\"\n\
             headers = [\"From\", \"To\", \"Date\", \"Subject\", \"Message-ID\"]\n\n\
             [signature.ed]\nprivate-key = \"%{{file:{}}}%\"\ndomain = \"ferry.test\"\nselector = \"ed\"\n\
             algorithm = \"ed25519-sha256\"\ncanonicalization = \"simple/simple\"\n\n",
            self.rsa_pem.display(),
            self.ed_pem.display()
        )
    }
}

/// What a scenario adds to the common configuration.
#[derive(Default)]
pub struct Setup<'a> {
    /// Port of the next hop under test (route `hop`).
    pub hop: u16,
    /// The hop speaks LMTP.
    pub lmtp: bool,
    /// More `[queue.schedule]` keys (`retry = "[1s]"` is set, and
    /// `expire = "1h"` unless given here).
    pub schedule: &'a str,
    /// More `[report.dsn]` keys.
    pub dsn: &'a str,
    /// More TOML tables (routes).
    pub tables: &'a str,
    /// More strategy branches, tried before the default `'hop'`.
    pub branches: &'a str,
}

/// The configuration of a scenario: relaying allowed from loopback; mail
/// for `sender.test` and `admin.test` goes to the sink, everything else to
/// the hop; notifications signed by both test keys.
pub fn config(s: &Setup<'_>, sink: &Sink, keys: &Keys) -> String {
    let expire = if s.schedule.contains("expire") {
        ""
    } else {
        "expire = \"1h\"\n"
    };
    format!(
        r#"[session.rcpt]
relay = "remote_ip == '127.0.0.1'"

[queue.schedule]
retry = "[1s]"
{expire}{schedule}

[queue.route.hop]
type = "relay"
address = "127.0.0.1"
port = {hop}
protocol = "{protocol}"

[queue.route.dsnsink]
type = "relay"
address = "127.0.0.1"
port = {sink}

{tables}
[queue.strategy]
route = [ {{ if = "rcpt_domain == 'sender.test' || rcpt_domain == 'admin.test'", then = "'dsnsink'" }},
          {branches}
          {{ else = "'hop'" }} ]

[report.dsn]
from-name = "'Ferry Mail System'"
from-address = "'MAILER-DAEMON@ferry.test'"
sign = "['rsa', 'ed']"
{dsn}

{keys}"#,
        schedule = s.schedule,
        hop = s.hop,
        protocol = if s.lmtp { "lmtp" } else { "smtp" },
        sink = sink.port,
        tables = s.tables,
        branches = s.branches,
        dsn = s.dsn,
        keys = keys.toml(),
    )
}

/// Sends one message with ESMTP parameters: `mail` after MAIL FROM, and
/// per recipient its RCPT TO parameters. Returns the queue id.
pub fn send(server: &Server, from: &str, mail: &str, rcpts: &[(&str, &str)], body: &str) -> String {
    let mut c = server.client();
    c.ehlo();
    let r = c.cmd(format!("MAIL FROM:<{from}> {mail}").trim_end());
    assert_eq!(r.code, 250, "MAIL: {r:?}");
    for (to, params) in rcpts {
        let r = c.cmd(format!("RCPT TO:<{to}> {params}").trim_end());
        assert_eq!(r.code, 250, "RCPT {to}: {r:?}");
    }
    let r = c.cmd("DATA");
    assert_eq!(r.code, 354, "{r:?}");
    c.send_raw(&crate::common::dot_stuff(body.as_bytes()));
    c.send_raw(b".\r\n");
    let r = c.read();
    let _ = c.cmd("QUIT");
    crate::common::queued_id(&r)
}

/// The original message of the scenarios: `subject`, and a body line that
/// appears nowhere else (to tell a full return from a headers-only one).
pub fn original(subject: &str) -> String {
    format!(
        "From: Sender <sender@sender.test>\r\nTo: rcpt@dest.test\r\nSubject: {subject}\r\n\
         Message-ID: <orig-{n}@sender.test>\r\n\r\nBODY-MARKER-7f3a the body of the original.\r\n",
        n = free_port()
    )
}

/// Runs every judge on `dsn` (written under `name` in a temp dir) with the
/// expectations of `dsn_judges.py` (the `dkim` records and count are
/// added), and returns what Sisimai made of it.
pub fn judge(dsn: &[u8], mut expect: Value, keys: &Keys) -> Vec<Value> {
    require("python3");
    require("perl");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dsn.eml");
    std::fs::write(&file, dsn).unwrap();
    // For a look at real notifications: FERRYMAIL_DSN_DUMP=DIR keeps them.
    if let Ok(keep) = std::env::var("FERRYMAIL_DSN_DUMP") {
        let name = format!("{}-{}.eml", std::process::id(), free_port());
        let _ = std::fs::write(Path::new(&keep).join(name), dsn);
    }
    expect["dkim"] = keys.records.clone();
    if expect.get("dkim_count").is_none() {
        expect["dkim_count"] = json!(2);
    }
    let out = run_bounded(
        Command::new("python3")
            .arg(tests_dir().join("python/dsn_judges.py"))
            .arg(&file)
            .arg(expect.to_string()),
        Duration::from_secs(60),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.trim_end().ends_with("done"),
        "Python judges (email, flufl.bounce, dkimpy) refused the notification:\n{stdout}\n{}\n--- notification:\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(dsn)
    );
    let out = run_bounded(
        Command::new("perl")
            .arg(tests_dir().join("perl/dsn_sisimai.pl"))
            .arg(&file),
        Duration::from_secs(60),
    );
    assert!(
        out.status.success(),
        "Sisimai failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sisimai: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "Sisimai output is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    sisimai
}

/// Asserts that Sisimai recognised the notification as an RFC 3464 report
/// and read each `(recipient, status)` pair; returns its records by
/// recipient.
pub fn assert_sisimai(records: &[Value], want: &[(&str, &str)], dsn: &[u8]) -> Vec<Value> {
    let ctx = || {
        format!(
            "Sisimai: {}\n--- notification:\n{}",
            serde_json::to_string_pretty(records).unwrap(),
            String::from_utf8_lossy(dsn)
        )
    };
    assert_eq!(records.len(), want.len(), "{}", ctx());
    want.iter()
        .map(|(rcpt, status)| {
            let r = records
                .iter()
                .find(|r| r["recipient"] == *rcpt)
                .unwrap_or_else(|| panic!("Sisimai has no record for {rcpt}\n{}", ctx()));
            assert_eq!(r["deliverystatus"], *status, "{rcpt}\n{}", ctx());
            assert_eq!(r["smtpagent"], "RFC3464", "{rcpt}\n{}", ctx());
            r.clone()
        })
        .collect()
}

/// Asserts the notification's envelope: null sender, to `to`.
pub fn assert_envelope(r: &Recorded, to: &str) {
    assert_eq!(
        r.mail_from, "<>",
        "notifications have the null sender: {r:?}"
    );
    assert_eq!(r.rcpt_tos, vec![to.to_string()], "{r:?}");
}

/// The server log without terminal colour codes.
pub fn plain_log(server: &Server) -> String {
    let text = server.log_text();
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The log lines of the server that mention `needle`.
pub fn log_lines(server: &Server, needle: &str) -> Vec<String> {
    plain_log(server)
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_string)
        .collect()
}

/// Asserts that the notification about `about` was queued on the bounce
/// queue (the server logs `notification queued ... queue=bounce`) and
/// delivered from there.
pub fn assert_bounce_queue(server: &Server, about: &str) {
    let queued = log_lines(server, "notification queued");
    let line = queued
        .iter()
        .find(|l| l.contains(&format!("about={about}")))
        .unwrap_or_else(|| {
            panic!(
                "no 'notification queued' line for {about}:\n{}",
                plain_log(server)
            )
        });
    assert!(line.contains("queue=bounce"), "{line}");
    let id = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("id="))
        .expect("id= in the line");
    let delivered = log_lines(server, &format!("id={id}"));
    assert!(
        delivered
            .iter()
            .any(|l| l.contains(" delivered") && l.contains("queue=\"bounce\"")),
        "the notification {id} was delivered from the bounce queue:\n{}",
        delivered.join("\n")
    );
}

/// `[report.dsn]` keys that keep every notification waiting (an hour) for
/// more events: a crash scenario's window between "the outcome is
/// recorded" and "the notification is queued", made as wide as a test
/// needs it.
pub const HOLD_NOTICES: &str = "batch-quiet = \"1h\"\nbatch-max-hold = \"1h\"";

/// Waits (at most `limit`) until `queue list --json` shows recipient
/// `address` of message `id` with a notification owed of DSN action
/// `action` (`failed`, `delayed`, ...) and returns the message's JSON.
pub fn wait_notice_owed(
    server: &Server,
    id: &str,
    address: &str,
    action: &str,
    limit: Duration,
) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let list = server.queue_json();
        let message = list["messages"]
            .as_array()
            .expect("messages array")
            .iter()
            .find(|m| m["id"] == id)
            .cloned();
        if let Some(m) = &message
            && m["recipients"]
                .as_array()
                .expect("recipients array")
                .iter()
                .any(|r| r["address"] == address && r["notice_owed"] == action)
        {
            return m.clone();
        }
        if Instant::now() > deadline {
            panic!(
                "{address} of {id} never showed a '{action}' notice owed within {limit:?}; last: {}\n--- server log:\n{}",
                serde_json::to_string_pretty(&message).unwrap(),
                server.log_text()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits (at most `limit`) until `queue list --json` satisfies `done`.
pub fn wait_queue(server: &Server, limit: Duration, what: &str, done: impl Fn(&Value) -> bool) {
    let deadline = Instant::now() + limit;
    loop {
        let list = server.queue_json();
        if done(&list) {
            return;
        }
        if Instant::now() > deadline {
            panic!(
                "the queue never showed {what} within {limit:?}: {}",
                serde_json::to_string_pretty(&list).unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Restarts a server killed with `kill -9` on the same data directory and
/// ports, with configuration `extra` (the scenario's, usually without
/// [`HOLD_NOTICES`]).
pub fn restart_with(server: &mut Server, extra: &str) {
    let dir = server.dir.path().to_path_buf();
    std::fs::write(
        &server.config,
        crate::common::base_config(&dir, server.smtp.port(), server.mgmt.port(), extra),
    )
    .unwrap();
    server.spawn();
}
