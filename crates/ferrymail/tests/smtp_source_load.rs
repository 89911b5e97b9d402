//! Load from Postfix's smtp-source: 2,000 messages over 20 parallel sessions,
//! one connection per message. Afterwards every one of them is in the queue.

mod common;
use common::*;
use std::process::Command;
use std::time::Duration;

#[test]
fn smtp_source_2000_messages_all_queued() {
    require("smtp-source");
    let s = Server::start("[session.rcpt]\nlocal-domains = [\"local.test\"]\n");
    let out = Command::new("timeout")
        .args(["300", "smtp-source", "-s", "20", "-m", "2000", "-l", "1024"])
        .args(["-f", "load@example.org", "-t", "sink@local.test"])
        .arg(format!("127.0.0.1:{}", s.smtp.port()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "smtp-source failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        s.log_text()
    );
    // smtp-source exits once it has its replies; the queue is already durable.
    std::thread::sleep(Duration::from_millis(100));
    let q = s.queue_json();
    let msgs = q["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 2000, "every accepted message is listed");
    let mut ids: Vec<&str> = msgs.iter().map(|m| m["id"].as_str().unwrap()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 2000, "ids are unique");
    for m in msgs {
        assert_eq!(m["sender"], "load@example.org");
        assert_eq!(m["recipients"][0]["address"], "sink@local.test");
        assert!(m["size"].as_u64().unwrap() > 1024);
    }
}
