//! `ferrymail check -c FILE` (INTERFACE.md): exit 0 for a valid file, including
//! the seed's `[queue.schedule]` and `[report.dsn]` blocks verbatim and a DKIM
//! signer whose key comes from `%{file:...}%`; exit 2 with `FILE:LINE: what is
//! wrong`, on the right line, for an unknown key (with a did-you-mean), a bad
//! duration, a bad expression, an unsupported store type and queue data in
//! an `fs` store (which holds contents only); and `ferrymail serve` refuses
//! the same files with the same message and exit 2.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// A temp dir with an RSA key made by openssl and a valid config using it.
struct Fixture {
    dir: tempfile::TempDir,
    valid: String,
    smtp: u16,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("dkim-rsa.pem");
    rsa_key_file(&key);
    let smtp = free_port();
    let valid = format!(
        r#"[server]
hostname = "mx.example.org"
max-connections = 100
shutdown-timeout = "10s"

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

[session.timeout]
command = "5m"

[session.rcpt]
relay = "remote_ip == '127.0.0.1'"
local-domains = ["example.org"]

[queue.schedule]
retry = "[2m, 5m, 10m, 15m, 30m, 1h, 2h]"
notify = "[1d, 3d]"
expire = "5d"

[report.dsn]
from-name = "'Mail Delivery Subsystem'"
from-address = "'MAILER-DAEMON@example.org'"
sign = "['rsa']"

[signature.rsa]
private-key = "%{{file:{key}}}%"
domain = "example.org"
selector = "ferry"
algorithm = "rsa-sha256"
canonicalization = "relaxed/relaxed"
headers = ["From", "To", "Date", "Subject", "Message-ID"]
"#,
        mgmt = free_port(),
        data = dir.path().join("data").display(),
        key = key.display(),
    );
    Fixture { dir, valid, smtp }
}

impl Fixture {
    /// Writes `text` to NAME in the temp dir.
    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    /// The valid config with the first line starting with `old` replaced by
    /// `new` (which may be several lines); returns the file and the 1-based
    /// number of the replaced line.
    fn variant(&self, name: &str, old: &str, new: &str) -> (PathBuf, usize) {
        let mut lines: Vec<String> = self.valid.lines().map(str::to_string).collect();
        let i = lines
            .iter()
            .position(|l| l.starts_with(old))
            .unwrap_or_else(|| panic!("no line starting with {old:?}"));
        lines[i] = new.to_string();
        (self.write(name, &(lines.join("\n") + "\n")), i + 1)
    }
}

fn check(path: &Path) -> Output {
    run_bounded(
        Command::new(bin()).arg("check").arg("-c").arg(path),
        Duration::from_secs(60),
    )
}

/// Asserts exit 2 and a first stderr line `FILE:LINE: ...` containing every
/// one of `wants`; returns stderr.
fn assert_config_error(out: &Output, path: &Path, line: usize, wants: &[&str]) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "exit status; stderr: {err}");
    let prefix = format!("{}:{line}: ", path.display());
    let first = err.lines().next().unwrap_or("");
    assert!(
        first.starts_with(&prefix),
        "want {prefix:?} first, got: {err}"
    );
    for w in wants {
        assert!(first.contains(w), "missing {w:?} in: {first}");
    }
    err
}

#[test]
fn valid_config_with_seed_blocks_passes() {
    let f = fixture();
    let path = f.write("ferrymail.toml", &f.valid);
    let out = check(&path);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "no warnings expected: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("{}: OK", path.display())),
        "{stdout}"
    );
}

/// Kills the child on drop, so a failed assertion does not leak it.
struct Guard(Option<Child>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn valid_config_also_serves() {
    // The checked file is also one `serve` starts with and stops cleanly.
    let f = fixture();
    let path = f.write("ferrymail.toml", &f.valid);
    let smtp: SocketAddr = ([127, 0, 0, 1], f.smtp).into();
    let mut guard = Guard(Some(
        Command::new(bin())
            .arg("serve")
            .arg("-c")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    ));
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut greeted = false;
    while Instant::now() < deadline && !greeted {
        if let Some(st) = guard.0.as_mut().unwrap().try_wait().unwrap() {
            panic!("serve exited early with {st}");
        }
        if TcpStream::connect(smtp).is_ok() {
            let mut c = Smtp::connect(smtp);
            greeted = c.cmd("EHLO x.test").code == 250;
        } else {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    assert!(greeted, "serve with the checked config did not answer SMTP");
    let child = guard.0.as_mut().unwrap();
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let deadline = Instant::now() + Duration::from_secs(40);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "serve did not exit on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
}

#[test]
fn unknown_key_with_did_you_mean() {
    let f = fixture();
    let (p, line) = f.variant(
        "a.toml",
        "canonicalization = ",
        "canonicalisation = \"relaxed/relaxed\"",
    );
    assert_config_error(
        &check(&p),
        &p,
        line,
        &[
            "unknown key 'canonicalisation'",
            "did you mean 'canonicalization'?",
        ],
    );
    let (p, line) = f.variant("b.toml", "max-connections = ", "max-conections = 100");
    assert_config_error(
        &check(&p),
        &p,
        line,
        &[
            "unknown key 'max-conections'",
            "[server]",
            "did you mean 'max-connections'?",
        ],
    );
    let (p, line) = f.variant("c.toml", "expire = ", "expyre = \"5d\"");
    assert_config_error(
        &check(&p),
        &p,
        line,
        &["unknown key 'expyre'", "did you mean 'expire'?"],
    );
}

#[test]
fn misspelt_required_key_gets_did_you_mean() {
    // `selectr` for `selector`: the typo is the problem to point at. The
    // "missing required key 'selector'" that follows from it may be reported
    // too, but not instead of the typo on its own line.
    let f = fixture();
    let (p, line) = f.variant("a.toml", "selector = ", "selectr = \"ferry\"");
    let out = check(&p);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{err}");
    let want = format!(
        "{}:{line}: unknown key 'selectr' in [signature.rsa]; did you mean 'selector'?",
        p.display()
    );
    assert!(
        err.lines().any(|l| l == want),
        "want the line {want:?} in:\n{err}"
    );
}

#[test]
fn bad_duration() {
    let f = fixture();
    let (p, line) = f.variant("a.toml", "command = ", "command = \"5x\"");
    assert_config_error(
        &check(&p),
        &p,
        line,
        &["invalid duration '5x'", "session.timeout.command"],
    );
    let (p, line) = f.variant(
        "b.toml",
        "shutdown-timeout = ",
        "shutdown-timeout = \"ten seconds\"",
    );
    assert_config_error(
        &check(&p),
        &p,
        line,
        &["server.shutdown-timeout", "ten seconds"],
    );
    let (p, line) = f.variant("c.toml", "command = ", "command = 300");
    assert_config_error(
        &check(&p),
        &p,
        line,
        &["session.timeout.command", "duration"],
    );
    // A duration inside an expression list.
    let (p, line) = f.variant("d.toml", "retry = ", "retry = \"[2m, 5m, 10x]\"");
    assert_config_error(&check(&p), &p, line, &["queue.schedule.retry", "10x"]);
}

#[test]
fn bad_expression() {
    let f = fixture();
    let (p, line) = f.variant("a.toml", "relay = ", "relay = \"remote_ip = '127.0.0.1'\"");
    assert_config_error(&check(&p), &p, line, &["session.rcpt.relay", "'=='"]);
    let (p, line) = f.variant("b.toml", "retry = ", "retry = \"[2m, 5m\"");
    assert_config_error(
        &check(&p),
        &p,
        line,
        &["invalid expression", "queue.schedule.retry"],
    );
    let (p, line) = f.variant(
        "c.toml",
        "from-name = ",
        "from-name = \"Mail Delivery Subsystem\"",
    );
    assert_config_error(&check(&p), &p, line, &["report.dsn.from-name"]);
    let (p, line) = f.variant("d.toml", "sign = ", "sign = \"['rsa'\"");
    assert_config_error(&check(&p), &p, line, &["report.dsn.sign"]);
}

#[test]
fn unsupported_store_type() {
    let f = fixture();
    let (p, line) = f.variant("a.toml", "data = ", "data = \"foundationdb\"");
    let err = assert_config_error(
        &check(&p),
        &p,
        line,
        &[
            "storage.data",
            "foundationdb",
            "embedded",
            "postgresql",
            "fs",
        ],
    );
    assert!(err.lines().count() >= 1);
}

#[test]
fn data_in_an_fs_store_is_refused() {
    // An fs store holds message contents only: queue data named there is
    // refused on the line that names it.
    let f = fixture();
    let blobs = f.dir.path().join("blobs");
    let text = f.valid.replacen(
        "[storage]\ndata = \"local\"\n",
        &format!(
            "[store.files]\ntype = \"fs\"\npath = \"{}\"\n\n[storage]\ndata = \"files\"\n",
            blobs.display()
        ),
        1,
    );
    let line = 1 + text
        .lines()
        .position(|l| l == "data = \"files\"")
        .expect("the edited line");
    let p = f.write("fs-data.toml", &text);
    assert_config_error(
        &check(&p),
        &p,
        line,
        &[
            "storage.data",
            "files",
            "an fs store holds message contents only",
        ],
    );
    // The same store for contents only is fine.
    let p = f.write(
        "fs-blob.toml",
        &text.replace(
            "data = \"files\"\nblob = \"local\"",
            "data = \"local\"\nblob = \"files\"",
        ),
    );
    let out = check(&p);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn serve_refuses_a_bad_config_with_the_same_message() {
    let f = fixture();
    for (name, old, new) in [
        ("a.toml", "data = ", "data = \"foundationdb\""),
        ("b.toml", "expire = ", "expyre = \"5d\""),
        ("c.toml", "command = ", "command = \"5x\""),
        ("d.toml", "relay = ", "relay = \"remote_ip = '127.0.0.1'\""),
        // An implicit fs store (the type as the value) cannot hold queue data.
        ("e.toml", "data = ", "data = \"fs\""),
    ] {
        let (p, line) = f.variant(name, old, new);
        let checked = check(&p);
        let served = run_bounded(
            Command::new(bin()).arg("serve").arg("-c").arg(&p),
            Duration::from_secs(60),
        );
        let err = assert_config_error(&served, &p, line, &[]);
        let first_check = String::from_utf8_lossy(&checked.stderr)
            .lines()
            .next()
            .unwrap_or("")
            .to_string();
        assert_eq!(
            err.lines().next().unwrap_or(""),
            first_check,
            "serve and check should report the same problem for {new}"
        );
        assert!(
            !f.dir.path().join("data").exists(),
            "serve must not create the store for a refused config"
        );
    }
}

#[test]
fn unusable_certificate_is_refused_on_its_line() {
    // A private-key that is PEM but no key (the certificate again, an easy
    // slip with %{file:}%): `serve` would refuse it at start, so `check`
    // does, naming the certificate's table.
    let f = fixture();
    let (key, cert) = (f.dir.path().join("tls.key"), f.dir.path().join("tls.crt"));
    self_signed_cert("mx.example.org", &key, &cert);
    let table = |private_key: &Path| {
        format!(
            "[certificate.main]\ncert = \"%{{file:{}}}%\"\nprivate-key = \"%{{file:{}}}%\"\n",
            cert.display(),
            private_key.display()
        )
    };
    let good = f.write("good.toml", &format!("{}\n{}", f.valid, table(&key)));
    let out = check(&good);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bad = f.write("bad.toml", &format!("{}\n{}", f.valid, table(&cert)));
    let line = f.valid.lines().count() + 2;
    assert_config_error(
        &check(&bad),
        &bad,
        line,
        &["certificate 'main'", "private key"],
    );
}
