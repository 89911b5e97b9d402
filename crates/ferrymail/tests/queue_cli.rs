//! `ferrymail queue ...` against a running server (INTERFACE.md): list with its
//! filters and JSON shape, show (human and JSON), cat, hold/release/cancel by id
//! and in bulk, and the exit codes: 0 success, 1 operation failed (unknown id,
//! no server), 2 usage or configuration error.

mod common;

use std::process::{Command, Output};

use common::*;
use serde_json::Value;

/// Three local domains; recipients in bulk.test go to the virtual queue
/// `bulk`. Delivery goes to a relay on a port nobody listens on, so nothing
/// leaves the queue while the test looks at it.
fn start() -> Server {
    let dead = free_port();
    Server::start(&format!(
        r#"[session.rcpt]
local-domains = ["local.test", "bulk.test", "other.test"]

[queue.virtual.bulk]
concurrency = 1

[queue.route.dead]
type = "relay"
address = "127.0.0.1"
port = {dead}

[queue.strategy]
queue = [ {{ if = "rcpt_domain == 'bulk.test'", then = "'bulk'" }}, {{ else = "'default'" }} ]
route = "'dead'"
"#
    ))
}

fn send(server: &Server, from: &str, to: &[&str], subject: &str) -> (String, Vec<u8>) {
    let mut c = server.client();
    c.ehlo();
    let body =
        format!("Subject: {subject}\r\nFrom: <{from}>\r\n\r\n{subject} body\r\n").into_bytes();
    let r = c.send_message(from, to, &body);
    (queued_id(&r), body)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn ok_json(out: Output) -> Value {
    assert!(
        out.status.success(),
        "exit {}: {}",
        out.status,
        text(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not one JSON document ({e}): {}", text(&out.stdout)))
}

fn ok_text(out: Output) -> String {
    assert!(
        out.status.success(),
        "exit {}: {}",
        out.status,
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// (message id, recipient address) pairs of a list document, sorted.
fn pairs(list: &Value) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = list["messages"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|m| {
            let id = m["id"].as_str().unwrap().to_string();
            m["recipients"]
                .as_array()
                .unwrap()
                .iter()
                .map(move |r| (id.clone(), r["address"].as_str().unwrap().to_string()))
        })
        .collect();
    v.sort();
    v
}

fn p(id: &str, a: &str) -> (String, String) {
    (id.to_string(), a.to_string())
}

fn sorted(mut v: Vec<(String, String)>) -> Vec<(String, String)> {
    v.sort();
    v
}

#[test]
fn list_filters_and_json_shape() {
    let server = start();
    let (m1, _) = send(
        &server,
        "alice@example.org",
        &["a1@local.test", "a2@bulk.test"],
        "one",
    );
    let (m2, _) = send(&server, "bob@example.net", &["b@bulk.test"], "two");
    let (m3, _) = send(&server, "carol@example.org", &["c@other.test"], "three");

    let all = server.queue_json();
    assert_eq!(all["recipients"], 4, "{all}");
    assert_eq!(
        queue_ids(&all),
        vec![m1.clone(), m2.clone(), m3.clone()],
        "oldest first"
    );
    let m = &all["messages"][0];
    assert_eq!(m["id"].as_str().unwrap().len(), 16, "{m}");
    assert!(
        m["id"]
            .as_str()
            .unwrap()
            .chars()
            .all(|c| c.is_ascii_hexdigit())
    );
    assert_eq!(m["sender"], "alice@example.org");
    assert!(m["size"].as_u64().unwrap() > 0);
    assert!(
        m["arrived"].as_u64().unwrap() > 1_600_000_000_000,
        "milliseconds: {m}"
    );
    assert_eq!(m["source"], "smtp");
    assert_eq!(m["body"], "7BIT");
    assert_eq!(m["smtputf8"], false);
    assert_eq!(m["mt_priority"], 0);
    assert_eq!(m["remote_ip"], "127.0.0.1");
    let r = &m["recipients"][1];
    assert_eq!(r["index"], 1, "{r}");
    assert_eq!(r["address"], "a2@bulk.test");
    assert_eq!(
        r["queue"], "bulk",
        "the strategy sends bulk.test to 'bulk': {r}"
    );
    assert_eq!(m["recipients"][0]["queue"], "default");
    assert_eq!(r["notify"], serde_json::json!([]));
    assert_eq!(r["held"], false);
    assert!(
        r["lane"].is_string() && r["due"].is_u64() && r["attempts"].is_u64(),
        "{r}"
    );
    assert!(r["weight"].is_i64(), "{r}");

    let list = |args: &[&str]| {
        let mut a = vec!["queue", "list", "--json"];
        a.extend_from_slice(args);
        ok_json(server.cli(&a))
    };
    assert_eq!(
        pairs(&list(&["--queue", "bulk"])),
        sorted(vec![p(&m1, "a2@bulk.test"), p(&m2, "b@bulk.test")]),
        "--queue lists only that queue's recipients"
    );
    assert_eq!(list(&["--queue", "bulk"])["recipients"], 2);
    assert_eq!(
        pairs(&list(&["--queue", "default"])),
        sorted(vec![p(&m1, "a1@local.test"), p(&m3, "c@other.test")])
    );
    assert_eq!(pairs(&list(&["--queue", "nosuch"])), vec![]);
    assert_eq!(
        pairs(&list(&["--sender", "alice"])),
        sorted(vec![p(&m1, "a1@local.test"), p(&m1, "a2@bulk.test")])
    );
    assert_eq!(
        queue_ids(&list(&["--sender", "EXAMPLE.ORG"])),
        vec![m1.clone(), m3.clone()],
        "--sender is a case-insensitive substring"
    );
    assert_eq!(
        pairs(&list(&["--rcpt", "bulk"])),
        sorted(vec![p(&m1, "a2@bulk.test"), p(&m2, "b@bulk.test")]),
        "--rcpt is a substring of the recipient"
    );
    assert_eq!(
        pairs(&list(&["--rcpt", "c@oth"])),
        vec![p(&m3, "c@other.test")]
    );
    assert_eq!(
        pairs(&list(&["--sender", "example.org", "--rcpt", "bulk"])),
        vec![p(&m1, "a2@bulk.test")],
        "filters combine"
    );
    // As the bulk actions select (README: `queue list` takes their filters).
    assert_eq!(
        pairs(&list(&["--rcpt-domain", "bulk.test"])),
        sorted(vec![p(&m1, "a2@bulk.test"), p(&m2, "b@bulk.test")]),
        "--rcpt-domain is the recipient's whole domain"
    );
    assert_eq!(pairs(&list(&["--rcpt-domain", "bulk"])), vec![]);

    // The human listing names every message and recipient.
    let human = ok_text(server.cli(&["queue", "list"]));
    for want in [
        m1.as_str(),
        m2.as_str(),
        m3.as_str(),
        "<alice@example.org>",
        "a2@bulk.test",
        "3 message(s), 4 recipient(s)",
    ] {
        assert!(human.contains(want), "missing {want:?} in:\n{human}");
    }
}

#[test]
fn show_and_cat() {
    let server = start();
    let (id, body) = send(
        &server,
        "alice@example.org",
        &["a1@local.test", "a2@bulk.test"],
        "show me",
    );

    let m = ok_json(server.cli(&["queue", "show", &id, "--json"]));
    assert_eq!(m["id"], id.as_str());
    assert_eq!(m["sender"], "alice@example.org");
    assert_eq!(m["recipients"].as_array().unwrap().len(), 2);
    assert_eq!(
        m["size"].as_u64().unwrap() as usize,
        server.contents(&id).len(),
        "size is the stored size"
    );

    let human = ok_text(server.cli(&["queue", "show", &id]));
    for want in [
        format!("id:          {id}"),
        "sender:      <alice@example.org>".to_string(),
        "source:      smtp".to_string(),
        "client:      [127.0.0.1]".to_string(),
        "a1@local.test".to_string(),
        "a2@bulk.test".to_string(),
        "queue=bulk".to_string(),
        "held=false".to_string(),
    ] {
        assert!(human.contains(&want), "missing {want:?} in:\n{human}");
    }

    let stored = ok_text(server.cli(&["queue", "cat", &id]));
    assert!(
        stored.starts_with("Received: from client.test ([127.0.0.1])"),
        "{stored}"
    );
    assert!(
        stored.contains(&format!(" id {id}")),
        "Received names the queue id: {stored}"
    );
    assert_eq!(strip_received(stored.as_bytes()), body.as_slice());

    // Unknown (well-formed) id: operation failed, exit 1, message on stderr.
    let out = server.cli(&["queue", "show", "0000000000000001"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        out.stdout.is_empty(),
        "nothing on stdout: {}",
        text(&out.stdout)
    );
    let err = text(&out.stderr);
    assert!(
        err.contains("0000000000000001") && err.contains("no message"),
        "{err}"
    );
    let out = server.cli(&["queue", "show", "0000000000000001", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let out = server.cli(&["queue", "cat", "0000000000000001"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(!out.stderr.is_empty());
    // A malformed id is a usage error (exit 2), with a message.
    let out = server.cli(&["queue", "show", "not-an-id"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("not-an-id"),
        "{}",
        text(&out.stderr)
    );
}

fn held(server: &Server, id: &str) -> Vec<bool> {
    let m = ok_json(server.cli(&["queue", "show", id, "--json"]));
    m["recipients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["held"].as_bool().unwrap())
        .collect()
}

#[test]
fn hold_release_cancel_by_id() {
    let server = start();
    let (m1, _) = send(
        &server,
        "a@example.org",
        &["x@local.test", "y@bulk.test"],
        "one",
    );
    let (m2, _) = send(&server, "b@example.org", &["z@local.test"], "two");

    let out = ok_text(server.cli(&["queue", "hold", &m1]));
    assert!(out.contains("hold: 2 recipient(s)"), "{out}");
    assert_eq!(held(&server, &m1), [true, true]);
    assert_eq!(
        held(&server, &m2),
        [false],
        "only the named message is held"
    );
    let human = ok_text(server.cli(&["queue", "show", &m1]));
    assert!(human.contains("held=true"), "{human}");
    assert!(ok_text(server.cli(&["queue", "list"])).contains("HELD"));

    let out = ok_text(server.cli(&["queue", "release", &m1]));
    assert!(out.contains("release: 2 recipient(s)"), "{out}");
    assert_eq!(held(&server, &m1), [false, false]);

    let out = ok_text(server.cli(&["queue", "retry", &m1, &m2]));
    assert!(out.contains("retry: 3 recipient(s)"), "{out}");

    let out = ok_text(server.cli(&["queue", "cancel", &m1]));
    assert!(out.contains("cancel: 2 recipient(s)"), "{out}");
    assert!(out.contains("removed 1 message(s)"), "{out}");
    assert_eq!(queue_ids(&server.queue_json()), vec![m2.clone()]);
    let out = server.cli(&["queue", "show", &m1]);
    assert_eq!(out.status.code(), Some(1), "show of a cancelled message");
    let out = server.cli(&["queue", "cat", &m1]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "the contents of a cancelled message must be gone: {}",
        text(&out.stdout)
    );
    // The other message is untouched.
    assert!(strip_received(&server.contents(&m2)).starts_with(b"Subject: two"));

    // JSON form of an action.
    let r = ok_json(server.cli(&["queue", "hold", &m2, "--json"]));
    assert_eq!(r["recipients"], 1, "{r}");
    assert_eq!(r["removed_messages"], 0, "{r}");
}

#[test]
fn bulk_actions() {
    let server = start();
    let (m1, _) = send(
        &server,
        "a@example.org",
        &["x@local.test", "y@bulk.test"],
        "one",
    );
    let (m2, _) = send(&server, "b@example.org", &["z@bulk.test"], "two");
    let (m3, _) = send(&server, "c@example.org", &["w@other.test"], "three");

    let out = ok_text(server.cli(&["queue", "hold", "--all"]));
    assert!(out.contains("hold: 4 recipient(s)"), "{out}");
    for id in [&m1, &m2, &m3] {
        assert!(held(&server, id).iter().all(|h| *h), "{id} held");
    }
    let out = ok_text(server.cli(&["queue", "release", "--queue", "bulk"]));
    assert!(out.contains("release: 2 recipient(s)"), "{out}");
    assert_eq!(held(&server, &m1), [true, false]);
    assert_eq!(held(&server, &m2), [false]);
    assert_eq!(held(&server, &m3), [true]);

    // Cancel one domain: m2 (only bulk.test) disappears with its contents; m1
    // loses one recipient but keeps its contents.
    let out = ok_text(server.cli(&["queue", "cancel", "--rcpt-domain", "bulk.test"]));
    assert!(out.contains("cancel: 2 recipient(s)"), "{out}");
    assert!(out.contains("removed 1 message(s)"), "{out}");
    let list = server.queue_json();
    assert_eq!(
        pairs(&list),
        sorted(vec![p(&m1, "x@local.test"), p(&m3, "w@other.test")]),
        "{list}"
    );
    assert_eq!(server.cli(&["queue", "cat", &m2]).status.code(), Some(1));
    assert!(
        strip_received(&server.contents(&m1)).starts_with(b"Subject: one"),
        "a partly cancelled message keeps its contents"
    );
}

/// Postfix's `postsuper -d ALL hold` and `postqueue -p` by lane: `--lane`
/// selects held (or pending, or deferred) recipients alone or with the
/// other filters.
#[test]
fn bulk_actions_select_by_lane() {
    let server = start();
    let (m1, _) = send(
        &server,
        "a@example.org",
        &["x@local.test", "y@bulk.test"],
        "one",
    );
    let (m2, _) = send(&server, "b@example.org", &["w@other.test"], "two");
    ok_text(server.cli(&["queue", "hold", &m1]));

    let held = ok_json(server.cli(&["queue", "list", "--lane", "held", "--json"]));
    assert_eq!(
        pairs(&held),
        sorted(vec![p(&m1, "x@local.test"), p(&m1, "y@bulk.test")]),
        "{held}"
    );
    let bulk_held = ok_json(server.cli(&[
        "queue", "list", "--lane", "held", "--queue", "bulk", "--json",
    ]));
    assert_eq!(pairs(&bulk_held), vec![p(&m1, "y@bulk.test")]);

    let out = ok_text(server.cli(&["queue", "cancel", "--lane", "held"]));
    assert!(out.contains("cancel: 2 recipient(s)"), "{out}");
    assert!(out.contains("removed 1 message(s)"), "{out}");
    assert_eq!(queue_ids(&server.queue_json()), vec![m2]);

    let bad = server.cli(&["queue", "list", "--lane", "stuck"]);
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");
    let (status, body) = server.api_get("/api/queue/messages?lane=stuck");
    assert_eq!(status, 400, "{}", text(&body));
}

#[test]
fn bulk_action_without_selection_is_a_usage_error() {
    let server = start();
    send(&server, "a@example.org", &["x@local.test"], "one");
    for action in ["cancel", "hold", "release", "retry"] {
        let out = server.cli(&["queue", action]);
        assert!(
            !out.status.success(),
            "queue {action} with no selection succeeded"
        );
        assert!(text(&out.stderr).contains("--all"), "{}", text(&out.stderr));
        assert_eq!(
            out.status.code(),
            Some(2),
            "INTERFACE.md: a usage error exits 2 (queue {action}: {})",
            text(&out.stderr)
        );
    }
    let list = server.queue_json();
    assert_eq!(queue_ids(&list).len(), 1, "nothing was cancelled");
    assert_eq!(
        list["messages"][0]["recipients"][0]["held"], false,
        "nothing was held"
    );
}

#[test]
fn no_server_running_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ferrymail.toml");
    let mgmt = free_port();
    std::fs::write(&config, base_config(dir.path(), free_port(), mgmt, "")).unwrap();
    let out = Command::new(bin())
        .args(["queue", "list", "-c"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("cannot reach the management listener") && err.contains(&mgmt.to_string()),
        "the message should say the server is not reachable, and where: {err}"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn bad_config_exits_2_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(
        &config,
        "[server]\nhostname = \"mx.ferry.test\"\n\n[session.rcpt]\nmax-recipients = \"many\"\n",
    )
    .unwrap();
    let out = Command::new(bin())
        .args(["queue", "list", "-c"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    let prefix = format!("{}:5:", config.display());
    assert!(err.starts_with(&prefix), "want {prefix:?}, got: {err}");
    assert!(err.contains("max-recipients"), "{err}");
}

#[test]
fn action_on_an_unknown_id_fails() {
    let server = start();
    for action in ["hold", "release", "retry", "cancel"] {
        let out = server.cli(&["queue", action, "0000000000000001"]);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{action}: {}",
            text(&out.stderr)
        );
        assert!(
            text(&out.stderr).contains("no message 0000000000000001"),
            "{action}: {}",
            text(&out.stderr)
        );
    }
}

#[test]
fn bulk_action_shows_progress_on_a_terminal() {
    require("script");
    let server = start();
    for i in 0..3 {
        send(
            &server,
            "p@example.org",
            &["a@local.test", "b@other.test"],
            &format!("p{i}"),
        );
    }
    // `script` gives the command a pseudo-terminal, as an operator's shell would.
    let cmd = format!("{} queue hold --all -c {}", bin(), server.config.display());
    let out = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .output()
        .unwrap();
    let shown = text(&out.stdout);
    assert!(out.status.success(), "{shown}");
    assert!(
        shown.contains("hold [##############################] 6/6 recipients"),
        "no finished progress bar in: {shown:?}"
    );
    assert!(shown.contains("hold: 6 recipient(s)"), "{shown:?}");
    // Without a terminal there is no bar, only the summary.
    let out = server.cli(&["queue", "release", "--all"]);
    assert!(out.status.success());
    assert_eq!(text(&out.stderr), "");
    assert_eq!(text(&out.stdout), "release: 6 recipient(s)\n");
}
