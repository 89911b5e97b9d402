//! RFC 6533 §3: a RCPT with an ORCPT of type `utf-8` is accepted in both
//! of its forms, refused with 501 5.5.4 when malformed or when it carries
//! raw UTF-8 outside an SMTPUTF8 transaction, and passed on to a next hop
//! that offers DSN but not SMTPUTF8 (Postfix's smtp-sink) in the ASCII
//! form, utf-8-addr-xtext. An `rfc822` ORCPT whose xtext holds UTF-8
//! octets is passed on with the same octets.
//!
//! Before, smtp-proto refused every ORCPT type but `rfc822`, so such a
//! recipient was refused with 501 and the message never sent; and it
//! decoded `+C3+A9` into two Latin-1 characters, passed on as
//! `+C3+83+C2+A9`.

mod common;

use std::time::Duration;

use common::peers::*;
use common::*;

#[test]
fn utf8_orcpt_accepted_refused_when_malformed_and_relayed_as_xtext() {
    let sink = SmtpSink::start(&[]);
    let server = Server::start(&relay_all_to(sink.port));
    let mut c = server.client();
    c.ehlo();

    // Raw UTF-8 without SMTPUTF8; escapes that are not RFC 6533's.
    assert_eq!(c.cmd("MAIL FROM:<s@example.org>").code, 250);
    for bad in [
        "RCPT TO:<a@remote.test> ORCPT=utf-8;\u{e9}@remote.test",
        "RCPT TO:<a@remote.test> ORCPT=utf-8;\\x{Q}@remote.test",
        "RCPT TO:<a@remote.test> ORCPT=utf-8;a+2B@remote.test",
        "RCPT TO:<a@remote.test> ORCPT=utf-8;a@x ORCPT=rfc822;a@x",
    ] {
        let r = c.cmd(bad);
        assert!(r.is(501, "5.5.4"), "{bad}: {r:?}");
    }
    assert_eq!(c.cmd("RSET").code, 250);

    // Both forms: xtext in a plain transaction, unitext within SMTPUTF8.
    assert_eq!(c.cmd("MAIL FROM:<s@example.org> SMTPUTF8").code, 250);
    let r =
        c.cmd("RCPT TO:<a@remote.test> NOTIFY=FAILURE ORCPT=UTF-8;\\x{E9}l\\x{E8}ve@remote.test");
    assert!(r.is(250, "2.1.5"), "{r:?}");
    let r = c.cmd("RCPT TO:<b@remote.test> ORCPT=utf-8;\u{e9}l\u{e8}ve+1@remote.test");
    assert!(r.is(501, "5.5.4"), "`+` is escaped in both forms: {r:?}");
    let r = c.cmd("RCPT TO:<b@remote.test> ORCPT=utf-8;\u{e9}l\u{e8}ve\\x{2B}1@remote.test");
    assert!(r.is(250, "2.1.5"), "{r:?}");
    // An rfc822 one whose xtext holds UTF-8 octets goes on as it came.
    let r = c.cmd("RCPT TO:<c@remote.test> ORCPT=rfc822;caf+C3+A9@remote.test");
    assert!(r.is(250, "2.1.5"), "{r:?}");
    assert_eq!(c.cmd("DATA").code, 354);
    c.send_raw(b"Subject: orcpt\r\n\r\nbody\r\n.\r\n");
    assert_eq!(c.read().code, 250);
    let _ = c.cmd("QUIT");

    let got = sink.wait_dumped(1, Duration::from_secs(30));
    let mut args = got[0].rcpt_args.clone();
    args.sort();
    assert_eq!(
        args,
        [
            "<a@remote.test> NOTIFY=FAILURE ORCPT=UTF-8;\\x{E9}l\\x{E8}ve@remote.test",
            "<b@remote.test> ORCPT=utf-8;\\x{E9}l\\x{E8}ve\\x{2B}1@remote.test",
            "<c@remote.test> ORCPT=rfc822;caf+C3+A9@remote.test",
        ],
        "{:?}",
        got[0]
    );
}
