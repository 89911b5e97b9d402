//! Byte-exact storage over a corpus nobody on the project wrote: every file of
//! CPython's `test_email/data` is sent (a) with BDAT as raw bytes and (b) with
//! DATA in its CRLF, dot-stuffed form, and what the queue stores after our
//! Received header must be exactly what was sent (the raw bytes for BDAT, the
//! CRLF form for DATA).
//!
//! Files containing NUL bytes (the images and sound samples next to the
//! messages) cannot be SMTP messages at all: RFC 5321 §2.4 and RFC 6152 exclude
//! NUL even with 8BITMIME, and BINARYMIME is not offered. They are not compared;
//! instead the test checks that each is refused with 554 5.6.0 and not queued.

mod common;

use std::path::Path;

use common::*;

fn corpus_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    files.sort();
    files
}

/// Bare LF becomes CRLF; existing CRLF and bare CR are kept; a final line
/// ending is added (DATA's end marker needs one, and `dot_stuff` adds it too).
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

fn mail_params(bytes: &[u8]) -> &'static str {
    if bytes.iter().any(|&b| b >= 0x80) {
        " BODY=8BITMIME SMTPUTF8"
    } else {
        ""
    }
}

fn open_tx(c: &mut Smtp, name: &str, params: &str) {
    let r = c.cmd(&format!("MAIL FROM:<corpus@example.org>{params}"));
    assert!(r.is(250, "2.1.0"), "{name}: MAIL: {r:?}");
    let r = c.cmd("RCPT TO:<corpus@local.test>");
    assert!(r.is(250, "2.1.5"), "{name}: RCPT: {r:?}");
}

fn send_bdat(c: &mut Smtp, name: &str, raw: &[u8]) -> Reply {
    open_tx(c, name, mail_params(raw));
    // Two chunks, so chunk joins are exercised on every file.
    let mid = raw.len() / 2;
    let mut w = format!("BDAT {}\r\n", mid).into_bytes();
    w.extend_from_slice(&raw[..mid]);
    c.send_raw(&w);
    let r = c.read();
    assert!(r.is(250, "2.0.0"), "{name}: first chunk: {r:?}");
    let mut w = format!("BDAT {} LAST\r\n", raw.len() - mid).into_bytes();
    w.extend_from_slice(&raw[mid..]);
    c.send_raw(&w);
    c.read()
}

fn send_data(c: &mut Smtp, name: &str, crlf: &[u8]) -> Reply {
    open_tx(c, name, mail_params(crlf));
    let r = c.cmd("DATA");
    assert_eq!(r.code, 354, "{name}: DATA: {r:?}");
    let mut w = dot_stuff(crlf);
    w.extend_from_slice(b".\r\n");
    c.send_raw(&w);
    c.read()
}

#[test]
fn corpus_is_stored_byte_exact() {
    let dir = corpus_dir();
    let files = corpus_files(&dir);
    let messages = files.iter().filter(|(_, b)| !b.contains(&0)).count();
    assert!(
        messages >= 40,
        "expected the ~49 message files of test_email/data in {}, found {messages}",
        dir.display()
    );

    let server = Server::start_default();
    let mut c = server.client();
    c.ehlo();

    // (name, mode, id, expected stored bytes)
    let mut sent: Vec<(String, &str, String, Vec<u8>)> = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    let mut refused_nul = Vec::new();
    for (name, raw) in &files {
        if raw.contains(&0) {
            // Not a possible SMTP message: the server must refuse it, cleanly.
            // A connection of its own, so the refusals do not add up to the
            // session's error limit.
            let mut n = server.client();
            n.ehlo();
            let r = send_bdat(&mut n, name, raw);
            let after = n.cmd("NOOP");
            if !after.is(250, "2.0.0") {
                failures.push(format!(
                    "{name}: session unusable after the refusal: {after:?}"
                ));
            }
            if !r.is(554, "5.6.0") {
                failures.push(format!(
                    "{name}: NUL content via BDAT answered {r:?}, want 554 5.6.0"
                ));
            }
            refused_nul.push(name.clone());
            continue;
        }
        let r = send_bdat(&mut c, name, raw);
        if r.code == 250 {
            sent.push((name.clone(), "BDAT", queued_id(&r), raw.clone()));
        } else {
            failures.push(format!("{name}: BDAT refused: {r:?}"));
            c.cmd("RSET");
        }
        let crlf = crlf_form(raw);
        let r = send_data(&mut c, name, &crlf);
        if r.code == 250 {
            sent.push((name.clone(), "DATA", queued_id(&r), crlf));
        } else {
            failures.push(format!("{name}: DATA refused: {r:?}"));
            c.cmd("RSET");
        }
    }
    assert!(c.cmd("QUIT").is(221, "2.0.0"));

    for (name, mode, id, expected) in &sent {
        let stored = server.contents(id);
        if !stored.starts_with(b"Received: ") {
            failures.push(format!(
                "{name} via {mode}: stored contents do not start with Received:"
            ));
            continue;
        }
        let body = strip_received(&stored);
        if body != expected.as_slice() {
            failures.push(format!(
                "{name} via {mode}: {}",
                describe_diff(expected, body)
            ));
        }
    }

    let list = server.queue_json();
    let queued = queue_ids(&list);
    assert_eq!(
        queued.len(),
        sent.len(),
        "every accepted message and nothing else is queued (the NUL files must not be)"
    );
    assert!(
        failures.is_empty(),
        "{} problem(s) over {} files:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
    eprintln!(
        "compared {} stored messages from {} files; refused as non-messages (NUL bytes): {}",
        sent.len(),
        files.len(),
        refused_nul.join(" ")
    );
}

#[test]
fn dot_lines_and_utf8_survive_data_and_bdat() {
    // The corpus has no line starting with "." and no 8-bit message text, so
    // add one message that has both, in the corpus's own LF form.
    let raw = "From: <josé@example.org>\nSubject: dots\n\n.leading dot\n..two\n.\n\
               .. \nGrüße aus Köln\n"
        .as_bytes()
        .to_vec();
    let server = Server::start_default();
    let mut c = server.client();
    c.ehlo();
    let r = send_bdat(&mut c, "dots", &raw);
    assert_eq!(
        strip_received(&server.contents(&queued_id(&r))),
        raw.as_slice()
    );
    let crlf = crlf_form(&raw);
    let r = send_data(&mut c, "dots", &crlf);
    let id = queued_id(&r);
    assert_eq!(
        String::from_utf8_lossy(strip_received(&server.contents(&id))),
        String::from_utf8_lossy(&crlf)
    );
    let show = server.cli(&["queue", "show", &id, "--json"]);
    let m: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap();
    assert_eq!(m["body"], "8BITMIME", "{m}");
    assert_eq!(m["smtputf8"], true, "{m}");
}
