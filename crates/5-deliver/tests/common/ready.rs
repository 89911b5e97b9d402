//! Starting a Python test peer that says READY on stdout once it listens:
//! shared by the delivery tests (aiosmtpd) and, included by `#[path]`, the
//! ferrymail tests (recording sink, MTA-STS policy host).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Runs `python3 script OPTIONS-JSON` (`$PYTHON` if set) with a piped
/// stdin (the peers stop when it closes) and waits up to 20 s for its
/// READY line; a peer that does not say it is killed and the test fails.
pub fn spawn_python_ready(script: &Path, options: &serde_json::Value) -> Child {
    let mut child = Command::new(std::env::var("PYTHON").unwrap_or_else(|_| "python3".into()))
        .arg(script)
        .arg(options.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python3 with aiosmtpd (run scripts/test-deps)");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(line) if line.starts_with("READY") => child,
        other => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{} did not start: {other:?}", script.display())
        }
    }
}
