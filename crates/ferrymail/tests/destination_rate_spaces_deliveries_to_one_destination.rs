//! `destination.rate` of a virtual queue: large receivers accept only so
//! many messages per minute from one sending address, and a sender that
//! goes faster is deferred or blocked. Through the real `ferrymail serve`
//! and Postfix's smtp-sink: one message for six domains behind one relay
//! (one destination, six deliveries, all queued in the same instant)
//! arrives two at once and then one per half second when the queue says
//! `destination.rate = "2/1s"`, while the same message to an unlimited
//! relay is not held back.

mod common;

use std::time::{Duration, SystemTime};

use common::peers::*;
use common::*;

const WAIT: Duration = Duration::from_secs(30);

/// When each dump file of `sink` was last written, sorted.
fn arrivals(sink: &SmtpSink) -> Vec<SystemTime> {
    let mut out: Vec<SystemTime> = std::fs::read_dir(sink.dir.path())
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().modified().unwrap())
        .collect();
    out.sort();
    out
}

#[test]
fn a_limited_destination_gets_its_rate_and_no_more() {
    let limited = SmtpSink::start(&[]);
    let free = SmtpSink::start(&[]);
    let server = Server::start(&format!(
        r#"[session.rcpt]
relay = "remote_ip == '127.0.0.1'"

[queue.virtual.limited]
destination.rate = "2/1s"

[queue.strategy]
queue = [ {{ if = "contains(rcpt_domain, 'limited')", then = "'limited'" }}, {{ else = "'default'" }} ]
route = [ {{ if = "contains(rcpt_domain, 'limited')", then = "'limited'" }}, {{ else = "'free'" }} ]

{}{}"#,
        relay_route("limited", limited.port, "smtp"),
        relay_route("free", free.port, "smtp"),
    ));
    // Six recipient domains: six jobs, six transactions at the sink, from
    // one message accepted in one go (the submission's own pace cannot
    // spread them out).
    let mut c = server.client();
    c.ehlo();
    for kind in ["limited", "free"] {
        let to: Vec<String> = (0..6).map(|i| format!("r@d{i}.{kind}.test")).collect();
        let to: Vec<&str> = to.iter().map(String::as_str).collect();
        let r = c.send_message("app@example.org", &to, b"Subject: burst\r\n\r\nbody\r\n");
        assert!(r.is(250, "2.0.0"), "{r:?}");
    }
    c.cmd("QUIT");
    free.wait_dumped(6, WAIT);
    limited.wait_dumped(6, WAIT);

    let t = arrivals(&limited);
    let span = t[5].duration_since(t[0]).unwrap();
    // Two at once, then four more at 500 ms intervals: 2 s (less a little
    // for timestamps taken as each dump is written).
    assert!(span >= Duration::from_millis(1_800), "{span:?}");
    let f = arrivals(&free);
    let free_span = f[5].duration_since(f[0]).unwrap();
    assert!(free_span < span, "free {free_span:?} vs limited {span:?}");
}
