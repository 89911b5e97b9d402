//! A next hop that misbehaves in every way the delivery client must
//! survive: greetings of 554 and 421 or none, EHLO capabilities at random
//! (CHUNKING, a tiny SIZE, STARTTLS that it then cannot do), 4xx and 5xx
//! at any command, PIPELINING, 8BITMIME and DSN offered or not (so the
//! client also waits for each reply, and converts 8-bit mail), 421 and
//! hang-ups in mid-transaction, malformed and
//! bare-LF replies, multi-line replies whose lines disagree, replies that
//! come too late. After a while it mends, and the queue is retried.
//!
//! Every recipient must then be accounted for exactly one way: delivered
//! (the hop answered 250 to the end of a transaction that named it) or
//! returned to its sender in a failure notice that reached the hop, never
//! both; every notice's Status must carry the failure's own code; the
//! queue must be empty, and the server must not have panicked.
//! The hop is a small SMTP server in this file (written for its faults;
//! no real server misbehaves on demand), seeded per connection so a
//! failing run can be replayed; `FERRYMAIL_CHAOS_SEED=N` draws other
//! faults.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::peers::*;
use common::*;

/// `FERRYMAIL_CHAOS_SEED`, to run other faults than the default ones.
fn base_seed() -> u64 {
    std::env::var("FERRYMAIL_CHAOS_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
        * 1_000_003
}

/// What the hop accepted: (token, recipient) pairs of original mail it
/// answered 250 at the end of, and those failure notices reported failed.
#[derive(Default)]
struct Ledger {
    delivered: Vec<(String, String)>,
    bounced: Vec<(String, String)>,
    /// The Status fields of the failure notices.
    statuses: Vec<String>,
}

struct Hop {
    port: u16,
    mended: Arc<AtomicBool>,
}

impl Hop {
    /// `lmtp`: the hop speaks LMTP (RFC 2033), answering once per
    /// recipient after the data.
    fn start(ledger: Arc<Mutex<Ledger>>, mended: bool, lmtp: bool) -> Hop {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mended = Arc::new(AtomicBool::new(mended));
        let connections = Arc::new(AtomicU64::new(0));
        let (m, l) = (mended.clone(), ledger);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let seed = base_seed() + connections.fetch_add(1, Ordering::Relaxed);
                let (m, l) = (m.clone(), l.clone());
                std::thread::spawn(move || {
                    let _ = serve(stream, seed, &m, &l, lmtp);
                });
            }
        });
        Hop { port, mended }
    }
}

/// What the hop does instead of the right reply, now and then.
enum Fault {
    None,
    Transient,
    Permanent,
    GoingAway,
    HangUp,
    Malformed,
    Late,
}

fn fault(rng: &mut Rng, mended: bool) -> Fault {
    if mended {
        return Fault::None;
    }
    match rng.below(100) {
        0..=72 => Fault::None,
        73..=81 => Fault::Transient,
        82..=84 => Fault::Permanent,
        85..=87 => Fault::GoingAway,
        88..=90 => Fault::HangUp,
        91..=96 => Fault::Malformed,
        _ => Fault::Late,
    }
}

/// Writes `good` or the fault instead. `None` when the connection is over,
/// else whether a client reads the reply as `good` (a bare-LF copy of it,
/// or a multi-line reply whose first line is good, counts: that first line
/// decides, RFC 5321 §4.2.1 says the lines agree).
fn answer(
    w: &mut TcpStream,
    rng: &mut Rng,
    mended: bool,
    good: &str,
) -> std::io::Result<Option<bool>> {
    let (text, positive) = match fault(rng, mended) {
        Fault::None => (good.to_string(), true),
        Fault::Transient => ("451 4.3.0 chaos says later\r\n".into(), false),
        Fault::Permanent => ("550 5.7.1 chaos says no\r\n".into(), false),
        Fault::GoingAway => {
            w.write_all(b"421 4.3.2 chaos is going away\r\n")?;
            return Ok(None);
        }
        Fault::HangUp => return Ok(None),
        Fault::Malformed => match rng.below(5) {
            0 => ("hello there\r\n".into(), false),
            1 => ("2x0 what\r\n".into(), false),
            2 => (
                format!(
                    "{}-first line\r\n550 5.0.0 second disagrees\r\n",
                    &good[..3]
                ),
                good.starts_with('2') || good.starts_with('3'),
            ),
            3 => (good.replace("\r\n", "\n"), true),
            // Longer than RFC 5321 §4.5.3.1.5 allows, which the client
            // reads all the same.
            _ => (
                format!("{} {}\r\n", &good[..3], "x".repeat(3000)),
                good.starts_with('2') || good.starts_with('3'),
            ),
        },
        Fault::Late => {
            std::thread::sleep(Duration::from_millis(1500));
            (good.to_string(), true)
        }
    };
    w.write_all(text.as_bytes())?;
    Ok(Some(positive))
}

fn serve(
    stream: TcpStream,
    seed: u64,
    mended: &AtomicBool,
    ledger: &Mutex<Ledger>,
    lmtp: bool,
) -> std::io::Result<()> {
    let mut rng = Rng::new(seed + 1);
    stream.set_read_timeout(Some(Duration::from_secs(20)))?;
    let mut w = stream.try_clone()?;
    let mut r = BufReader::new(stream);
    let good_now = || mended.load(Ordering::Relaxed);
    if !good_now() {
        match rng.below(40) {
            0 => return w.write_all(b"554 5.3.2 chaos takes no mail\r\n"),
            1 => return w.write_all(b"421 4.3.2 chaos is busy\r\n"),
            2 => return Ok(()),
            _ => {}
        }
    }
    w.write_all(b"220 chaos.test ESMTP\r\n")?;
    let chunking = !good_now() && rng.below(3) == 0;
    let tiny = !good_now() && rng.below(1000) == 0;
    // Without PIPELINING the client waits for each reply; without
    // 8BITMIME it converts the 8-bit messages; without DSN it passes no
    // NOTIFY on.
    let pipelining = good_now() || rng.below(10) < 7;
    let eight_bit = good_now() || rng.below(10) < 7;
    let dsn = good_now() || rng.below(10) < 7;
    let starttls = !good_now() && rng.below(5) == 0;
    let mut sender = String::new();
    let mut rcpts: Vec<String> = Vec::new();
    let mut in_transaction = false;
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let upper = line.to_ascii_uppercase();
        let mended = good_now();
        let keep = if upper.starts_with("EHLO") || upper.starts_with("LHLO") {
            let mut caps = String::from("250-chaos.test\r\n250-SMTPUTF8\r\n");
            for (offered, name) in [
                (pipelining, "PIPELINING"),
                (eight_bit, "8BITMIME"),
                (dsn, "DSN"),
            ] {
                if offered {
                    caps.push_str(&format!("250-{name}\r\n"));
                }
            }
            if chunking {
                caps.push_str("250-CHUNKING\r\n");
            }
            if starttls {
                caps.push_str("250-STARTTLS\r\n");
            }
            caps.push_str(if tiny {
                "250 SIZE 100\r\n"
            } else {
                "250 SIZE 10000000\r\n"
            });
            answer(&mut w, &mut rng, mended, &caps)?.is_some()
        } else if upper.starts_with("STARTTLS") {
            if rng.below(2) == 0 {
                w.write_all(b"454 4.7.0 TLS not available after all\r\n")?;
                true
            } else {
                // Says yes, then cannot: the client's handshake fails.
                w.write_all(b"220 2.0.0 go ahead\r\n")?;
                false
            }
        } else if upper.starts_with("MAIL FROM:") {
            sender = line[10..]
                .split('>')
                .next()
                .unwrap_or("")
                .trim_start_matches('<')
                .to_string();
            rcpts.clear();
            match answer(&mut w, &mut rng, mended, "250 2.1.0 ok\r\n")? {
                None => false,
                Some(ok) => {
                    in_transaction = ok;
                    true
                }
            }
        } else if upper.starts_with("RCPT TO:") && !in_transaction {
            w.write_all(b"503 5.5.1 MAIL first\r\n")?;
            true
        } else if upper.starts_with("RCPT TO:") {
            let rcpt = line[8..]
                .split('>')
                .next()
                .unwrap_or("")
                .trim_start_matches('<')
                .to_lowercase();
            let f = fault(&mut rng, mended);
            let (text, ok, go_on) = match f {
                Fault::None => ("250 2.1.5 ok\r\n".to_string(), true, true),
                Fault::Transient => ("450 4.2.1 chaos mailbox busy\r\n".into(), false, true),
                Fault::Permanent => ("550 5.1.1 chaos knows no such user\r\n".into(), false, true),
                Fault::GoingAway => ("421 4.3.2 going\r\n".into(), false, false),
                Fault::HangUp => (String::new(), false, false),
                Fault::Malformed => ("25O 2.1.5 almost\r\n".into(), false, true),
                Fault::Late => {
                    std::thread::sleep(Duration::from_millis(1500));
                    ("250 2.1.5 ok\r\n".into(), true, true)
                }
            };
            w.write_all(text.as_bytes())?;
            if ok {
                rcpts.push(rcpt);
            }
            go_on
        } else if upper.starts_with("DATA") && rcpts.is_empty() {
            in_transaction = false;
            w.write_all(b"554 5.5.1 no valid recipients\r\n")?;
            true
        } else if upper.starts_with("DATA") {
            in_transaction = false;
            match answer(&mut w, &mut rng, mended, "354 go ahead\r\n")? {
                None => return Ok(()),
                // Refused: the transaction is over, the client sends no data.
                Some(false) => {
                    rcpts.clear();
                    continue;
                }
                Some(true) => {}
            }
            let mut data = Vec::new();
            loop {
                let mut l = Vec::new();
                if r.read_until(b'\n', &mut l)? == 0 {
                    return Ok(());
                }
                if l == b".\r\n" {
                    break;
                }
                data.extend_from_slice(&l);
            }
            finish(
                &mut w,
                &mut rng,
                good_now(),
                (&sender, &mut rcpts),
                &data,
                (ledger, lmtp),
            )?
        } else if upper.starts_with("BDAT") {
            let mut words = upper.split_whitespace().skip(1);
            let size: usize = words.next().and_then(|n| n.parse().ok()).unwrap_or(0);
            let last = words.next() == Some("LAST");
            let mut chunk = vec![0u8; size];
            r.read_exact(&mut chunk)?;
            // One chunk per message here: 1 MiB chunks, small messages.
            if rcpts.is_empty() {
                // RFC 3030 §2: the chunk is read, then refused.
                w.write_all(b"554 5.5.1 no valid recipients\r\n")?;
                true
            } else if last {
                in_transaction = false;
                finish(
                    &mut w,
                    &mut rng,
                    good_now(),
                    (&sender, &mut rcpts),
                    &chunk,
                    (ledger, lmtp),
                )?
            } else {
                answer(&mut w, &mut rng, mended, "250 2.0.0 chunk ok\r\n")?.is_some()
            }
        } else if upper.starts_with("RSET") {
            rcpts.clear();
            in_transaction = false;
            answer(&mut w, &mut rng, mended, "250 2.0.0 ok\r\n")?.is_some()
        } else if upper.starts_with("QUIT") {
            w.write_all(b"221 2.0.0 bye\r\n")?;
            false
        } else {
            answer(&mut w, &mut rng, mended, "250 2.0.0 ok\r\n")?.is_some()
        };
        if !keep {
            return Ok(());
        }
    }
}

/// The reply to the end of a message (LMTP: one per recipient); a 250 that
/// was written is recorded. The transaction (`sender`, `rcpts`) ends here.
fn finish(
    w: &mut TcpStream,
    rng: &mut Rng,
    mended: bool,
    (sender, rcpts): (&str, &mut Vec<String>),
    data: &[u8],
    (ledger, lmtp): (&Mutex<Ledger>, bool),
) -> std::io::Result<bool> {
    let rcpts = std::mem::take(rcpts);
    let rcpts = rcpts.as_slice();
    if lmtp {
        // RFC 2033 §4.2: a reply per accepted recipient, in RCPT order.
        for rcpt in rcpts {
            match fault(rng, mended) {
                Fault::None | Fault::Late => {
                    w.write_all(format!("250 2.1.5 <{rcpt}> delivered\r\n").as_bytes())?;
                    record(sender, std::slice::from_ref(rcpt), data, ledger);
                }
                Fault::Transient => w.write_all(b"452 4.2.2 chaos mailbox full for now\r\n")?,
                Fault::Permanent => w.write_all(b"550 5.2.1 chaos mailbox disabled\r\n")?,
                // The recipients after it get no reply at all.
                Fault::GoingAway => {
                    w.write_all(b"421 4.3.2 going\r\n")?;
                    return Ok(false);
                }
                Fault::HangUp => return Ok(false),
                Fault::Malformed => {
                    w.write_all(b"hello there\r\n")?;
                    return Ok(false);
                }
            }
        }
        return Ok(true);
    }
    match fault(rng, mended) {
        Fault::None | Fault::Late if !rcpts.is_empty() => {
            w.write_all(b"250 2.0.0 chaos took it\r\n")?;
            record(sender, rcpts, data, ledger);
            Ok(true)
        }
        Fault::None | Fault::Late => {
            w.write_all(b"554 5.5.1 no valid recipients\r\n")?;
            Ok(true)
        }
        Fault::Transient => w.write_all(b"451 4.3.0 chaos lost it\r\n").map(|_| true),
        Fault::Permanent => w
            .write_all(b"554 5.6.0 chaos refuses the content\r\n")
            .map(|_| true),
        Fault::GoingAway => w.write_all(b"421 4.3.2 going\r\n").map(|_| false),
        Fault::HangUp | Fault::Malformed => Ok(false),
    }
}

fn record(sender: &str, rcpts: &[String], data: &[u8], ledger: &Mutex<Ledger>) {
    let text = String::from_utf8_lossy(data);
    let token = text
        .lines()
        .find_map(|l| l.strip_prefix("X-Token: "))
        .unwrap_or("?")
        .to_string();

    let mut ledger = ledger.lock().unwrap();
    if sender.is_empty() {
        // A failure notice: each failed recipient it reports (RFC 3464).
        let mut final_rcpt = None;
        for l in text.lines() {
            if let Some(s) = l.strip_prefix("Status: ") {
                ledger.statuses.push(s.trim().to_string());
            }
            if let Some(r) = l.strip_prefix("Final-Recipient: rfc822;") {
                final_rcpt = Some(r.trim().to_lowercase());
            }
            if l.trim() == "Action: failed"
                && let Some(r) = final_rcpt.take()
            {
                ledger.bounced.push((token.clone(), r));
            }
        }
    } else {
        for r in rcpts {
            ledger.delivered.push((token.clone(), r.clone()));
        }
    }
}

#[test]
fn a_misbehaving_next_hop_loses_no_mail() {
    run(false);
}

/// The same next hop speaking LMTP: a reply per recipient after the data,
/// each of which may be a fault, and none for the recipients after a 421
/// or a hang-up.
#[test]
fn a_misbehaving_lmtp_hop_loses_no_mail() {
    run(true);
}

fn run(lmtp: bool) {
    // Failure notices go to a hop that never fails: a notice the chaos
    // refused would end as a double bounce to the postmaster, which names
    // no original recipient (that path has its own scenario).
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let hop = Hop::start(ledger.clone(), false, lmtp);
    let clean = Hop::start(ledger.clone(), true, false);
    let server = Server::start(&format!(
        r#"[session.rcpt]
local-domains = ["local.test"]
relay = "remote_ip == '127.0.0.1'"

[queue.schedule]
retry = "[1s]"

[queue.outbound.timeout]
greeting = "1s"
ehlo = "1s"
mail = "1s"
rcpt = "1s"
data = "1s"

{chaos}{clean}
[queue.strategy]
route = [ {{ if = "is_empty(sender)", then = "'clean'" }}, {{ else = "'chaos'" }} ]
"#,
        chaos = relay_route("chaos", hop.port, if lmtp { "lmtp" } else { "smtp" }),
        clean = relay_route("clean", clean.port, "smtp"),
    ));

    // 60 messages, 1 to 3 recipients each, some with 8-bit text.
    let mut expected = BTreeSet::new();
    let mut c = server.client();
    c.ehlo();
    let mut rng = Rng::new(7);
    for token in 0..60u64 {
        let n = 1 + rng.below(3);
        let rcpts: Vec<String> = (0..n)
            .map(|i| format!("r{}@remote.test", (token as usize + i) % 7))
            .collect();
        let rcpts: Vec<String> = rcpts
            .into_iter()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let eight_bit = token % 3 == 0;
        let r = c.cmd(&format!(
            "MAIL FROM:<s{token}@sender.test>{}",
            if eight_bit { " BODY=8BITMIME" } else { "" }
        ));
        assert_eq!(r.code, 250, "{r:?}");
        for rcpt in &rcpts {
            assert_eq!(c.cmd(&format!("RCPT TO:<{rcpt}>")).code, 250);
            expected.insert((token.to_string(), rcpt.clone()));
        }
        assert_eq!(c.cmd("DATA").code, 354);
        let body = format!(
            "From: s{token}@sender.test\r\nSubject: chaos {token}\r\nX-Token: {token}\r\n\
             MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{}\r\n.\r\n",
            if eight_bit {
                "d\u{e9}j\u{e0} vu"
            } else {
                "plain"
            }
        );
        c.send_raw(body.as_bytes());
        assert_eq!(c.read().code, 250);
    }
    c.cmd("QUIT");

    // The faults, for a while; then the hop mends and the queue is retried.
    std::thread::sleep(Duration::from_secs(12));
    hop.mended.store(true, Ordering::Relaxed);
    let out = server.cli(&["queue", "retry", "--all"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for(
        Duration::from_secs(60),
        "the queue to drain",
        || format!("{:#}", server.queue_json()),
        || queue_ids(&server.queue_json()).is_empty().then_some(()),
    );

    let log = server.log_text();
    assert!(!log.contains("panicked"), "the server panicked:\n{log}");
    let ledger = ledger.lock().unwrap();
    let delivered: BTreeMap<_, usize> =
        ledger.delivered.iter().fold(BTreeMap::new(), |mut m, p| {
            *m.entry(p.clone()).or_insert(0) += 1;
            m
        });
    let bounced: BTreeSet<_> = ledger.bounced.iter().cloned().collect();
    eprintln!(
        "{} recipients: {} delivered ({} more than once), {} returned",
        expected.len(),
        delivered.len(),
        delivered.values().filter(|&&n| n > 1).count(),
        bounced.len()
    );
    for pair in &expected {
        let d = delivered.contains_key(pair);
        let b = bounced.contains(pair);
        assert!(d || b, "{pair:?} neither delivered nor returned");
        assert!(!(d && b), "{pair:?} both delivered and returned");
    }
    // Every failure here has a code, the hop's or Ferrymail's own (5.3.4
    // for a message over the hop's SIZE); a bare 5.0.0 tells a bounce
    // processor nothing.
    assert!(
        ledger.statuses.iter().all(|s| s != "5.0.0"),
        "{:?}",
        ledger.statuses
    );
    for pair in delivered.keys().chain(bounced.iter()) {
        assert!(expected.contains(pair), "{pair:?} was never sent");
    }
}
