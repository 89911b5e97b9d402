//! A production relay commonly sends what its users submit (port 587) out
//! through a smarthost, and what it relays for other servers (port 25)
//! straight to the MX: each queue with its own route. This proves the
//! routing expressions see what that needs, through the real `ferrymail
//! serve` and two Postfix `smtp-sink`s:
//!
//! * `queue.strategy.queue` reads `local_port`, the listener's port, so
//!   mail from the second listener lands in the `submission` queue;
//! * `queue.strategy.route` reads `queue`, the queue just chosen, so that
//!   queue's mail goes to the smarthost sink and the other queue's to the
//!   other sink, each message exactly once; the delivery log says which
//!   queue and which route each delivery took.

mod common;

use std::time::Duration;

use common::peers::*;
use common::*;

const WAIT: Duration = Duration::from_secs(30);

fn message(subject: &str) -> Vec<u8> {
    format!(
        "From: <user@origin.test>\r\nTo: <rcpt@far.test>\r\nSubject: {subject}\r\n\
         Message-ID: <{subject}@origin.test>\r\n\r\nHello.\r\n"
    )
    .into_bytes()
}

#[test]
fn port_picks_the_queue_and_the_queue_picks_the_route() {
    let direct = SmtpSink::start(&[]);
    let smarthost = SmtpSink::start(&[]);
    let submission_port = free_port();
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("delivery.jsonl");
    let server = Server::start(&format!(
        r#"[server.listener.submission]
bind = ["127.0.0.1:{submission_port}"]
protocol = "smtp"

[session.rcpt]
relay = "remote_ip == '127.0.0.1'"

[queue.outbound]
delivery-log = "{log}"

[queue.virtual.submission]
concurrency = 4

{direct_route}{smarthost_route}
[queue.strategy]
queue = [ {{ if = "local_port == {submission_port}", then = "'submission'" }},
          {{ else = "'default'" }} ]
route = [ {{ if = "queue == 'submission'", then = "'smarthost'" }},
          {{ else = "'direct'" }} ]
"#,
        log = log.display(),
        direct_route = relay_route("direct", direct.port, "smtp"),
        smarthost_route = relay_route("smarthost", smarthost.port, "smtp"),
    ));
    let config_check = server.cli(&["check"]);
    assert!(
        !String::from_utf8_lossy(&config_check.stderr).contains("always Null"),
        "no warning for variables routing has: {config_check:?}"
    );

    let relayed = {
        let mut c = server.client();
        c.ehlo();
        let id = queued_id(&c.send_message("a@origin.test", &["r@far.test"], &message("relayed")));
        c.cmd("QUIT");
        id
    };
    let submitted = {
        let mut c = Smtp::connect(([127, 0, 0, 1], submission_port).into());
        c.ehlo();
        let id =
            queued_id(&c.send_message("user@origin.test", &["r@far.test"], &message("submitted")));
        c.cmd("QUIT");
        id
    };

    let at_direct = direct.wait_dumped(1, WAIT);
    let at_smarthost = smarthost.wait_dumped(1, WAIT);
    let subject = |d: &Dumped| {
        let text = String::from_utf8_lossy(&d.body).to_string();
        text.lines()
            .find_map(|l| l.strip_prefix("Subject: ").map(str::to_string))
            .unwrap_or_default()
    };
    assert_eq!(
        at_direct.iter().map(subject).collect::<Vec<_>>(),
        ["relayed"]
    );
    assert_eq!(
        at_smarthost.iter().map(subject).collect::<Vec<_>>(),
        ["submitted"]
    );

    server.wait_queue_empty(WAIT);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(direct.dumped().len(), 1, "nothing delivered twice");
    assert_eq!(smarthost.dumped().len(), 1, "nothing delivered twice");

    let lines = delivery_log(&log);
    let took = |id: &str| {
        let l = lines
            .iter()
            .find(|l| l["message_id"] == id)
            .unwrap_or_else(|| panic!("no delivery log line for {id}: {lines:?}"));
        (
            l["queue"].as_str().unwrap_or_default().to_string(),
            l["route"].as_str().unwrap_or_default().to_string(),
        )
    };
    assert_eq!(took(&relayed), ("default".into(), "direct".into()));
    assert_eq!(took(&submitted), ("submission".into(), "smarthost".into()));
}
