//! The PostgreSQL store against a real PostgreSQL 15: the conformance suite
//! (unified, two separate PostgreSQL stores, and PostgreSQL data with
//! embedded contents or contents in files), migrations, connection loss and TLS.
//!
//! The server is the one `scripts/test` starts (see
//! `scripts/postgres-test-server`); it exports its URL as
//! `FERRYMAIL_TEST_PG_URL` and its CA certificate as `FERRYMAIL_TEST_PG_CA`.
//! Without them these tests fail, saying so: they are never skipped. Each
//! test works in a schema of its own, dropped at the end.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::net::{TcpListener, TcpStream};
use tokio_postgres::NoTls;

use super::*;
use crate::conformance::{TestStores, sample_entries, sample_envelope};

/// The test server's URL, or a failure that says how to get one.
fn test_env(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!(
            "{var} is not set: the PostgreSQL tests need the PostgreSQL 15 that scripts/test \
             starts. Run scripts/test (e.g. scripts/test -E 'test(postgres) | binary(/postgres/)'), or start one \
             with `eval \"$(scripts/postgres-test-server start /tmp/ferry-pg)\"` and run \
             cargo nextest in that shell."
        )
    })
}

fn test_url() -> String {
    test_env("FERRYMAIL_TEST_PG_URL")
}

/// Adds query parameter `kv` to `url`.
fn with_param(url: &str, kv: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{kv}")
}

async fn admin() -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(&test_url(), NoTls)
        .await
        .expect("connect to the test PostgreSQL");
    tokio::spawn(conn);
    client
}

/// A schema of its own for one test, dropped when the guard is.
struct Schema {
    name: String,
}

impl Schema {
    async fn new() -> Schema {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "t_{}_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed),
            now_millis() % 1_000_000
        );
        admin()
            .await
            .batch_execute(&format!("CREATE SCHEMA {name}"))
            .await
            .expect("create test schema");
        Schema { name }
    }

    /// The URL of the test server with this schema first in `search_path`,
    /// and this schema's name as `application_name` (to find its backends).
    fn url(&self) -> String {
        self.url_of(&test_url())
    }

    fn url_of(&self, base: &str) -> String {
        with_param(
            &with_param(base, &format!("options=-csearch_path%3D{}", self.name)),
            &format!("application_name={}", self.name),
        )
    }

    async fn open(&self, pool_size: usize) -> Arc<PgStore> {
        PgStore::open(&PgOptions {
            url: self.url(),
            pool_size,
            tls: false,
        })
        .await
        .expect("open PostgreSQL store")
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        // The test's runtime may be shutting down: use a thread of our own.
        let sql = format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name);
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok((c, conn)) = tokio_postgres::connect(&test_url(), NoTls).await {
                    tokio::spawn(conn);
                    let _ = c.batch_execute(&sql).await;
                }
            });
        })
        .join();
    }
}

async fn make() -> TestStores {
    let schema = Schema::new().await;
    let s = schema.open(4).await;
    TestStores {
        data: s.clone(),
        blob: s,
        unified: true,
        guard: Box::new(schema),
    }
}

crate::conformance_suite!(make);

/// Data and contents in two PostgreSQL stores (two schemas), as when
/// `[storage] data` and `blob` name different stores.
mod separate {
    use super::*;

    async fn make() -> TestStores {
        let (a, b) = (Schema::new().await, Schema::new().await);
        let (data, blob) = (a.open(4).await, b.open(4).await);
        TestStores {
            data,
            blob,
            unified: false,
            guard: Box::new((a, b)),
        }
    }

    crate::conformance_suite!(make);
}

/// PostgreSQL data with contents in an embedded store.
mod with_embedded_blobs {
    use super::*;
    use crate::embedded::EmbeddedStore;

    async fn make() -> TestStores {
        let schema = Schema::new().await;
        let dir = tempfile::tempdir().unwrap();
        let data = schema.open(4).await;
        let blob = EmbeddedStore::open(dir.path()).unwrap();
        TestStores {
            data,
            blob,
            unified: false,
            guard: Box::new((schema, dir)),
        }
    }

    crate::conformance_suite!(make);
}

/// PostgreSQL data with contents in files (`[storage] blob` an `fs` store).
mod with_fs_blobs {
    use super::*;
    use crate::fs::FsBlobStore;

    async fn make() -> TestStores {
        let schema = Schema::new().await;
        let dir = tempfile::tempdir().unwrap();
        let data = schema.open(4).await;
        let blob = FsBlobStore::open(dir.path()).await.unwrap();
        TestStores {
            data,
            blob,
            unified: false,
            guard: Box::new((schema, dir)),
        }
    }

    crate::conformance_suite!(make);
}

/// The schema is created once and recorded; opening again changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_are_versioned_and_idempotent() {
    let schema = Schema::new().await;
    let env = sample_envelope(5, 1);
    {
        let s = schema.open(2).await;
        s.insert(&env, &sample_entries(&env, "q", 1)).await.unwrap();
    }
    let s = schema.open(2).await;
    assert_eq!(s.entries(env.id).await.unwrap().len(), 1, "data kept");
    let rows = admin()
        .await
        .query(
            &format!(
                "SELECT version, name FROM {}.schema_version ORDER BY version",
                schema.name
            ),
            &[],
        )
        .await
        .unwrap();
    let versions: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
    let expected: Vec<i32> = schema::MIGRATIONS.iter().map(|m| m.version).collect();
    assert_eq!(versions, expected);
}

/// A database the previous release made (schema version 1, version-1
/// envelope records) is migrated with its queue: the entry reads back with
/// no notice owed, is still claimable, and can then be completed with a
/// notice owed and discharged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_1_database_upgrades_with_its_queue() {
    let schema = Schema::new().await;
    let env = sample_envelope(9, 1);
    let old = admin().await;
    old.batch_execute(&format!(
        "SET search_path TO {s};
         CREATE TABLE schema_version (
             version integer PRIMARY KEY, name text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now());
         {m1}
         INSERT INTO schema_version (version, name) VALUES (1, 'release 1');",
        s = schema.name,
        m1 = schema::MIGRATIONS[0].sql
    ))
    .await
    .unwrap();
    let record = crate::codec::encode_as(1, &env);
    old.execute(
        "INSERT INTO envelope (message, record) VALUES ($1, $2)",
        &[&sql_id(env.id), &record],
    )
    .await
    .unwrap();
    old.execute(
        "INSERT INTO entry (message, rcpt, queue, schedule, route, lane, held, due,
                            attempts, weight, last_error, notify_count)
         VALUES ($1, 0, 'q', 'default', 'mx', 1, false, 5, 2, 0, '451 later', 0)",
        &[&sql_id(env.id)],
    )
    .await
    .unwrap();

    let s = schema.open(2).await;
    assert_eq!(s.envelope(env.id).await.unwrap(), Some(env.clone()));
    let e = s.entries(env.id).await.unwrap().remove(0);
    assert_eq!((e.attempts, e.notice.clone()), (2, None));
    let key = e.key;
    let got = s
        .claim(&Claim {
            owner: NodeId(1),
            queue: None,
            lane: Lane::Deferred,
            now: 10,
            lease_until: 1_000,
            limit: 10,
        })
        .await
        .unwrap();
    assert_eq!(got.len(), 1, "still claimable after the migration");
    let notice = crate::conformance::sample_notice(None, 3);
    assert_eq!(
        s.complete(NodeId(1), key, Some(&notice))
            .await
            .unwrap()
            .remaining,
        1
    );
    assert_eq!(
        s.entries(env.id).await.unwrap()[0].notice.as_ref(),
        Some(&notice)
    );
    assert_eq!(
        s.discharge(&[Discharge {
            key,
            slot: NoticeSlot::Final
        }])
        .await
        .unwrap(),
        vec![env.id]
    );
}

/// Nodes starting together migrate once between them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_opens_migrate_once() {
    let schema = Schema::new().await;
    let url = schema.url();
    let opens: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                PgStore::open(&PgOptions {
                    url,
                    pool_size: 1,
                    tls: false,
                })
                .await
                .map(|_| ())
            })
        })
        .collect();
    for o in opens {
        o.await.unwrap().expect("every node opens");
    }
    let n: i64 = admin()
        .await
        .query_one(
            &format!("SELECT count(*) FROM {}.schema_version", schema.name),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n as usize, schema::MIGRATIONS.len());
}

/// A database migrated by a newer release is refused, not misread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newer_schema_is_refused() {
    let schema = Schema::new().await;
    drop(schema.open(1).await);
    admin()
        .await
        .batch_execute(&format!(
            "INSERT INTO {}.schema_version (version, name) VALUES (999, 'from the future')",
            schema.name
        ))
        .await
        .unwrap();
    let err = PgStore::open(&PgOptions {
        url: schema.url(),
        pool_size: 1,
        tls: false,
    })
    .await
    .err()
    .expect("open refused");
    assert!(err.to_string().contains("version 999"), "{err}");
}

/// A message id that exists is refused, never overwritten: two nodes could
/// mint the same id, and one must not replace the other's message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn existing_ids_are_refused_not_overwritten() {
    let schema = Schema::new().await;
    let s = schema.open(2).await;
    let env = sample_envelope(9, 1);
    let contents = Bytes::from_static(b"first");
    s.insert_with_contents(&env, &sample_entries(&env, "q", 1), contents.clone())
        .await
        .unwrap();
    let mut other = sample_envelope(9, 2);
    other.sender = "someone-else@example.org".into();
    let other_entries = sample_entries(&other, "other", 2);
    assert!(
        s.insert_with_contents(&other, &other_entries, Bytes::from_static(b"second"))
            .await
            .is_err()
    );
    assert!(s.insert(&other, &other_entries).await.is_err());
    assert!(s.put(env.id, Bytes::from_static(b"second")).await.is_err());
    assert_eq!(s.envelope(env.id).await.unwrap(), Some(env.clone()));
    assert_eq!(
        s.entries(env.id).await.unwrap(),
        sample_entries(&env, "q", 1)
    );
    assert_eq!(s.get(env.id).await.unwrap(), Some(contents));
}

/// How many backends the store of `schema` has open.
async fn backends(schema: &Schema) -> i64 {
    admin()
        .await
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
            &[&schema.name],
        )
        .await
        .unwrap()
        .get(0)
}

/// Concurrent inserts run on concurrent connections (up to the pool size),
/// not one after another on one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_inserts_use_several_connections() {
    let schema = Schema::new().await;
    let s = schema.open(6).await;
    // Hold a lock every insert needs, so they pile up and must each have a
    // connection of their own to wait on.
    let blocker = admin().await;
    blocker.batch_execute("BEGIN").await.unwrap();
    blocker
        .batch_execute(&format!(
            "LOCK TABLE {}.envelope IN SHARE MODE",
            schema.name
        ))
        .await
        .unwrap();
    let tasks: Vec<_> = (0..6u64)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                let env = sample_envelope(100 + i, 1);
                s.insert(&env, &sample_entries(&env, "q", 1)).await
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    let waiting = loop {
        let n: i64 = admin()
            .await
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 \
                 AND wait_event_type = 'Lock'",
                &[&schema.name],
            )
            .await
            .unwrap()
            .get(0);
        if n == 6 || Instant::now() > deadline {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    blocker.batch_execute("COMMIT").await.unwrap();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(waiting, 6, "six inserts waiting at once on six connections");
    assert!(backends(&schema).await >= 6);
    assert_eq!(s.scan(None, 100).await.unwrap().len(), 6, "all landed");
}

/// Every backend of the store is killed (as a database restart does): the
/// next operations reconnect by themselves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_after_connections_are_killed() {
    let schema = Schema::new().await;
    let s = schema.open(3).await;
    let env = sample_envelope(7, 2);
    s.insert(&env, &sample_entries(&env, "q", 1)).await.unwrap();
    s.put(env.id, Bytes::from_static(b"body")).await.unwrap();
    assert!(backends(&schema).await >= 1);
    admin()
        .await
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
            &[&schema.name],
        )
        .await
        .unwrap();
    // Give the client a moment to see the connections close, as it would
    // during a restart; then everything works again without a restart of ours.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(s.entries(env.id).await.unwrap().len(), 2);
    assert_eq!(
        s.get(env.id).await.unwrap(),
        Some(Bytes::from_static(b"body"))
    );
    let env2 = sample_envelope(8, 1);
    s.insert_with_contents(
        &env2,
        &sample_entries(&env2, "q", 1),
        Bytes::from_static(b"x"),
    )
    .await
    .unwrap();
    assert_eq!(s.scan(None, 10).await.unwrap().len(), 3);
}

/// A TCP relay to the test server that can be switched off, dropping every
/// connection through it: the database "goes down" and "comes back" as far
/// as the store can tell, without disturbing other tests.
struct Relay {
    port: u16,
    up: Arc<AtomicBool>,
    conns: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Relay {
    async fn start(upstream: (String, u16)) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let conns: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let (up2, conns2) = (up.clone(), conns.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                if !up2.load(Ordering::SeqCst) {
                    continue; // dropped: the client sees the connection close
                }
                let upstream = upstream.clone();
                let h = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                conns2.lock().unwrap().push(h);
            }
        });
        Relay { port, up, conns }
    }

    fn down(&self) {
        self.up.store(false, Ordering::SeqCst);
        for h in self.conns.lock().unwrap().drain(..) {
            h.abort();
        }
    }

    fn up(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

/// Host and port of the test server's URL.
fn test_server_addr() -> (String, u16) {
    let config: tokio_postgres::Config = test_url().parse().unwrap();
    let host = match &config.get_hosts()[0] {
        tokio_postgres::config::Host::Tcp(h) => h.clone(),
        other => panic!("the test server must be reached over TCP, not {other:?}"),
    };
    (host, config.get_ports().first().copied().unwrap_or(5432))
}

/// While the database is unreachable every operation fails promptly with a
/// StoreError (receive turns it into 451 4.3.0); when it is back, the same
/// store works again and nothing acknowledged before was lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_outage_fails_operations_then_recovers() {
    let schema = Schema::new().await;
    let relay = Relay::start(test_server_addr()).await;
    let config: tokio_postgres::Config = test_url().parse().unwrap();
    let url = schema.url_of(&format!(
        "postgresql://{}@127.0.0.1:{}/{}",
        config.get_user().unwrap_or("postgres"),
        relay.port,
        config.get_dbname().unwrap_or("postgres")
    ));
    let s = PgStore::open(&PgOptions {
        url,
        pool_size: 3,
        tls: false,
    })
    .await
    .unwrap();
    let spool = crate::Spool {
        data: s.clone(),
        blob: s.clone(),
        unified: true,
    };
    let before = sample_envelope(1, 1);
    spool
        .accept(
            &before,
            &sample_entries(&before, "q", 1),
            Bytes::from_static(b"a"),
        )
        .await
        .unwrap();

    relay.down();
    let during = sample_envelope(2, 1);
    let started = Instant::now();
    for _ in 0..3 {
        let r = spool
            .accept(
                &during,
                &sample_entries(&during, "q", 1),
                Bytes::from_static(b"b"),
            )
            .await;
        assert!(matches!(r, Err(StoreError::Engine(_))), "{r:?}");
        assert!(s.scan(None, 10).await.is_err());
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "failures are prompt ({:?})",
        started.elapsed()
    );

    relay.up();
    spool
        .accept(
            &during,
            &sample_entries(&during, "q", 1),
            Bytes::from_static(b"b"),
        )
        .await
        .expect("works again once the database is back");
    let keys: Vec<MessageId> = s
        .scan(None, 10)
        .await
        .unwrap()
        .iter()
        .map(|e| e.key.message)
        .collect();
    assert_eq!(keys, vec![before.id, during.id]);
    assert_eq!(
        s.get(before.id).await.unwrap(),
        Some(Bytes::from_static(b"a"))
    );
}

/// With `tls = true` the connection is encrypted and the server's
/// certificate verified against `sslrootcert`; a server certificate nobody
/// vouches for is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_connections_are_encrypted_and_verified() {
    let ca = test_env("FERRYMAIL_TEST_PG_CA");
    let schema = Schema::new().await;
    let (_, port) = test_server_addr();
    let config: tokio_postgres::Config = test_url().parse().unwrap();
    // The test certificate is for "localhost".
    let base = format!(
        "postgresql://{}@localhost:{port}/{}",
        config.get_user().unwrap_or("postgres"),
        config.get_dbname().unwrap_or("postgres")
    );
    let url = with_param(&schema.url_of(&base), &format!("sslrootcert={ca}"));
    let s = PgStore::open(&PgOptions {
        url,
        pool_size: 2,
        tls: true,
    })
    .await
    .expect("open over TLS");
    let env = sample_envelope(3, 1);
    s.insert_with_contents(
        &env,
        &sample_entries(&env, "q", 1),
        Bytes::from_static(b"t"),
    )
    .await
    .unwrap();
    assert_eq!(s.envelope(env.id).await.unwrap(), Some(env));
    let row = admin()
        .await
        .query_one(
            "SELECT count(*), coalesce(bool_and(s.ssl), false) FROM pg_stat_ssl s \
             JOIN pg_stat_activity a USING (pid) WHERE a.application_name = $1",
            &[&schema.name],
        )
        .await
        .unwrap();
    let (n, all_tls): (i64, bool) = (row.get(0), row.get(1));
    assert!(n >= 1 && all_tls, "{n} connections, all TLS: {all_tls}");

    // Mozilla's roots do not vouch for the test CA.
    let err = PgStore::open(&PgOptions {
        url: schema.url_of(&base),
        pool_size: 1,
        tls: true,
    })
    .await
    .err()
    .expect("an unknown issuer is refused");
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );
}

#[test]
fn ids_keep_their_order_in_sql() {
    let ids = [0u64, 1, (1 << 62) + 5, (1 << 63) - 1, 1 << 63, u64::MAX];
    for w in ids.windows(2) {
        assert!(sql_id(MessageId(w[0])) < sql_id(MessageId(w[1])));
    }
    for id in ids {
        assert_eq!(id_from_sql(sql_id(MessageId(id))), MessageId(id));
    }
}

#[test]
fn sslrootcert_is_taken_out_of_the_url() {
    assert_eq!(
        take_param(
            "postgresql://u@h/db?sslrootcert=%2Fetc%2Fca.pem&application_name=x",
            "sslrootcert"
        ),
        (
            "postgresql://u@h/db?application_name=x".to_string(),
            Some("/etc/ca.pem".to_string())
        )
    );
    assert_eq!(
        take_param("postgresql://u@h/db?sslrootcert=/ca.pem", "sslrootcert"),
        (
            "postgresql://u@h/db".to_string(),
            Some("/ca.pem".to_string())
        )
    );
    assert_eq!(
        take_param("postgresql://u@h/db", "sslrootcert"),
        ("postgresql://u@h/db".to_string(), None)
    );
}

// ---------------------------------------------------------------- cluster

/// Message ids and the entry keys of a feed batch, for comparisons.
fn fed(batch: &FeedBatch) -> Vec<(MessageId, Vec<u32>)> {
    batch
        .messages
        .iter()
        .map(|(id, es)| (*id, es.iter().map(|(e, _)| e.key.rcpt).collect()))
        .collect()
}

/// Reads the feed until it has nothing more.
async fn read_all(s: &PgStore, cursor: &mut FeedCursor, page: usize) -> FeedBatch {
    let mut all = FeedBatch::default();
    loop {
        let b = s.feed_read(cursor, page).await.unwrap();
        all.messages.extend(b.messages);
        all.expedite.extend(b.expedite);
        if !b.more {
            return all;
        }
    }
}

/// Two nodes on one schema: each reads what the other changed (accepted,
/// completed, cancelled, flushed), once, with recipient domains, and never
/// its own changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feed_reads_other_nodes_changes_once_and_skips_its_own() {
    let schema = Schema::new().await;
    let (a, b) = (schema.open(2).await, schema.open(2).await);
    let (na, nb) = (NodeId(0xa), NodeId(0xb));
    a.register_node("a", na).await.unwrap();
    b.register_node("b", nb).await.unwrap();
    let mut ca = a
        .feed_start()
        .await
        .unwrap()
        .expect("a shared store has a feed");
    let mut cb = b
        .feed_start()
        .await
        .unwrap()
        .expect("a shared store has a feed");

    let m1 = sample_envelope(1 << 30, 2);
    a.insert(&m1, &sample_entries(&m1, "q", 1)).await.unwrap();
    let m2 = sample_envelope(2 << 30, 1);
    b.insert(&m2, &sample_entries(&m2, "q", 1)).await.unwrap();

    let got = read_all(&b, &mut cb, 100).await;
    assert_eq!(
        fed(&got),
        vec![(m1.id, vec![0, 1])],
        "b reads a's message only"
    );
    let domains: Vec<&str> = got.messages[0].1.iter().map(|(_, d)| d.as_str()).collect();
    assert_eq!(domains, ["dest0.example", "dest1.example"]);
    assert_eq!(
        fed(&read_all(&a, &mut ca, 100).await),
        vec![(m2.id, vec![0])]
    );
    assert!(
        fed(&read_all(&b, &mut cb, 100).await).is_empty(),
        "nothing is read twice"
    );

    // a delivers one recipient, then cancels the other.
    let k0 = EntryKey {
        message: m1.id,
        rcpt: 0,
    };
    let k1 = EntryKey {
        message: m1.id,
        rcpt: 1,
    };
    assert_eq!(a.claim_keys(na, &[k0], 10, 1000).await.unwrap().len(), 1);
    a.complete(na, k0, None).await.unwrap();
    assert_eq!(
        fed(&read_all(&b, &mut cb, 100).await),
        vec![(m1.id, vec![1])]
    );
    a.cancel(&[k1]).await.unwrap();
    assert_eq!(
        fed(&read_all(&b, &mut cb, 100).await),
        vec![(m1.id, vec![])],
        "an empty list: the message is gone"
    );
    // b defers its own message: a hears of it.
    let k = EntryKey {
        message: m2.id,
        rcpt: 0,
    };
    b.claim_keys(nb, &[k], 10, 1000).await.unwrap();
    let deferral = Deferral {
        due: 5000,
        last_error: "4.0.0 try later".into(),
        notify_count: 0,
        notice: None,
        attempted: true,
    };
    b.defer(nb, k, &deferral).await.unwrap();
    let got = read_all(&a, &mut ca, 100).await;
    assert_eq!(fed(&got), vec![(m2.id, vec![0])]);
    assert_eq!(got.messages[0].1[0].0.due, 5000);
    assert_eq!(got.messages[0].1[0].0.lane, Lane::Deferred);
    // An operator's hold on b, then a flush on a.
    b.admin(&[k], AdminAction::Hold).await.unwrap();
    assert!(read_all(&a, &mut ca, 100).await.messages[0].1[0].0.held);
    a.announce_expedite("@example.org").await.unwrap();
    a.announce_expedite("").await.unwrap();
    let got = read_all(&b, &mut cb, 100).await;
    assert_eq!(got.expedite, ["@example.org", ""]);
    assert!(read_all(&a, &mut ca, 100).await.expedite.is_empty());
}

/// The pitfall of sequence watermarks: a transaction that took its place in
/// the change table first but commits last. Its change must still be read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feed_never_skips_a_change_that_commits_late() {
    let schema = Schema::new().await;
    let (a, b) = (schema.open(2).await, schema.open(2).await);
    a.register_node("a", NodeId(1)).await.unwrap();
    b.register_node("b", NodeId(2)).await.unwrap();
    let mut cb = b.feed_start().await.unwrap().unwrap();

    let (mut slow, conn) = tokio_postgres::connect(&schema.url(), NoTls).await.unwrap();
    tokio::spawn(conn);
    let tx = slow.transaction().await.unwrap();
    let late = MessageId(7 << 40);
    tx.execute(
        "INSERT INTO change (node, message) VALUES (1, $1)",
        &[&sql_id(late)],
    )
    .await
    .unwrap();
    let seq_late: i64 = tx
        .query_one("SELECT max(seq) FROM change", &[])
        .await
        .unwrap()
        .get(0);

    let early = sample_envelope(8 << 40, 1);
    a.insert(&early, &sample_entries(&early, "q", 1))
        .await
        .unwrap();
    assert_eq!(
        fed(&read_all(&b, &mut cb, 100).await),
        vec![(early.id, vec![0])]
    );
    let seq_early: i64 = admin()
        .await
        .query_one(&format!("SELECT max(seq) FROM {}.change", schema.name), &[])
        .await
        .unwrap()
        .get(0);
    assert!(
        seq_late < seq_early,
        "the late transaction holds the lower sequence number ({seq_late} < {seq_early})"
    );

    tx.commit().await.unwrap();
    assert_eq!(
        fed(&read_all(&b, &mut cb, 100).await),
        vec![(late, vec![])],
        "read once it commits, although a later sequence number was read before"
    );
    assert!(fed(&read_all(&b, &mut cb, 100).await).is_empty());
}

/// More changes than a page: read in pages, each change once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feed_pages_through_many_changes() {
    let schema = Schema::new().await;
    let (a, b) = (schema.open(2).await, schema.open(2).await);
    a.register_node("a", NodeId(1)).await.unwrap();
    b.register_node("b", NodeId(2)).await.unwrap();
    let mut cb = b.feed_start().await.unwrap().unwrap();
    let mut want = Vec::new();
    for i in 0..10u64 {
        let env = sample_envelope((i + 1) << 30, 1);
        a.insert(&env, &sample_entries(&env, "q", 1)).await.unwrap();
        want.push((env.id, vec![0]));
    }
    let first = b.feed_read(&mut cb, 3).await.unwrap();
    assert!(first.more, "10 changes do not fit a page of 3");
    let mut got = fed(&first);
    got.extend(fed(&read_all(&b, &mut cb, 3).await));
    assert_eq!(got, want);
}

/// Every node name gets its own message-id tag, the same one at every
/// start; a node id registered under another name is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registered_node_tags_are_unique_and_stable() {
    let schema = Schema::new().await;
    let s = schema.open(2).await;
    let mut tags = Vec::new();
    for (i, name) in ["a", "b", "c", "d"].iter().enumerate() {
        tags.push(
            s.register_node(name, NodeId(100 + i as u64))
                .await
                .unwrap()
                .unwrap(),
        );
    }
    let mut unique = tags.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 4, "tags {tags:?}");
    assert!(tags.iter().all(|&t| t < 1024));
    // The first process ends (and with it its claims on the names).
    drop(s);
    let again = schema.open(2).await;
    assert_eq!(
        again.register_node("c", NodeId(102)).await.unwrap(),
        Some(tags[2]),
        "a restarted node keeps its tag"
    );
    let err = again.register_node("e", NodeId(101)).await.unwrap_err();
    assert!(
        err.to_string().contains("registered under another name"),
        "{err}"
    );
}

/// A node name is claimed by one process at a time: a second store
/// registering it while the first holds it is refused, naming the
/// problem; once the first is gone, the name can be registered again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_name_is_claimed_by_one_store_at_a_time() {
    let schema = Schema::new().await;
    let first = schema.open(2).await;
    let tag = first.register_node("x", NodeId(7)).await.unwrap();
    // The same store may register again (it keeps its claim).
    assert_eq!(first.register_node("x", NodeId(7)).await.unwrap(), tag);
    let second = schema.open(2).await;
    let err = second.register_node("x", NodeId(7)).await.unwrap_err();
    assert!(err.to_string().contains("already running"), "{err}");
    // Another name is free.
    second.register_node("y", NodeId(8)).await.unwrap();
    drop(first);
    assert_eq!(second.register_node("x", NodeId(7)).await.unwrap(), tag);
}

/// A claim held by a session that has gone silent (its machine died and
/// the database has not noticed) is taken over once it has been silent for
/// the stale time: the silent session is ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_claim_holder_is_taken_over() {
    let schema = Schema::new().await;
    // Register the name once to learn its tag, then let that process go.
    let tag = {
        let s = schema.open(2).await;
        s.register_node("z", NodeId(9)).await.unwrap().unwrap()
    };
    // A session that takes the claim and then says nothing.
    let (silent, conn) = tokio_postgres::connect(&schema.url(), NoTls).await.unwrap();
    let conn = tokio::spawn(conn);
    let key = crate::postgres::claim::lock_key(&silent, i32::from(tag))
        .await
        .unwrap();
    // The old session may still be on its way out: wait for the lock.
    silent
        .execute("SELECT pg_advisory_lock($1)", &[&key])
        .await
        .unwrap();
    let s = schema.open(2).await;
    s.set_claim_stale(std::time::Duration::from_secs(1));
    let t0 = std::time::Instant::now();
    assert_eq!(s.register_node("z", NodeId(9)).await.unwrap(), Some(tag));
    assert!(
        t0.elapsed() >= std::time::Duration::from_millis(900),
        "taken before the holder was silent for the stale time: {:?}",
        t0.elapsed()
    );
    // The silent session was ended.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), conn).await;
    assert!(silent.is_closed(), "the silent holder's session still runs");
}

/// A virtual queue's rate bucket is one for all nodes: what one node takes,
/// the other cannot; it starts full and refills by the database's clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_tokens_are_shared_between_nodes() {
    let schema = Schema::new().await;
    let (a, b) = (schema.open(2).await, schema.open(2).await);
    assert!(a.shared());
    let sec = Duration::from_secs(1);
    assert_eq!(
        a.take_tokens("q", 10, sec, 8).await.unwrap(),
        8,
        "starts full"
    );
    assert_eq!(
        b.take_tokens("q", 10, sec, 5).await.unwrap(),
        2,
        "what a took is gone"
    );
    assert_eq!(
        b.take_tokens("other", 10, sec, 5).await.unwrap(),
        5,
        "one bucket per queue"
    );
    let t = Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = a.take_tokens("q", 10, sec, 10).await.unwrap();
    let most = 3 + (t.elapsed().as_millis() as u32 - 300) / 100 + 1;
    assert!(
        (3..=most).contains(&got),
        "10/s for 300 ms: 3 tokens, got {got}"
    );
    // Two nodes taking at once never get more than the bucket holds.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (x, y) = tokio::join!(
        a.take_tokens("q", 10, sec, 10),
        b.take_tokens("q", 10, sec, 10)
    );
    let (x, y) = (x.unwrap(), y.unwrap());
    assert!(
        x + y <= 11,
        "a full bucket is 10 (+1 for time passing): {x} + {y}"
    );
    assert!(x + y >= 10);
}

/// Completing (or cancelling) the last entry removes the contents in the
/// same transaction: a node killed right after its complete leaves nothing
/// behind, although the caller's own delete of the contents never ran.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_complete_or_cancel_removes_the_contents_too() {
    let schema = Schema::new().await;
    let s = schema.open(2).await;
    let node = NodeId(1);
    let env = sample_envelope(3 << 30, 2);
    s.insert_with_contents(
        &env,
        &sample_entries(&env, "q", 1),
        Bytes::from_static(b"x"),
    )
    .await
    .unwrap();
    let keys: Vec<EntryKey> = (0..2)
        .map(|rcpt| EntryKey {
            message: env.id,
            rcpt,
        })
        .collect();
    s.claim_keys(node, &keys, 10, 1000).await.unwrap();
    assert_eq!(s.complete(node, keys[0], None).await.unwrap().remaining, 1);
    assert!(s.get(env.id).await.unwrap().is_some(), "one recipient left");
    assert_eq!(s.complete(node, keys[1], None).await.unwrap().remaining, 0);
    assert_eq!(
        s.get(env.id).await.unwrap(),
        None,
        "gone with the last entry"
    );

    let env = sample_envelope(4 << 30, 1);
    s.insert_with_contents(
        &env,
        &sample_entries(&env, "q", 1),
        Bytes::from_static(b"y"),
    )
    .await
    .unwrap();
    let key = EntryKey {
        message: env.id,
        rcpt: 0,
    };
    assert_eq!(s.cancel(&[key]).await.unwrap(), vec![env.id]);
    assert_eq!(s.get(env.id).await.unwrap(), None, "cancelled: gone too");
}

/// Two stores on one schema, as nodes 1 and 2 would have them, each giving
/// a recorded notice a 60 s hold (returned).
async fn two_nodes_holding_notices_60s() -> (Schema, Arc<PgStore>, Arc<PgStore>, Duration) {
    let schema = Schema::new().await;
    let (a, b) = (schema.open(2).await, schema.open(2).await);
    let hold = Duration::from_secs(60);
    a.set_notice_hold(hold);
    b.set_notice_hold(hold);
    (schema, a, b, hold)
}

/// `take_owed` (migration 4): a notice owed is its recording node's to send
/// until its hold lapses; a node starting takes back only its own; after
/// the lapse another node takes it over, exactly once; deferring again
/// without a new notice keeps the holder; a discharged notice is nobody's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owed_notices_pass_to_another_node_only_when_their_holder_lapses() {
    use crate::conformance::sample_notice;
    let (_schema, a, b, hold) = two_nodes_holding_notices_60s().await;
    let (na, nb) = (NodeId(1), NodeId(2));
    let env = sample_envelope(5 << 30, 3);
    a.insert(&env, &sample_entries(&env, "q", 1)).await.unwrap();
    let keys: Vec<EntryKey> = (0..3)
        .map(|rcpt| EntryKey {
            message: env.id,
            rcpt,
        })
        .collect();
    let lease_until = now_millis() + 600_000;
    a.claim_keys(na, &keys, now_millis(), lease_until)
        .await
        .unwrap();
    let deferral = |notice| Deferral {
        due: now_millis() + 3_600_000,
        last_error: "452 mailbox full".into(),
        notify_count: 1,
        notice,
        attempted: true,
    };
    // 0: failed, its final notice owed; 1: deferred with a delay notice
    // owed; 2: deferred, nothing owed.
    a.complete(na, keys[0], Some(&sample_notice(None, 1)))
        .await
        .unwrap();
    a.defer(na, keys[1], &deferral(Some(sample_notice(Some(1), 1))))
        .await
        .unwrap();
    a.defer(na, keys[2], &deferral(None)).await.unwrap();

    let rcpts = |v: Vec<QueueEntry>| v.iter().map(|e| e.key.rcpt).collect::<Vec<_>>();
    let now = now_millis();
    assert_eq!(
        rcpts(b.take_owed(nb, now, true, 10).await.unwrap()),
        Vec::<u32>::new(),
        "a live holder's notices are not taken, not even by a node starting"
    );
    let own = a.take_owed(na, now, true, 10).await.unwrap();
    assert_eq!(rcpts(own.clone()), vec![0, 1], "its own, at its start");
    assert!(
        own.iter().all(|e| e.notice.is_some()),
        "taken entries carry their notices"
    );
    assert_eq!(
        rcpts(a.take_owed(na, now, false, 10).await.unwrap()),
        Vec::<u32>::new(),
        "a running node does not take back what it is sending"
    );

    let lapsed = now + hold.as_millis() as u64 + 1_000;
    assert_eq!(
        rcpts(b.take_owed(nb, lapsed, false, 1).await.unwrap()),
        vec![0],
        "lapsed: taken over, at most `limit`"
    );
    assert_eq!(
        rcpts(b.take_owed(nb, lapsed, false, 10).await.unwrap()),
        vec![1]
    );
    assert_eq!(
        rcpts(a.take_owed(na, lapsed, true, 10).await.unwrap()),
        Vec::<u32>::new(),
        "taken over once: b holds them now, a has none of its own left"
    );

    // Another attempt on 1, deferred again without a new notice: the
    // delay notice stays owed, and b's.
    a.claim_keys(
        na,
        &keys[1..2],
        now_millis() + 3_600_000,
        lease_until + 3_600_000,
    )
    .await
    .unwrap();
    a.defer(na, keys[1], &deferral(None)).await.unwrap();
    assert_eq!(
        rcpts(a.take_owed(na, lapsed, true, 10).await.unwrap()),
        Vec::<u32>::new(),
        "still b's"
    );

    b.discharge(&[
        Discharge {
            key: keys[0],
            slot: NoticeSlot::Final,
        },
        Discharge {
            key: keys[1],
            slot: NoticeSlot::Delay { notify_num: 1 },
        },
    ])
    .await
    .unwrap();
    let much_later = lapsed + 10 * hold.as_millis() as u64;
    assert_eq!(
        rcpts(a.take_owed(na, much_later, true, 10).await.unwrap()),
        Vec::<u32>::new(),
        "discharged: nothing left to take"
    );
}

/// The pool's connections roll back a statement the server runs longer
/// than `STATEMENT_TIMEOUT`, and a node on the database's machine finds
/// its clock within `MAX_CLOCK_SKEW` of the database's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_connections_have_a_statement_timeout_and_clocks_agree() {
    let schema = Schema::new().await;
    let s = schema.open(1).await;
    let conn = s.pool.get().await.unwrap();
    let timeout: String = conn
        .client
        .query_one("SHOW statement_timeout", &[])
        .await
        .unwrap()
        .get(0);
    drop(conn);
    assert_eq!(timeout, "25s");
    let skew = s.clock_skew().await.unwrap().expect("a skew");
    assert!(
        skew.unsigned_abs() < MAX_CLOCK_SKEW.as_millis() as u64,
        "{skew} ms"
    );
}

/// `renew_owed`: the node holding an owed notice extends its hold, so
/// that another node does not take it over at the old lapse; a node that
/// does not hold it extends nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_notice_hold_keeps_other_nodes_off() {
    use crate::conformance::sample_notice;
    let (_schema, a, b, hold) = two_nodes_holding_notices_60s().await;
    let (na, nb) = (NodeId(1), NodeId(2));
    a.register_node("a", na).await.unwrap();
    b.register_node("b", nb).await.unwrap();
    let env = sample_envelope(6 << 30, 1);
    a.insert(&env, &sample_entries(&env, "q", 1)).await.unwrap();
    let key = EntryKey {
        message: env.id,
        rcpt: 0,
    };
    let t = now_millis();
    a.claim_keys(na, &[key], t, t + 600_000).await.unwrap();
    a.complete(na, key, Some(&sample_notice(None, 1)))
        .await
        .unwrap();
    let hold_ms = hold.as_millis() as u64;
    // B does not hold it: renewing changes nothing.
    assert_eq!(b.renew_owed(&[key], t + hold_ms / 2).await.unwrap(), 0);
    // A renews half-way through its hold: at the first lapse it is still A's.
    assert_eq!(a.renew_owed(&[key], t + hold_ms / 2).await.unwrap(), 1);
    let first_lapse = t + hold_ms + 1_000;
    assert!(
        b.take_owed(nb, first_lapse, false, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let renewed_lapse = t + hold_ms / 2 + hold_ms + 1_000;
    let taken = b.take_owed(nb, renewed_lapse, false, 10).await.unwrap();
    assert_eq!(taken.len(), 1, "taken over once the renewed hold lapsed");
}
