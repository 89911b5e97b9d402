//! Two message corpora nobody on the project wrote, relayed through the real
//! `ferrymail serve` to recording sinks (aiosmtpd, recording the raw bytes of
//! each transaction), arrive byte-exact behind Ferrymail's Received header:
//!
//! * CPython's `test_email/data` (located as in byte_exact_corpus.rs, or by
//!   `FERRYMAIL_TEST_EMAIL_CORPUS`);
//! * mail-parser 0.11.9's `resources/eml` (every `*.eml` under it; the crate
//!   is a dev-dependency so that cargo fetches its source package into
//!   `$CARGO_HOME/registry/src`).
//!
//! Every file goes in twice, as byte_exact_corpus.rs sends it:
//!
//! * **raw, with BDAT**, to a recipient whose route leads to a sink offering
//!   CHUNKING, so Ferrymail relays it with BDAT and the bytes (bare LF line
//!   ends included) must arrive exactly as sent;
//! * **in CRLF form** (bare LF → CRLF) with DATA, to a recipient whose route
//!   leads to a DATA-only sink: dot-stuffed by the client, unstuffed by
//!   Ferrymail, stuffed again on the way out and unstuffed by aiosmtpd; what
//!   arrives must be the CRLF form exactly.
//!
//! Files containing NUL bytes (CPython's images and sounds, one mail-parser
//! file) are not possible SMTP messages (RFC 5321 §2.4, RFC 6152): each must
//! be refused with 554 5.6.0, as byte_exact_corpus.rs checks, and never
//! queued (nothing for their recipients may reach a sink).

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::peers::*;
use common::*;
use serde_json::json;

/// `$CARGO_HOME/registry/src/*/mail-parser-0.11.9/resources/eml`.
fn mail_parser_corpus() -> PathBuf {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .expect("CARGO_HOME or HOME");
    let src = home.join("registry").join("src");
    let found = std::fs::read_dir(&src)
        .unwrap_or_else(|e| panic!("{}: {e}", src.display()))
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("mail-parser-0.11.9/resources/eml"))
        .find(|p| p.is_dir());
    found.unwrap_or_else(|| {
        panic!(
            "mail-parser 0.11.9's resources/eml not found under {}; it is a \
             dev-dependency of crates/ferrymail, so `cargo fetch` brings it",
            src.display()
        )
    })
}

/// Files under `dir` (recursively) accepted by `keep`, as (name, bytes),
/// named relative to `dir` behind `label`, sorted.
fn files(label: &str, dir: &Path, keep: &dyn Fn(&Path) -> bool) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.is_file() && keep(&p) {
                let rel = p.strip_prefix(dir).unwrap().display().to_string();
                out.push((format!("{label}/{rel}"), std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// Bare LF becomes CRLF; CRLF and bare CR are kept; a final line end is
/// added (as in byte_exact_corpus.rs).
fn crlf_form(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + raw.len() / 20 + 2);
    for (i, &b) in raw.iter().enumerate() {
        if b == b'\n' && (i == 0 || raw[i - 1] != b'\r') {
            out.push(b'\r');
        }
        out.push(b);
    }
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

fn eight_bit(bytes: &[u8]) -> bool {
    bytes.iter().any(|&b| b >= 0x80)
}

fn open_tx(c: &mut Smtp, name: &str, rcpt: &str, eight: bool) {
    let params = if eight { " BODY=8BITMIME SMTPUTF8" } else { "" };
    let r = c.cmd(&format!("MAIL FROM:<corpus@origin.test>{params}"));
    assert!(r.is(250, "2.1.0"), "{name}: MAIL: {r:?}");
    let r = c.cmd(&format!("RCPT TO:<{rcpt}>"));
    assert!(r.is(250, "2.1.5"), "{name}: RCPT: {r:?}");
}

/// Raw bytes in two BDAT chunks (so a chunk join is in every file).
fn send_bdat(c: &mut Smtp, name: &str, rcpt: &str, raw: &[u8]) -> Reply {
    open_tx(c, name, rcpt, eight_bit(raw));
    let mid = raw.len() / 2;
    let mut w = format!("BDAT {mid}\r\n").into_bytes();
    w.extend_from_slice(&raw[..mid]);
    c.send_raw(&w);
    let r = c.read();
    assert!(r.is(250, "2.0.0"), "{name}: first chunk: {r:?}");
    let mut w = format!("BDAT {} LAST\r\n", raw.len() - mid).into_bytes();
    w.extend_from_slice(&raw[mid..]);
    c.send_raw(&w);
    c.read()
}

fn send_data(c: &mut Smtp, name: &str, rcpt: &str, crlf: &[u8]) -> Reply {
    open_tx(c, name, rcpt, eight_bit(crlf));
    let r = c.cmd("DATA");
    assert_eq!(r.code, 354, "{name}: DATA: {r:?}");
    let mut w = dot_stuff(crlf);
    w.extend_from_slice(b".\r\n");
    c.send_raw(&w);
    c.read()
}

/// One message in flight: which file, how it was sent, what must arrive.
struct Sent {
    name: String,
    mode: &'static str,
    id: String,
    expected: Vec<u8>,
    eight: bool,
}

#[test]
fn corpora_arrive_byte_exact() {
    let cpython = corpus_dir();
    let mail_parser = mail_parser_corpus();
    let mut all = files("cpython", &cpython, &|_| true);
    let n_cpython = all.len();
    all.extend(files("mail-parser", &mail_parser, &|p| {
        p.extension().is_some_and(|e| e == "eml")
    }));
    let n_mail_parser = all.len() - n_cpython;
    let messages =
        |from: &[(String, Vec<u8>)]| from.iter().filter(|(_, b)| !b.contains(&0)).count();
    assert!(
        messages(&all[..n_cpython]) >= 40,
        "expected the ~49 message files of {}",
        cpython.display()
    );
    assert!(
        messages(&all[n_cpython..]) >= 100,
        "expected the ~106 message files of {}",
        mail_parser.display()
    );

    // Raw files go to a sink offering CHUNKING, CRLF forms to a DATA-only
    // sink; both lift aiosmtpd's 1001-byte line limit, which a bare-LF file
    // (one long "line" to a CRLF reader) would exceed.
    let chunking = RecordingSink::start(json!({"chunking": true, "line_limit": 1 << 24}));
    let data_only = RecordingSink::start(json!({"line_limit": 1 << 24}));
    let server = Server::start(&format!(
        r#"[session.rcpt]
relay = "remote_ip == '127.0.0.1'"

[queue.schedule]
retry = "[1h]"

{}{}[queue.strategy]
route = [ {{ if = "rcpt_domain == 'bdat.test'", then = "'chunking'" }}, {{ else = "'dataonly'" }} ]
"#,
        relay_route("chunking", chunking.port, "smtp"),
        relay_route("dataonly", data_only.port, "smtp"),
    ));

    let mut c = server.client();
    c.ehlo();
    let mut sent: HashMap<String, Sent> = HashMap::new();
    let mut failures: Vec<String> = Vec::new();
    let mut refused_nul = Vec::new();
    for (i, (name, raw)) in all.iter().enumerate() {
        if raw.contains(&0) {
            let mut n = server.client();
            n.ehlo();
            let r = send_bdat(&mut n, name, &format!("nul{i}@bdat.test"), raw);
            if !r.is(554, "5.6.0") {
                failures.push(format!(
                    "{name}: NUL content via BDAT answered {r:?}, want 554 5.6.0"
                ));
            }
            let after = n.cmd("NOOP");
            if !after.is(250, "2.0.0") {
                failures.push(format!(
                    "{name}: session unusable after the refusal: {after:?}"
                ));
            }
            refused_nul.push(name.clone());
            continue;
        }
        let rcpt = format!("m{i}@bdat.test");
        let r = send_bdat(&mut c, name, &rcpt, raw);
        if r.code == 250 {
            sent.insert(
                rcpt,
                Sent {
                    name: name.clone(),
                    mode: "BDAT",
                    id: queued_id(&r),
                    expected: raw.clone(),
                    eight: eight_bit(raw),
                },
            );
        } else {
            failures.push(format!("{name}: BDAT refused: {r:?}"));
            c.cmd("RSET");
        }
        let rcpt = format!("m{i}@data.test");
        let crlf = crlf_form(raw);
        let r = send_data(&mut c, name, &rcpt, &crlf);
        if r.code == 250 {
            sent.insert(
                rcpt,
                Sent {
                    name: name.clone(),
                    mode: "DATA",
                    id: queued_id(&r),
                    eight: eight_bit(&crlf),
                    expected: crlf,
                },
            );
        } else {
            failures.push(format!("{name}: DATA refused: {r:?}"));
            c.cmd("RSET");
        }
    }
    assert!(c.cmd("QUIT").is(221, "2.0.0"));
    for corpus in ["cpython/", "mail-parser/"] {
        assert!(
            refused_nul.iter().any(|n| n.starts_with(corpus)),
            "{corpus} has files with NUL bytes: {refused_nul:?}"
        );
    }

    let n_bdat = sent.values().filter(|s| s.mode == "BDAT").count();
    let n_data = sent.len() - n_bdat;
    let limit = Duration::from_secs(120);
    let mut arrived = chunking.wait_transactions(n_bdat, limit);
    arrived.extend(data_only.wait_transactions(n_data, limit));
    server.wait_queue_empty(limit);

    assert_eq!(arrived.len(), sent.len(), "one transaction per message");
    let mut seen = 0;
    for t in &arrived {
        let rcpts = t["rcpt_tos"].as_array().unwrap();
        assert_eq!(rcpts.len(), 1, "{t}");
        let rcpt = rcpts[0].as_str().unwrap();
        let Some(s) = sent.get(rcpt) else {
            failures.push(format!("unexpected transaction for {rcpt}"));
            continue;
        };
        seen += 1;
        let what = format!("{} via {} (queue id {})", s.name, s.mode, s.id);
        // The outbound path matches the sink: BDAT where CHUNKING was
        // offered, DATA otherwise.
        if t["bdat"] != (s.mode == "BDAT") {
            failures.push(format!("{what}: relayed with bdat={}", t["bdat"]));
        }
        let options: Vec<&str> = t["mail_options"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o.as_str().unwrap())
            .collect();
        if s.eight != options.contains(&"BODY=8BITMIME") {
            failures.push(format!("{what}: MAIL options {options:?}"));
        }
        let data = recorded_data(t);
        if !data.starts_with(b"Received: from client.test ([127.0.0.1])") {
            failures.push(format!(
                "{what}: does not start with Ferrymail's Received header: {:?}",
                String::from_utf8_lossy(&data[..data.len().min(80)])
            ));
            continue;
        }
        let body = strip_received(&data);
        if body != s.expected.as_slice() {
            failures.push(format!("{what}: {}", describe_diff(&s.expected, body)));
        }
    }
    assert_eq!(seen, sent.len());
    assert!(
        failures.is_empty(),
        "{} problem(s) over {} files:\n{}",
        failures.len(),
        all.len(),
        failures.join("\n")
    );
    eprintln!(
        "relayed {} messages ({n_bdat} with BDAT, {n_data} with DATA) from {} files \
         ({n_cpython} CPython, {n_mail_parser} mail-parser); refused (NUL bytes): {}",
        sent.len(),
        all.len(),
        refused_nul.join(" ")
    );
}
