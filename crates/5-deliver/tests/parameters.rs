//! Passing MAIL/RCPT parameters on, or failing as documented, against real
//! next hops: smtp-sink (DSN, 8BITMIME; no SMTPUTF8, no SIZE) with its
//! `-N` (no DSN), `-8` (no 8BITMIME) and `-e` (no ESMTP) switches, and
//! aiosmtpd (SMTPUTF8, SIZE).

mod common;

use common::*;
use ferrymail_deliver::{Outcome, SmtpTransport};
use ferrymail_spool::{BodyType, Notify, Ret};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dsn_parameters_dropped_when_not_supported() {
    let sink = Sink::start(&["-N"]);
    let t = SmtpTransport::new(&relay_config(sink.port, "smtp", "")).unwrap();
    let mut env = envelope("s@c.test", &["a@hop.test"]);
    env.ret = Some(Ret::Full);
    env.envid = Some("x".into());
    env.recipients[0].notify = Notify::Never;
    env.recipients[0].orcpt = Some("rfc822;a@hop.test".into());
    let out = deliver(&t, job(env, &message("nodsn"), "hop", "hop.test")).await;
    assert_eq!(kind(&out[0]), "delivered", "{out:?}");
    assert!(
        !out[0].remote.as_ref().unwrap().dsn,
        "Remote.dsn must say DSN was not passed on"
    );
    let d = sink.wait_dumped(1);
    assert_eq!(d[0].mail_args, "<s@c.test>");
    assert_eq!(d[0].rcpt_args, vec!["<a@hop.test>".to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_bit_mime() {
    let contents = "Subject: caf\u{e9}\r\n\r\nna\u{ef}ve\r\n"
        .as_bytes()
        .to_vec();
    // Supported: BODY=8BITMIME passed on.
    let sink = Sink::start(&[]);
    let t = SmtpTransport::new(&relay_config(sink.port, "smtp", "")).unwrap();
    let mut env = envelope("s@c.test", &["a@hop.test"]);
    env.body = BodyType::EightBitMime;
    let out = deliver(&t, job(env.clone(), &contents, "hop", "hop.test")).await;
    assert_eq!(kind(&out[0]), "delivered");
    assert_eq!(sink.wait_dumped(1)[0].mail_args, "<s@c.test> BODY=8BITMIME");

    // Not supported (RFC 6152 §3: convert or return). A MIME message's
    // 8-bit part goes as quoted-printable, without BODY; a message that
    // cannot be converted (8-bit header, no MIME-Version) fails with
    // 5.6.3; 7-bit content goes as it is, without BODY.
    let no8 = Sink::start(&["-8"]);
    let t = SmtpTransport::new(&relay_config(no8.port, "smtp", "")).unwrap();
    let out = deliver(&t, job(env.clone(), &contents, "hop", "hop.test")).await;
    assert_eq!(kind(&out[0]), "permanent", "{out:?}");
    assert_eq!(out[0].outcome.status(), "5.6.3");
    let mime = "MIME-Version: 1.0\r\nSubject: converted\r\n\
                Content-Type: text/plain; charset=utf-8\r\n\
                Content-Transfer-Encoding: 8bit\r\n\r\nna\u{ef}ve\r\n";
    let out = deliver(&t, job(env.clone(), mime.as_bytes(), "hop", "hop.test")).await;
    assert_eq!(kind(&out[0]), "delivered", "{out:?}");
    let d = no8.wait_dumped(1);
    assert_eq!(d[0].mail_args, "<s@c.test>", "no BODY=8BITMIME");
    let body = String::from_utf8(d[0].body.clone()).expect("7-bit");
    // (smtp-sink writes its dump with LF line ends.)
    assert!(
        body.contains("Content-Transfer-Encoding: quoted-printable\n"),
        "{body}"
    );
    assert!(body.contains("na=C3=AFve\n"), "{body}");
    let out = deliver(&t, job(env, &message("seven"), "hop", "hop.test")).await;
    assert_eq!(kind(&out[0]), "delivered", "{out:?}");
    let d = no8.wait_dumped(2);
    assert_eq!(
        d.len(),
        2,
        "the unconvertible message never reached the hop"
    );
    assert!(d.iter().all(|d| d.mail_args == "<s@c.test>"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtputf8_required_but_unsupported_is_5_6_7() {
    let sink = Sink::start(&[]);
    let t = SmtpTransport::new(&relay_config(sink.port, "smtp", "")).unwrap();
    let mut env = envelope("s@c.test", &["j\u{f6}rg@hop.test"]);
    env.smtputf8 = true;
    let out = deliver(&t, job(env, &message("utf8"), "hop", "hop.test")).await;
    let Outcome::Permanent { reason, reply } = &out[0].outcome else {
        panic!("{out:?}")
    };
    assert!(reason.starts_with("5.6.7 "), "{reason}");
    assert_eq!(*reply, None);
    assert_eq!(out[0].outcome.status(), "5.6.7");
    assert!(sink.dumped().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtputf8_asked_for_but_all_ascii_goes_to_a_hop_without_it() {
    // Many clients send SMTPUTF8 with every message. RFC 6531 §3.4: when
    // neither envelope nor message needs it, it is not sent on, and a next
    // hop without SMTPUTF8 (smtp-sink) gets the mail instead of a bounce.
    let sink = Sink::start(&[]);
    let t = SmtpTransport::new(&relay_config(sink.port, "smtp", "")).unwrap();
    let mut env = envelope("s@c.test", &["a@hop.test"]);
    env.smtputf8 = true;
    let out = deliver(&t, job(env, &message("ascii"), "hop", "hop.test")).await;
    assert_eq!(kind(&out[0]), "delivered", "{out:?}");
    assert_eq!(sink.wait_dumped(1)[0].mail_args, "<s@c.test>");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtputf8_passed_on_when_supported() {
    let peer = PyPeer::start(json!({"smtputf8": true}));
    let t = SmtpTransport::new(&relay_config(peer.port, "smtp", "")).unwrap();
    let mut env = envelope("s@c.test", &["j\u{f6}rg@hop.test"]);
    env.smtputf8 = true;
    env.body = BodyType::EightBitMime;
    let out = deliver(
        &t,
        job(
            env,
            "Subject: \u{e9}\r\n\r\nx\r\n".as_bytes(),
            "hop",
            "hop.test",
        ),
    )
    .await;
    assert_eq!(kind(&out[0]), "delivered", "{out:?}");
    let tx = peer.transactions();
    assert_eq!(tx[0]["rcpt_tos"], json!(["j\u{f6}rg@hop.test"]));
    let opts: Vec<&str> = tx[0]["mail_options"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        opts.contains(&"SMTPUTF8") && opts.contains(&"BODY=8BITMIME"),
        "{opts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn size_declared_and_enforced() {
    let peer = PyPeer::start(json!({"size": 2000}));
    let t = SmtpTransport::new(&relay_config(peer.port, "smtp", "")).unwrap();
    let small = message("small");
    let out = deliver(
        &t,
        job(
            envelope("s@c.test", &["a@hop.test"]),
            &small,
            "hop",
            "hop.test",
        ),
    )
    .await;
    assert_eq!(kind(&out[0]), "delivered", "{out:?}");
    let tx = peer.transactions();
    assert!(
        tx[0]["mail_options"]
            .as_array()
            .unwrap()
            .contains(&json!(format!("SIZE={}", small.len()))),
        "{}",
        tx[0]
    );
    let mut big = message("big");
    big.extend(std::iter::repeat_n(b"0123456789abcdef0123456789abcdef\r\n", 100).flatten());
    let out = deliver(
        &t,
        job(
            envelope("s@c.test", &["a@hop.test"]),
            &big,
            "hop",
            "hop.test",
        ),
    )
    .await;
    assert_eq!(kind(&out[0]), "permanent", "{out:?}");
    assert_eq!(out[0].outcome.status(), "5.3.4");
    assert!(reason(&out[0]).contains("2000"), "{}", reason(&out[0]));
    assert_eq!(
        peer.transactions().len(),
        1,
        "the big message was never sent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helo_fallback_when_ehlo_is_refused() {
    let sink = Sink::start(&["-e"]);
    let proxy = Proxy::start(sink.port).await;
    let t = SmtpTransport::new(&relay_config(proxy.port, "smtp", "")).unwrap();
    let mut env = envelope("s@c.test", &["a@hop.test"]);
    env.ret = Some(Ret::Full);
    let out = deliver(&t, job(env, &message("helo"), "hop", "hop.test")).await;
    assert_eq!(kind(&out[0]), "delivered", "{out:?}");
    assert!(!out[0].remote.as_ref().unwrap().dsn);
    let sent = proxy.client_bytes(0);
    assert!(
        sent.starts_with("EHLO client.ferry.test\r\nHELO client.ferry.test\r\n"),
        "{sent}"
    );
    // No ESMTP: no parameters, no pipelining.
    assert!(sent.contains("MAIL FROM:<s@c.test>\r\n"), "{sent}");
    assert!(
        proxy
            .client_turns(0)
            .iter()
            .all(|t| t.matches("\r\n").count() == 1 || t.contains("Subject")),
        "{:?}",
        proxy.client_turns(0)
    );
}
