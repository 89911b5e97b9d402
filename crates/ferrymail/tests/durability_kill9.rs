//! A crash loses nothing that was acknowledged: five rounds of `kill -9` while
//! eight clients are sending. After each restart every message that got its 250
//! is in the queue with complete contents, and no message is half-present.

mod common;
use common::*;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[test]
fn kill9_during_load_loses_no_acknowledged_message() {
    let mut s = Server::start("[session.rcpt]\nlocal-domains = [\"local.test\"]\n");
    let acked: Arc<Mutex<BTreeMap<String, String>>> = Arc::default();
    for round in 0..5 {
        let stop = Arc::new(AtomicBool::new(false));
        let mut workers = Vec::new();
        for t in 0..8 {
            let (acked, stop, addr) = (acked.clone(), stop.clone(), s.smtp);
            workers.push(std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let token = format!("r{round}-t{t}-n{n}");
                    n += 1;
                    if let Some(id) = try_send_token(addr, "x@local.test", &token) {
                        acked.lock().unwrap().insert(id, token);
                    } else {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            }));
        }
        std::thread::sleep(Duration::from_millis(400 + 150 * round as u64));
        s.kill9();
        stop.store(true, Ordering::Relaxed);
        for w in workers {
            w.join().unwrap();
        }
        s.spawn();

        let q = s.queue_json();
        let queued: BTreeMap<String, serde_json::Value> = q["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| (m["id"].as_str().unwrap().to_string(), m.clone()))
            .collect();
        let acked = acked.lock().unwrap();
        assert!(
            acked.len() > 20 * (round + 1),
            "load was running ({} acked)",
            acked.len()
        );
        for (id, token) in acked.iter() {
            assert!(
                queued.contains_key(id),
                "round {round}: acknowledged {id} ({token}) lost"
            );
        }
        // Everything present is whole: envelope, entry and complete contents.
        for (id, m) in &queued {
            assert_eq!(m["recipients"].as_array().unwrap().len(), 1, "{id}");
            let body = s.contents(id);
            let text = String::from_utf8_lossy(strip_received(&body)).to_string();
            assert!(text.ends_with("END-OF-MESSAGE\r\n"), "{id} is truncated");
            if let Some(token) = acked.get(id) {
                assert!(
                    text.contains(&format!("token={token}\r\n")),
                    "{id} has the wrong contents"
                );
            }
            assert_eq!(
                m["size"].as_u64().unwrap() as usize,
                body.len(),
                "{id} size"
            );
        }
        eprintln!(
            "round {round}: {} acknowledged so far, {} queued",
            acked.len(),
            queued.len()
        );
    }
}
