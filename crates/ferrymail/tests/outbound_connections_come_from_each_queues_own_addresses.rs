//! `[queue.outbound.source-ip]` and `hostname` (Stalwart's keys): a sender
//! keeps a pool of addresses, and the EHLO name that matches their PTR
//! records, per kind of mail, so that bulk mail and transactional mail
//! build reputations apart. Through the real `ferrymail serve` and
//! Postfix's smtp-sink, whose dump says which address each message came
//! from and which EHLO name it gave:
//!
//! * mail in the `bulk` queue leaves from 127.0.0.2 or 127.0.0.3 as
//!   `bulk-mx.ferry.test`, the rest from 127.0.0.4 as `mx.ferry.test`;
//! * a connection pooled for one queue is never reused for the other,
//!   though both go to the same relay;
//! * the delivery log names the source address of each delivery;
//! * a constant that is not an IPv4 address is a config error with file
//!   and line.

mod common;

use std::time::Duration;

use common::peers::*;
use common::*;

const WAIT: Duration = Duration::from_secs(30);

fn config(sink: u16, log: &std::path::Path) -> String {
    format!(
        r#"[session.rcpt]
relay = "remote_ip == '127.0.0.1'"

[queue.virtual.bulk]
concurrency = 4

[queue.strategy]
queue = [ {{ if = "rcpt_domain == 'bulk.test'", then = "'bulk'" }}, {{ else = "'default'" }} ]
route = "'sink'"

[queue.outbound]
delivery-log = "{log}"
hostname = [ {{ if = "queue == 'bulk'", then = "'bulk-mx.ferry.test'" }}, {{ else = "'mx.ferry.test'" }} ]

[queue.outbound.source-ip]
v4 = [ {{ if = "queue == 'bulk'", then = "['127.0.0.2', '127.0.0.3']" }}, {{ else = "['127.0.0.4']" }} ]

{route}"#,
        route = relay_route("sink", sink, "smtp"),
        log = log.display(),
    )
}

fn send(server: &Server, to: &str, subject: &str) {
    let mut c = server.client();
    c.ehlo();
    let r = c.send_message(
        "app@example.org",
        &[to],
        format!("Subject: {subject}\r\n\r\nbody\r\n").as_bytes(),
    );
    assert!(r.is(250, "2.0.0"), "{r:?}");
    c.cmd("QUIT");
}

#[test]
fn each_queue_connects_from_its_own_addresses_and_name() {
    let sink = SmtpSink::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("delivery.log");
    let server = Server::start_in(dir, &config(sink.port, &log));

    // Bulk first, so its connection is pooled when the other mail comes.
    send(&server, "a@bulk.test", "bulk 1");
    sink.wait_dumped(1, WAIT);
    send(&server, "b@other.test", "other 1");
    sink.wait_dumped(2, WAIT);
    send(&server, "c@bulk.test", "bulk 2");
    send(&server, "d@other.test", "other 2");
    let got = sink.wait_dumped(4, WAIT);

    for d in &got {
        let body = String::from_utf8_lossy(&d.body);
        if body.contains("Subject: bulk") {
            assert!(
                ["127.0.0.2", "127.0.0.3"].contains(&d.client_addr.as_str()),
                "{d:?}"
            );
            assert_eq!(d.helo, "bulk-mx.ferry.test", "{d:?}");
        } else {
            assert_eq!(d.client_addr, "127.0.0.4", "{d:?}");
            assert_eq!(d.helo, "mx.ferry.test", "{d:?}");
        }
    }

    // The delivery log says which address each delivery left from. Its
    // line is written once the sink's 250 is read, which can be just after
    // the sink has dumped the message: wait for all four.
    let lines = wait_for(
        WAIT,
        "four delivery log lines",
        || format!("{:?}", delivery_log(&log)),
        || Some(delivery_log(&log)).filter(|l| l.len() >= 4),
    );
    assert_eq!(lines.len(), 4, "{lines:?}");
    for l in &lines {
        let want: &[&str] = if l["queue"] == "bulk" {
            &["127.0.0.2", "127.0.0.3"]
        } else {
            &["127.0.0.4"]
        };
        assert!(want.contains(&l["source_ip"].as_str().unwrap_or("")), "{l}");
    }
}

#[test]
fn a_source_address_of_the_wrong_family_is_a_config_error() {
    let c = check_text("[queue.outbound.source-ip]\nv4 = \"['2001:db8::1']\"\n");
    assert_eq!(c.code, Some(2), "{}", c.stderr);
    assert!(
        c.stderr.contains(&format!("{}:2:", c.file.display()))
            && c.stderr.contains("must give a list of IPv4 addresses"),
        "{}",
        c.stderr
    );
}
