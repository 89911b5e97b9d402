//! A client that pipelines commands and never reads the replies fills the
//! socket buffers; the server's write then waits. Without a limit on that
//! wait the session would hold its connection slot for ever (and enough
//! such clients, every slot). The write gets as long as a command would
//! (`session.timeout.command`), then the session ends.

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::*;

#[test]
fn replies_nobody_reads_end_the_session_after_the_command_timeout() {
    let s = Server::start(
        "[session.timeout]\ncommand = \"2s\"\n\n[session.rcpt]\nlocal-domains = [\"local.test\"]\n",
    );
    let mut c = Smtp::connect_raw(s.smtp);
    c.writer
        .set_write_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    // NOOPs (each gets a reply) until our writes stall or fail: the server
    // has stopped reading because it cannot send.
    let noops = "NOOP\r\n".repeat(4096);
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(20) {
        if c.writer.write_all(noops.as_bytes()).is_err() {
            break;
        }
    }
    // Still not reading, for longer than the command timeout: the server
    // gives up its write and ends the session. (Reading at once would let
    // its write go on.) Then drain what the kernel holds: the stream ends.
    std::thread::sleep(Duration::from_secs(4));
    c.reader
        .get_ref()
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut buf = vec![0u8; 1 << 16];
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut closed = false;
    while Instant::now() < deadline {
        match c.reader.get_mut().read(&mut buf) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                closed = true;
                break;
            }
            Err(e) => panic!("read: {e} (the server did not close)"),
        }
    }
    assert!(closed, "the server kept the session open");
    let log = s.log_text();
    assert!(log.contains("client stopped reading replies"), "{log}");
}
