//! While PostgreSQL cannot be reached, SMTP clients get 451 4.3.0 (try
//! again later), never a 5xx, and nothing half-accepted stays behind; when
//! it is reachable again the same running server accepts mail again.
//!
//! The outage is a TCP relay between Ferrymail and the shared test server
//! that is switched off (every connection through it dropped, new ones
//! closed at once), which is what a database restart looks like from the
//! client side, without disturbing the tests that share the server.

mod common;

use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use common::pg::*;
use common::*;

/// A switchable TCP relay to the test PostgreSQL.
struct Relay {
    port: u16,
    up: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl Relay {
    fn start(upstream: String) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (up2, open2) = (up.clone(), open.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if !up2.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(&upstream) else {
                    continue;
                };
                let mut list = open2.lock().unwrap();
                list.push(client.try_clone().unwrap());
                list.push(server.try_clone().unwrap());
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(Shutdown::Both);
                        let _ = from.shutdown(Shutdown::Both);
                    });
                }
            }
        });
        Relay { port, up, open }
    }

    fn down(&self) {
        self.up.store(false, Ordering::SeqCst);
        for s in self.open.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    fn up(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

/// Host and port of the test server, from its URL.
fn upstream() -> String {
    let url = pg_url();
    let rest = &url[url
        .find('@')
        .map_or(url.find("://").unwrap() + 3, |i| i + 1)..];
    rest.split(['/', '?']).next().unwrap().to_string()
}

fn try_message(server: &Server, subject: &str) -> Reply {
    let mut c = server.client();
    c.ehlo();
    let r = c.send_message(
        "sender@origin.test",
        &["r@far.test"],
        format!("Subject: {subject}\r\n\r\nbody\r\n").as_bytes(),
    );
    c.cmd("QUIT");
    r
}

#[test]
fn database_outage_gives_451_then_recovers() {
    let db = TestDb::create();
    let relay = Relay::start(upstream());
    // The server reaches the database only through the relay.
    let via_relay = {
        let (base, rest) = db.url.split_once('@').unwrap();
        let path = &rest[rest.find('/').unwrap()..];
        format!("{base}@127.0.0.1:{}{path}", relay.port)
    };
    let s = Server::start_pg_url(
        &via_relay,
        "",
        "[session.rcpt]\nrelay = \"remote_ip == '127.0.0.1'\"\n",
    );

    let before = try_message(&s, "before");
    let before_id = queued_id(&before);

    relay.down();
    for i in 0..3 {
        let r = try_message(&s, &format!("during-{i}"));
        assert!(
            r.is(451, "4.3.0"),
            "a store failure is a temporary local problem: {r:?}"
        );
    }
    relay.up();
    let after = try_message(&s, "after");
    let after_id = queued_id(&after);
    let mut ids = queue_ids(&s.queue_json());
    ids.sort();
    let mut want = vec![before_id, after_id];
    want.sort();
    assert_eq!(ids, want, "nothing of the refused messages was kept");
    assert_eq!(db.sql("SELECT count(*) FROM envelope"), "2");
    assert_eq!(db.sql("SELECT count(*) FROM blob"), "2");
    assert!(
        s.log_text().contains("could not make message durable"),
        "the failure is logged"
    );
}
