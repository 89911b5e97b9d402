//! Shared test fixtures: a real `ferrymail serve` process on free loopback ports,
//! and a small blocking SMTP client that speaks to it over real TCP.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Runs `openssl` with `args` (keys for DKIM and TLS fixtures) and
/// returns its standard output; fails the test when it fails.
pub fn openssl(args: &[&str]) -> Vec<u8> {
    require("openssl");
    let out = run_bounded(Command::new("openssl").args(args), Duration::from_secs(120));
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Writes a fresh 2048-bit RSA private key (PKCS#8 PEM) to `path`: a DKIM
/// key for configuration fixtures.
pub fn rsa_key_file(path: &Path) {
    let path = path.to_str().expect("a UTF-8 path");
    openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        path,
    ]);
}

/// Writes a fresh self-signed certificate for `cn` (good for two days)
/// and its key: a server certificate, or a test CA's.
pub fn self_signed_cert(cn: &str, key: &Path, cert: &Path) {
    let subject = format!("/CN={cn}");
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        &subject,
        "-keyout",
        key.to_str().expect("a UTF-8 path"),
        "-out",
        cert.to_str().expect("a UTF-8 path"),
    ]);
}

/// Writes `<stem>.pem` and `<stem>.key` in `dir`: a server certificate for
/// `cn` with the subject alternative names `san` (openssl's syntax, e.g.
/// `DNS:relay.test,IP:127.0.0.1`), signed by the test CA `ca.pem`/`ca.key`
/// in the same directory (made with [`self_signed_cert`]).
pub fn ca_signed_cert(dir: &Path, stem: &str, cn: &str, san: &str) {
    let p = |name: String| dir.join(name).display().to_string();
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        &format!("/CN={cn}"),
        "-keyout",
        &p(format!("{stem}.key")),
        "-out",
        &p(format!("{stem}.csr")),
    ]);
    let ext = p(format!("{stem}.ext"));
    std::fs::write(
        &ext,
        format!("subjectAltName={san}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"),
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        &p(format!("{stem}.csr")),
        "-CA",
        &p("ca.pem".into()),
        "-CAkey",
        &p("ca.key".into()),
        "-CAcreateserial",
        "-days",
        "2",
        "-out",
        &p(format!("{stem}.pem")),
        "-extfile",
        &ext,
    ]);
}

/// dkimpy's verdict on every DKIM signature of `message`, with the key
/// records given as `{"selector._domainkey.domain": "v=DKIM1; ..."}` (no
/// real DNS asked): whether all verify, and its report (stdout, stderr).
pub fn dkimpy_verifies(message: &[u8], records: &serde_json::Value) -> (bool, String) {
    require("python3");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("m.eml");
    std::fs::write(&file, message).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/dkim_verify.py");
    let out = run_bounded(
        Command::new("python3")
            .arg(script)
            .arg(&file)
            .arg(records.to_string()),
        Duration::from_secs(60),
    );
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// What `ferrymail check` said of a configuration text.
pub struct Checked {
    /// The exit code.
    pub code: Option<i32>,
    /// Standard error: the `FILE:LINE: problem` lines.
    pub stderr: String,
    /// The file checked, for the `FILE:` part.
    pub file: PathBuf,
    _dir: tempfile::TempDir,
}

/// Writes `text` to a file of its own and runs `ferrymail check` on it.
pub fn check_text(text: &str) -> Checked {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("checked.toml");
    std::fs::write(&file, text).unwrap();
    let out = Command::new(bin())
        .args(["check", "-c"])
        .arg(&file)
        .output()
        .unwrap();
    Checked {
        code: out.status.code(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        file,
        _dir: dir,
    }
}

/// Path of the binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_ferrymail")
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    // The kernel may hand the same port to two binds in a row once the
    // first is closed, so a server's SMTP and management listeners could
    // get one port between them. Never hand out a port twice per process.
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap();
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// A running server, killed on drop.
pub struct Server {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub smtp: SocketAddr,
    pub mgmt: SocketAddr,
    pub child: Option<Child>,
    pub log: PathBuf,
}

/// The base configuration every test starts from; `extra` is appended.
///
/// Unless `extra` brings its own `[queue.strategy]`, every recipient is routed
/// to `parked`: a relay on 127.0.0.1:9, where nothing listens. Delivery
/// attempts then fail transiently (connection refused) and the mail stays
/// queued, which is what tests of the receive side and of the queue CLI look
/// at. (Without it, mail to the made-up test domains would bounce at once:
/// their MX lookups fail with NXDOMAIN.)
pub fn base_config(dir: &Path, smtp: u16, mgmt: u16, extra: &str) -> String {
    let parked = if extra.contains("[queue.strategy]") {
        ""
    } else {
        "[queue.route.parked]\ntype = \"relay\"\naddress = \"127.0.0.1\"\nport = 9\n\n\
         [queue.strategy]\nroute = \"'parked'\"\n"
    };
    format!(
        r#"[server]
hostname = "mx.ferry.test"

[server.listener.smtp]
bind = ["127.0.0.1:{smtp}"]
protocol = "smtp"

[server.listener.management]
bind = ["127.0.0.1:{mgmt}"]
protocol = "http"

[store.local]
type = "embedded"
path = "{data}"

[storage]
data = "local"
blob = "local"

{parked}
{extra}
"#,
        data = dir.join("data").display()
    )
}

impl Server {
    /// Starts a server with the base config plus `extra` TOML.
    pub fn start(extra: &str) -> Server {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, extra)
    }

    /// Starts a server whose config has `[session.rcpt] local-domains` and an
    /// open relay for loopback, the usual case for protocol tests.
    pub fn start_default() -> Server {
        Self::start(
            "[session.rcpt]\nlocal-domains = [\"local.test\"]\nrelay = \"remote_ip == '127.0.0.1'\"\n",
        )
    }

    pub fn start_in(dir: tempfile::TempDir, extra: &str) -> Server {
        let mut s = Self::configured(dir, |c| c, extra);
        s.spawn();
        s
    }

    /// A server not started yet, in `dir`, on free ports: its config is the
    /// base config with `extra` appended, then passed through `edit` (to
    /// change tables of the base config, which TOML cannot reopen).
    pub fn configured(
        dir: tempfile::TempDir,
        edit: impl FnOnce(String) -> String,
        extra: &str,
    ) -> Server {
        let smtp = free_port();
        let mgmt = free_port();
        let config = dir.path().join("ferrymail.toml");
        std::fs::write(&config, edit(base_config(dir.path(), smtp, mgmt, extra))).unwrap();
        let log = dir.path().join("server.log");
        Server {
            smtp: ([127, 0, 0, 1], smtp).into(),
            mgmt: ([127, 0, 0, 1], mgmt).into(),
            config,
            dir,
            child: None,
            log,
        }
    }

    /// (Re)starts the process with the same config and data.
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(bin())
            .arg("serve")
            .arg("-c")
            .arg(&self.config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn ferrymail");
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("ferrymail exited early with {status}:\n{}", self.log_text());
            }
            if let Ok(mut s) = TcpStream::connect(self.smtp) {
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut buf = [0u8; 3];
                if s.read_exact(&mut buf).is_ok() && &buf == b"220" {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("ferrymail did not become ready:\n{}", self.log_text());
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGHUP (a reload) and waits, at most 30 s, until the log
    /// holds `marker` `times` times in all.
    pub fn hangup(&self, marker: &str, times: usize) {
        let pid = self.child.as_ref().expect("a running server").id();
        let st = Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .unwrap();
        assert!(st.success(), "kill -HUP {pid}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.log_text().matches(marker).count() < times {
            assert!(
                Instant::now() < deadline,
                "no {marker:?} (x{times}) in the log after SIGHUP:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait (bounded) for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        unsafe_kill_term(c.id());
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                return st;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                panic!("ferrymail did not exit after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn client(&self) -> Smtp {
        Smtp::connect(self.smtp)
    }

    /// Runs `ferrymail ARGS -c CONFIG` and returns its output.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(bin())
            .args(args)
            .arg("-c")
            .arg(&self.config)
            .output()
            .unwrap()
    }

    /// `queue list --json`, parsed.
    pub fn queue_json(&self) -> serde_json::Value {
        let out = self.cli(&["queue", "list", "--json"]);
        assert!(
            out.status.success(),
            "queue list failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("queue list --json is JSON")
    }

    /// Raw stored contents of a message, through the management API.
    pub fn contents(&self, id: &str) -> Vec<u8> {
        let (status, body) = self.api_get(&format!("/api/queue/messages/{id}/contents"));
        assert_eq!(
            status,
            200,
            "contents of {id}: {}",
            String::from_utf8_lossy(&body)
        );
        body
    }

    /// A GET on the management API over a plain HTTP/1.1 connection; returns
    /// the status code and body.
    pub fn api_get(&self, path: &str) -> (u16, Vec<u8>) {
        http_get(self.mgmt, path, None)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A minimal HTTP/1.1 GET with `Connection: close`, so the body ends at EOF.
pub fn http_get(addr: SocketAddr, path: &str, bearer: Option<&str>) -> (u16, Vec<u8>) {
    let auth = bearer
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    http_request(
        addr,
        &format!("GET {path}"),
        &format!("Host: {addr}\r\n{auth}"),
        b"",
    )
}

/// One HTTP/1.1 request (`what` is the method and path, `headers` each
/// ending in CRLF, Content-Length added) on a connection of its own; the
/// status code and the body.
pub fn http_request(addr: SocketAddr, what: &str, headers: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let length = if body.is_empty() {
        String::new()
    } else {
        format!("Content-Length: {}\r\n", body.len())
    };
    write!(
        s,
        "{what} HTTP/1.1\r\n{headers}{length}Connection: close\r\n\r\n"
    )
    .unwrap();
    s.write_all(body).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("HTTP header end");
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let status = head[9..12].parse().unwrap();
    (status, raw[split + 4..].to_vec())
}

fn unsafe_kill_term(pid: u32) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status();
}

/// Sends one message to `rcpt` on a new connection (EHLO, then MAIL, RCPT
/// and DATA pipelined) whose Subject is `token`, with `token=<token>` and
/// a last line `END-OF-MESSAGE` in its body; the queue id of the 250, or
/// `None` if anything went wrong. For scenarios that kill the server while
/// clients send: every failure is an answer, never a panic.
#[allow(dead_code)]
pub fn try_send_token(addr: SocketAddr, rcpt: &str, token: &str) -> Option<String> {
    let s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let mut w = s.try_clone().ok()?;
    let mut r = BufReader::new(s);
    let read = |r: &mut BufReader<TcpStream>| -> Option<String> {
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).ok()? == 0 {
                return None;
            }
            if line.as_bytes().get(3) != Some(&b'-') {
                return Some(line);
            }
        }
    };
    let expect = |line: Option<String>, code: &str| line.filter(|l| l.starts_with(code));
    expect(read(&mut r), "220")?;
    w.write_all(b"EHLO crash.test\r\n").ok()?;
    expect(read(&mut r), "250")?;
    w.write_all(
        format!("MAIL FROM:<crash@example.org>\r\nRCPT TO:<{rcpt}>\r\nDATA\r\n").as_bytes(),
    )
    .ok()?;
    expect(read(&mut r), "250")?;
    expect(read(&mut r), "250")?;
    expect(read(&mut r), "354")?;
    let body = format!(
        "Subject: {token}\r\n\r\n{}\r\ntoken={token}\r\nEND-OF-MESSAGE\r\n.\r\n",
        "filler line for some size\r\n".repeat(40)
    );
    w.write_all(body.as_bytes()).ok()?;
    let line = expect(read(&mut r), "250")?;
    let _ = w.write_all(b"QUIT\r\n");
    Some(line.trim_end().rsplit(' ').next()?.to_string())
}

/// The base configuration (`base_config`) with its `[storage]` table
/// replaced by `stores`, which must put the contents in `[store.files]`.
#[allow(dead_code)]
pub fn with_storage(base: String, stores: &str) -> String {
    let text = base.replacen("[storage]\ndata = \"local\"\nblob = \"local\"\n", stores, 1);
    assert!(
        text.contains("blob = \"files\""),
        "base config changed shape"
    );
    text
}

/// `[store.files]`, an `fs` blob store at `blobs`.
#[allow(dead_code)]
pub fn fs_store(blobs: &Path) -> String {
    format!(
        "[store.files]\ntype = \"fs\"\npath = \"{}\"\n\n",
        blobs.display()
    )
}

/// Every regular file under `root`, recursively, sorted; none when `root`
/// is not there.
#[allow(dead_code)]
pub fn files_under(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(d) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                dirs.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

/// The file names under `root`, sorted.
#[allow(dead_code)]
pub fn names_under(root: &Path) -> Vec<String> {
    let mut names: Vec<String> = files_under(root)
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// A parsed SMTP reply.
#[derive(Debug, Clone)]
pub struct Reply {
    pub code: u16,
    pub lines: Vec<String>,
}

impl Reply {
    /// The text after the code of the last line, e.g. "5.5.1 Command unrecognized".
    pub fn text(&self) -> String {
        self.lines
            .last()
            .map(|l| l[4..].to_string())
            .unwrap_or_default()
    }
    /// The enhanced status code of the last line.
    pub fn status(&self) -> String {
        self.text().split(' ').next().unwrap_or("").to_string()
    }
    pub fn is(&self, code: u16, status: &str) -> bool {
        self.code == code && self.status() == status
    }
}

/// A blocking SMTP client with generous time-outs, so a hung server fails the
/// test rather than hanging it.
pub struct Smtp {
    pub reader: BufReader<TcpStream>,
    pub writer: TcpStream,
}

impl Smtp {
    pub fn connect(addr: SocketAddr) -> Smtp {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let writer = s.try_clone().unwrap();
        let mut c = Smtp {
            reader: BufReader::new(s),
            writer,
        };
        let greet = c.read();
        assert_eq!(greet.code, 220, "{greet:?}");
        c
    }

    /// Connects without reading the greeting.
    pub fn connect_raw(addr: SocketAddr) -> Smtp {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let writer = s.try_clone().unwrap();
        Smtp {
            reader: BufReader::new(s),
            writer,
        }
    }

    pub fn read(&mut self) -> Reply {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            let n = self.reader.read_line(&mut line).expect("read reply");
            assert!(
                n > 0,
                "connection closed while reading a reply (got {lines:?})"
            );
            let line = line.trim_end_matches(['\r', '\n']).to_string();
            let more = line.as_bytes().get(3) == Some(&b'-');
            lines.push(line);
            if !more {
                break;
            }
        }
        let code = lines.last().unwrap()[..3].parse().unwrap();
        Reply { code, lines }
    }

    /// Tries to read a reply; `None` if the server closed the connection.
    pub fn try_read(&mut self) -> Option<Reply> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) | Err(_) => None,
            Ok(_) => {
                let mut lines = vec![line.trim_end().to_string()];
                while lines.last().unwrap().as_bytes().get(3) == Some(&b'-') {
                    let mut l = String::new();
                    if self.reader.read_line(&mut l).ok()? == 0 {
                        return None;
                    }
                    lines.push(l.trim_end().to_string());
                }
                let code = lines.last().unwrap().get(..3)?.parse().ok()?;
                Some(Reply { code, lines })
            }
        }
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).unwrap();
    }

    /// Sends one command line (CRLF added) and reads the reply.
    pub fn cmd(&mut self, line: &str) -> Reply {
        self.send_raw(format!("{line}\r\n").as_bytes());
        self.read()
    }

    pub fn ehlo(&mut self) -> Reply {
        let r = self.cmd("EHLO client.test");
        assert_eq!(r.code, 250, "{r:?}");
        r
    }

    /// A whole transaction with DATA; returns the final reply.
    pub fn send_message(&mut self, from: &str, to: &[&str], body: &[u8]) -> Reply {
        let r = self.cmd(&format!("MAIL FROM:<{from}>"));
        assert_eq!(r.code, 250, "{r:?}");
        for t in to {
            let r = self.cmd(&format!("RCPT TO:<{t}>"));
            assert_eq!(r.code, 250, "{r:?}");
        }
        let r = self.cmd("DATA");
        assert_eq!(r.code, 354, "{r:?}");
        self.send_raw(&dot_stuff(body));
        self.send_raw(b".\r\n");
        self.read()
    }
}

/// Dot-stuffs a CRLF message for DATA and makes sure it ends with CRLF.
pub fn dot_stuff(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 16);
    let mut at_line_start = true;
    for &b in body {
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        at_line_start = b == b'\n' && out.len() >= 2 && out[out.len() - 2] == b'\r';
    }
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// The queue id in a "250 2.0.0 Message queued as ID" reply.
pub fn queued_id(r: &Reply) -> String {
    assert_eq!(r.code, 250, "{r:?}");
    r.text().rsplit(' ').next().unwrap().to_string()
}

/// Strips the first header (our Received:) and its continuation lines.
pub fn strip_received(stored: &[u8]) -> &[u8] {
    assert!(
        stored.starts_with(b"Received: "),
        "no Received header first"
    );
    let mut i = 0;
    loop {
        let nl = stored[i..].iter().position(|&b| b == b'\n').unwrap() + i;
        i = nl + 1;
        if i >= stored.len() || !(stored[i] == b' ' || stored[i] == b'\t') {
            return &stored[i..];
        }
    }
}

/// True if an external program exists on PATH.
pub fn have(program: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {program}"))
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Requires an external program: the test suite's setup (scripts/test-deps)
/// installs them, so a missing one is a setup failure, not a skip.
pub fn require(program: &str) {
    assert!(
        have(program),
        "{program} is required: run scripts/test-deps"
    );
}

impl Server {
    /// Starts a server with a config of its own: `edit` gets the base config
    /// (with `extra` appended) and returns the text to use, e.g. to add keys to
    /// a table of the base config, which TOML cannot reopen. `env` is added to
    /// the server process's environment only (a later plain `spawn()` does not
    /// pass it).
    pub fn start_custom(
        extra: &str,
        edit: impl FnOnce(String) -> String,
        env: &[(&str, &str)],
    ) -> Server {
        let mut s = Self::configured(tempfile::tempdir().unwrap(), edit, extra);
        s.spawn_with_env(env);
        s
    }

    /// Starts a server with the base config plus `extra` TOML, with `env`
    /// added to the server process's environment only.
    pub fn start_with_env(extra: &str, env: &[(&str, &str)]) -> Server {
        Self::start_custom(extra, |c| c, env)
    }

    /// Starts a server whose `[server]` table also has `server_keys` (TOML
    /// cannot reopen the base config's `[server]` from `extra`), plus `extra`.
    pub fn start_with_server_keys(server_keys: &str, extra: &str) -> Server {
        Self::start_custom(
            extra,
            |c| c.replacen("[server]\n", &format!("[server]\n{server_keys}\n"), 1),
            &[],
        )
    }

    /// Like [`Server::spawn`], with extra environment variables for the server.
    pub fn spawn_with_env(&mut self, env: &[(&str, &str)]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = Command::new(bin());
        cmd.arg("serve")
            .arg("-c")
            .arg(&self.config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().expect("spawn ferrymail"));
        self.wait_ready();
    }

    /// Runs `ferrymail ARGS -c CONFIG` with extra environment variables.
    pub fn cli_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new(bin());
        cmd.args(args).arg("-c").arg(&self.config);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    }
}

/// Runs a command with a time limit; kills it and panics if it overruns.
/// Output is captured through files, so a child that hangs cannot block us.
/// Runs `cmd` with `input` on its standard input and waits for it; what
/// the sendmail scenarios do with `ferrymail sendmail`.
#[allow(dead_code)]
pub fn run_with_input(cmd: &mut Command, input: &[u8]) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

pub fn run_bounded(cmd: &mut Command, limit: Duration) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("stdout");
    let err_path = dir.path().join("stderr");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{cmd:?} did not finish within {limit:?}\nstdout:\n{}\nstderr:\n{}",
                std::fs::read_to_string(&out_path).unwrap_or_default(),
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: std::fs::read(&out_path).unwrap(),
        stderr: std::fs::read(&err_path).unwrap(),
    }
}

/// The ids of the messages in a `queue list --json` document.
pub fn queue_ids(list: &serde_json::Value) -> Vec<String> {
    list["messages"]
        .as_array()
        .expect("messages array")
        .iter()
        .map(|m| m["id"].as_str().expect("id").to_string())
        .collect()
}

/// Real next hops (smtp-sink, an aiosmtpd recording sink, a private Postfix)
/// and the server-side waits of the delivery scenarios.
pub mod peers;

/// PostgreSQL for the end-to-end scenarios: a database per test on the
/// server scripts/test starts, and `ferrymail serve` with its stores there.
pub mod pg;

/// CPython's `test_email/data` message corpus: `FERRYMAIL_TEST_EMAIL_CORPUS`
/// (scripts/test sets it), else wherever python3's `test` package is.
pub fn corpus_dir() -> std::path::PathBuf {
    if let Some(d) = std::env::var_os("FERRYMAIL_TEST_EMAIL_CORPUS").filter(|d| !d.is_empty()) {
        let d = std::path::PathBuf::from(d);
        assert!(
            d.is_dir(),
            "FERRYMAIL_TEST_EMAIL_CORPUS={} is not a directory",
            d.display()
        );
        return d;
    }
    require("python3");
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg("import test, os; print(os.path.join(os.path.dirname(test.__file__), 'test_email', 'data'))")
        .output()
        .expect("run python3");
    let d = std::path::PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert!(
        out.status.success() && d.join("msg_01.txt").is_file(),
        "CPython's test_email/data corpus was not found (python3 said {:?}, {}); \
         run scripts/test-deps or set FERRYMAIL_TEST_EMAIL_CORPUS",
        d,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    d
}

/// The first differing offset, with context, for a readable failure.
pub fn describe_diff(sent: &[u8], stored: &[u8]) -> String {
    let at = sent
        .iter()
        .zip(stored)
        .position(|(a, b)| a != b)
        .unwrap_or(sent.len().min(stored.len()));
    let ctx = |v: &[u8]| {
        let lo = at.saturating_sub(20);
        let hi = (at + 20).min(v.len());
        format!("{:?}", String::from_utf8_lossy(&v[lo.min(hi)..hi]))
    };
    format!(
        "sent {} bytes, stored {}; first difference at {at}: sent {} stored {}",
        sent.len(),
        stored.len(),
        ctx(sent),
        ctx(stored)
    )
}

/// `text` without terminal colour sequences (ESC [ ... m).
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// xorshift64*: a small, seedable generator for the generated scenarios
/// (hostile clients, a misbehaving next hop), so that a seed names a run.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    pub fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
    pub fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}
