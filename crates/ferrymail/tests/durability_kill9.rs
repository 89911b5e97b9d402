//! A crash loses nothing that was acknowledged: five rounds of `kill -9` while
//! eight clients are sending. After each restart every message that got its 250
//! is in the queue with complete contents, and no message is half-present.

mod common;
use common::*;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Sends one message; returns the queue id from the 250, or None if anything
/// went wrong (the server may die at any moment).
fn try_send(addr: SocketAddr, token: &str) -> Option<String> {
    let s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let mut w = s.try_clone().ok()?;
    let mut r = BufReader::new(s);
    let read = |r: &mut BufReader<TcpStream>| -> Option<String> {
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).ok()? == 0 {
                return None;
            }
            if line.as_bytes().get(3) != Some(&b'-') {
                return Some(line);
            }
        }
    };
    let expect = |line: Option<String>, code: &str| line.filter(|l| l.starts_with(code));
    expect(read(&mut r), "220")?;
    w.write_all(b"EHLO crash.test\r\n").ok()?;
    expect(read(&mut r), "250")?;
    w.write_all(b"MAIL FROM:<crash@example.org>\r\nRCPT TO:<x@local.test>\r\nDATA\r\n")
        .ok()?;
    expect(read(&mut r), "250")?;
    expect(read(&mut r), "250")?;
    expect(read(&mut r), "354")?;
    let body = format!(
        "Subject: {token}\r\n\r\n{}\r\ntoken={token}\r\nEND-OF-MESSAGE\r\n.\r\n",
        "filler line for some size\r\n".repeat(40)
    );
    w.write_all(body.as_bytes()).ok()?;
    let line = expect(read(&mut r), "250")?;
    let _ = w.write_all(b"QUIT\r\n");
    Some(line.trim_end().rsplit(' ').next()?.to_string())
}

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
                    if let Some(id) = try_send(addr, &token) {
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
