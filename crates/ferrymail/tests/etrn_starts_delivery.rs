//! ETRN (RFC 1985) over SMTP, and `ferrymail queue flush`, through the real
//! `ferrymail serve` (issue 3).
//!
//! Mail for five domains is routed to a relay that is down (nothing listens
//! on its port): each first attempt fails (connection refused) and the
//! recipients wait in the deferred lane, next try an hour away
//! (`retry = "[1h]"`). Then the relay comes up (smtp-sink on that port), and
//! each way of asking for delivery is tried in turn; each must deliver the
//! mail it names, and only that, long before the retry time, so nothing but
//! the request can explain the delivery:
//!
//! * `ETRN etrn-a.test` (a domain) answers 253 and delivers etrn-a.test mail;
//! * `ETRN @etrn-b.test` (the domain and its subdomains) delivers mail for
//!   mx.etrn-b.test;
//! * `ETRN #slowq` (a virtual queue) delivers the mail in queue `slowq`;
//! * `ferrymail queue flush etrn-d.test` delivers etrn-d.test mail;
//! * `ferrymail queue flush` delivers everything left.
//!
//! ETRN for a node with nothing queued answers 251.

mod common;

use std::time::Duration;

use common::peers::*;
use common::*;

const WAIT: Duration = Duration::from_secs(20);

#[test]
fn etrn_and_flush_deliver_deferred_mail_at_once() {
    let relay = free_port();
    let server = Server::start(&format!(
        r#"[session.rcpt]
relay = "remote_ip == '127.0.0.1'"

[queue.schedule]
retry = "[1h]"

[queue.virtual.slowq]
concurrency = 4

{route}
[queue.strategy]
route = "'relay'"
queue = [ {{ if = "rcpt_domain == 'etrn-c.test'", then = "'slowq'" }}, {{ else = "'default'" }} ]
"#,
        route = relay_route("relay", relay, "smtp"),
    ));

    let rcpts = [
        "a@etrn-a.test",
        "b@mx.etrn-b.test",
        "c@etrn-c.test",
        "d@etrn-d.test",
        "e@etrn-e.test",
    ];
    let mut ids = Vec::new();
    let mut c = server.client();
    c.ehlo();
    for r in rcpts {
        let body = format!("Subject: for {r}\r\n\r\nBody for {r}.\r\n");
        ids.push(queued_id(&c.send_message(
            "sender@origin.test",
            &[r],
            body.as_bytes(),
        )));
    }

    // Every first attempt failed: deferred, next try about an hour away.
    for id in &ids {
        let m = server.wait_deferred(id, WAIT);
        let r = &m["recipients"][0];
        assert_eq!(r["lane"], "deferred", "{m}");
        assert!(
            r["last_error"].as_str().is_some_and(|e| !e.is_empty()),
            "{m}"
        );
        assert!(
            r["due"].as_u64().unwrap() > ferrymail_spool::now_millis() + 30 * 60 * 1000,
            "the next retry is far away: {m}"
        );
    }
    assert_eq!(
        server.queue_json()["messages"][2]["recipients"][0]["queue"],
        "slowq"
    );

    // The relay comes up.
    let sink = SmtpSink::start_on(relay, &[]);

    let r = c.cmd("ETRN nothing-queued.test");
    assert!(r.is(251, "2.0.0"), "nothing queued for the node: {r:?}");
    let r = c.cmd("ETRN #no-such-queue");
    assert!(r.is(251, "2.0.0"), "{r:?}");

    // Each request delivers exactly its own mail; `still` is what must
    // remain queued afterwards.
    let steps: [(&str, usize); 5] = [
        ("ETRN etrn-a.test", 0),
        ("ETRN @etrn-b.test", 1),
        ("ETRN #slowq", 2),
        ("flush etrn-d.test", 3),
        ("flush", 4),
    ];
    for (n, (request, idx)) in steps.into_iter().enumerate() {
        if let Some(rest) = request.strip_prefix("flush") {
            let mut args = vec!["queue", "flush"];
            if !rest.trim().is_empty() {
                args.push(rest.trim());
            }
            let out = server.cli(&args);
            assert!(
                out.status.success(),
                "{request}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        } else {
            let r = c.cmd(request);
            assert!(r.is(253, "2.0.0"), "{request}: {r:?}");
            assert!(
                r.text().contains("1 pending messages"),
                "{request}: one message was waiting: {r:?}"
            );
        }
        server.wait_gone(&ids[idx], WAIT);
        let dumped = sink.wait_dumped(n + 1, WAIT);
        assert_eq!(dumped.len(), n + 1, "{request}: {dumped:?}");
        assert!(
            dumped
                .iter()
                .any(|d| d.rcpt_args == [format!("<{}>", rcpts[idx])]),
            "{request}: {dumped:?}"
        );
        // Nothing else moved.
        let left = queue_ids(&server.queue_json());
        assert_eq!(left, ids[idx + 1..].to_vec(), "after {request}");
        for id in &left {
            let m = server.show(id).unwrap();
            assert_eq!(m["recipients"][0]["attempts"], 1, "after {request}: {m}");
        }
    }
    assert_eq!(server.queue_json()["recipients"], 0);
    assert!(c.cmd("QUIT").is(221, "2.0.0"));
}
