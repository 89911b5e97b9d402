//! Postfix's smtp-sink as the next hop: a message to three recipients is
//! delivered in one pipelined transaction (RFC 2920), dot-stuffed, with the
//! DSN parameters passed on, and the delivery log gets one JSON line per
//! recipient.

mod common;

use common::*;
use ferrymail_deliver::{Outcome, SmtpTransport};
use ferrymail_spool::{Notify, Ret};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivers_pipelined_with_dsn_parameters_and_logs() {
    let sink = Sink::start(&[]);
    let proxy = Proxy::start(sink.port).await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("delivery.jsonl");
    let cfg = relay_config(
        proxy.port,
        "smtp",
        &format!("[queue.outbound]\ndelivery-log = \"{}\"\n", log.display()),
    );
    let t = SmtpTransport::new(&cfg).unwrap();

    let mut env = envelope(
        "sender@client.test",
        &["one@hop.test", "two@hop.test", "three@hop.test"],
    );
    env.ret = Some(Ret::Headers);
    env.envid = Some("env id+1".into());
    env.recipients[0].notify = Notify::On {
        success: true,
        failure: true,
        delay: false,
    };
    env.recipients[0].orcpt = Some("rfc822;One@Hop.test".into());
    env.recipients[1].notify = Notify::Never;
    let contents = message("success");
    let out = deliver(&t, job(env, &contents, "hop", "hop.test")).await;

    assert_eq!(out.len(), 3);
    for (i, o) in out.iter().enumerate() {
        assert_eq!(o.rcpt, i as u32);
        let Outcome::Delivered { reply } = &o.outcome else {
            panic!("not delivered: {o:?}");
        };
        assert_eq!(reply.code, 250);
        assert_eq!(reply.status.as_deref(), Some("2.0.0"));
        let remote = o.remote.as_ref().unwrap();
        assert_eq!(remote.host, "127.0.0.1");
        assert_eq!(remote.port, proxy.port);
        assert!(remote.dsn, "smtp-sink advertises DSN");
        assert!(!remote.lmtp);
        assert_eq!(remote.tls, None);
    }

    // What the next hop received: the parameters and the exact contents
    // (smtp-sink unstuffs dots and writes LF line ends).
    let dumped = sink.wait_dumped(1);
    assert_eq!(dumped.len(), 1);
    let d = &dumped[0];
    assert_eq!(
        d.mail_args,
        "<sender@client.test> RET=HDRS ENVID=env+20id+2B1"
    );
    assert_eq!(
        d.rcpt_args,
        vec![
            "<one@hop.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;One@Hop.test".to_string(),
            "<two@hop.test> NOTIFY=NEVER".to_string(),
            "<three@hop.test>".to_string(),
        ]
    );
    assert_eq!(
        String::from_utf8_lossy(&d.body),
        String::from_utf8_lossy(&as_dumped(&contents))
    );

    // PIPELINING: MAIL, the three RCPTs and DATA left in one turn.
    let turns = proxy.client_turns(0);
    let mail_turn = turns.iter().find(|t| t.contains("MAIL FROM:")).unwrap();
    assert_eq!(mail_turn.matches("RCPT TO:").count(), 3, "{turns:?}");
    assert!(mail_turn.ends_with("DATA\r\n"), "{turns:?}");
    // ...and the dots were doubled on the wire.
    assert!(
        proxy
            .client_bytes(0)
            .contains("\r\n..leading dot\r\n...two dots\r\n")
    );

    // The delivery log: one JSON line per recipient.
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{text}");
    for (line, rcpt) in lines
        .iter()
        .zip(["one@hop.test", "two@hop.test", "three@hop.test"])
    {
        assert_eq!(line["queue"], "default");
        assert_eq!(line["message_id"], "0123456789abcdef");
        assert_eq!(line["rcpt"], rcpt);
        assert_eq!(line["route"], "hop");
        assert_eq!(line["mx"], "127.0.0.1");
        assert_eq!(line["ip"], "127.0.0.1");
        assert_eq!(line["tls"], serde_json::Value::Null);
        assert_eq!(line["outcome"], "delivered");
        assert_eq!(line["status"], "2.0.0");
        assert!(
            line["reply"].as_str().unwrap().starts_with("250 2.0.0 "),
            "{line}"
        );
        assert!(line["duration_ms"].as_u64().is_some());
    }
}
