//! Real next hops for the delivery scenarios: Postfix's `smtp-sink` (with its
//! dump directory and fault injection), an aiosmtpd sink that records each
//! transaction's raw bytes (`tests/python/recording_sink.py`), and a private
//! Postfix 3.7 (`tests/python/postfix_hop.py`). Every process is killed on
//! drop and every wait is bounded, so a hung peer fails a test instead of
//! hanging it. Also the server-side waits these scenarios share.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{Server, free_port, require};

#[path = "../../../5-deliver/tests/common/ready.rs"]
mod ready;

/// A child process killed (and reaped) on drop.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether this process runs as root (a private Postfix needs it).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// Polls `f` every 50 ms until it returns `Some`, for at most `limit`;
/// panics naming `what` (and calling `context` for details) otherwise.
pub fn wait_for<T>(
    limit: Duration,
    what: &str,
    context: impl Fn() -> String,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!(
                "timed out after {limit:?} waiting for {what}\n{}",
                context()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits (at most 15 s) until something on 127.0.0.1:`port` sends a 220
/// greeting; fails at once if `child` exits.
pub fn wait_banner(port: u16, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("peer on port {port} exited early: {status}");
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

/// TOML for a relay route `id` to 127.0.0.1:`port`.
/// A server that accepts `local.test` and relays for loopback clients,
/// sending everything to 127.0.0.1:`relay` (route `sink`); a failed
/// attempt retries only after an hour, so mail stays queued until a flush.
pub fn relay_all_to(relay: u16) -> String {
    format!(
        r#"[session.rcpt]
local-domains = ["local.test"]
relay = "remote_ip == '127.0.0.1'"

[queue.schedule]
retry = "[1h]"

{route}
[queue.strategy]
route = "'sink'"
"#,
        route = relay_route("sink", relay, "smtp"),
    )
}

pub fn relay_route(id: &str, port: u16, protocol: &str) -> String {
    format!(
        "[queue.route.{id}]\ntype = \"relay\"\naddress = \"127.0.0.1\"\nport = {port}\nprotocol = \"{protocol}\"\n\n"
    )
}

// ---------------------------------------------------------------- smtp-sink

/// Postfix's smtp-sink on 127.0.0.1, dumping each transaction to a file of
/// its own (`-d DIR/%M.`).
pub struct SmtpSink {
    pub port: u16,
    pub dir: tempfile::TempDir,
    _proc: Proc,
}

/// One transaction as smtp-sink dumped it. smtp-sink writes lines, so CRLF
/// line ends become LF in `body`.
#[derive(Clone)]
pub struct Dumped {
    /// `X-Client-Addr:` value: where the connection came from.
    pub client_addr: String,
    /// `X-Helo-Args:` value: the EHLO/HELO name the client gave.
    pub helo: String,
    /// `X-Mail-Args:` value.
    pub mail_args: String,
    /// `X-Rcpt-Args:` values, in order.
    pub rcpt_args: Vec<String>,
    /// The message as received, after smtp-sink's own Received header.
    pub body: Vec<u8>,
}

impl std::fmt::Debug for Dumped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dumped")
            .field("client_addr", &self.client_addr)
            .field("helo", &self.helo)
            .field("mail_args", &self.mail_args)
            .field("rcpt_args", &self.rcpt_args)
            .field("body", &String::from_utf8_lossy(&self.body))
            .finish()
    }
}

impl SmtpSink {
    /// How many times each value of header `name` (e.g. `Subject`,
    /// `Message-Id`) arrived: duplicates show up as counts above one.
    #[allow(dead_code)]
    pub fn arrivals_by_header(&self, name: &str) -> std::collections::BTreeMap<String, usize> {
        let prefix = format!("{name}: ");
        let mut seen = std::collections::BTreeMap::new();
        for d in self.dumped() {
            let text = String::from_utf8_lossy(&d.body).to_string();
            let value = text
                .lines()
                .find_map(|l| l.strip_prefix(prefix.as_str()))
                .unwrap_or_else(|| panic!("no {name}: {d:?}"))
                .to_string();
            *seen.entry(value).or_default() += 1;
        }
        seen
    }

    /// smtp-sink on a free port with extra `args` (e.g. `["-r", "RCPT"]`).
    pub fn start(args: &[&str]) -> SmtpSink {
        Self::start_on(free_port(), args)
    }

    /// smtp-sink on `port`, e.g. the port of a relay that was down.
    pub fn start_on(port: u16, args: &[&str]) -> SmtpSink {
        Self::spawn(port, args, true)
    }

    /// smtp-sink without a dump directory: nothing is written per message,
    /// so it is as fast as smtp-sink gets (for throughput measurements).
    pub fn start_undumped(port: u16, args: &[&str]) -> SmtpSink {
        Self::spawn(port, args, false)
    }

    fn spawn(port: u16, args: &[&str], dump: bool) -> SmtpSink {
        require("smtp-sink");
        let dir = tempfile::tempdir().unwrap();
        // smtp-sink writes its dumps as `nobody`.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o777),
        )
        .unwrap();
        let mut cmd = Command::new("smtp-sink");
        if is_root() {
            cmd.args(["-u", "nobody"]);
        }
        if dump {
            cmd.arg("-d").arg(format!("{}/%M.", dir.path().display()));
        }
        cmd.args(args)
            .arg(format!("127.0.0.1:{port}"))
            .arg("256")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut proc = Proc(cmd.spawn().expect("smtp-sink (run scripts/test-deps)"));
        wait_banner(port, &mut proc.0);
        SmtpSink {
            port,
            dir,
            _proc: proc,
        }
    }

    /// The complete transactions dumped so far (a file is complete once
    /// smtp-sink wrote the empty line after the message).
    pub fn dumped(&self) -> Vec<Dumped> {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        paths.sort();
        paths
            .iter()
            .filter_map(|p| parse_dump(&std::fs::read(p).ok()?))
            .collect()
    }

    /// Waits (at most `limit`) until `n` transactions were dumped.
    pub fn wait_dumped(&self, n: usize, limit: Duration) -> Vec<Dumped> {
        wait_for(
            limit,
            &format!("{n} message(s) at smtp-sink"),
            || format!("dumped so far: {:?}", self.dumped()),
            || Some(self.dumped()).filter(|d| d.len() >= n),
        )
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn parse_dump(text: &[u8]) -> Option<Dumped> {
    // smtp-sink's headers end with its three-line Received header; a file
    // without one never reached DATA, one without the final empty line is
    // still being written.
    find(text, b"\nReceived: ")?;
    if !text.ends_with(b"\n\n") {
        return None;
    }
    let mut client_addr = String::new();
    let mut helo = String::new();
    let mut mail_args = String::new();
    let mut rcpt_args = Vec::new();
    let mut rest = text;
    loop {
        let nl = rest.iter().position(|&b| b == b'\n')?;
        let line = String::from_utf8_lossy(&rest[..nl]).to_string();
        rest = &rest[nl + 1..];
        if let Some(v) = line.strip_prefix("X-Client-Addr: ") {
            client_addr = v.to_string();
        } else if let Some(v) = line.strip_prefix("X-Helo-Args: ") {
            helo = v.to_string();
        } else if let Some(v) = line.strip_prefix("X-Mail-Args: ") {
            mail_args = v.to_string();
        } else if let Some(v) = line.strip_prefix("X-Rcpt-Args: ") {
            rcpt_args.push(v.to_string());
        } else if line.starts_with("Received: ") {
            for _ in 0..2 {
                let nl = rest.iter().position(|&b| b == b'\n')?;
                rest = &rest[nl + 1..];
            }
            break;
        }
    }
    let body = rest.strip_suffix(b"\n").unwrap_or(rest).to_vec();
    Some(Dumped {
        client_addr,
        helo,
        mail_args,
        rcpt_args,
        body,
    })
}

/// What smtp-sink's dump shows for CRLF `contents`: line ends as LF.
pub fn as_dumped(contents: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(contents.len());
    for (i, &b) in contents.iter().enumerate() {
        if b == b'\r' && contents.get(i + 1) == Some(&b'\n') {
            continue;
        }
        out.push(b);
    }
    out
}

// ---------------------------------------------------------------- aiosmtpd

/// Starts `tests/python/<script>` with `options` as its JSON argument and
/// waits for it to print READY; it stops when its stdin closes (on drop).
pub fn python_peer(script: &str, options: &Value) -> Proc {
    require("python3");
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python")
        .join(script);
    Proc(ready::spawn_python_ready(&path, options))
}

/// `tests/python/recording_sink.py`: aiosmtpd recording each transaction's
/// raw bytes, optionally with CHUNKING or as an LMTP server.
pub struct RecordingSink {
    pub port: u16,
    pub record: PathBuf,
    _dir: tempfile::TempDir,
    _proc: Proc,
}

impl RecordingSink {
    /// Starts the sink on a free port with `options` (see the script).
    pub fn start(options: Value) -> RecordingSink {
        Self::start_on(free_port(), options)
    }

    /// Starts the sink on `port`.
    pub fn start_on(port: u16, options: Value) -> RecordingSink {
        Self::start_at("127.0.0.1", port, options)
    }

    /// Starts the sink on `ip:port` (any 127.0.0.0/8 address).
    pub fn start_at(ip: &str, port: u16, mut options: Value) -> RecordingSink {
        let dir = tempfile::tempdir().unwrap();
        let record = dir.path().join("record.jsonl");
        options["host"] = ip.into();
        options["port"] = port.into();
        options["record"] = record.display().to_string().into();
        let proc = python_peer("recording_sink.py", &options);
        RecordingSink {
            port,
            record,
            _dir: dir,
            _proc: proc,
        }
    }

    /// The transactions recorded so far (complete lines only).
    pub fn transactions(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.record).unwrap_or_default();
        text.split_inclusive('\n')
            .filter(|l| l.ends_with('\n'))
            .map(|l| serde_json::from_str(l).expect("a record line is JSON"))
            .collect()
    }

    /// Waits (at most `limit`) until `n` transactions were recorded.
    pub fn wait_transactions(&self, n: usize, limit: Duration) -> Vec<Value> {
        wait_for(
            limit,
            &format!("{n} transaction(s) at the recording sink"),
            || format!("recorded so far: {}", self.transactions().len()),
            || Some(self.transactions()).filter(|t| t.len() >= n),
        )
    }
}

/// The message bytes of a recorded transaction.
pub fn recorded_data(t: &Value) -> Vec<u8> {
    let hex = t["data_hex"].as_str().expect("data_hex");
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

// ---------------------------------------------------------------- Postfix

/// A private Postfix 3.7 (`tests/python/postfix_hop.py`): stopped cleanly
/// on drop (stdin closed, so `postfix stop` runs), killed if that takes
/// too long.
pub struct PostfixHop {
    pub port: u16,
    pub maillog: PathBuf,
    child: Child,
}

impl PostfixHop {
    /// Postfix on a free port relaying everything to 127.0.0.1:`relay_port`,
    /// with `main_cf` (a JSON object) added to its main.cf. `None`, with a
    /// note, when not running as root (Postfix's master needs it).
    pub fn start(relay_port: u16, main_cf: Value) -> Option<PostfixHop> {
        if !is_root() {
            eprintln!("skipped: a private Postfix needs root");
            return None;
        }
        require("python3");
        let port = free_port();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/postfix_hop.py");
        let mut child = Command::new("python3")
            .arg(script)
            .arg(port.to_string())
            .arg(relay_port.to_string())
            .arg(main_cf.to_string())
            .env(
                "PATH",
                format!(
                    "{}:/usr/sbin:/sbin",
                    std::env::var("PATH").unwrap_or_default()
                ),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 (run scripts/test-deps)");
        let stdout = child.stdout.take().unwrap();
        let mut hop = PostfixHop {
            port,
            maillog: PathBuf::new(),
            child,
        };
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(Duration::from_secs(90))
            .expect("Postfix did not start within 90s");
        let log = line
            .strip_prefix("READY ")
            .unwrap_or_else(|| panic!("Postfix did not start: {line:?}"));
        hop.maillog = PathBuf::from(log.trim());
        Some(hop)
    }

    /// Postfix's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.maillog).unwrap_or_default()
    }
}

impl Drop for PostfixHop {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(40);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------- server

/// The JSON lines of a delivery log (`[queue.outbound] delivery-log`).
pub fn delivery_log(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.split_inclusive('\n')
        .filter(|l| l.ends_with('\n'))
        .map(|l| serde_json::from_str(l).expect("a delivery log line is JSON"))
        .collect()
}

impl Server {
    /// `queue show ID --json`, parsed; `None` when the server says there is
    /// no such message (exit 1).
    pub fn show(&self, id: &str) -> Option<Value> {
        let out = self.cli(&["queue", "show", id, "--json"]);
        match out.status.code() {
            Some(0) => Some(serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
                panic!(
                    "queue show --json is not JSON ({e}): {}",
                    String::from_utf8_lossy(&out.stdout)
                )
            })),
            Some(1) => None,
            _ => panic!(
                "queue show {id} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ),
        }
    }

    /// Waits (at most `limit`) until every recipient of `id` has been
    /// attempted at least once; returns `queue show --json` then.
    pub fn wait_attempted(&self, id: &str, limit: Duration) -> Value {
        self.wait_recipients(id, limit, "a first delivery attempt", |r| {
            r["attempts"].as_u64().unwrap_or(0) >= 1
        })
    }

    /// Waits (at most `limit`) until every recipient of message `id` is
    /// deferred with an error: after an attempt, or without one (its
    /// destination suspended as dead, which counts no attempt); returns
    /// `queue show --json`.
    pub fn wait_deferred(&self, id: &str, limit: Duration) -> Value {
        self.wait_recipients(id, limit, "a deferral", |r| {
            r["lane"] == "deferred" && r["last_error"].as_str().is_some_and(|e| !e.is_empty())
        })
    }

    /// Waits (at most `limit`) until `done` holds for every recipient of
    /// `id` in `queue show --json`, which it returns; `what` names the wait.
    fn wait_recipients(
        &self,
        id: &str,
        limit: Duration,
        what: &str,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        wait_for(
            limit,
            &format!("{what} of {id}"),
            || self.log_text(),
            || {
                let m = self.show(id)?;
                let all = m["recipients"].as_array()?.iter().all(&done);
                all.then_some(m)
            },
        )
    }

    /// Waits (at most `limit`) until message `id` left the queue.
    pub fn wait_gone(&self, id: &str, limit: Duration) {
        wait_for(
            limit,
            &format!("{id} to leave the queue"),
            || format!("{:?}\n{}", self.show(id), self.log_text()),
            || self.show(id).is_none().then_some(()),
        )
    }

    /// Waits (at most `limit`) until the queue is empty.
    pub fn wait_queue_empty(&self, limit: Duration) {
        wait_for(
            limit,
            "an empty queue",
            || format!("{}\n{}", self.queue_json(), self.log_text()),
            || (self.queue_json()["recipients"] == 0).then_some(()),
        )
    }
}
