//! A round trip through Postfix (issue 4): mail sent into the real
//! `ferrymail serve` is relayed to a private Postfix 3.7 instance, which
//! relays it on to a sink that records the raw bytes (aiosmtpd). What arrives
//! is byte-exact to what was sent into Ferrymail apart from the two trace
//! headers prepended on the way: Postfix's Received, then Ferrymail's.
//!
//! The messages carry what tends to break on the way: lines starting with a
//! dot (dot-stuffing on three hops), 8-bit text (BODY=8BITMIME, passed on by
//! both relays), lines of exactly 998 octets (RFC 5321's limit), a MIME
//! multipart body, and one message sent into Ferrymail with BDAT. Postfix
//! offers CHUNKING, so Ferrymail relays with BDAT; Postfix's log confirms
//! it. Postfix runs with stock settings apart from the relayhost (see
//! bench/lib/postfix.py). Needs root (Postfix's master); skipped otherwise.

mod common;

use std::time::Duration;

use common::peers::*;
use common::*;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);

struct Case {
    name: &'static str,
    rcpts: Vec<&'static str>,
    eight_bit: bool,
    bdat: bool,
    body: Vec<u8>,
}

fn cases() -> Vec<Case> {
    let head = |subject: &str, extra: &str| {
        format!(
            "Date: Wed, 25 Nov 2026 10:00:00 +0000\r\nFrom: Sender <sender@origin.test>\r\n\
             To: Rcpt <rcpt@far.test>\r\nSubject: {subject}\r\n\
             Message-ID: <{subject}.round-trip@origin.test>\r\nMIME-Version: 1.0\r\n{extra}\r\n"
        )
    };
    let mut dots = head("dots", "").into_bytes();
    dots.extend_from_slice(
        b".\r\n..\r\n...\r\n.leading dot\r\n..two dots\r\n. space after a dot\r\n\
          in the middle . of a line\r\n.\r\nlast line\r\n",
    );

    let mut eight = head(
        "eight-bit",
        "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n",
    )
    .into_bytes();
    eight.extend_from_slice(
        "Grüße aus Köln, ça va ? Ελληνικά, русский, 日本語.\r\n\
         .Ünïcödé after a dot\r\n\u{a0}non-breaking space line\r\n"
            .as_bytes(),
    );
    eight.extend_from_slice(b"Latin-1 bytes too: caf\xe9 na\xefve\r\n");

    let mut long = head("long-lines", "").into_bytes();
    let line998: String = (0..998).map(|i| (b'a' + (i % 26) as u8) as char).collect();
    long.extend_from_slice(line998.as_bytes());
    long.extend_from_slice(b"\r\n");
    let dotted998 = format!(".{}", &line998[1..]);
    long.extend_from_slice(dotted998.as_bytes());
    long.extend_from_slice(b"\r\n");
    long.extend_from_slice(&line998.as_bytes()[..997]);
    long.extend_from_slice(b"\r\nshort line\r\n");
    long.extend_from_slice(line998.as_bytes());
    long.extend_from_slice(b"\r\n");

    let mut mime = head(
        "multipart",
        "Content-Type: multipart/mixed; boundary=\"=-=ferry=-=\"\r\n",
    )
    .into_bytes();
    mime.extend_from_slice(
        b"This is a multi-part message in MIME format.\r\n\r\n--=-=ferry=-=\r\n\
          Content-Type: text/plain; charset=us-ascii\r\n\r\nThe text part.\r\n.\r\n\r\n\
          --=-=ferry=-=\r\nContent-Type: application/octet-stream\r\n\
          Content-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename=\"x.bin\"\r\n\r\n\
          AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJygpKissLS4v\r\n\
          MDEyMzQ1Njc4OTo7PD0+P0BBQkNERUZHSElKS0xNTk9QUVJTVFVWV1hZWltcXV5f\r\n\r\n\
          --=-=ferry=-=--\r\n",
    );

    let mut bdat = head("sent-with-bdat", "").into_bytes();
    bdat.extend_from_slice(b"This one reached Ferrymail with BDAT.\r\n.dot line\r\n");

    vec![
        Case {
            name: "dots",
            rcpts: vec!["one@far.test", "two@far.test"],
            eight_bit: false,
            bdat: false,
            body: dots,
        },
        Case {
            name: "eight-bit",
            rcpts: vec!["eight@far.test"],
            eight_bit: true,
            bdat: false,
            body: eight,
        },
        Case {
            name: "long-lines",
            rcpts: vec!["long@far.test"],
            eight_bit: false,
            bdat: false,
            body: long,
        },
        Case {
            name: "multipart",
            rcpts: vec!["mime@far.test"],
            eight_bit: false,
            bdat: false,
            body: mime,
        },
        Case {
            name: "sent-with-bdat",
            rcpts: vec!["bdat@far.test"],
            eight_bit: false,
            bdat: true,
            body: bdat,
        },
    ]
}

fn send(c: &mut Smtp, case: &Case) -> String {
    let params = if case.eight_bit { " BODY=8BITMIME" } else { "" };
    let r = c.cmd(&format!("MAIL FROM:<sender@origin.test>{params}"));
    assert_eq!(r.code, 250, "{}: {r:?}", case.name);
    for t in &case.rcpts {
        let r = c.cmd(&format!("RCPT TO:<{t}>"));
        assert_eq!(r.code, 250, "{}: {r:?}", case.name);
    }
    let r = if case.bdat {
        let mut w = format!("BDAT {} LAST\r\n", case.body.len()).into_bytes();
        w.extend_from_slice(&case.body);
        c.send_raw(&w);
        c.read()
    } else {
        let r = c.cmd("DATA");
        assert_eq!(r.code, 354, "{r:?}");
        c.send_raw(&dot_stuff(&case.body));
        c.send_raw(b".\r\n");
        c.read()
    };
    queued_id(&r)
}

/// Splits off the first header field (with its continuation lines).
fn first_header(data: &[u8]) -> (&[u8], &[u8]) {
    let mut i = 0;
    loop {
        let nl = data[i..].iter().position(|&b| b == b'\n').unwrap() + i;
        i = nl + 1;
        if i >= data.len() || !(data[i] == b' ' || data[i] == b'\t') {
            return (&data[..i], &data[i..]);
        }
    }
}

#[test]
fn relayed_through_postfix_byte_exact() {
    let sink = RecordingSink::start(json!({}));
    let Some(hop) = PostfixHop::start(sink.port, json!({})) else {
        return;
    };
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("delivery.jsonl");
    let server = Server::start(&format!(
        r#"[session.rcpt]
relay = "remote_ip == '127.0.0.1'"

[queue.schedule]
retry = "[1s]"

[queue.outbound]
delivery-log = "{log}"
idle-timeout = "1s"

{route}
[queue.strategy]
route = "'postfix'"
"#,
        log = log.display(),
        route = relay_route("postfix", hop.port, "smtp"),
    ));

    let cases = cases();
    let mut c = server.client();
    c.ehlo();
    let ids: Vec<String> = cases.iter().map(|case| send(&mut c, case)).collect();
    c.cmd("QUIT");

    server.wait_queue_empty(WAIT);
    let arrived = sink.wait_transactions(cases.len(), WAIT);
    assert_eq!(arrived.len(), cases.len(), "Postfix log:\n{}", hop.log());

    for (case, id) in cases.iter().zip(&ids) {
        let t = arrived
            .iter()
            .find(|t| t["rcpt_tos"][0] == case.rcpts[0])
            .unwrap_or_else(|| panic!("{} did not arrive: {arrived:?}", case.name));
        let want: Vec<serde_json::Value> = case.rcpts.iter().map(|r| json!(r)).collect();
        assert_eq!(t["rcpt_tos"], json!(want), "{}", case.name);
        assert_eq!(t["mail_from"], "sender@origin.test", "{}", case.name);
        let options = t["mail_options"].to_string();
        assert_eq!(
            options.contains("BODY=8BITMIME"),
            case.eight_bit,
            "{}: BODY=8BITMIME passed on by both relays: {options}",
            case.name
        );

        let data = recorded_data(t);
        let (postfix_received, rest) = first_header(&data);
        let (ferry_received, body) = first_header(rest);
        let postfix_received = String::from_utf8_lossy(postfix_received);
        let ferry_received = String::from_utf8_lossy(ferry_received);
        assert!(
            postfix_received.starts_with("Received: from mx.ferry.test (")
                && postfix_received.contains("by postfix-hop.ferry.test (Postfix)"),
            "{}: Postfix's trace header first: {postfix_received}",
            case.name
        );
        assert!(
            ferry_received.starts_with("Received: from client.test ([127.0.0.1])")
                && ferry_received.contains("by mx.ferry.test (Ferrymail)")
                && ferry_received.contains(&format!(" id {id}")),
            "{}: Ferrymail's trace header second: {ferry_received}",
            case.name
        );
        assert_eq!(
            String::from_utf8_lossy(body),
            String::from_utf8_lossy(&case.body),
            "{}: contents changed on the way",
            case.name
        );
        assert_eq!(body, case.body.as_slice(), "{}: bytes differ", case.name);
    }

    // Ferrymail's side: one delivery per transaction, each accepted by
    // Postfix.
    let lines = delivery_log(&log);
    assert_eq!(lines.len(), 6, "one line per recipient: {lines:?}");
    for l in &lines {
        assert_eq!(l["outcome"], "delivered", "{l}");
        assert!(
            l["reply"].as_str().unwrap().contains("queued as"),
            "Postfix's reply: {l}"
        );
    }
    // Postfix counts commands per connection when Ferrymail's pooled
    // connections close (idle-timeout 1s): Ferrymail used BDAT, never DATA.
    // (Only Ferrymail connects to this Postfix's smtpd.)
    let count = |line: &str, what: &str| -> u64 {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(what)?.parse().ok())
            .unwrap_or(0)
    };
    let disconnects = wait_for(
        Duration::from_secs(20),
        "Postfix's disconnect lines for Ferrymail's connections",
        || hop.log(),
        || {
            let log = hop.log();
            let lines: Vec<String> = log
                .lines()
                .filter(|l| l.contains("/smtpd[") && l.contains(": disconnect from "))
                .map(str::to_string)
                .collect();
            let mails: u64 = lines.iter().map(|l| count(l, "mail=")).sum();
            (mails >= 5).then_some(lines)
        },
    );
    let bdat: u64 = disconnects.iter().map(|l| count(l, "bdat=")).sum();
    let data: u64 = disconnects.iter().map(|l| count(l, "data=")).sum();
    assert_eq!((bdat, data), (5, 0), "{disconnects:?}");
}
