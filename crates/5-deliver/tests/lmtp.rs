//! LMTP (RFC 2033) next hops: smtp-sink in LMTP mode, and an aiosmtpd LMTP
//! server that refuses one recipient at RCPT and answers the others one by
//! one after DATA; each reply is recorded for its own recipient.

mod common;

use common::*;
use ferrymail_deliver::SmtpTransport;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_sink_lmtp() {
    let sink = Sink::start(&["-L"]);
    let proxy = Proxy::start(sink.port).await;
    let t = SmtpTransport::new(&relay_config(proxy.port, "lmtp", "")).unwrap();
    let contents = message("lmtp");
    let out = deliver(
        &t,
        job(
            envelope("s@c.test", &["a@box.test", "b@box.test"]),
            &contents,
            "hop",
            "box.test",
        ),
    )
    .await;
    for o in &out {
        assert_eq!(kind(o), "delivered", "{o:?}");
        assert!(o.remote.as_ref().unwrap().lmtp);
    }
    assert!(
        proxy
            .client_bytes(0)
            .starts_with("LHLO client.ferry.test\r\n")
    );
    assert_eq!(sink.wait_dumped(1)[0].body, as_dumped(&contents));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_recipient_replies() {
    let peer = PyPeer::start(json!({
        "lmtp": true,
        "reject_rcpt": {"nobody@box.test": "550 5.1.1 <nobody@box.test>: unknown user"},
        "data_reply": {
            "full@box.test": "452 4.2.2 <full@box.test>: mailbox full",
            "gone@box.test": "552 5.2.2 <gone@box.test>: quota exceeded for good",
        },
    }));
    let t = SmtpTransport::new(&relay_config(peer.port, "lmtp", "")).unwrap();
    let rcpts = [
        "ok@box.test",
        "nobody@box.test",
        "full@box.test",
        "gone@box.test",
        "ok2@box.test",
    ];
    let out = deliver(
        &t,
        job(
            envelope("s@c.test", &rcpts),
            &message("per-rcpt"),
            "hop",
            "box.test",
        ),
    )
    .await;
    let kinds: Vec<&str> = out.iter().map(kind).collect();
    assert_eq!(
        kinds,
        [
            "delivered",
            "permanent",
            "transient",
            "permanent",
            "delivered"
        ]
    );
    assert_eq!(
        reply_text(&out[0]).as_deref(),
        Some("250 2.0.0 <ok@box.test> delivered")
    );
    assert_eq!(
        reply_text(&out[1]).as_deref(),
        Some("550 5.1.1 <nobody@box.test>: unknown user")
    );
    assert_eq!(
        reply_text(&out[2]).as_deref(),
        Some("452 4.2.2 <full@box.test>: mailbox full")
    );
    assert_eq!(out[3].outcome.status(), "5.2.2");
    assert_eq!(
        reply_text(&out[4]).as_deref(),
        Some("250 2.0.0 <ok2@box.test> delivered")
    );
    assert!(
        reason(&out[2]).contains("(in reply to end of DATA)"),
        "{}",
        reason(&out[2])
    );
    assert_eq!(peer.transactions()[0]["helo"], "client.ferry.test");
}
