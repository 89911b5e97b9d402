//! `ferrymail sendmail` run by an unprivileged user (`nobody`, through
//! runuser), as cron jobs and web applications run it: the configuration
//! file is world-readable, the server's DKIM key it names with
//! `%{file:}%` is not. The client needs only the management listener, so
//! the key it cannot read is left out and the message is queued and
//! delivered to Postfix's smtp-sink.
//!
//! Before, every client command expanded the whole configuration and
//! failed on the first secret it could not read, so sendmail worked only
//! for users who could read every key of the server.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use common::peers::*;
use common::*;

#[test]
fn unprivileged_sendmail_queues_mail_without_reading_the_dkim_key() {
    require("runuser");
    let sink = SmtpSink::start(&[]);
    // The key lives in a directory only root may enter.
    let secrets = tempfile::tempdir().unwrap();
    let key = secrets.path().join("dkim.pem");
    rsa_key_file(&key);
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let server = Server::start(&format!(
        "{}\n[signature.rsa]\nprivate-key = \"%{{file:{}}}%\"\ndomain = \"ferry.test\"\n\
         selector = \"s\"\nalgorithm = \"rsa-sha256\"\n",
        relay_all_to(sink.port),
        key.display()
    ));
    // A world-readable copy of the server's configuration.
    let public = tempfile::tempdir().unwrap();
    std::fs::set_permissions(public.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = public.path().join("ferrymail.toml");
    std::fs::copy(&server.config, &config).unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();

    let sendmail = |args: &[&str]| {
        run_with_input(
            Command::new("runuser")
                .args(["-u", "nobody", "--", bin(), "sendmail", "-c"])
                .arg(&config)
                .args(args),
            b"Subject: from nobody\n\nhello\n",
        )
    };
    // The user really cannot read the key (root could, whatever its mode).
    let cat = Command::new("runuser")
        .args(["-u", "nobody", "--", "cat"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(!cat.status.success(), "nobody can read the key");

    let out = sendmail(&["ops@far.example"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = sink.wait_dumped(1, Duration::from_secs(30));
    assert_eq!(got[0].rcpt_args, ["<ops@far.example>"]);
    assert!(
        String::from_utf8_lossy(&got[0].body).contains("Subject: from nobody"),
        "{got:?}"
    );

    // A configuration that is broken in itself is still refused, naming
    // the file and line.
    std::fs::write(&config, "[server]\nhostname = 42\n").unwrap();
    let out = sendmail(&["ops@far.example"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{}:2:", config.display())), "{err}");
}
