//! The queue commands against a server that really delivers (issue 3):
//!
//! * `queue retry` makes a deferred recipient due now: it is delivered to a
//!   relay that came up, although the schedule's next try is an hour away;
//!   also when the relay's destination was suspended as dead (the retry
//!   probes it at once instead of deferring the mail again), and
//!   `/metrics` counts the destination as suspended until then;
//! * `queue cancel` removes message and contents, and a later flush with the
//!   relay up delivers nothing;
//! * per-domain dynamic queues (`queue = "'dom-' + rcpt_domain"`) show up by
//!   name in `queue list` and `--queue` selects them, for listing, ETRN
//!   `#queue` and `queue retry --queue`;
//! * every `--json` output parses (list, show, and the actions' results);
//! * `queue release` answers once the queue engine holds the released
//!   mail, so a `queue flush` right after it delivers that mail.

mod common;

use std::time::Duration;

use common::peers::*;
use common::*;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(20);

/// Everything relays to 127.0.0.1:`relay`, retried hourly; `strategy_extra`
/// goes into `[queue.strategy]`.
fn start(relay: u16, strategy_extra: &str) -> Server {
    Server::start(&format!(
        r#"[session.rcpt]
relay = "remote_ip == '127.0.0.1'"

[queue.schedule]
retry = "[1h]"

{route}
[queue.strategy]
route = "'relay'"
{strategy_extra}
"#,
        route = relay_route("relay", relay, "smtp"),
    ))
}

/// The value of an unlabelled sample in `GET /metrics`.
fn metric(server: &Server, name: &str) -> String {
    let (status, body) = server.api_get("/metrics");
    assert_eq!(status, 200);
    let text = String::from_utf8_lossy(&body).to_string();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"))
        .to_string()
}

fn send(server: &Server, to: &[&str], subject: &str) -> String {
    let mut c = server.client();
    c.ehlo();
    let body = format!("Subject: {subject}\r\n\r\n{subject}\r\n");
    let id = queued_id(&c.send_message("s@origin.test", to, body.as_bytes()));
    c.cmd("QUIT");
    id
}

fn json(out: std::process::Output) -> Value {
    assert!(
        out.status.success(),
        "exit {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not one JSON document ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

#[test]
fn retry_delivers_deferred_mail_now() {
    let relay = free_port();
    let server = start(relay, "");
    let id = send(&server, &["r@far.test"], "retry me");
    let m = server.wait_attempted(&id, WAIT);
    let due = m["recipients"][0]["due"].as_u64().unwrap();
    assert!(
        due > ferrymail_spool::now_millis() + 30 * 60 * 1000,
        "next try an hour away: {m}"
    );

    let sink = SmtpSink::start_on(relay, &[]);
    let r = json(server.cli(&["queue", "retry", &id, "--json"]));
    assert_eq!(r["recipients"], 1, "{r}");
    assert_eq!(r["removed_messages"], 0, "{r}");

    server.wait_gone(&id, WAIT);
    let d = sink.wait_dumped(1, WAIT);
    assert_eq!(d[0].rcpt_args, ["<r@far.test>"]);
    assert_eq!(server.cli(&["queue", "cat", &id]).status.code(), Some(1));
    assert_eq!(
        json(server.cli(&["queue", "list", "--json"]))["recipients"],
        0
    );
}

#[test]
fn retry_probes_a_destination_suspended_as_dead() {
    let relay = free_port();
    // One connection failure suspends the destination for an hour.
    let server = start(
        relay,
        "\n[queue.virtual.default]\ndestination.failure-limit = 1\ndestination.suspend = \"1h\"\n",
    );
    let id = send(&server, &["r@far.test"], "dead relay");
    server.wait_attempted(&id, WAIT);
    // A second message meets the suspension: deferred without a
    // connection, and without counting an attempt.
    let second = send(&server, &["s@far.test"], "while suspended");
    let m = server.wait_deferred(&second, WAIT);
    let err = m["recipients"][0]["last_error"].as_str().unwrap_or("");
    assert!(err.contains("suspended"), "{m}");
    assert_eq!(m["recipients"][0]["attempts"], 0, "{m}");
    assert_eq!(
        metric(&server, "ferrymail_queue_destinations_suspended"),
        "1",
        "the dead relay shows in /metrics"
    );

    let sink = SmtpSink::start_on(relay, &[]);
    let r = json(server.cli(&["queue", "retry", &second, "--json"]));
    assert_eq!(r["recipients"], 1, "{r}");
    server.wait_gone(&second, WAIT);
    let d = sink.wait_dumped(1, WAIT);
    assert_eq!(d[0].rcpt_args, ["<s@far.test>"]);
    assert_eq!(
        metric(&server, "ferrymail_queue_destinations_suspended"),
        "0",
        "the probe that delivered ended the suspension"
    );
    assert!(
        server
            .log_text()
            .contains("probing suspended destinations now"),
        "{}",
        server.log_text()
    );
}

#[test]
fn cancel_removes_message_and_contents_for_good() {
    let relay = free_port();
    let server = start(relay, "");
    let gone = send(&server, &["x@far.test", "y@far.test"], "cancel me");
    let kept = send(&server, &["z@far.test"], "keep me");
    server.wait_deferred(&gone, WAIT);
    server.wait_deferred(&kept, WAIT);

    let r = json(server.cli(&["queue", "cancel", &gone, "--json"]));
    assert_eq!(r["recipients"], 2, "{r}");
    assert_eq!(r["removed_messages"], 1, "{r}");
    assert!(server.show(&gone).is_none(), "show of a cancelled message");
    let out = server.cli(&["queue", "cat", &gone]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "the contents must be gone: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(queue_ids(&server.queue_json()), vec![kept.clone()]);

    // With the relay up, a flush delivers the other message only.
    let sink = SmtpSink::start_on(relay, &[]);
    let out = server.cli(&["queue", "flush"]);
    assert!(out.status.success());
    server.wait_gone(&kept, WAIT);
    let d = sink.wait_dumped(1, WAIT);
    std::thread::sleep(Duration::from_millis(500));
    let d2 = sink.dumped();
    assert_eq!(d2.len(), 1, "the cancelled message was delivered: {d2:?}");
    assert_eq!(d[0].rcpt_args, ["<z@far.test>"]);
}

#[test]
fn dynamic_per_domain_queues_by_name() {
    let relay = free_port();
    let server = start(relay, "queue = \"'dom-' + rcpt_domain\"\n");
    let a1 = send(&server, &["1@alpha.test"], "a1");
    let a2 = send(&server, &["2@alpha.test"], "a2");
    let b1 = send(&server, &["3@beta.test"], "b1");
    let ab = send(&server, &["4@alpha.test", "5@beta.test"], "ab");
    for id in [&a1, &a2, &b1, &ab] {
        server.wait_deferred(id, WAIT);
    }

    // Every recipient sits in its domain's queue.
    let all = json(server.cli(&["queue", "list", "--json"]));
    assert_eq!(all["recipients"], 5, "{all}");
    for m in all["messages"].as_array().unwrap() {
        for r in m["recipients"].as_array().unwrap() {
            let domain = r["address"].as_str().unwrap().split('@').nth(1).unwrap();
            assert_eq!(r["queue"], format!("dom-{domain}"), "{r}");
            assert_eq!(r["lane"], "deferred", "{r}");
        }
    }
    let human = String::from_utf8_lossy(&server.cli(&["queue", "list"]).stdout).into_owned();
    assert!(human.contains("dom-alpha.test/deferred"), "{human}");
    assert!(human.contains("dom-beta.test/deferred"), "{human}");

    // --queue selects a dynamic queue by its name.
    let listed = |q: &str| -> Vec<(String, String)> {
        let l = json(server.cli(&["queue", "list", "--queue", q, "--json"]));
        let mut v: Vec<(String, String)> = l["messages"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|m| {
                let id = m["id"].as_str().unwrap().to_string();
                m["recipients"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(move |r| (id.clone(), r["address"].as_str().unwrap().to_string()))
            })
            .collect();
        v.sort();
        v
    };
    let pair = |id: &str, a: &str| (id.to_string(), a.to_string());
    let mut want_alpha = vec![
        pair(&a1, "1@alpha.test"),
        pair(&a2, "2@alpha.test"),
        pair(&ab, "4@alpha.test"),
    ];
    want_alpha.sort();
    assert_eq!(listed("dom-alpha.test"), want_alpha);
    let mut want_beta = vec![pair(&b1, "3@beta.test"), pair(&ab, "5@beta.test")];
    want_beta.sort();
    assert_eq!(listed("dom-beta.test"), want_beta);
    assert_eq!(listed("dom-gamma.test"), vec![]);

    // show --json of the two-domain message names both queues.
    let m = server.show(&ab).unwrap();
    assert_eq!(m["recipients"][0]["queue"], "dom-alpha.test", "{m}");
    assert_eq!(m["recipients"][1]["queue"], "dom-beta.test", "{m}");

    // The relay comes up. ETRN #queue starts one dynamic queue only ...
    let sink = SmtpSink::start_on(relay, &[]);
    let mut c = server.client();
    c.ehlo();
    let r = c.cmd("ETRN #dom-beta.test");
    assert!(r.is(253, "2.0.0"), "{r:?}");
    assert!(r.text().contains("2 pending messages"), "{r:?}");
    c.cmd("QUIT");
    server.wait_gone(&b1, WAIT);
    sink.wait_dumped(2, WAIT);
    // The sink has the message a moment before the server records the
    // outcome: wait (bounded) for the listing to catch up.
    wait_for(
        WAIT,
        "dom-beta.test to be empty",
        || format!("{:?}", listed("dom-beta.test")),
        || listed("dom-beta.test").is_empty().then_some(()),
    );
    assert_eq!(listed("dom-alpha.test"), want_alpha, "alpha untouched");

    // ... and `queue retry --queue` the other.
    let r = json(server.cli(&["queue", "retry", "--queue", "dom-alpha.test", "--json"]));
    assert_eq!(r["recipients"], 3, "{r}");
    server.wait_queue_empty(WAIT);
    let d = sink.wait_dumped(5, WAIT);
    let mut rcpts: Vec<String> = d.iter().flat_map(|d| d.rcpt_args.clone()).collect();
    rcpts.sort();
    assert_eq!(
        rcpts,
        [
            "<1@alpha.test>",
            "<2@alpha.test>",
            "<3@beta.test>",
            "<4@alpha.test>",
            "<5@beta.test>"
        ]
    );
    for id in [&a1, &a2, &b1, &ab] {
        assert_eq!(server.cli(&["queue", "cat", id]).status.code(), Some(1));
    }
}

#[test]
fn release_then_flush_delivers_the_released_mail() {
    // `queue release` answers once the queue engine holds the released
    // entries, so a flush right after it finds them (their next retry is
    // an hour away: only the flush can send them now).
    let relay = free_port();
    let server = start(relay, "");
    let ids: Vec<String> = (0..3)
        .map(|i| send(&server, &[&format!("r{i}@far.test")], &format!("held {i}")))
        .collect();
    for id in &ids {
        server.wait_deferred(id, WAIT);
        let out = server.cli(&["queue", "hold", id]);
        assert!(out.status.success(), "{out:?}");
    }
    let sink = SmtpSink::start_on(relay, &[]);
    for (n, id) in ids.iter().enumerate() {
        let out = server.cli(&["queue", "release", id]);
        assert!(out.status.success(), "{out:?}");
        let out = server.cli(&["queue", "flush"]);
        assert!(out.status.success(), "{out:?}");
        server.wait_gone(id, Duration::from_secs(10));
        assert_eq!(sink.wait_dumped(n + 1, WAIT).len(), n + 1);
    }
}
