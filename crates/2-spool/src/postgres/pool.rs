//! A small connection pool of our own.
//!
//! Why not deadpool-postgres: each pooled connection here carries every
//! statement of the store prepared once when the connection opens
//! ([`Statements`]), so a store operation is one round trip with no
//! statement cache to consult, and the rules for a connection lost to a
//! database restart are a few lines we can read and test (an idle
//! connection found dead is dropped; an operation whose connection dies
//! fails with a [`StoreError`] and the next one reconnects). That is about
//! all of deadpool-postgres this store would use.
//!
//! At most `pool-size` connections are checked out at once; concurrent
//! operations use concurrent connections (each its own PostgreSQL backend),
//! so concurrent inserts commit in parallel and share WAL flushes in the
//! server's own group commit rather than queueing on one connection.

use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::{Semaphore, SemaphorePermit};
use tokio_postgres::{Client, NoTls};

use super::sql::Statements;
use super::tls::RustlsConnect;
use super::{connection_error, pg_error};
use crate::store::StoreError;

/// Longest a store operation may take, waiting for a free connection
/// included. Past it the operation fails (the SMTP client gets a 4xx) and
/// its connection is closed, as its state is unknown.
pub const OP_TIMEOUT: Duration = Duration::from_secs(30);

/// The server-side limit on one statement of the store's pooled
/// connections, below [`OP_TIMEOUT`] by a margin for the answer's way back.
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(25);

/// Connect timeout when the URL does not set `connect_timeout`.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// One open connection with the store's statements prepared on it.
pub struct Conn {
    /// The connection.
    pub client: Client,
    /// The store's statements, prepared on `client`.
    pub st: Statements,
}

/// The pool: idle connections, and a bound on connections in use.
pub struct Pool {
    config: tokio_postgres::Config,
    tls: Option<RustlsConnect>,
    idle: Mutex<Vec<Conn>>,
    permits: Semaphore,
    /// `user@host:port/db`, for error messages (never the password).
    pub target: String,
}

/// Why an operation on a pooled connection failed.
pub enum Failure {
    /// The connection came from the idle list and turned out to be dead
    /// (closed by a database restart while idle). An idempotent operation
    /// may run again on a new connection.
    Stale(StoreError),
    /// Anything else.
    Store(StoreError),
}

impl From<Failure> for StoreError {
    fn from(f: Failure) -> StoreError {
        match f {
            Failure::Stale(e) | Failure::Store(e) => e,
        }
    }
}

impl Pool {
    /// A pool of at most `size` connections to `config`, over TLS if `tls`
    /// is given. Opens nothing yet.
    pub fn new(
        config: tokio_postgres::Config,
        tls: Option<RustlsConnect>,
        size: usize,
        target: String,
    ) -> Pool {
        Pool {
            config,
            tls,
            idle: Mutex::new(Vec::new()),
            permits: Semaphore::new(size.max(1)),
            target,
        }
    }

    /// Opens a bare connection (no statements prepared), e.g. to migrate.
    pub async fn connect(&self) -> Result<Client, StoreError> {
        let fail = |e: tokio_postgres::Error| connection_error(&self.target, e);
        let client = match &self.tls {
            None => {
                let (client, conn) = self.config.connect(NoTls).await.map_err(fail)?;
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::warn!(error = %pg_error(e), "PostgreSQL connection lost");
                    }
                });
                client
            }
            Some(tls) => {
                let (client, conn) = self.config.connect(tls.clone()).await.map_err(fail)?;
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::warn!(error = %pg_error(e), "PostgreSQL connection lost");
                    }
                });
                client
            }
        };
        Ok(client)
    }

    /// Opens a connection and prepares the store's statements on it.
    async fn open(&self) -> Result<Conn, StoreError> {
        Self::ready(self.connect().await?).await
    }

    /// Makes a connection one of the pool's: the statement timeout set,
    /// the statements prepared.
    pub async fn ready(client: Client) -> Result<Conn, StoreError> {
        // The server gives up on a statement before this side does
        // ([`OP_TIMEOUT`]): a statement this side abandoned (an insert
        // behind a lock, a synchronous standby that is down) is rolled
        // back rather than committing later, unseen, after its caller was
        // told it failed.
        client
            .batch_execute(&format!(
                "SET statement_timeout = {}",
                STATEMENT_TIMEOUT.as_millis()
            ))
            .await
            .map_err(pg_error)?;
        let st = Statements::prepare(&client).await?;
        Ok(Conn { client, st })
    }

    /// Adds an open connection to the idle list.
    pub fn give(&self, conn: Conn) {
        self.idle.lock().expect("pool lock").push(conn);
    }

    /// Checks out a connection: an idle one that is still open, or a new one.
    pub async fn get(&self) -> Result<Pooled<'_>, StoreError> {
        let permit = self.permit().await?;
        loop {
            let next = self.idle.lock().expect("pool lock").pop();
            match next {
                Some(c) if !c.client.is_closed() => return Ok(Pooled::new(self, c, true, permit)),
                Some(_) => continue, // died while idle: drop it
                None => break,
            }
        }
        let conn = tokio::time::timeout(OP_TIMEOUT, self.open())
            .await
            .map_err(|_| {
                StoreError::Engine(format!(
                    "PostgreSQL at {}: no connection within {OP_TIMEOUT:?}",
                    self.target
                ))
            })??;
        Ok(Pooled::new(self, conn, false, permit))
    }

    /// Checks out a new connection, after dropping every idle one: used
    /// when an idle connection was found dead, because the others most
    /// likely died with it.
    pub async fn get_new(&self) -> Result<Pooled<'_>, StoreError> {
        self.idle.lock().expect("pool lock").clear();
        let permit = self.permit().await?;
        let conn = self.open().await?;
        Ok(Pooled::new(self, conn, false, permit))
    }

    async fn permit(&self) -> Result<SemaphorePermit<'_>, StoreError> {
        tokio::time::timeout(OP_TIMEOUT, self.permits.acquire())
            .await
            .map_err(|_| {
                StoreError::Engine(format!(
                    "PostgreSQL at {}: every pooled connection busy for {OP_TIMEOUT:?}",
                    self.target
                ))
            })?
            .map_err(|_| StoreError::Closed)
    }
}

/// A checked-out connection. Returned to the idle list when dropped, unless
/// it broke or an operation on it failed at the connection level or timed
/// out (its state is then unknown).
pub struct Pooled<'a> {
    pool: &'a Pool,
    conn: Option<Conn>,
    broken: AtomicBool,
    reused: bool,
    _permit: SemaphorePermit<'a>,
}

impl<'a> Pooled<'a> {
    fn new(pool: &'a Pool, conn: Conn, reused: bool, permit: SemaphorePermit<'a>) -> Self {
        Pooled {
            pool,
            conn: Some(conn),
            broken: AtomicBool::new(false),
            reused,
            _permit: permit,
        }
    }

    /// Runs one operation on this connection with the store's time limit,
    /// turning its error into a [`Failure`].
    pub async fn run<T>(
        &self,
        op: impl Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<T, Failure> {
        match tokio::time::timeout(OP_TIMEOUT, op).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                // A statement's own error (a constraint, a bad value) leaves
                // an autocommit connection usable; anything else does not.
                if e.as_db_error().is_none() || self.client.is_closed() {
                    self.broken.store(true, Ordering::Relaxed);
                }
                let err = pg_error(e);
                if self.reused && self.client.is_closed() {
                    Err(Failure::Stale(err))
                } else {
                    Err(Failure::Store(err))
                }
            }
            Err(_) => {
                self.broken.store(true, Ordering::Relaxed);
                Err(Failure::Store(StoreError::Engine(format!(
                    "PostgreSQL at {}: no answer within {OP_TIMEOUT:?}",
                    self.pool.target
                ))))
            }
        }
    }
}

impl std::ops::Deref for Pooled<'_> {
    type Target = Conn;
    fn deref(&self) -> &Conn {
        self.conn.as_ref().expect("connection present until drop")
    }
}

impl Drop for Pooled<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.conn.take()
            && !*self.broken.get_mut()
            && !c.client.is_closed()
        {
            self.pool.give(c);
        }
    }
}
