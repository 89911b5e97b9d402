//! A `[signature.<id>]` whose private key cannot be used (valid PEM
//! armour, garbage inside; or an Ed25519 key declared rsa-sha256) is a
//! configuration error: `ferrymail check` exits 2 with `FILE:LINE:` at the
//! signature's table, and `ferrymail serve` refuses to start with the same
//! problem and exit 2, rather than sending unsigned notifications.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

fn write_config(dir: &std::path::Path, signature: &str) -> std::path::PathBuf {
    let text = format!(
        "{}\n[report.dsn]\nsign = \"['dk']\"\n\n{signature}",
        base_config(dir, free_port(), free_port(), "")
    );
    let p = dir.join("ferrymail.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn line_of(path: &std::path::Path, needle: &str) -> usize {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .position(|l| l.starts_with(needle))
        .unwrap()
        + 1
}

fn assert_refused(path: &std::path::Path, what: &str) {
    let line = line_of(path, "[signature.dk]");
    let check = run_bounded(
        Command::new(bin()).arg("check").arg("-c").arg(path),
        Duration::from_secs(30),
    );
    let err = String::from_utf8_lossy(&check.stderr);
    assert_eq!(check.status.code(), Some(2), "check: {err}");
    let want = format!("{}:{line}: [signature.dk] private-key: ", path.display());
    assert!(err.starts_with(&want), "check said {err:?}, want {want:?}");
    assert!(err.contains(what), "{err}");

    let serve = run_bounded(
        Command::new(bin()).arg("serve").arg("-c").arg(path),
        Duration::from_secs(30),
    );
    let err = String::from_utf8_lossy(&serve.stderr);
    assert_eq!(serve.status.code(), Some(2), "serve: {err}");
    assert!(err.contains("[signature.dk] private-key: "), "{err}");
    assert!(err.contains(what), "{err}");
}

#[test]
fn garbage_key_is_refused_by_check_and_serve() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("bad.pem");
    std::fs::write(
        &key,
        "-----BEGIN PRIVATE KEY-----\nTm90IGEga2V5IGF0IGFsbA==\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let p = write_config(
        dir.path(),
        &format!(
            "[signature.dk]\nprivate-key = \"%{{file:{}}}%\"\ndomain = \"ferry.test\"\nselector = \"s\"\n",
            key.display()
        ),
    );
    assert_refused(&p, "not an RSA key usable for rsa-sha256");
}

#[test]
fn ed25519_key_declared_rsa_is_refused() {
    require("openssl");
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("ed.pem");
    let out = run_bounded(
        Command::new("openssl")
            .args(["genpkey", "-algorithm", "ed25519", "-out"])
            .arg(&key),
        Duration::from_secs(30),
    );
    assert!(out.status.success());
    let p = write_config(
        dir.path(),
        &format!(
            "[signature.dk]\nprivate-key = \"%{{file:{}}}%\"\ndomain = \"ferry.test\"\nselector = \"s\"\nalgorithm = \"rsa-sha256\"\n",
            key.display()
        ),
    );
    assert_refused(&p, "not an RSA key");
}
