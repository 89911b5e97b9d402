//! Every SMTP command the receiver implements, over real TCP, with the replies
//! RFC 5321, RFC 1985 and RFC 6710 ask for.

mod common;
use common::peers::*;
use common::*;

#[test]
fn ehlo_advertises_every_extension() {
    let s = Server::start_default();
    let mut c = s.client();
    let r = c.ehlo();
    let keywords: Vec<String> = r.lines[1..].iter().map(|l| l[4..].to_string()).collect();
    for k in [
        "PIPELINING",
        "8BITMIME",
        "SMTPUTF8",
        "ENHANCEDSTATUSCODES",
        "CHUNKING",
        "DSN",
        "ETRN",
        "STARTTLS",
        "MT-PRIORITY",
    ] {
        assert!(
            keywords.iter().any(|x| x == k),
            "{k} missing from {keywords:?}"
        );
    }
    let size = keywords
        .iter()
        .find(|k| k.starts_with("SIZE "))
        .expect("SIZE n");
    assert!(size[5..].parse::<u64>().unwrap() > 0);
    assert!(r.lines[0].starts_with("250-mx.ferry.test"));
}

#[test]
fn helo_gives_a_plain_greeting_and_no_extensions() {
    let s = Server::start_default();
    let mut c = s.client();
    let r = c.cmd("HELO client.test");
    assert_eq!(r.code, 250);
    assert_eq!(r.lines.len(), 1);
    // Parameters are ESMTP: not allowed after HELO.
    let r = c.cmd("MAIL FROM:<a@example.org> BODY=8BITMIME");
    assert!(r.is(555, "5.5.4"), "{r:?}");
    let r = c.cmd("MAIL FROM:<a@example.org>");
    assert_eq!(r.code, 250);
}

#[test]
fn mail_needs_hello_first() {
    let s = Server::start_default();
    let mut c = s.client();
    let r = c.cmd("MAIL FROM:<a@example.org>");
    assert!(r.is(503, "5.5.1"), "{r:?}");
}

#[test]
fn noop_rset_vrfy_help_quit() {
    let s = Server::start_default();
    let mut c = s.client();
    assert!(c.cmd("NOOP").is(250, "2.0.0"));
    c.ehlo();
    assert_eq!(c.cmd("MAIL FROM:<a@example.org>").code, 250);
    assert!(c.cmd("RSET").is(250, "2.0.0"));
    // RSET ended the transaction: RCPT now is out of sequence.
    assert!(c.cmd("RCPT TO:<x@local.test>").is(503, "5.5.1"));
    let v = c.cmd("VRFY someone");
    assert_eq!(v.code, 252, "{v:?}");
    let h = c.cmd("HELP");
    assert_eq!(h.code, 214, "{h:?}");
    assert!(h.lines.len() > 1);
    assert!(
        h.lines
            .iter()
            .any(|l| l.split_whitespace().any(|w| w == "AUTH")),
        "HELP lists every command the server understands, AUTH included: {h:?}"
    );
    let q = c.cmd("QUIT");
    assert!(q.is(221, "2.0.0"), "{q:?}");
    assert!(c.try_read().is_none(), "connection closed after QUIT");
}

#[test]
fn a_message_is_queued_with_its_parameters() {
    let s = Server::start_default();
    let mut c = s.client();
    c.ehlo();
    assert_eq!(
        c.cmd("MAIL FROM:<sender@example.org> SIZE=200 BODY=8BITMIME RET=FULL ENVID=abc+2Bdef MT-PRIORITY=4")
            .code,
        250
    );
    assert_eq!(
        c.cmd("RCPT TO:<one@local.test> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;first+40x@example.net")
            .code,
        250
    );
    assert_eq!(
        c.cmd("RCPT TO:<two@elsewhere.example> NOTIFY=NEVER").code,
        250
    );
    assert_eq!(c.cmd("DATA").code, 354);
    c.send_raw(b"Subject: hi\r\n\r\nbody\r\n.\r\n");
    let r = c.read();
    let id = queued_id(&r);
    let out = s.cli(&["queue", "show", &id, "--json"]);
    assert!(out.status.success());
    let m: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(m["sender"], "sender@example.org");
    assert_eq!(m["body"], "8BITMIME");
    assert_eq!(m["ret"], "FULL");
    assert_eq!(m["envid"], "abc+def");
    assert_eq!(m["mt_priority"], 4);
    let r = &m["recipients"];
    assert_eq!(r[0]["address"], "one@local.test");
    assert_eq!(r[0]["notify"], serde_json::json!(["SUCCESS", "DELAY"]));
    assert_eq!(r[0]["orcpt"], "rfc822;first@x@example.net");
    assert_eq!(r[1]["notify"], serde_json::json!(["NEVER"]));
    assert_eq!(r[0]["queue"], "default");
    // The first attempt may already have run (and deferred it: the parked
    // route refuses connections).
    assert!(
        r[0]["lane"] == "pending" || r[0]["lane"] == "deferred",
        "{}",
        r[0]["lane"]
    );
    // Higher MT-PRIORITY means a higher weight.
    assert!(r[0]["weight"].as_i64().unwrap() > 0);
    // Contents: our Received header, then the message byte for byte.
    let stored = s.contents(&id);
    assert_eq!(strip_received(&stored), b"Subject: hi\r\n\r\nbody\r\n");
    let received = String::from_utf8_lossy(&stored[..stored.len() - 23]).to_string();
    assert!(
        received.contains("by mx.ferry.test (Ferrymail) with ESMTP id"),
        "{received}"
    );
}

#[test]
fn etrn_answers_with_rfc1985_codes() {
    let s = Server::start_default();
    let mut c = s.client();
    c.ehlo();
    // Nothing queued: 251 for every form (RFC 1985 §5).
    for arg in ["example.org", "@example.org", "#default"] {
        let r = c.cmd(&format!("ETRN {arg}"));
        assert!(r.is(251, "2.0.0"), "{arg}: {r:?}");
    }
    let r = c.cmd("ETRN");
    assert_eq!(r.code, 501, "{r:?}");
    // One message queued for local.test. Each ETRN form starts it again, so
    // wait for the attempt it started to end (the parked route refuses the
    // connection and the message waits again) before the next form.
    let id = queued_id(&c.send_message(
        "a@example.org",
        &["x@local.test"],
        b"Subject: e\r\n\r\ne\r\n",
    ));
    let wait_attempts = |n: u64| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let out = s.cli(&["queue", "show", &id, "--json"]);
            let m: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            let r = &m["recipients"][0];
            if r["attempts"].as_u64().unwrap_or(0) >= n && r["lease_owner"].is_null() {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "attempt {n} never ended: {m}"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    };
    for (i, arg) in ["local.test", "@test", "#default"].into_iter().enumerate() {
        wait_attempts(i as u64 + 1);
        let r = c.cmd(&format!("ETRN {arg}"));
        assert!(r.is(253, "2.0.0"), "{arg}: {r:?}");
        assert!(r.text().contains("1 pending messages"), "{r:?}");
    }
    assert!(c.cmd("ETRN other.example").is(251, "2.0.0"));
}

#[test]
fn etrn_is_refused_where_not_allowed() {
    let s = Server::start("[session.etrn]\nallow = \"false\"\n");
    let mut c = s.client();
    c.ehlo();
    let r = c.cmd("ETRN example.org");
    assert_eq!(r.code, 459, "{r:?}");
}

#[test]
fn postmaster_is_always_accepted() {
    // No local domains and no relay permission at all. The unqualified
    // postmaster is this server's (RFC 5321 §4.5.1): queued with the
    // server's hostname, it has a domain to be routed by, here to a sink.
    let sink = SmtpSink::start(&[]);
    let s = Server::start(&format!(
        r#"{route}
[queue.strategy]
route = [ {{ if = "rcpt_domain == 'mx.ferry.test'", then = "'postmaster'" }},
          {{ else = "'parked'" }} ]

[queue.route.parked]
type = "relay"
address = "127.0.0.1"
port = 9
"#,
        route = relay_route("postmaster", sink.port, "smtp")
    ));
    let mut c = s.client();
    c.ehlo();
    assert_eq!(c.cmd("MAIL FROM:<a@example.org>").code, 250);
    assert!(c.cmd("RCPT TO:<Postmaster>").is(250, "2.1.5"));
    assert!(c.cmd("RCPT TO:<someone@example.com>").is(554, "5.7.1"));
    assert_eq!(c.cmd("DATA").code, 354);
    c.send_raw(b"Subject: to postmaster\r\n\r\nx\r\n.\r\n");
    queued_id(&c.read());
    let got = sink.wait_dumped(1, std::time::Duration::from_secs(30));
    assert_eq!(got[0].rcpt_args, ["<postmaster@mx.ferry.test>"]);
}
