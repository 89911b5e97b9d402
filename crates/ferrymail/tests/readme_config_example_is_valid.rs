//! Every configuration example in README.md passes `ferrymail check`, so the
//! documentation cannot drift from what the server accepts.

mod common;
use common::*;
use std::process::Command;

#[test]
fn readme_examples_check_clean() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"))
        .expect("README.md");
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("dkim-rsa.pem");
    rsa_key_file(&key);
    // A CA certificate for the private-CA relay example.
    let ca = dir.path().join("corp-ca.pem");
    let ca_key = dir.path().join("corp-ca.key");
    self_signed_cert("Corp CA", &ca_key, &ca);
    // The management tokens of the local-users example.
    let admin_token = dir.path().join("admin-token");
    let submit_token = dir.path().join("submit-token");
    std::fs::write(&admin_token, "admin").unwrap();
    std::fs::write(&submit_token, "submit").unwrap();
    let mut rest = readme.as_str();
    let mut checked = 0;
    while let Some(i) = rest.find("```toml\n") {
        let start = i + "```toml\n".len();
        let end = start + rest[start..].find("```").expect("end of the toml block");
        // The examples name files where production keeps them; point
        // them at ours.
        let example = rest[start..end]
            .replace("/etc/ferrymail/dkim-rsa.pem", &key.display().to_string())
            .replace("/etc/ferrymail/corp-ca.pem", &ca.display().to_string())
            .replace(
                "/etc/ferrymail/admin-token",
                &admin_token.display().to_string(),
            )
            .replace(
                "/etc/ferrymail/submit-token",
                &submit_token.display().to_string(),
            );
        rest = &rest[end..];
        let file = dir.path().join(format!("example{checked}.toml"));
        std::fs::write(&file, &example).unwrap();
        // The HTTPS example takes its token from the environment.
        let out = Command::new(bin())
            .env("FERRYMAIL_TOKEN", "example-token")
            .arg("check")
            .arg("-c")
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "README example fails check:\n{}\n{example}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.stderr.is_empty(),
            "warnings: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        checked += 1;
    }
    assert!(checked >= 2, "the main example and the cluster example");
}
