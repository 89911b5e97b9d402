//! Inbound LMTP (RFC 2033): a `[server.listener.<id>] protocol = "lmtp"`
//! listener of the real `ferrymail serve` queues mail as the SMTP listener
//! does, and after the end of a message answers once per recipient that was
//! accepted at RCPT, in RCPT order (§4.2, and §4.3 for BDAT LAST).
//!
//! * swaks (`--protocol LMTP`, pipelining) sends one message to three
//!   recipients and reads three 250s after the final dot, each naming its
//!   recipient; the message is queued once for all three, `with LMTP`.
//! * Postfix 3.7's own LMTP client (`default_transport = lmtp:...`) hands
//!   in a message for two recipients; Postfix logs each as sent with the
//!   reply for that recipient.
//! * Ferrymail's own LMTP client: one Ferrymail relays through a
//!   `protocol = "lmtp"` route into a second Ferrymail's LMTP listener
//!   (over the STARTTLS it offers), which relays on to Postfix's smtp-sink;
//!   the message arrives byte-exact apart from the two Received headers,
//!   and the first Ferrymail's delivery log holds one reply per recipient.
//! * A raw client over TCP: LHLO offers what EHLO offers on the SMTP
//!   listener (PIPELINING and ENHANCEDSTATUSCODES included, §5); HELO and
//!   EHLO are refused on the LMTP listener and LHLO on the SMTP one (§4.1),
//!   and HELP lists LHLO;
//!   a recipient refused at RCPT gets no reply after DATA or BDAT LAST; a
//!   message refused as a whole (too big) is refused once per recipient;
//!   DATA without an accepted recipient is 503 and BDAT LAST without one
//!   gets no reply at all.
//! * A store that cannot make the message durable in time (PostgreSQL
//!   behind a held lock): every accepted recipient gets the same 451.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use common::peers::*;
use common::*;

const WAIT: Duration = Duration::from_secs(60);

/// TOML for an LMTP listener on `port`.
fn lmtp_listener(port: u16) -> String {
    format!("[server.listener.lmtp]\nbind = [\"127.0.0.1:{port}\"]\nprotocol = \"lmtp\"\n\n")
}

/// Connects to the LMTP listener and reads its greeting, retrying briefly:
/// the server is ready once its SMTP listener answers, and the LMTP
/// listener is bound a moment later.
fn connect(addr: SocketAddr) -> (Smtp, Reply) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if std::net::TcpStream::connect(addr).is_ok() {
            let mut c = Smtp::connect_raw(addr);
            let greeting = c.read();
            return (c, greeting);
        }
        assert!(Instant::now() < deadline, "no LMTP listener on {addr}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sends LHLO and checks the reply.
fn lhlo(c: &mut Smtp) -> Reply {
    let r = c.cmd("LHLO client.test");
    assert_eq!(r.code, 250, "{r:?}");
    r
}

/// The `with` clause of the first Received header of `stored`.
fn received_with(stored: &[u8]) -> String {
    let text = String::from_utf8_lossy(stored);
    let at = text.find(" with ").expect("a with clause");
    text[at + 6..]
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// The recipients of queued message `id`, in order.
fn queued_rcpts(server: &Server, id: &str) -> Vec<String> {
    let m = server
        .show(id)
        .unwrap_or_else(|| panic!("{id} is not queued"));
    m["recipients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["address"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn swaks_over_lmtp_gets_one_reply_per_recipient_after_data() {
    require("swaks");
    let port = free_port();
    let server = Server::start(&format!(
        "{}[session.rcpt]\nlocal-domains = [\"local.test\"]\n",
        lmtp_listener(port)
    ));
    connect(([127, 0, 0, 1], port).into());
    let out = run_bounded(
        Command::new("swaks")
            .args(["--protocol", "LMTP", "--pipeline"])
            .args(["--server", "127.0.0.1"])
            .args(["--port", &port.to_string()])
            .args(["--ehlo", "swaks.test"])
            .args(["--from", "swaks@example.org"])
            .args(["--to", "one@local.test,two@local.test,three@local.test"])
            .args(["--header", "Subject: handed in over LMTP"])
            .args(["--body", "hello over lmtp"])
            .args(["--timeout", "20"]),
        Duration::from_secs(60),
    );
    let transcript = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "swaks exited with {}:\n{transcript}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        transcript.lines().any(|l| l == " -> LHLO swaks.test"),
        "{transcript}"
    );
    // After the final dot: one reply per recipient, in RCPT order, each
    // naming its recipient and the one queue id.
    let lines: Vec<&str> = transcript.lines().collect();
    let dot = lines
        .iter()
        .position(|l| *l == " -> .")
        .unwrap_or_else(|| panic!("no final dot:\n{transcript}"));
    let after: Vec<&str> = lines[dot + 1..]
        .iter()
        .copied()
        .filter(|l| l.starts_with("<-"))
        .take(3)
        .collect();
    let mut ids = Vec::new();
    for (line, rcpt) in after
        .iter()
        .zip(["one@local.test", "two@local.test", "three@local.test"])
    {
        let prefix = format!("<-  250 2.0.0 <{rcpt}> Message queued as ");
        let id = line
            .strip_prefix(&prefix)
            .unwrap_or_else(|| panic!("{line:?} is not the reply for {rcpt}:\n{transcript}"));
        ids.push(id.trim().to_string());
    }
    assert_eq!(ids.len(), 3, "{transcript}");
    assert!(ids.iter().all(|i| *i == ids[0]), "one message: {ids:?}");
    assert!(
        lines.iter().any(|l| l.starts_with(" -> QUIT")),
        "swaks read every reply and went on to QUIT:\n{transcript}"
    );

    // Queued once, for all three, like mail from the SMTP listener.
    let list = server.queue_json();
    assert_eq!(queue_ids(&list), vec![ids[0].clone()], "{list}");
    assert_eq!(
        queued_rcpts(&server, &ids[0]),
        ["one@local.test", "two@local.test", "three@local.test"]
    );
    let stored = server.contents(&ids[0]);
    assert_eq!(received_with(&stored), "LMTP", "RFC 3848");
    let text = String::from_utf8_lossy(&stored);
    assert!(
        text.starts_with("Received: from swaks.test ([127.0.0.1])"),
        "{text}"
    );
    assert!(text.contains("Subject: handed in over LMTP\r\n"), "{text}");
    assert!(text.contains("hello over lmtp"), "{text}");
}

#[test]
fn lhlo_offers_what_ehlo_offers_and_the_other_greetings_are_refused() {
    let port = free_port();
    let server = Server::start(&format!(
        "{}[session.rcpt]\nlocal-domains = [\"local.test\"]\n",
        lmtp_listener(port)
    ));
    let (mut c, greeting) = connect(([127, 0, 0, 1], port).into());
    assert!(
        greeting.lines[0].starts_with("220 mx.ferry.test LMTP"),
        "{greeting:?}"
    );
    // RFC 2033 §4.1: HELO and EHLO are not LMTP commands.
    for verb in ["EHLO", "HELO"] {
        let r = c.cmd(&format!("{verb} client.test"));
        assert!(r.is(500, "5.5.1"), "{verb}: {r:?}");
        assert!(r.text().contains("send LHLO"), "{verb}: {r:?}");
    }
    let help = c.cmd("HELP");
    assert_eq!(help.code, 214, "{help:?}");
    let words: Vec<&str> = help.lines[1].split_whitespace().collect();
    assert!(
        words.contains(&"LHLO") && !words.contains(&"EHLO") && !words.contains(&"HELO"),
        "HELP lists LMTP's greeting: {help:?}"
    );
    let r = c.cmd("MAIL FROM:<s@example.org>");
    assert!(r.is(503, "5.5.1"), "no transaction before LHLO: {r:?}");
    assert!(r.text().contains("send LHLO first"), "{r:?}");

    let keywords = |r: &Reply| -> Vec<String> {
        r.lines[1..]
            .iter()
            .map(|l| l[4..].split(' ').next().unwrap().to_string())
            .collect()
    };
    let lmtp = keywords(&lhlo(&mut c));
    // RFC 2033 §5: PIPELINING and ENHANCEDSTATUSCODES are required.
    for k in [
        "PIPELINING",
        "ENHANCEDSTATUSCODES",
        "SIZE",
        "8BITMIME",
        "SMTPUTF8",
        "CHUNKING",
        "DSN",
        "STARTTLS",
    ] {
        assert!(lmtp.iter().any(|l| l == k), "LHLO offers {k}: {lmtp:?}");
    }
    let mut s = server.client();
    assert_eq!(keywords(&s.ehlo()), lmtp, "the same extensions as SMTP");
    // And the SMTP listener still knows no LHLO.
    let r = s.cmd("LHLO client.test");
    assert!(r.is(500, "5.5.1"), "{r:?}");
    assert!(c.cmd("QUIT").is(221, "2.0.0"));
}

#[test]
fn refused_recipients_get_no_reply_at_the_end_of_a_message() {
    let port = free_port();
    // Only local.test is local and nobody may relay: a recipient elsewhere
    // is refused at RCPT. Messages above 2000 octets are refused as a whole.
    let server = Server::start(&format!(
        "{}[session.rcpt]\nlocal-domains = [\"local.test\"]\n\n\
         [session.data]\nmax-message-size = 2000\n",
        lmtp_listener(port)
    ));
    let (mut c, _) = connect(([127, 0, 0, 1], port).into());
    lhlo(&mut c);

    // DATA, pipelined; the NOOP after the final dot shows where the replies
    // to the message end.
    c.send_raw(
        b"MAIL FROM:<s@example.org>\r\n\
          RCPT TO:<a@local.test>\r\n\
          RCPT TO:<someone@elsewhere.example>\r\n\
          RCPT TO:<b@local.test>\r\n\
          DATA\r\n",
    );
    assert!(c.read().is(250, "2.1.0"));
    assert!(c.read().is(250, "2.1.5"));
    let r = c.read();
    assert!(r.is(554, "5.7.1"), "relay denied: {r:?}");
    assert!(c.read().is(250, "2.1.5"));
    assert_eq!(c.read().code, 354);
    c.send_raw(b"Subject: by DATA\r\n\r\nbody\r\n.\r\nNOOP\r\n");
    let a = c.read();
    let id = queued_id(&a);
    assert_eq!(
        a.lines,
        [format!("250 2.0.0 <a@local.test> Message queued as {id}")]
    );
    assert_eq!(
        c.read().lines,
        [format!("250 2.0.0 <b@local.test> Message queued as {id}")]
    );
    let noop = c.read();
    assert_eq!(noop.lines, ["250 2.0.0 OK"], "no third reply: {noop:?}");
    assert_eq!(queued_rcpts(&server, &id), ["a@local.test", "b@local.test"]);
    assert_eq!(received_with(&server.contents(&id)), "LMTP");

    // BDAT LAST (RFC 2033 §4.3), with a duplicate recipient: one reply per
    // successful RCPT, duplicates included.
    let body = b"Subject: by BDAT\r\n\r\nbody\r\n";
    c.send_raw(
        format!(
            "MAIL FROM:<s@example.org>\r\nRCPT TO:<c@local.test>\r\n\
             RCPT TO:<x@elsewhere.example>\r\nRCPT TO:<c@local.test>\r\n\
             BDAT {} LAST\r\n",
            body.len()
        )
        .as_bytes(),
    );
    c.send_raw(body);
    c.send_raw(b"NOOP\r\n");
    assert!(c.read().is(250, "2.1.0"));
    assert!(c.read().is(250, "2.1.5"));
    assert!(c.read().is(554, "5.7.1"));
    assert!(c.read().is(250, "2.1.5"));
    let first = c.read();
    let bdat_id = queued_id(&first);
    for r in [first, c.read()] {
        assert_eq!(
            r.lines,
            [format!(
                "250 2.0.0 <c@local.test> Message queued as {bdat_id}"
            )]
        );
    }
    assert_eq!(c.read().lines, ["250 2.0.0 OK"]);
    assert_eq!(
        strip_received(&server.contents(&bdat_id)),
        body,
        "stored as sent"
    );

    // A message refused as a whole is refused once per recipient.
    c.send_raw(b"MAIL FROM:<s@example.org>\r\nRCPT TO:<a@local.test>\r\nRCPT TO:<b@local.test>\r\nDATA\r\n");
    assert!(c.read().is(250, "2.1.0"));
    assert!(c.read().is(250, "2.1.5"));
    assert!(c.read().is(250, "2.1.5"));
    assert_eq!(c.read().code, 354);
    let big = format!("Subject: big\r\n\r\n{}\r\n", "x".repeat(3000));
    c.send_raw(big.as_bytes());
    c.send_raw(b".\r\nNOOP\r\n");
    for rcpt in ["a@local.test", "b@local.test"] {
        let r = c.read();
        assert!(r.is(552, "5.3.4"), "{r:?}");
        assert!(r.text().starts_with(&format!("5.3.4 <{rcpt}> ")), "{r:?}");
    }
    assert_eq!(c.read().lines, ["250 2.0.0 OK"]);

    // No accepted recipient: DATA fails with 503 (§4.2), BDAT LAST gets no
    // reply at all (§4.3) and ends the transaction.
    c.send_raw(b"MAIL FROM:<s@example.org>\r\nRCPT TO:<x@elsewhere.example>\r\nDATA\r\nRSET\r\n");
    assert!(c.read().is(250, "2.1.0"));
    assert!(c.read().is(554, "5.7.1"));
    assert!(c.read().is(503, "5.5.1"), "DATA without recipients");
    assert!(c.read().is(250, "2.0.0"), "RSET");
    c.send_raw(
        b"MAIL FROM:<s@example.org>\r\nRCPT TO:<x@elsewhere.example>\r\nBDAT 3 LAST\r\nabcNOOP\r\n",
    );
    assert!(c.read().is(250, "2.1.0"));
    assert!(c.read().is(554, "5.7.1"));
    assert_eq!(c.read().lines, ["250 2.0.0 OK"], "nothing for BDAT LAST");
    assert!(
        c.cmd("MAIL FROM:<s@example.org>").is(250, "2.1.0"),
        "a new transaction"
    );
    assert!(c.cmd("QUIT").is(221, "2.0.0"));

    assert_eq!(
        queue_ids(&server.queue_json()).len(),
        2,
        "two messages queued"
    );
}

#[test]
fn postfix_lmtp_client_hands_mail_in() {
    let port = free_port();
    let server = Server::start(&format!(
        "{}[session.rcpt]\nlocal-domains = [\"local.test\"]\n",
        lmtp_listener(port)
    ));
    connect(([127, 0, 0, 1], port).into());
    let Some(postfix) = PostfixHop::start(
        port,
        serde_json::json!({
            "default_transport": format!("lmtp:inet:127.0.0.1:{port}"),
        }),
    ) else {
        return;
    };
    let mut c = Smtp::connect(([127, 0, 0, 1], postfix.port).into());
    assert_eq!(c.cmd("EHLO client.test").code, 250);
    let sent = b"From: <s@origin.test>\r\nTo: <a@local.test>, <b@local.test>\r\n\
                 Subject: through Postfix's LMTP client\r\n\
                 Message-ID: <postfix-lmtp@origin.test>\r\n\r\nHello.\r\n.dot\r\n";
    let r = c.send_message("s@origin.test", &["a@local.test", "b@local.test"], sent);
    assert_eq!(r.code, 250, "Postfix took the message: {r:?}");
    c.cmd("QUIT");

    // Postfix delivers both recipients in one LMTP transaction and logs
    // each with the reply it read for that recipient.
    let sent_lines = wait_for(
        WAIT,
        "Postfix to log both recipients as sent",
        || postfix.log(),
        || {
            let log = postfix.log();
            let lines: Vec<String> = log
                .lines()
                .filter(|l| l.contains("status=sent") && l.contains(&format!(":{port},")))
                .map(str::to_string)
                .collect();
            (lines.len() >= 2).then_some(lines)
        },
    );
    let mut ids = Vec::new();
    for rcpt in ["a@local.test", "b@local.test"] {
        let line = sent_lines
            .iter()
            .find(|l| l.contains(&format!("to=<{rcpt}>")))
            .unwrap_or_else(|| panic!("no sent line for {rcpt}: {sent_lines:?}"));
        let reply = line
            .split(&format!(
                "status=sent (250 2.0.0 <{rcpt}> Message queued as "
            ))
            .nth(1)
            .unwrap_or_else(|| panic!("not the reply for {rcpt}: {line}"));
        ids.push(reply.trim_end_matches(')').trim().to_string());
    }
    assert_eq!(ids[0], ids[1], "one message for both: {sent_lines:?}");
    assert_eq!(
        queued_rcpts(&server, &ids[0]),
        ["a@local.test", "b@local.test"]
    );
    let stored = server.contents(&ids[0]);
    assert_eq!(received_with(&stored), "LMTP");
    let text = String::from_utf8_lossy(&stored);
    assert!(
        text.starts_with("Received: from postfix-hop.ferry.test ([127.0.0.1])"),
        "LHLO names Postfix: {text}"
    );
    assert!(
        text.contains("Subject: through Postfix's LMTP client\r\n"),
        "{text}"
    );
    let log = postfix.log();
    let errors: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("lost connection") || l.contains("protocol error"))
        .collect();
    assert!(errors.is_empty(), "{errors:?}");
}

#[test]
fn ferrymail_lmtp_route_relays_into_the_listener_byte_exact() {
    let sink = SmtpSink::start(&[]);
    // The second hop: an LMTP listener relaying on to smtp-sink.
    let lmtp_port = free_port();
    let inner = Server::start(&format!(
        "{listener}[session.rcpt]\nrelay = \"remote_ip == '127.0.0.1'\"\n\n\
         {route}[queue.strategy]\nroute = \"'sink'\"\n",
        listener = lmtp_listener(lmtp_port),
        route = relay_route("sink", sink.port, "smtp"),
    ));
    connect(([127, 0, 0, 1], lmtp_port).into());
    // The first hop: SMTP in, out through an LMTP route.
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("delivery.jsonl");
    let outer = Server::start(&format!(
        "[session.rcpt]\nlocal-domains = [\"far.test\"]\n\n\
         [queue.outbound]\ndelivery-log = \"{log}\"\n\n\
         {route}[queue.strategy]\nroute = \"'inner'\"\n",
        log = log.display(),
        route = relay_route("inner", lmtp_port, "lmtp"),
    ));

    let sent = b"Date: Wed, 25 Nov 2026 10:00:00 +0000\r\nFrom: <s@origin.test>\r\n\
                 To: <a@far.test>, <b@far.test>\r\nSubject: two hops, one over LMTP\r\n\
                 Message-ID: <two-hops@origin.test>\r\n\r\n.leading dot\r\n..two\r\n\
                 tab\there\r\nlast line\r\n";
    let mut c = outer.client();
    c.ehlo();
    let id = queued_id(&c.send_message("s@origin.test", &["a@far.test", "b@far.test"], sent));
    c.cmd("QUIT");

    outer.wait_gone(&id, WAIT);
    let d = sink.wait_dumped(1, WAIT);
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(d[0].rcpt_args, ["<a@far.test>", "<b@far.test>"]);
    // The inner hop's Received, then the outer hop's, then the message as
    // sent. Ferrymail's client takes the STARTTLS the LMTP listener offers,
    // so the inner hop received it `with LMTPS` (RFC 3848).
    assert_eq!(received_with(&d[0].body), "LMTPS", "{d:?}");
    assert!(
        d[0].body
            .starts_with(b"Received: from mx.ferry.test ([127.0.0.1])"),
        "LHLO names the outer hop: {d:?}"
    );
    let after_inner = strip_received(&d[0].body);
    assert_eq!(received_with(after_inner), "ESMTP", "{d:?}");
    assert_eq!(
        String::from_utf8_lossy(strip_received(after_inner)),
        String::from_utf8_lossy(&as_dumped(sent))
    );

    // The outer hop read one reply per recipient, each for its recipient.
    let lines = wait_for(
        WAIT,
        "two delivery log lines",
        || format!("{:?}", delivery_log(&log)),
        || Some(delivery_log(&log)).filter(|l| l.len() >= 2),
    );
    assert_eq!(lines.len(), 2, "{lines:?}");
    let mut inner_ids = Vec::new();
    for rcpt in ["a@far.test", "b@far.test"] {
        let l = lines
            .iter()
            .find(|l| l["rcpt"] == rcpt)
            .unwrap_or_else(|| panic!("no log line for {rcpt}: {lines:?}"));
        assert_eq!(l["outcome"], "delivered", "{l}");
        assert_eq!(l["route"], "inner", "{l}");
        let reply = l["reply"].as_str().unwrap();
        let inner_id = reply
            .strip_prefix(&format!("250 2.0.0 <{rcpt}> Message queued as "))
            .unwrap_or_else(|| panic!("{reply:?}"));
        inner_ids.push(inner_id.to_string());
    }
    assert_eq!(inner_ids[0], inner_ids[1], "one message at the inner hop");
    inner.wait_gone(&inner_ids[0], WAIT);
}

#[test]
fn store_failure_gives_every_recipient_the_same_451() {
    let db = common::pg::TestDb::create();
    let port = free_port();
    let server = Server::start_pg(
        &db,
        "",
        &format!(
            "{}[session.rcpt]\nlocal-domains = [\"local.test\"]\n\n\
             [session.timeout]\ndata-end = \"2s\"\n",
            lmtp_listener(port)
        ),
    );
    // A session holding a lock on the envelopes: the insert of a new
    // message waits behind it past data-end.
    let _locker = Locker::hold(&db.url);

    let (mut c, _) = connect(([127, 0, 0, 1], port).into());
    lhlo(&mut c);
    c.send_raw(
        b"MAIL FROM:<s@example.org>\r\nRCPT TO:<a@local.test>\r\nRCPT TO:<b@local.test>\r\nDATA\r\n",
    );
    assert!(c.read().is(250, "2.1.0"));
    assert!(c.read().is(250, "2.1.5"));
    assert!(c.read().is(250, "2.1.5"));
    assert_eq!(c.read().code, 354);
    c.send_raw(b"Subject: behind a lock\r\n\r\nbody\r\n.\r\nNOOP\r\n");
    for rcpt in ["a@local.test", "b@local.test"] {
        let r = c.read();
        assert_eq!(
            r.lines,
            [format!(
                "451 4.3.0 <{rcpt}> Temporary local problem, please try again"
            )]
        );
    }
    assert_eq!(c.read().lines, ["250 2.0.0 OK"], "one reply per recipient");
    let log = server.log_text();
    assert!(
        log.contains("the spool did not make the message durable in time"),
        "{log}"
    );
}

/// A psql session holding `LOCK TABLE envelope IN ACCESS EXCLUSIVE MODE`
/// (as in postgres_hung_store_gives_451_then_delivers.rs) until dropped.
struct Locker {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Locker {
    fn hold(url: &str) -> Locker {
        let bin = std::env::var("FERRYMAIL_TEST_PG_BIN")
            .unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".to_string());
        let mut child = Command::new(format!("{bin}/psql"))
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", url])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("psql");
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(b"BEGIN;\nLOCK TABLE envelope IN ACCESS EXCLUSIVE MODE;\nSELECT 'locked';\n")
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        while !line.contains("locked") {
            line.clear();
            assert!(out.read_line(&mut line).unwrap() > 0, "psql ended");
        }
        Locker {
            child,
            stdin: Some(stdin),
        }
    }
}

impl Drop for Locker {
    fn drop(&mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.write_all(b"COMMIT;\n\\q\n");
        }
        let _ = self.child.wait();
    }
}
