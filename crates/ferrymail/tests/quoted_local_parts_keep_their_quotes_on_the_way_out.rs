//! A recipient or sender whose local part needs quoting (RFC 5321 §4.1.2:
//! `"first last"@example.net`) goes out to the next hop quoted as it was
//! sent, through `ferrymail serve` and Postfix's smtp-sink, whose dump
//! shows the MAIL and RCPT arguments exactly as they came. smtp-proto
//! hands the address over unquoted; without quoting on the way out the
//! next hop would get `RCPT TO:<first last@example.net>`, which a strict
//! server refuses, after the client was told 250.

mod common;

use std::time::Duration;

use common::peers::*;
use common::*;

#[test]
fn quoted_local_parts_go_out_quoted() {
    let sink = SmtpSink::start(&[]);
    let server = Server::start(&relay_all_to(sink.port));
    let mut c = server.client();
    c.ehlo();
    queued_id(&c.send_message(
        "\"odd sender\"@example.org",
        &["\"first last\"@example.net", "plain@example.net"],
        b"Subject: quoted\r\n\r\nbody\r\n",
    ));
    c.cmd("QUIT");
    let got = sink.wait_dumped(1, Duration::from_secs(30));
    assert!(
        got[0].mail_args.starts_with("<\"odd sender\"@example.org>"),
        "{got:?}"
    );
    assert!(
        got[0].rcpt_args[0].starts_with("<\"first last\"@example.net>"),
        "{got:?}"
    );
    assert!(
        got[0].rcpt_args[1].starts_with("<plain@example.net>"),
        "{got:?}"
    );
}
