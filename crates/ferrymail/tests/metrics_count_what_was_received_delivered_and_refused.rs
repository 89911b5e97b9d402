//! `GET /metrics` on the management listener counts what really happened,
//! in the Prometheus text format as Prometheus's own Python client parses
//! it (`tests/python/prom_parse.py`, prometheus-client).
//!
//! Postfix's smtp-source sends 40 messages through a real `ferrymail serve`
//! to Postfix's smtp-sink; one more message goes to a next hop that refuses
//! its recipient for now (smtp-sink `-r RCPT`), in a transaction where a
//! recipient the session may not relay to gets 554 5.7.1. The scrape then
//! shows exactly those counts: messages, recipients and bytes received, 40
//! delivered and 1 deferred outcomes, one relay denial; the queue gauge
//! holds the deferred recipient; no session is left active; the process
//! gauges are there. With `max-connections-per-ip = 1`, a second
//! concurrent connection gets 421 and is counted as refused.
//! The dashboard page is served and reads `/metrics`; with a token
//! configured, `/metrics` needs it and the page does not.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::peers::*;
use common::*;

/// Parses the exposition with prometheus-client; panics with its message
/// when the text is malformed.
fn parse(text: &[u8]) -> BTreeMap<String, serde_json::Value> {
    require("python3");
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/prom_parse.py");
    let mut child = Command::new("python3")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    child.stdin.take().unwrap().write_all(text).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "prometheus-client cannot parse the exposition: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(text)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn value(m: &BTreeMap<String, serde_json::Value>, key: &str) -> f64 {
    m.get(key)
        .and_then(serde_json::Value::as_f64)
        .unwrap_or_else(|| panic!("no sample {key} in {m:?}"))
}

fn scrape(server: &Server) -> BTreeMap<String, serde_json::Value> {
    let (status, body) = server.api_get("/metrics");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    parse(&body)
}

#[test]
fn metrics_count_what_happened() {
    let sink = SmtpSink::start(&[]);
    let refusing = SmtpSink::start(&["-r", "RCPT"]);
    let server = Server::start(&format!(
        r#"[session.rcpt]
local-domains = ["local.test", "defer.test"]
relay = "false"

[queue.schedule]
retry = "[1h]"

{sink}
{refusing}
[queue.strategy]
route = [ {{ if = "rcpt_domain == 'defer.test'", then = "'refusing'" }},
          {{ else = "'sink'" }} ]
"#,
        sink = relay_route("sink", sink.port, "smtp"),
        refusing = relay_route("refusing", refusing.port, "smtp"),
    ));

    require("smtp-source");
    let out = Command::new("timeout")
        .args(["120", "smtp-source", "-s", "2", "-m", "40", "-l", "1024"])
        .args(["-f", "load@example.org", "-t", "rcpt@local.test"])
        .arg(format!("127.0.0.1:{}", server.smtp.port()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "smtp-source: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // One message deferred at the next hop, with a recipient the session
    // may not relay to in the same transaction.
    let mut c = server.client();
    c.ehlo();
    assert_eq!(c.cmd("MAIL FROM:<s@example.org>").code, 250);
    assert_eq!(c.cmd("RCPT TO:<later@defer.test>").code, 250);
    assert!(c.cmd("RCPT TO:<other@remote.test>").is(554, "5.7.1"));
    assert_eq!(c.cmd("DATA").code, 354);
    c.send_raw(b"Subject: deferred\r\n\r\nbody\r\n.\r\n");
    assert_eq!(c.read().code, 250);

    assert_eq!(c.cmd("QUIT").code, 221);
    drop(c);

    sink.wait_dumped(40, Duration::from_secs(30));
    // Wait for the deferral to be recorded and every session to end.
    let deadline = Instant::now() + Duration::from_secs(20);
    let m = loop {
        let m = scrape(&server);
        if value(
            &m,
            r#"ferrymail_delivery_outcomes_total{outcome="deferred"}"#,
        ) >= 1.0
            && value(
                &m,
                r#"ferrymail_delivery_outcomes_total{outcome="delivered"}"#,
            ) >= 40.0
            && value(&m, "ferrymail_smtp_sessions_active") == 0.0
        {
            break m;
        }
        assert!(
            Instant::now() < deadline,
            "never settled: {m:?}\n{}",
            server.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    };

    let types = &m["__types__"];
    for (family, kind) in [
        ("ferrymail_received_messages", "counter"),
        ("ferrymail_delivery_outcomes", "counter"),
        ("ferrymail_smtp_sessions_active", "gauge"),
        ("ferrymail_queue_recipients", "gauge"),
        ("process_cpu_seconds", "counter"),
        ("process_resident_memory_bytes", "gauge"),
    ] {
        assert_eq!(types[family], kind, "type of {family}: {types}");
    }
    assert_eq!(value(&m, "ferrymail_received_messages_total"), 41.0);
    assert_eq!(value(&m, "ferrymail_received_recipients_total"), 41.0);
    let sizes: u64 = server.queue_json()["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["size"].as_u64().unwrap())
        .sum();
    let bytes = value(&m, "ferrymail_received_bytes_total");
    assert!(
        bytes > 40.0 * 1024.0 && bytes > sizes as f64,
        "bytes {bytes}, the deferred message alone {sizes}"
    );
    let outcome = |o: &str| {
        value(
            &m,
            &format!(r#"ferrymail_delivery_outcomes_total{{outcome="{o}"}}"#),
        )
    };
    assert_eq!(outcome("delivered"), 40.0);
    assert_eq!(outcome("deferred"), 1.0);
    assert_eq!(outcome("failed"), 0.0);
    assert_eq!(outcome("expired"), 0.0);
    assert_eq!(value(&m, "ferrymail_smtp_relay_denied_total"), 1.0);
    assert_eq!(
        value(
            &m,
            r#"ferrymail_smtp_connections_refused_total{reason="limit"}"#
        ),
        0.0
    );
    // smtp-source's 40 and the client's; the harness's readiness probes
    // may add a few.
    assert!(value(&m, "ferrymail_smtp_connections_total") >= 41.0);
    assert_eq!(
        value(&m, r#"ferrymail_queue_recipients{state="waiting"}"#),
        1.0
    );
    assert_eq!(
        value(
            &m,
            r#"ferrymail_queue_recipients_by_queue{queue="default",state="waiting"}"#
        ),
        1.0,
        "the deferred recipient, by its virtual queue"
    );
    assert_eq!(
        value(&m, r#"ferrymail_queue_recipients{state="in_flight"}"#),
        0.0
    );
    // The server's resident size as the kernel states it, in kB.
    let pid = server.child.as_ref().unwrap().id();
    let rss_kb: f64 = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap();
    let rss = value(&m, "process_resident_memory_bytes");
    assert!(
        rss > 1e6 && (rss / (rss_kb * 1024.0) - 1.0).abs() < 0.5,
        "{rss} bytes against VmRSS {rss_kb} kB"
    );
    assert!(value(&m, "process_cpu_seconds_total") > 0.0);
    let started = value(&m, "process_start_time_seconds");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        started <= now && started > now - 600.0,
        "start time {started}"
    );

    let (status, page) = server.api_get("/dashboard");
    assert_eq!(status, 200);
    let page = String::from_utf8_lossy(&page);
    assert!(
        page.contains("fetch(\"/metrics\""),
        "the dashboard reads /metrics"
    );
    for name in [
        "ferrymail_received_messages_total",
        "ferrymail_delivery_outcomes_total",
        "ferrymail_queue_recipients",
        "ferrymail_notifications_total",
        "ferrymail_smtp_auth_failures_total",
        "ferrymail_queue_destinations_suspended",
        "process_resident_memory_bytes",
    ] {
        assert!(page.contains(name), "the dashboard shows {name}");
        assert!(
            m.keys().any(|k| k.starts_with(name)),
            "the dashboard's {name} is exported"
        );
    }
}

#[test]
fn with_a_token_metrics_need_it_and_the_dashboard_page_does_not() {
    const VAR: &str = "FERRYMAIL_TEST_METRICS_TOKEN";
    let server = Server::start_custom(
        "[session.rcpt]\nlocal-domains = [\"local.test\"]\n",
        |c| {
            c.replacen(
                "protocol = \"http\"\n",
                &format!("protocol = \"http\"\ntoken = \"%{{env:{VAR}}}%\"\n"),
                1,
            )
        },
        &[(VAR, "s3cret-metrics")],
    );
    let (status, _) = http_get(server.mgmt, "/metrics", None);
    assert_eq!(status, 401);
    let (status, body) = http_get(server.mgmt, "/metrics", Some("s3cret-metrics"));
    assert_eq!(status, 200);
    assert_eq!(
        value(&parse(&body), "ferrymail_received_messages_total"),
        0.0
    );
    let (status, page) = http_get(server.mgmt, "/dashboard", None);
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&page).contains("token"));
}

#[test]
fn a_connection_over_the_limit_is_counted_as_refused() {
    let server = Server::start_with_server_keys(
        "max-connections-per-ip = 1",
        "[session.rcpt]\nlocal-domains = [\"local.test\"]\n",
    );
    // Holds the one slot (the harness's readiness probe may still hold it
    // for a moment).
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut held = loop {
        let mut c = Smtp::connect_raw(server.smtp);
        match c.try_read() {
            Some(r) if r.code == 220 => break c,
            _ => assert!(Instant::now() < deadline, "the slot never came free"),
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let before = value(
        &scrape(&server),
        r#"ferrymail_smtp_connections_refused_total{reason="limit"}"#,
    );
    let mut refused = Smtp::connect_raw(server.smtp);
    let r = refused
        .try_read()
        .expect("a reply to the second connection");
    assert!(r.is(421, "4.7.0"), "{r:?}");
    let m = scrape(&server);
    assert_eq!(
        value(
            &m,
            r#"ferrymail_smtp_connections_refused_total{reason="limit"}"#
        ),
        before + 1.0
    );
    assert_eq!(
        value(&m, "ferrymail_smtp_sessions_active"),
        1.0,
        "the held one"
    );
    assert_eq!(held.cmd("QUIT").code, 221);
}
