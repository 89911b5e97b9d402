//! A failure notification that is owed survives a crash before it is
//! queued (the "notice owed" invariant). A next hop (Postfix's smtp-sink)
//! refuses a recipient with 550 5.1.1; the reporter is configured to hold
//! notifications for an hour, so the outcome is recorded but the notice is
//! not queued. `queue list` (JSON and text) and `queue show` show the
//! recipient as finished with a `failed` notice owed (another recipient,
//! with NOTIFY=NEVER, is gone at once, as it owes nothing), its contents
//! are kept, and the sink has nothing. Then `kill -9`,
//! and a restart on the same data directory with the usual one-second
//! window: the failure notice reaches the sender exactly once, through the
//! bounce queue, and passes every judge (Python's email package,
//! flufl.bounce, dkimpy, Sisimai); afterwards the message has left the
//! queue (the notice was discharged and the finished entry removed).

mod common;
mod dsn_support;

use std::time::Duration;

use common::*;
use dsn_support::*;
use serde_json::json;

#[test]
fn failure_notice_owed_at_kill9_is_sent_after_restart() {
    let hop = Hop::start(&[
        "-f",
        "RCPT",
        "-B",
        "550 5.1.1 Recipient address rejected: User unknown",
    ]);
    let sink = Sink::start();
    let keys = Keys::generate();
    let setup = |dsn| {
        config(
            &Setup {
                hop: hop.port,
                dsn,
                ..Setup::default()
            },
            &sink,
            &keys,
        )
    };
    let mut server = Server::start(&setup(HOLD_NOTICES));

    let id = send(
        &server,
        "sender@sender.test",
        "",
        &[("a@dest.test", ""), ("never@dest.test", "NOTIFY=NEVER")],
        &original("Before the crash"),
    );
    // The failure is recorded with its notice owed; the NOTIFY=NEVER
    // recipient owed nothing and is gone.
    let m = wait_notice_owed(
        &server,
        &id,
        "a@dest.test",
        "failed",
        Duration::from_secs(30),
    );
    let rcpts = m["recipients"].as_array().unwrap();
    assert_eq!(rcpts.len(), 1, "only the recipient owed a notice: {m}");
    assert_eq!(rcpts[0]["attempts"], 1, "{m}");
    assert!(rcpts[0].get("lease_owner").is_none(), "lease cleared: {m}");
    // The operator sees why it is still there.
    let list = String::from_utf8_lossy(&server.cli(&["queue", "list"]).stdout).into_owned();
    assert!(
        list.lines()
            .any(|l| l.contains("a@dest.test") && l.contains("NOTICE-OWED")),
        "{list}"
    );
    let show = String::from_utf8_lossy(&server.cli(&["queue", "show", &id]).stdout).into_owned();
    assert!(show.contains("notice owed: failed"), "{show}");
    // Kept with the entry until the notice is queued: the contents.
    let kept = String::from_utf8_lossy(&server.contents(&id)).into_owned();
    assert!(kept.contains("Subject: Before the crash"), "{kept}");
    // Finished: not attempted again while the notice waits.
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        sink.received().is_empty(),
        "nothing queued before the crash"
    );
    assert_eq!(
        log_lines(&server, &format!("failed id={id} rcpt=0 ")).len(),
        1,
        "one failure, never retried:\n{}",
        plain_log(&server)
    );

    server.kill9();
    restart_with(&mut server, &setup(""));

    let got = sink.wait(1, Duration::from_secs(30), &server);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(sink.received().len(), 1, "exactly one notification");
    let dsn = &got[0];
    assert_envelope(dsn, "sender@sender.test");
    let sisimai = judge(
        &dsn.data,
        json!({
            "kind": "failure", "utf8": false, "reporting_mta": "mx.ferry.test",
            "from": "MAILER-DAEMON@ferry.test", "to": "sender@sender.test",
            "envid": null, "returned": "headers", "returned_subject": "Before the crash",
            "body_marker": "BODY-MARKER-7f3a",
            "recipients": [{"final": "a@dest.test", "original": null, "action": "failed",
                            "status": "5.1.1", "status_class": "5", "remote_mta": "127.0.0.1",
                            "diagnostic": "550 5.1.1 Recipient address rejected: User unknown",
                            "will_retry": false}],
            "flufl": {"permanent": ["a@dest.test"], "temporary": []},
        }),
        &keys,
    );
    let r = &assert_sisimai(&sisimai, &[("a@dest.test", "5.1.1")], &dsn.data)[0];
    assert_eq!(r["reason"], "userunknown", "{r}");
    assert_bounce_queue(&server, &id);
    // Discharged: the finished entry, its envelope and contents are gone.
    wait_queue(&server, Duration::from_secs(15), "the message gone", |l| {
        !queue_ids(l).contains(&id)
    });
    let (status, _) = server.api_get(&format!("/api/queue/messages/{id}/contents"));
    assert_eq!(status, 404, "the contents were deleted with the last entry");
}
