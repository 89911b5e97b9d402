//! `queue bounce` takes held mail too (Postfix's `postsuper -e` releases
//! it), but an entry being delivered at that moment is left to its
//! delivery. When that entry was held (the postmaster held spam while some
//! of it was in flight, then bounced it), it must stay held, not come out
//! released and go to its next retry. Through `ferrymail serve` and a
//! Postfix smtp-sink that takes its time over the end of data and then
//! answers 4xx.

mod common;

use std::time::{Duration, Instant};

use common::peers::*;
use common::*;

fn recipient(server: &Server, id: &str) -> serde_json::Value {
    let out = server.cli(&["queue", "show", id, "--json"]);
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["recipients"][0].clone()
}

#[test]
fn held_mail_in_flight_during_a_bounce_stays_held() {
    // -w 4: four seconds before answering the end of data; -r .: then 4xx.
    let sink = SmtpSink::start(&["-w", "4", "-r", "."]);
    let server = Server::start(&relay_all_to(sink.port));
    let mut c = server.client();
    c.ehlo();
    let id = queued_id(&c.send_message(
        "spammer@example.org",
        &["victim@example.net"],
        b"Subject: spam\r\n\r\nbody\r\n",
    ));
    c.cmd("QUIT");
    // In flight (leased) now; the postmaster holds it, then bounces it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while recipient(&server, &id).get("lease_owner").is_none() {
        assert!(Instant::now() < deadline, "never in flight");
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = server.cli(&["queue", "hold", &id]);
    assert!(out.status.success(), "{out:?}");
    let out = server.cli(&["queue", "bounce", &id]);
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        said.contains("bounce: 0 "),
        "in flight, so not bounced: {said}"
    );
    // The delivery ends with the 4xx: the entry is deferred, and held.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = recipient(&server, &id);
        if r["attempts"] == 1 && r.get("lease_owner").is_none() {
            assert_eq!(r["held"], true, "{r}");
            break;
        }
        assert!(Instant::now() < deadline, "the delivery never ended: {r}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // And it stays held: a flush does not send it.
    server.cli(&["queue", "flush"]);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(recipient(&server, &id)["held"], true);
    assert_eq!(recipient(&server, &id)["attempts"], 1);
}
