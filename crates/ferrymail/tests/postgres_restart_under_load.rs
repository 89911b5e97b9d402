//! PostgreSQL restarts while mail is flowing: the server follows it by
//! itself. While the database is down, SMTP clients get 4xx replies (451
//! 4.3.0), never 5xx; every message that got its 250 reaches the relay
//! afterwards (a message in flight at the restart may arrive twice; the test
//! counts and prints those).
//!
//! This test runs its own PostgreSQL (scripts/postgres-test-server in a
//! temporary directory), since it restarts it.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::peers::*;
use common::pg::*;
use common::*;

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/postgres-test-server")
}

/// A PostgreSQL of this test's own, stopped on drop.
struct PrivatePg {
    dir: tempfile::TempDir,
    url: String,
}

impl PrivatePg {
    fn start() -> PrivatePg {
        // As scripts/test does: its setup is what this needs, so without it
        // this is a failure, not a skip.
        pg_url();
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(script())
            .arg("start")
            .arg(dir.path().join("pg"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let url = text
            .lines()
            .find_map(|l| l.strip_prefix("export FERRYMAIL_TEST_PG_URL="))
            .expect("URL printed")
            .trim_matches('\'')
            .to_string();
        PrivatePg { dir, url }
    }

    fn restart(&self, down_for: Duration) {
        let out = Command::new(script())
            .arg("restart")
            .arg(self.dir.path().join("pg"))
            .arg(format!("{}", down_for.as_secs_f64()))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        let _ = Command::new(script())
            .arg("stop")
            .arg(self.dir.path().join("pg"))
            .output();
    }
}

/// What one attempt to send a message ended with.
enum Sent {
    Queued(String),
    /// A 4xx reply to MAIL, RCPT or the end of DATA.
    Temporary(u16),
    /// A 5xx reply: never allowed here.
    Permanent(String),
}

fn read_reply(r: &mut BufReader<TcpStream>) -> Option<String> {
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        if line.as_bytes().get(3) != Some(&b'-') {
            return Some(line.trim_end().to_string());
        }
    }
}

fn send_one(addr: SocketAddr, token: &str) -> Sent {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    let mut step = |cmd: &[u8], want: &str| -> Result<String, Sent> {
        if !cmd.is_empty() {
            w.write_all(cmd).unwrap();
        }
        let line = read_reply(&mut r).expect("a reply");
        if line.starts_with(want) {
            Ok(line)
        } else if line.starts_with('4') {
            Err(Sent::Temporary(line[..3].parse().unwrap()))
        } else {
            Err(Sent::Permanent(line))
        }
    };
    let body = format!("Subject: {token}\r\n\r\ntoken={token}\r\n.\r\n");
    let result = (|| {
        step(b"", "220")?;
        step(b"EHLO load.test\r\n", "250")?;
        step(b"MAIL FROM:<load@origin.test>\r\n", "250")?;
        step(b"RCPT TO:<r@far.test>\r\n", "250")?;
        step(b"DATA\r\n", "354")?;
        let line = step(body.as_bytes(), "250")?;
        Ok(line.rsplit(' ').next().unwrap().to_string())
    })();
    let _ = w.write_all(b"QUIT\r\n");
    match result {
        Ok(id) => Sent::Queued(id),
        Err(e) => e,
    }
}

#[test]
fn database_restart_under_load_gives_4xx_and_loses_nothing() {
    let pg = PrivatePg::start();
    let sink = SmtpSink::start(&[]);
    let s = Server::start_pg_url(
        &pg.url,
        "",
        &format!(
            "[session.rcpt]\nrelay = \"remote_ip == '127.0.0.1'\"\n\n{}\
             [queue.strategy]\nroute = \"'sink'\"\n",
            relay_route("sink", sink.port, "smtp")
        ),
    );

    let acked: Arc<Mutex<BTreeMap<String, String>>> = Arc::default();
    let temporary = Arc::new(Mutex::new(Vec::new()));
    let permanent = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..4)
        .map(|t| {
            let (acked, temporary, permanent, stop) = (
                acked.clone(),
                temporary.clone(),
                permanent.clone(),
                stop.clone(),
            );
            let addr = s.smtp;
            std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let token = format!("t{t}-n{n}");
                    n += 1;
                    match send_one(addr, &token) {
                        Sent::Queued(id) => {
                            acked.lock().unwrap().insert(token, id);
                        }
                        Sent::Temporary(code) => {
                            temporary.lock().unwrap().push(code);
                            std::thread::sleep(Duration::from_millis(50));
                        }
                        Sent::Permanent(line) => permanent.lock().unwrap().push(line),
                    }
                }
            })
        })
        .collect();

    std::thread::sleep(Duration::from_millis(1500));
    let before = acked.lock().unwrap().len();
    pg.restart(Duration::from_secs(2));
    let restarted = Instant::now();
    // Load goes on until mail is accepted again, and a little longer.
    while acked.lock().unwrap().len() < before + 20 {
        assert!(
            restarted.elapsed() < Duration::from_secs(60),
            "no mail accepted after the restart:\n{}",
            s.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }

    let permanent = permanent.lock().unwrap().clone();
    assert!(permanent.is_empty(), "5xx replies: {permanent:?}");
    let temporary = temporary.lock().unwrap().clone();
    assert!(
        !temporary.is_empty() && temporary.iter().all(|&c| c == 451),
        "the outage was seen, as 451 only: {temporary:?}"
    );
    let acked = acked.lock().unwrap().clone();
    assert!(
        before > 10,
        "load was running before the restart ({before})"
    );

    // Work the store could not record during the outage waits for a retry;
    // a flush starts it now.
    let flush = s.cli(&["queue", "flush"]);
    assert!(flush.status.success());
    let deadline = Instant::now() + Duration::from_secs(120);
    let delivered = loop {
        let mut count: BTreeMap<String, usize> = BTreeMap::new();
        for d in sink.dumped() {
            let text = String::from_utf8_lossy(&d.body).to_string();
            if let Some(t) = text.lines().find_map(|l| l.strip_prefix("token=")) {
                *count.entry(t.to_string()).or_default() += 1;
            }
        }
        if acked.keys().all(|t| count.contains_key(t)) {
            break count;
        }
        if Instant::now() > deadline {
            let missing: Vec<_> = acked.keys().filter(|t| !count.contains_key(*t)).collect();
            panic!(
                "{} of {} acknowledged messages never arrived, e.g. {:?}\nqueue: {}\n{}",
                missing.len(),
                acked.len(),
                &missing[..missing.len().min(5)],
                s.queue_json(),
                s.log_text()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let duplicates: Vec<_> = delivered.iter().filter(|(_, n)| **n > 1).collect();
    eprintln!(
        "{} acknowledged, {} answered 451 during the outage, {} delivered twice: {duplicates:?}",
        acked.len(),
        temporary.len(),
        duplicates.len()
    );
    assert!(
        delivered.keys().all(|t| acked.contains_key(t)),
        "only acknowledged messages were delivered"
    );
    s.wait_queue_empty(Duration::from_secs(60));
}
