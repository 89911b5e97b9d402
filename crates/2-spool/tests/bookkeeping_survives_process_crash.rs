//! The embedded store does not fsync delivery bookkeeping (completions,
//! deferrals): it hands it to the operating system and syncs it later (see
//! "What waits for the disk" in `embedded/mod.rs`). That is only safe if a
//! crash of the *process* loses none of it. This test proves it with a real
//! crash: a child process (this test binary, run again) makes the changes
//! and aborts the instant they are acknowledged, long before the writer's
//! idle sync could run; the parent then reopens the store and finds every
//! change there. Leases are kept in memory only ("Leases live in memory"):
//! after the crash the recipient that was leased is free again, as a
//! restarted node's own leases are.

use std::process::Command;

use ferrymail_spool::conformance::{sample_entries, sample_envelope};
use ferrymail_spool::embedded::EmbeddedStore;
use ferrymail_spool::{DataStore, Deferral, EntryKey, Lane, MessageId, NodeId};

const CHILD_DIR: &str = "FERRYMAIL_CRASH_CHILD_DIR";
const NODE: NodeId = NodeId(7);
const T0: u64 = 1_700_000_000_000;

/// In the child: accept one message of three recipients, then complete the
/// first, defer the second and leave the third leased, and abort at once.
async fn child(dir: &str) -> ! {
    let store = EmbeddedStore::open(std::path::Path::new(dir)).unwrap();
    let env = sample_envelope(42, 3);
    store
        .insert(&env, &sample_entries(&env, "default", T0))
        .await
        .unwrap();
    let keys: Vec<EntryKey> = (0..3)
        .map(|rcpt| EntryKey {
            message: MessageId(42),
            rcpt,
        })
        .collect();
    let claimed = store
        .claim_keys(NODE, &keys, T0, T0 + 60_000)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 3);
    store.complete(NODE, keys[0], None).await.unwrap();
    store
        .defer(
            NODE,
            keys[1],
            &Deferral {
                due: T0 + 3_600_000,
                last_error: "451 4.3.0 try later".into(),
                notify_count: 0,
                notice: None,
                attempted: true,
            },
        )
        .await
        .unwrap();
    // No unwinding, no destructors, no idle sync: the process just dies.
    std::process::abort();
}

#[test]
fn bookkeeping_survives_process_crash() {
    if let Ok(dir) = std::env::var(CHILD_DIR) {
        tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(child(&dir));
    }
    let dir = tempfile::tempdir().unwrap();
    let status = Command::new(std::env::current_exe().unwrap())
        .args([
            "bookkeeping_survives_process_crash",
            "--exact",
            "--nocapture",
        ])
        .env(CHILD_DIR, dir.path())
        .status()
        .unwrap();
    assert!(
        !status.success(),
        "the child must crash, not exit: {status}"
    );

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let entries = store.entries(MessageId(42)).await.unwrap();
        let rcpts: Vec<u32> = entries.iter().map(|e| e.key.rcpt).collect();
        assert_eq!(rcpts, vec![1, 2], "the completed recipient stays gone");
        let deferred = &entries[0];
        assert_eq!(deferred.lane, Lane::Deferred);
        assert_eq!(deferred.due, T0 + 3_600_000);
        assert_eq!(deferred.attempts, 1);
        assert_eq!(deferred.last_error.as_deref(), Some("451 4.3.0 try later"));
        assert_eq!(deferred.lease, None);
        let leased = &entries[1];
        assert_eq!(leased.lease, None, "a lease does not outlive the process");
        assert_eq!(leased.attempts, 0);
        // ... so any owner may take it at once.
        let other = NodeId(8);
        let got = store
            .claim_keys(other, &[leased.key], T0, T0 + 60_000)
            .await
            .unwrap();
        assert_eq!(got.len(), 1);
    });
}
