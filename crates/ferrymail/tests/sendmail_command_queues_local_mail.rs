//! `ferrymail sendmail`, the sendmail(8) command line of cron jobs and
//! applications on the host, through the real `ferrymail serve` to
//! Postfix's smtp-sink:
//!
//! * the message read on standard input (LF line ends, as programs write
//!   it) is queued with `source = 'local'`: a route that takes only local
//!   mail delivers it behind a Received field saying "local submission";
//! * `-t` takes the recipients from To, Cc and Bcc and removes Bcc;
//!   `-f` without a domain gets the server's hostname;
//! * without `-i` a line with a single dot ends the message;
//! * `-v` and `-bm` are accepted, `-r` is `-f`, and a recipient named
//!   twice (as an argument and in To, or in To and Cc) gets one copy;
//! * no recipients is a usage error (exit 2), and nothing is queued.

mod common;

use std::process::Command;
use std::time::Duration;

use common::peers::*;
use common::*;

const WAIT: Duration = Duration::from_secs(30);

fn sendmail(server: &Server, args: &[&str], input: &[u8]) -> std::process::Output {
    run_with_input(
        Command::new(bin())
            .arg("sendmail")
            .arg("-c")
            .arg(&server.config)
            .args(args),
        input,
    )
}

#[test]
fn local_mail_is_queued_as_local_and_delivered() {
    let sink = SmtpSink::start(&[]);
    let server = Server::start(&format!(
        r#"{route}
[queue.route.parked]
type = "relay"
address = "127.0.0.1"
port = 9

[queue.strategy]
route = [ {{ if = "source == 'local'", then = "'sink'" }}, {{ else = "'parked'" }} ]
"#,
        route = relay_route("sink", sink.port, "smtp")
    ));

    // No recipients: a usage error before anything is sent.
    let out = sendmail(&server, &[], b"Subject: none\n\nx\n");
    assert_eq!(out.status.code(), Some(2), "{out:?}");

    let message = b"From: Cron Daemon <cron@host.example>\n\
To: Ops <ops@far.example>\n\
Cc: \"Doe, Jane\" <jane@far.example>\n\
Bcc: audit@far.example\n\
Subject: nightly backup\n\
\n\
Backup finished.\n";
    let out = sendmail(&server, &["-t", "-f", "cron"], message);
    assert!(out.status.success(), "{out:?}");
    let got = sink.wait_dumped(1, WAIT);
    assert_eq!(got[0].mail_args, "<cron@mx.ferry.test>");
    assert_eq!(
        got[0].rcpt_args,
        [
            "<ops@far.example>",
            "<jane@far.example>",
            "<audit@far.example>"
        ]
    );
    let body = String::from_utf8_lossy(&got[0].body).to_string();
    let ours = body
        .find("Received: by mx.ferry.test (Ferrymail, local submission)")
        .unwrap_or_else(|| panic!("no local Received field: {body}"));
    // (smtp-sink writes its dump with LF line ends.)
    assert!(
        body[ours..].contains(
            "From: Cron Daemon <cron@host.example>\nTo: Ops <ops@far.example>\n\
             Cc: \"Doe, Jane\" <jane@far.example>\nSubject: nightly backup\n\n\
             Backup finished.\n"
        ),
        "the message as written, Bcc removed: {body:?}"
    );
    assert!(!body.contains("audit@"), "{body}");

    // Without -i, a lone dot ends the message; recipients as arguments.
    let out = sendmail(
        &server,
        &["someone@far.example"],
        b"Subject: dot\n\nbefore\n.\nafter\n",
    );
    assert!(out.status.success(), "{out:?}");
    let got = sink.wait_dumped(2, WAIT);
    let second = got
        .iter()
        .map(|d| String::from_utf8_lossy(&d.body).to_string())
        .find(|b| b.contains("Subject: dot"))
        .expect("the second message");
    assert!(second.contains("before\n"), "{second}");
    assert!(!second.contains("after"), "{second}");

    // The options mailx and others pass: -v and -bm ignored, -r as -f; a
    // recipient named as an argument and in To and Cc gets one copy.
    let out = sendmail(
        &server,
        &["-v", "-bm", "-r", "mailx", "-t", "ops@far.example"],
        b"To: ops@far.example\nCc: OPS@far.example\nSubject: once\n\nx\n",
    );
    assert!(out.status.success(), "{out:?}");
    let got = sink.wait_dumped(3, WAIT);
    let third = got
        .iter()
        .find(|d| String::from_utf8_lossy(&d.body).contains("Subject: once"))
        .expect("the third message");
    assert_eq!(third.mail_args, "<mailx@mx.ferry.test>");
    assert_eq!(third.rcpt_args, ["<ops@far.example>"]);
    let out = sendmail(&server, &["-bs"], b"");
    assert_eq!(out.status.code(), Some(2), "-bs is not offered: {out:?}");
    server.wait_queue_empty(WAIT);
}
