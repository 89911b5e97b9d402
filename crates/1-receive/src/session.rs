//! One SMTP or LMTP session: the command loop, transactions, DATA and BDAT,
//! STARTTLS. LMTP (RFC 2033) is the same session with a different
//! [`Dialect`]: LHLO instead of HELO/EHLO, and one reply per accepted
//! recipient at the end of a message.
//!
//! The session reads into one buffer and answers every complete command in it
//! before flushing, which is what PIPELINING (RFC 2920) needs: a client may send
//! MAIL, RCPT... DATA in one packet and gets all replies in one packet.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use ferrymail_config::expr::{Value, Var, Variables};
use ferrymail_spool::{
    BodyType, Envelope, MessageId, Notify, QueueEntry, Queued, Recipient, Ret, Source, now_millis,
};
use smtp_proto::{Error as ProtoError, Request};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::auth::{self, Credentials, Mechanism};
use crate::protocol::address;
use crate::protocol::auth_results::{self, IprevResult, Results};
use crate::protocol::data::DataDecoder;
use crate::protocol::dialect::{Dialect, Greeting};
use crate::protocol::received::{Trace, received_header, with_type};
use crate::protocol::reply::{Reply, replies};
use crate::verify::{self, Identity, MessageCheck, MessageVerdict, SpfCheck};
use crate::{AuthSettings, DkimSigning, EtrnAnswer, EtrnRequest, ReceiveCounters, Receiver};

/// Anything a session can run over: a TCP stream, or TLS on top of one.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// How the command loop continues after one command.
enum Flow {
    /// Next command.
    Continue,
    /// Send the replies and close (QUIT, too many errors).
    Close,
    /// 354 was queued: read a DATA body.
    Data,
    /// Read a BDAT chunk of this size.
    Bdat { size: usize, last: bool },
    /// 220 was queued: start TLS.
    StartTls,
}

/// Why the session ended early.
enum Stop {
    /// The peer closed or the socket failed.
    Gone,
    /// A reply was written and the session must close.
    Closed,
}

/// Why the server is closing a session it decided to close.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ending {
    /// The client said QUIT.
    Quit,
    /// The server stopped waiting for the client: the command or data
    /// timeout ran out, or the server is shutting down.
    Waiting,
    /// Anything else: the error limit, a refusal that ends the session.
    Closed,
}

/// How long a closing session keeps reading what the client still sends,
/// and how much of it, before it closes anyway (see [`Session::close`]).
const LINGER_TIME: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 1 << 20;

/// One mail transaction, from MAIL to the end of DATA/BDAT LAST or RSET.
struct Transaction {
    sender: String,
    body: BodyType,
    smtputf8: bool,
    ret: Option<Ret>,
    envid: Option<String>,
    mt_priority: i8,
    recipients: Vec<Recipient>,
    /// The contents being assembled (Received header first), with the id it was
    /// minted for; created at DATA or the first BDAT.
    contents: Option<(MessageId, Vec<u8>)>,
    /// BDAT chunks so far exceeded the size limit.
    bdat_overflow: bool,
    /// This message's share of the contents memory; `None` until it holds
    /// any, and when the share could not grow (the message is refused
    /// with 452 4.3.1 at its end).
    memory: Option<crate::memory::Hold>,
    /// The memory share could not grow: refuse at the end.
    no_memory: bool,
    /// Total BDAT octets received, including discarded ones.
    bdat_size: u64,
    /// Our Authentication-Results field heads the contents (after the
    /// Received field), and the client's own part starts at this offset:
    /// fields in it forged under our name are removed at the end.
    vouched_from: Option<usize>,
    /// The sender is being verified: our Authentication-Results field
    /// is written at the end of the message, once SPF, DKIM and DMARC
    /// have answered, at this offset (after the Received field), where
    /// the client's part starts.
    deferred_results: Option<usize>,
    /// The SPF check of the MAIL FROM identity, started at MAIL FROM.
    spf: Option<SpfCheck>,
    /// This transaction is not verified: the session authenticated, or
    /// the relay expression trusts the client (decided at MAIL FROM).
    exempt: bool,
}

/// The per-connection state.
pub struct Session {
    rx: Arc<Receiver>,
    stream: Box<dyn Io>,
    input: BytesMut,
    out: Vec<u8>,
    remote: SocketAddr,
    local: SocketAddr,
    /// SMTP or LMTP, as the listener was configured.
    dialect: Dialect,
    helo: Option<String>,
    esmtp: bool,
    tls: Option<String>,
    tx: Option<Transaction>,
    errors: u32,
    /// Set while discarding the rest of an over-long command line.
    skipping_long_line: bool,
    /// How the session is ending, for [`Session::close`].
    ending: Ending,
    /// Who logged in with AUTH (RFC 4954), for the envelope and for the
    /// relay expression's `authenticated_as`.
    auth_as: Option<String>,
    /// Failed AUTH attempts so far (`session.auth.errors.total`).
    auth_failures: u32,
    /// Reverse-DNS and DNSBL lookups, started at accept, enforced at RCPT.
    checks: crate::defences::Checks,
    /// The SPF check of the HELO name, started at EHLO/HELO/LHLO.
    spf_helo: Option<SpfCheck>,
}

/// Variables for relay and ETRN expressions, evaluated per recipient.
struct RcptVars<'a> {
    session: &'a Session,
    rcpt: &'a str,
}

impl Variables for RcptVars<'_> {
    fn var(&self, v: Var) -> Value {
        let s = self.session;
        let tx = s.tx.as_ref();
        match v {
            Var::Sender => Value::Str(
                tx.map(|t| ferrymail_spool::address_for_expressions(&t.sender))
                    .unwrap_or_default(),
            ),
            Var::SenderDomain => Value::Str(
                tx.and_then(|t| address::domain_of(&t.sender))
                    .unwrap_or_default(),
            ),
            Var::Rcpt => Value::Str(ferrymail_spool::address_for_expressions(self.rcpt)),
            Var::RcptDomain => Value::Str(address::domain_of(self.rcpt).unwrap_or_default()),
            Var::RemoteIp => Value::Str(s.remote.ip().to_string()),
            Var::LocalPort => Value::Int(s.local.port() as i64),
            Var::HeloDomain => Value::Str(s.helo.clone().unwrap_or_default()),
            Var::Priority => Value::Int(tx.map(|t| t.mt_priority as i64).unwrap_or(0)),
            Var::Source => Value::Str("smtp".to_string()),
            Var::AuthenticatedAs => s.auth_as.clone().map(Value::Str).unwrap_or(Value::Null),
            _ => Value::Null,
        }
    }
}

impl Session {
    /// A session on an accepted connection, speaking `dialect`.
    pub fn new(
        rx: Arc<Receiver>,
        stream: Box<dyn Io>,
        remote: SocketAddr,
        local: SocketAddr,
        dialect: Dialect,
    ) -> Self {
        // Started before the greeting, so the lookups run while the client
        // greets; only RCPT TO waits for them.
        let checks = rx.defences.start(remote.ip());
        Session {
            rx,
            stream,
            input: BytesMut::with_capacity(8192),
            out: Vec::with_capacity(1024),
            remote,
            local,
            dialect,
            helo: None,
            esmtp: false,
            tls: None,
            tx: None,
            errors: 0,
            skipping_long_line: false,
            ending: Ending::Closed,
            auth_as: None,
            auth_failures: 0,
            checks,
            spf_helo: None,
        }
    }

    /// A session on a connection that is TLS from its first byte (an
    /// implicit-TLS listener, RFC 8314 §3.3): no STARTTLS is offered, and
    /// what needs TLS (AUTH) is.
    pub fn with_tls(
        rx: Arc<Receiver>,
        stream: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
        remote: SocketAddr,
        local: SocketAddr,
        dialect: Dialect,
    ) -> Self {
        let summary = tls_summary(stream.get_ref().1);
        let mut s = Session::new(rx, Box::new(stream), remote, local, dialect);
        s.tls = Some(summary);
        s
    }

    /// Runs the session to its end. Never panics on peer input; every failure
    /// ends only this connection.
    pub async fn run(mut self) {
        let greeting = Reply::new(
            220,
            "",
            // RFC 2033 §4.1's example greets "LMTP server ready".
            format!(
                "{} {} Ferrymail",
                self.rx.params.hostname,
                self.dialect.name()
            ),
        );
        greeting.write_to(&mut self.out);
        if self.flush().await.is_err() {
            return;
        }
        let ended = self.command_loop().await;
        self.close(ended).await;
    }

    /// Ends the connection once the last reply is written.
    ///
    /// A server that closes while client input is still unread (pipelined
    /// commands after a 421, noise after QUIT) makes its kernel answer with
    /// a reset instead of an orderly close, and a reset can destroy replies
    /// the client has not read yet: a `250 queued` among them, and the
    /// client sends that message again. So a session the server ends with
    /// input pending shuts its sending side first, then reads and drops
    /// what the client still sends until the client closes, for at most
    /// [`LINGER_TIME`] and [`LINGER_BYTES`] (the "lingering close" of HTTP
    /// servers). A client that said QUIT, went idle or was waiting when the
    /// server began to shut down is closed at once unless it sent more
    /// than was read; one that is gone, at once.
    async fn close(&mut self, ended: Result<(), Stop>) {
        let pending = !self.input.is_empty() || self.skipping_long_line;
        let linger =
            matches!(ended, Err(Stop::Closed)) && (self.ending == Ending::Closed || pending);
        if !linger {
            // TLS ends with its close_notify alert. Plain TCP needs no
            // shutdown(2) of its own: closing the socket when the session
            // drops sends the same FIN, and one system call per connection
            // less counts at thousands of connections a second.
            if self.tls.is_some() {
                let _ = self.stream.shutdown().await;
            }
            return;
        }
        if self.stream.shutdown().await.is_err() {
            return;
        }
        let deadline = tokio::time::Instant::now() + LINGER_TIME;
        let mut buf = vec![0u8; 16 * 1024];
        let mut drained = 0;
        while drained < LINGER_BYTES {
            match tokio::time::timeout_at(deadline, self.stream.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => drained += n,
                _ => break,
            }
        }
    }

    /// Sends the queued replies. A client that stops reading (pipelining
    /// commands and never taking the replies) gets as long as it would to
    /// send a command, then the session ends; without the limit it would
    /// hold its connection slot for ever.
    async fn flush(&mut self) -> Result<(), Stop> {
        if !self.out.is_empty() {
            let limit = self.rx.params.command_timeout;
            let r = tokio::time::timeout(limit, self.stream.write_all(&self.out)).await;
            self.out.clear();
            match r {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(Stop::Gone),
                Err(_) => {
                    tracing::info!(remote = %self.remote.ip(), "client stopped reading replies; closing");
                    return Err(Stop::Gone);
                }
            }
        }
        Ok(())
    }

    /// Queues a reply and counts errors; returns `Close` when the error limit is
    /// reached (the 421 is queued too).
    fn reply(&mut self, r: Reply) -> Flow {
        r.write_to(&mut self.out);
        // 452 4.5.3 "too many recipients" is the limit working as RFC 5321
        // §4.5.3.1.10 intends (the client sends the rest in another
        // transaction), not a client error: a pipelined transaction of more
        // recipients than the limit plus `max_errors` must not be cut off.
        let overshoot = r.code == 452 && r.status == "4.5.3";
        if r.is_error() && r.code != 421 && !overshoot {
            self.errors += 1;
            if self.errors >= self.rx.params.max_errors {
                replies::too_many_errors().write_to(&mut self.out);
                return Flow::Close;
            }
        }
        if r.code == 421 {
            return Flow::Close;
        }
        Flow::Continue
    }

    /// Reads more input; `command` selects the command timeout (and lets a
    /// shutdown interrupt the wait) rather than the data timeout.
    ///
    /// Replies still queued are sent first: a session never waits for input
    /// while holding replies (RFC 2920 §3.2 lets a server buffer replies to
    /// a pipelined group, not sit on them). Pipelined commands after a
    /// message, up to a BDAT whose chunk is still arriving, would otherwise
    /// keep that message's `250` back until the chunk was in, and lose it
    /// if the client went away first: a queued message its client never
    /// heard was queued, and sends again.
    async fn read_more(&mut self, command: bool) -> Result<(), Stop> {
        self.flush().await?;
        let p = &self.rx.params;
        let timeout = if command {
            p.command_timeout
        } else {
            p.data_timeout
        };
        if self.input.capacity() - self.input.len() < 4096 {
            self.input.reserve(16 * 1024);
        }
        let read = tokio::time::timeout(timeout, self.stream.read_buf(&mut self.input));
        let n = if command {
            tokio::select! {
                r = read => r,
                _ = self.rx.shutdown.cancelled() => {
                    let host = self.rx.params.hostname.clone();
                    self.reply(replies::shutting_down(&host));
                    self.ending = Ending::Waiting;
                    let _ = self.flush().await;
                    return Err(Stop::Closed);
                }
            }
        } else {
            read.await
        };
        match n {
            Ok(Ok(0)) | Ok(Err(_)) => Err(Stop::Gone),
            Ok(Ok(_)) => Ok(()),
            Err(_) => {
                self.reply(replies::timeout());
                self.ending = Ending::Waiting;
                let _ = self.flush().await;
                Err(Stop::Closed)
            }
        }
    }

    async fn command_loop(&mut self) -> Result<(), Stop> {
        loop {
            // Answer every complete line already buffered (pipelining).
            while let Some(nl) = memchr::memchr(b'\n', &self.input) {
                let line = self.input.split_to(nl + 1);
                if self.skipping_long_line {
                    self.skipping_long_line = false;
                    continue;
                }
                let flow = if line.len() > self.rx.params.max_line_length {
                    self.reply(replies::line_too_long())
                } else {
                    self.command(&line).await
                };
                match flow {
                    Flow::Continue => {}
                    Flow::Close => {
                        self.flush().await?;
                        return Err(Stop::Closed);
                    }
                    Flow::Data => {
                        self.flush().await?;
                        if let Flow::Close = self.receive_data().await? {
                            self.flush().await?;
                            return Err(Stop::Closed);
                        }
                    }
                    Flow::Bdat { size, last } => {
                        if let Flow::Close = self.receive_bdat(size, last).await? {
                            self.flush().await?;
                            return Err(Stop::Closed);
                        }
                    }
                    Flow::StartTls => {
                        self.flush().await?;
                        // RFC 3207 §4.2 / CVE-2011-0411: anything pipelined after
                        // STARTTLS was sent in the clear and must not be executed.
                        self.input.clear();
                        self.start_tls().await?;
                    }
                }
            }
            if self.input.len() > self.rx.params.max_line_length {
                // An over-long line without its end yet: refuse it once, then
                // drop bytes until its newline arrives.
                self.input.clear();
                if !self.skipping_long_line {
                    self.skipping_long_line = true;
                    if let Flow::Close = self.reply(replies::line_too_long()) {
                        self.flush().await?;
                        return Err(Stop::Closed);
                    }
                }
            }
            // (read_more sends the replies to this group first.)
            self.read_more(true).await?;
        }
    }

    async fn start_tls(&mut self) -> Result<(), Stop> {
        let acceptor = self.rx.tls.clone().ok_or(Stop::Gone)?;
        let plain = std::mem::replace(
            &mut self.stream,
            Box::new(tokio::io::join(tokio::io::empty(), tokio::io::sink())),
        );
        let tls = tokio::time::timeout(self.rx.params.command_timeout, acceptor.accept(plain))
            .await
            .map_err(|_| Stop::Gone)?
            .map_err(|_| Stop::Gone)?;
        self.tls = Some(tls_summary(tls.get_ref().1));
        self.stream = Box::new(tls);
        // RFC 3207 §4.2: forget everything learnt before TLS.
        self.helo = None;
        self.esmtp = false;
        self.tx = None;
        self.auth_as = None;
        self.spf_helo = None;
        Ok(())
    }

    /// Handles one command line (CRLF included).
    async fn command(&mut self, line: &[u8]) -> Flow {
        if memchr::memchr(0, line).is_some() {
            return self.reply(replies::nul_in_command());
        }
        // ORCPT is taken out first and decoded by `rcpt` (see
        // `rcpt_params` for why smtp-proto does not parse it).
        let taken = crate::protocol::rcpt_params::take_orcpt(line);
        let (parsed, orcpt) = match &taken {
            Some((rest, value)) => (rest.as_slice(), Some(value.as_str())),
            None => (line, None),
        };
        let request = match Request::parse(&mut parsed.iter()) {
            Ok(r) => r,
            Err(e) => return self.parse_error(e, line),
        };
        match request {
            Request::Ehlo { host } => self.greeting(Greeting::Ehlo, host.into_owned()),
            Request::Helo { host } => self.greeting(Greeting::Helo, host.into_owned()),
            Request::Lhlo { host } => self.greeting(Greeting::Lhlo, host.into_owned()),
            Request::Mail { from } => self.mail(from.into_owned(), line).await,
            Request::Rcpt { to } => {
                self.checks.verdict().await;
                self.rcpt(to.into_owned(), orcpt, line)
            }
            Request::Data => self.data_command(),
            Request::Bdat {
                chunk_size,
                is_last,
            } => Flow::Bdat {
                size: chunk_size,
                last: is_last,
            },
            Request::Rset => {
                self.tx = None;
                self.reply(replies::ok())
            }
            Request::Noop { .. } => self.reply(replies::ok()),
            Request::Quit => {
                let host = self.rx.params.hostname.clone();
                self.reply(replies::bye(&host));
                self.ending = Ending::Quit;
                Flow::Close
            }
            Request::Vrfy { .. } => self.reply(replies::vrfy()),
            Request::Expn { .. } => self.reply(replies::expn_disabled()),
            Request::Help { .. } => self.reply(Reply::lines(
                214,
                vec![
                    "2.0.0 Ferrymail: commands supported:".into(),
                    format!(
                        "2.0.0 {} MAIL RCPT DATA BDAT RSET NOOP QUIT HELP VRFY ETRN STARTTLS AUTH",
                        self.dialect.greeting_commands()
                    ),
                    "2.0.0 End of HELP info".into(),
                ],
            )),
            Request::Etrn { name } => self.etrn(name.into_owned()).await,
            Request::StartTls => self.starttls_command(),
            Request::Auth {
                mechanism,
                initial_response,
            } => {
                self.auth(
                    auth::mechanism_from_proto(mechanism),
                    initial_response.into_owned(),
                )
                .await
            }
            Request::Atrn { .. } | Request::Burl { .. } => {
                self.reply(Reply::new(502, "5.5.1", "Command not implemented"))
            }
        }
    }

    fn parse_error(&mut self, e: ProtoError, line: &[u8]) -> Flow {
        // smtp-proto knows every registered SASL mechanism; one it does not
        // know is still an unrecognized mechanism (RFC 4954 §4: 504).
        if line.len() > 5 && line[..5].eq_ignore_ascii_case(b"AUTH ") && self.rx.auth.is_some() {
            return self.reply(replies::auth_mechanism_unknown());
        }
        let r = match e {
            ProtoError::UnknownCommand => replies::unknown_command(),
            ProtoError::InvalidSenderAddress => replies::bad_sender_syntax(),
            ProtoError::InvalidRecipientAddress => replies::bad_rcpt_syntax(),
            ProtoError::SyntaxError { syntax } => replies::syntax(syntax),
            ProtoError::InvalidParameter { param } => {
                replies::syntax(&format!("invalid value for {param}"))
            }
            ProtoError::UnsupportedParameter { param } => replies::unknown_parameter(&param),
            ProtoError::ResponseTooLong => replies::line_too_long(),
            ProtoError::NeedsMoreData { .. } | ProtoError::InvalidResponse { .. } => {
                replies::syntax(String::from_utf8_lossy(line).trim_end())
            }
        };
        self.reply(r)
    }

    /// HELO, EHLO or LHLO: greets when the listener's dialect has that
    /// command (RFC 2033 §4.1: LMTP has only LHLO, SMTP has no LHLO), and
    /// refuses it otherwise, leaving the session as it was.
    fn greeting(&mut self, greeting: Greeting, host: String) -> Flow {
        match self.dialect.greet(greeting) {
            Ok(extended) => self.hello(host, extended),
            Err(wrong) => {
                tracing::info!(remote = %self.remote.ip(), error = %wrong, "greeting of the other protocol refused");
                self.reply(wrong.reply())
            }
        }
    }

    /// Greets the client. LHLO has EHLO's reply (RFC 2033 §4.1), so an LMTP
    /// session offers what an SMTP one does, PIPELINING and
    /// ENHANCEDSTATUSCODES among them as RFC 2033 §5 requires.
    fn hello(&mut self, host: String, esmtp: bool) -> Flow {
        // RFC 5321 §4.1.4: EHLO/HELO resets any transaction.
        self.tx = None;
        self.esmtp = esmtp;
        let first = format!(
            "{} Hello {} [{}]",
            self.rx.params.hostname,
            host,
            self.remote.ip()
        );
        self.helo = Some(host);
        self.start_helo_check();
        let p = &self.rx.params;
        if !esmtp {
            return self.reply(Reply::new(250, "", first));
        }
        let mut lines = vec![
            first,
            "PIPELINING".into(),
            format!("SIZE {}", p.max_message_size),
            "8BITMIME".into(),
            "SMTPUTF8".into(),
            "ENHANCEDSTATUSCODES".into(),
            "CHUNKING".into(),
            "DSN".into(),
            "ETRN".into(),
            "MT-PRIORITY".into(),
        ];
        if self.rx.tls.is_some() && self.tls.is_none() {
            lines.push("STARTTLS".into());
        }
        if let Some(a) = self.auth_offered() {
            let names: Vec<&str> = a.config.mechanisms.iter().map(|m| m.name()).collect();
            lines.push(format!("AUTH {}", names.join(" ")));
        }
        lines.push("HELP".into());
        self.reply(Reply::lines(250, lines))
    }

    async fn mail(&mut self, from: smtp_proto::MailFrom<String>, line: &[u8]) -> Flow {
        if self.helo.is_none() {
            return self.reply(replies::bad_sequence(self.dialect.greet_first()));
        }
        if self.tx.is_some() {
            return self.reply(replies::nested_mail());
        }
        // smtp-proto reads `<postmaster>` as the null path, which RCPT
        // needs (RFC 5321 §4.5.1); as a reverse-path it is no Path at all
        // (§4.1.2: a Mailbox has a domain), and taken for `<>` it would
        // make an ordinary message a bounce: no notice owed to it, and
        // relayed on with MAIL FROM:<>.
        if from.address.is_empty() && address::raw_is_postmaster(line) {
            return self.reply(replies::bad_sender_syntax());
        }
        let f = from.flags;
        let has_params = f != 0 || from.size != 0 || from.env_id.is_some() || from.mt_priority != 0;
        if !self.esmtp && has_params {
            return self.reply(replies::unknown_parameter("(parameters need EHLO)"));
        }
        if f & smtp_proto::MAIL_BODY_BINARYMIME != 0 {
            return self.reply(replies::unknown_parameter("BODY=BINARYMIME"));
        }
        if f & smtp_proto::MAIL_RET_FULL != 0 && f & smtp_proto::MAIL_RET_HDRS != 0 {
            return self.reply(replies::syntax("RET given twice"));
        }
        if f & (smtp_proto::MAIL_REQUIRETLS | smtp_proto::MAIL_CONPERM) != 0
            || from.by != 0
            || from.hold_for != 0
            || from.hold_until != 0
            || (from.auth.is_some() && self.auth_offered().is_none())
            || from.mtrk.is_some()
            || from.solicit.is_some()
            || from.trans_id.is_some()
        {
            return self.reply(replies::unknown_parameter("(extension not offered)"));
        }
        // RFC 4954 §6: a server that requires AUTH answers 530.
        if self.auth_as.is_none()
            && let Some(a) = &self.rx.auth
            && self.truthy(&a.config.require)
        {
            return self.reply(replies::auth_required());
        }
        if let (Some(name), Some(a)) = (&self.auth_as, &self.rx.auth)
            && self.truthy(&a.config.must_match_sender)
            && !auth::may_send_as(&a.directory, name, &from.address)
        {
            tracing::info!(remote = %self.remote.ip(), user = %name, sender = %from.address, "sender not owned by the authenticated user");
            return self.reply(replies::sender_not_owned(name));
        }
        if !(-9..=9).contains(&from.mt_priority) {
            return self.reply(replies::syntax("MT-PRIORITY must be between -9 and 9"));
        }
        // RFC 6710 §5, §11: the priority is a claim of the client's, honoured
        // only from clients trusted with it (authenticated, or trusted to
        // relay); anyone else's mail would otherwise jump the queue ahead
        // of all other mail, beyond what `queue.priority` can correct.
        let mt_priority = if from.mt_priority != 0 && !self.verification_exempt() {
            tracing::debug!(remote = %self.remote.ip(), priority = from.mt_priority, "MT-PRIORITY from an untrusted client ignored");
            0
        } else {
            from.mt_priority
        };
        let smtputf8 = f & smtp_proto::MAIL_SMTPUTF8 != 0;
        if !smtputf8 && address::is_non_ascii(&from.address) {
            return self.reply(replies::needs_smtputf8());
        }
        let max = self.rx.params.max_message_size;
        if let Some(declared) = address::raw_declared_size(line)
            && declared > max
        {
            return self.reply(replies::too_big(max));
        }
        let body = if f & smtp_proto::MAIL_BODY_8BITMIME != 0 {
            BodyType::EightBitMime
        } else {
            BodyType::SevenBit
        };
        let ret = if f & smtp_proto::MAIL_RET_FULL != 0 {
            Some(Ret::Full)
        } else if f & smtp_proto::MAIL_RET_HDRS != 0 {
            Some(Ret::Headers)
        } else {
            None
        };
        self.tx = Some(Transaction {
            sender: from.address,
            body,
            smtputf8,
            ret,
            envid: from.env_id,
            mt_priority: mt_priority as i8,
            recipients: Vec::new(),
            contents: None,
            bdat_overflow: false,
            memory: Some(crate::memory::MessageMemory::hold(&self.rx.memory)),
            no_memory: false,
            bdat_size: 0,
            vouched_from: None,
            deferred_results: None,
            spf: None,
            exempt: false,
        });
        if let Some(refusal) = self.verify_sender().await {
            self.tx = None;
            ReceiveCounters::bump(&self.rx.counters.refused_by_spf);
            tracing::info!(remote = %self.remote.ip(), reply = %refusal.to_line(), "sender refused by SPF");
            return self.reply(refusal);
        }
        self.reply(replies::sender_ok())
    }

    /// Whether this session's mail is not verified (SPF, DKIM, DMARC):
    /// an authenticated session's, or a client's the relay expression
    /// trusts (evaluated with no recipient). Such mail is this server's
    /// outgoing mail; its sender's SPF record does not list a submitter.
    fn verification_exempt(&self) -> bool {
        self.auth_as.is_some() || self.truthy(&self.rx.relay)
    }

    /// Starts the SPF check of the HELO name (RFC 7208 §2.3) in the
    /// background, if `[auth.spf.verify] ehlo` asks for it; any earlier
    /// one is dropped.
    fn start_helo_check(&mut self) {
        self.spf_helo = None;
        let v = &self.rx.verify;
        if v.is_off() {
            return;
        }
        let mode = v.helo_mode(&RcptVars {
            session: self,
            rcpt: "",
        });
        if mode == ferrymail_config::VerifyMode::Disable || self.verification_exempt() {
            return;
        }
        let helo = self.helo.clone().unwrap_or_default();
        self.spf_helo = Some(v.check_spf(mode, Identity::Helo, self.remote.ip(), &helo, ""));
    }

    /// At MAIL FROM (the transaction just opened): decides whether the
    /// transaction is verified, starts the SPF check of the MAIL FROM
    /// identity (RFC 7208 §2.4) if `[auth.spf.verify] mail-from` asks for
    /// it, and in `strict` mode waits for the HELO and MAIL FROM results:
    /// the reply that refuses the sender, if one does not pass. In
    /// `relaxed` mode nothing is awaited here.
    async fn verify_sender(&mut self) -> Option<Reply> {
        let v = self.rx.verify.clone();
        if v.is_off() {
            return None;
        }
        let exempt = self.verification_exempt();
        let mode = if exempt {
            ferrymail_config::VerifyMode::Disable
        } else {
            v.mail_from_mode(&RcptVars {
                session: self,
                rcpt: "",
            })
        };
        let helo = self.helo.clone().unwrap_or_default();
        let ip = self.remote.ip();
        let tx = self.tx.as_mut()?;
        tx.exempt = exempt;
        if exempt {
            return None;
        }
        if mode != ferrymail_config::VerifyMode::Disable {
            tx.spf = Some(v.check_spf(mode, Identity::MailFrom, ip, &helo, &tx.sender));
        }
        if let Some(check) = self
            .spf_helo
            .as_mut()
            .filter(|c| c.mode == ferrymail_config::VerifyMode::Strict)
        {
            check.verdict().await;
            if let Some(r) = check.refusal() {
                return Some(r);
            }
        }
        if let Some(check) = self
            .tx
            .as_mut()
            .and_then(|t| t.spf.as_mut())
            .filter(|c| c.mode == ferrymail_config::VerifyMode::Strict)
        {
            check.verdict().await;
            return check.refusal();
        }
        None
    }

    /// RCPT TO. `orcpt`: the raw value of the line's ORCPT parameter, taken
    /// out before smtp-proto parsed the rest.
    fn rcpt(&mut self, to: smtp_proto::RcptTo<String>, orcpt: Option<&str>, line: &[u8]) -> Flow {
        let Some(tx) = self.tx.as_ref() else {
            return self.reply(replies::bad_sequence("send MAIL first"));
        };
        if tx.contents.is_some() {
            return self.reply(replies::bad_sequence("BDAT in progress"));
        }
        let smtputf8 = tx.smtputf8;
        let count = tx.recipients.len();
        // `<postmaster>` without a domain: always accepted, as below.
        let own_postmaster = to.address.is_empty() && address::raw_is_postmaster(line);
        let address = if to.address.is_empty() {
            if own_postmaster {
                // RFC 5321 §4.5.1: the unqualified postmaster is this
                // server's. Queued as postmaster@<server.hostname>, as
                // Postfix's myorigin qualifies it, so that it has a domain
                // to be routed (and delivered) by like any other address.
                format!("postmaster@{}", self.rx.params.hostname)
            } else {
                return self.reply(replies::bad_rcpt_syntax());
            }
        } else {
            to.address
        };
        let f = to.flags;
        if f & smtp_proto::RCPT_NOTIFY_NEVER != 0
            && f & (smtp_proto::RCPT_NOTIFY_SUCCESS
                | smtp_proto::RCPT_NOTIFY_FAILURE
                | smtp_proto::RCPT_NOTIFY_DELAY)
                != 0
        {
            // RFC 3461 §4.1: NEVER must not be combined with other values.
            return self.reply(replies::syntax("NOTIFY=NEVER cannot be combined"));
        }
        if f & (smtp_proto::RCPT_CONNEG
            | smtp_proto::RCPT_RRVS_CONTINUE
            | smtp_proto::RCPT_RRVS_REJECT)
            != 0
            || to.rrvs != 0
        {
            return self.reply(replies::unknown_parameter("(extension not offered)"));
        }
        if !self.esmtp && (f != 0 || to.orcpt.is_some() || orcpt.is_some()) {
            return self.reply(replies::unknown_parameter("(parameters need EHLO)"));
        }
        // Stored decoded, as `addr-type;address` (RFC 3461 §4.2, RFC 6533 §3).
        let orcpt = match (orcpt, to.orcpt) {
            (Some(_), Some(_)) => return self.reply(replies::syntax("ORCPT given twice")),
            (Some(raw), None) => match ferrymail_spool::orcpt::decode(raw, smtputf8) {
                Ok(o) => Some(o),
                Err(e) => return self.reply(replies::syntax(&e.to_string())),
            },
            // Taken out before parsing unless the parameters were not
            // UTF-8; smtp-proto's decoding is all there is then.
            (None, Some(o)) => Some(format!("rfc822;{o}")),
            (None, None) => None,
        };
        if !smtputf8 && address::is_non_ascii(&address) {
            return self.reply(replies::needs_smtputf8());
        }
        if count >= self.rx.params.max_recipients {
            return self.reply(replies::too_many_recipients());
        }
        if !own_postmaster && !self.may_deliver_to(&address) {
            ReceiveCounters::bump(&self.rx.counters.relay_denied);
            tracing::info!(remote = %self.remote.ip(), rcpt = %address, "relay denied");
            return self.reply(replies::relay_denied());
        }
        // A local address nobody has is refused now (Postfix's
        // local_recipient_maps), not bounced later by the mailbox server to
        // a sender who may be forged (backscatter). Postmaster always gets in.
        if let Some(known) = &self.rx.params.local_recipients
            && !own_postmaster
            && !crate::defences::is_postmaster(&address, &self.rx.params.local_domains)
            && address::domain_of(&address)
                .is_some_and(|d| self.rx.params.local_domains.contains(&d))
            && !known.contains(&address.to_lowercase())
        {
            tracing::info!(remote = %self.remote.ip(), rcpt = %address, "unknown local recipient");
            return self.reply(replies::unknown_user());
        }
        // Delayed rejection (Postfix's smtpd_delay_reject): the recipient
        // that would be accepted is refused instead. Never postmaster, and
        // never a client the relay expression trusts (Postfix's
        // permit_mynetworks before reject_rbl_client). The trust is the
        // client's, evaluated with no recipient: a relay rule for a
        // recipient domain (a backup MX's) lets nobody past the blocklists.
        if let Some(r) = self.checks.refusal()
            && !own_postmaster
            && !crate::defences::is_postmaster(&address, &self.rx.params.local_domains)
            && !self.truthy(&self.rx.relay)
        {
            ReceiveCounters::bump(&self.rx.counters.refused_by_checks);
            tracing::info!(remote = %self.remote.ip(), rcpt = %address, reply = %r.to_line(), "recipient refused by connection checks");
            return self.reply(r);
        }
        // Inbound rate limits (Stalwart's `queue.limiter.inbound`), counted
        // per accepted recipient. Never postmaster.
        if !self.rx.limiters.is_empty()
            && !own_postmaster
            && !crate::defences::is_postmaster(&address, &self.rx.params.local_domains)
            && let Some(limiter) = self.rate_limited(&address)
        {
            ReceiveCounters::bump(&self.rx.counters.refused_by_rate);
            tracing::info!(remote = %self.remote.ip(), rcpt = %address, limiter = %limiter, "recipient over an inbound rate limit");
            return self.reply(replies::rate_limited());
        }
        let notify = if f & smtp_proto::RCPT_NOTIFY_NEVER != 0 {
            Notify::Never
        } else if f
            & (smtp_proto::RCPT_NOTIFY_SUCCESS
                | smtp_proto::RCPT_NOTIFY_FAILURE
                | smtp_proto::RCPT_NOTIFY_DELAY)
            != 0
        {
            Notify::On {
                success: f & smtp_proto::RCPT_NOTIFY_SUCCESS != 0,
                failure: f & smtp_proto::RCPT_NOTIFY_FAILURE != 0,
                delay: f & smtp_proto::RCPT_NOTIFY_DELAY != 0,
            }
        } else {
            Notify::Default
        };
        let recipient = Recipient {
            address,
            orcpt,
            notify,
        };
        if let Some(tx) = self.tx.as_mut() {
            tx.recipients.push(recipient);
        }
        self.reply(replies::rcpt_ok())
    }

    /// Relay control: local domains and postmaster always; anything else only
    /// if the relay expression allows it. Percent-hack and bang-path local parts
    /// count as relaying even in a local domain.
    /// A session-level expression (no recipient) as a yes or no.
    fn truthy(&self, e: &ferrymail_config::Expr) -> bool {
        e.eval_bool(&RcptVars {
            session: self,
            rcpt: "",
        })
    }

    /// AUTH's settings when this session may use it now: a directory is
    /// configured, and the connection is encrypted or plain text is allowed
    /// (RFC 4954 §4: mechanisms that send the password need TLS).
    fn auth_offered(&self) -> Option<&Arc<AuthSettings>> {
        let a = self.rx.auth.as_ref()?;
        (self.tls.is_some() || self.truthy(&a.config.allow_plain_text)).then_some(a)
    }

    /// AUTH (RFC 4954 §4): runs the exchange of `mechanism`, starting from
    /// its initial response if the client sent one.
    async fn auth(&mut self, mechanism: Option<Mechanism>, initial: String) -> Flow {
        let Some(settings) = self.rx.auth.clone() else {
            return self.reply(Reply::new(502, "5.5.1", "Command not implemented"));
        };
        if self.auth_offered().is_none() {
            return self.reply(replies::auth_needs_tls());
        }
        if self.helo.is_none() || !self.esmtp {
            return self.reply(replies::bad_sequence(self.dialect.greet_extended_first()));
        }
        if self.auth_as.is_some() {
            return self.reply(replies::bad_sequence("already authenticated"));
        }
        if self.tx.is_some() {
            return self.reply(replies::bad_sequence(
                "AUTH is not permitted during a mail transaction",
            ));
        }
        let Some(mechanism) = mechanism.filter(|m| settings.config.mechanisms.contains(m)) else {
            return self.reply(replies::auth_mechanism_unknown());
        };
        let ip = self.remote.ip();
        if settings.ledger.blocked(ip, std::time::Instant::now()) {
            tracing::info!(remote = %ip, "AUTH refused: too many failures from this address");
            return self.reply(replies::auth_address_blocked());
        }
        let first = (!initial.is_empty()).then_some(initial);
        let mut credentials = match self.sasl(mechanism, first).await {
            Ok(Ok(c)) => c,
            Ok(Err(flow_reply)) => return self.reply(flow_reply),
            Err(flow) => return flow,
        };
        // Counted as a failure before it is checked, in the same step as
        // the block is looked at: sessions that send their credentials at
        // the same moment are not all checked before any failure counts.
        if !settings.ledger.begin(ip, std::time::Instant::now()) {
            tracing::info!(remote = %ip, "AUTH refused: too many failures from this address");
            return self.reply(replies::auth_address_blocked());
        }
        let verified = auth::verify_in_turn(
            settings.clone(),
            Credentials {
                name: credentials.name.clone(),
                password: std::mem::take(&mut credentials.password),
            },
        )
        .await;
        match verified {
            Some(name) => {
                tracing::info!(remote = %ip, user = %name, mechanism = %mechanism.name(), "authenticated");
                settings.ledger.refund(ip);
                self.auth_as = Some(name);
                self.reply(replies::auth_ok())
            }
            None => {
                self.auth_failures += 1;
                ReceiveCounters::bump(&self.rx.counters.auth_failures);
                tracing::info!(remote = %ip, user = %credentials.name, mechanism = %mechanism.name(), failures = self.auth_failures, "authentication failed");
                // Held back, to slow down guessing.
                tokio::time::sleep(settings.config.errors_wait).await;
                if self.auth_failures >= settings.config.errors_total {
                    replies::auth_failed().write_to(&mut self.out);
                    return self.reply(replies::auth_too_many_failures());
                }
                self.reply(replies::auth_failed())
            }
        }
    }

    /// The SASL exchange proper: the credentials, or the reply that ends
    /// the attempt (`Ok(Err)`), or how the session goes on when the
    /// connection failed (`Err`).
    async fn sasl(
        &mut self,
        mechanism: Mechanism,
        initial: Option<String>,
    ) -> Result<Result<Credentials, Reply>, Flow> {
        match mechanism {
            Mechanism::Plain => {
                // RFC 4954 §4: an empty challenge asks for the message.
                let data = match self.sasl_response("", initial).await? {
                    Ok(d) => d,
                    Err(r) => return Ok(Err(r)),
                };
                Ok(match auth::plain(&data) {
                    Ok(c) => Ok(c),
                    Err(auth::PlainError::Malformed) => Err(replies::auth_malformed()),
                    Err(auth::PlainError::ProxyRefused) => Err(replies::auth_failed()),
                })
            }
            Mechanism::Login => {
                let user = match self.sasl_response("Username:", initial).await? {
                    Ok(d) => d,
                    Err(r) => return Ok(Err(r)),
                };
                let pass = match self.sasl_response("Password:", None).await? {
                    Ok(d) => d,
                    Err(r) => return Ok(Err(r)),
                };
                Ok(match (auth::login_field(user), auth::login_field(pass)) {
                    (Some(name), Some(password)) if !name.is_empty() => {
                        Ok(Credentials { name, password })
                    }
                    _ => Err(replies::auth_malformed()),
                })
            }
        }
    }

    /// One step: the client's `given` initial response, or else a 334
    /// challenge with `prompt` (base64) and the line that answers it.
    async fn sasl_response(
        &mut self,
        prompt: &str,
        given: Option<String>,
    ) -> Result<Result<Vec<u8>, Reply>, Flow> {
        let line = match given {
            Some(g) => g,
            None => {
                Reply::new(334, "", auth::challenge(prompt)).write_to(&mut self.out);
                match self.read_sasl_line().await {
                    Ok(l) => l,
                    Err(()) => return Err(Flow::Close),
                }
            }
        };
        Ok(match auth::decode(&line) {
            auth::Response::Data(d) => Ok(d),
            auth::Response::Cancelled => Err(replies::auth_cancelled()),
            auth::Response::Malformed => Err(replies::auth_malformed()),
        })
    }

    /// Reads one SASL response line (RFC 4954 §4: up to 12288 octets),
    /// after sending what is queued. `Err` when the client went away or
    /// sent too long a line (the reply to that is queued).
    async fn read_sasl_line(&mut self) -> Result<String, ()> {
        const MAX: usize = 12_288;
        loop {
            if let Some(nl) = memchr::memchr(b'\n', &self.input) {
                let line = self.input.split_to(nl + 1);
                return Ok(String::from_utf8_lossy(&line).into_owned());
            }
            if self.input.len() > MAX {
                self.input.clear();
                replies::line_too_long().write_to(&mut self.out);
                let _ = self.flush().await;
                return Err(());
            }
            if self.flush().await.is_err() || self.read_more(true).await.is_err() {
                return Err(());
            }
        }
    }

    /// Counts `rcpt` against every inbound limiter whose `match` holds;
    /// the id of the one that is exhausted, if any (then nothing is
    /// counted).
    fn rate_limited(&self, rcpt: &str) -> Option<String> {
        let vars = RcptVars {
            session: self,
            rcpt,
        };
        let takes: Vec<crate::limiter::Take> = self
            .rx
            .limiters
            .iter()
            .filter(|l| l.when.eval_bool(&vars))
            .map(|l| crate::limiter::Take {
                limiter: l.id.clone(),
                key: l
                    .key
                    .iter()
                    .map(|v| match v {
                        // An IPv6 client counts per /64, as for AUTH
                        // failures: one host has a whole /64 to walk.
                        Var::RemoteIp => {
                            crate::auth::FailureLedger::key(self.remote.ip()).to_string()
                        }
                        v => vars.var(*v).to_string().to_lowercase(),
                    })
                    .collect::<Vec<_>>()
                    .join("\u{1f}"),
                rate: l.rate,
            })
            .collect();
        self.rx
            .rate_counts
            .take_now(&takes)
            .err()
            .map(|i| takes[i].limiter.clone())
    }

    fn may_deliver_to(&self, address: &str) -> bool {
        if address.eq_ignore_ascii_case("postmaster") {
            return true;
        }
        let hidden = address::has_hidden_route(address);
        if !hidden
            && let Some(domain) = address::domain_of(address)
            && self.rx.params.local_domains.contains(&domain)
        {
            return true;
        }
        let vars = RcptVars {
            session: self,
            rcpt: address,
        };
        self.rx.relay.eval_bool(&vars)
    }

    fn data_command(&mut self) -> Flow {
        match &self.tx {
            None => self.reply(replies::bad_sequence("send MAIL first")),
            Some(tx) if tx.recipients.is_empty() => {
                self.reply(replies::bad_sequence("send RCPT first"))
            }
            Some(tx) if tx.contents.is_some() => {
                self.reply(replies::bad_sequence("DATA cannot follow BDAT"))
            }
            Some(_) => {
                self.begin_contents();
                replies::start_data().write_to(&mut self.out);
                Flow::Data
            }
        }
    }

    /// Mints the message id and writes the Received header into the buffer the
    /// body will be decoded into, so the body is never copied.
    fn begin_contents(&mut self) {
        let id = self.rx.ids.next();
        let p = &self.rx.params;
        let Some(tx) = self.tx.as_ref() else { return };
        // RFC 3848 and RFC 6531 §3.7.3: A for an authenticated client.
        let with = with_type(
            self.dialect,
            tx.smtputf8,
            self.esmtp,
            self.tls.is_some(),
            self.auth_as.is_some(),
        );
        let id_text = id.to_string();
        let header = received_header(&Trace {
            helo: self.helo.as_deref().unwrap_or("unknown"),
            remote_ip: self.remote.ip(),
            hostname: &p.hostname,
            with,
            tls: self.tls.as_deref(),
            id: &id_text,
            single_rcpt: (tx.recipients.len() == 1).then(|| tx.recipients[0].address.as_str()),
            time: now_millis() / 1000,
        });
        let mut buf = Vec::with_capacity(header.len() + 4096);
        buf.extend_from_slice(header.as_bytes());
        // A verified sender's results are known only at the end of the
        // message: the whole field is written then, at this offset.
        if !self.rx.verify.is_off() && !tx.exempt {
            let at = buf.len();
            if let Some(tx) = self.tx.as_mut() {
                tx.contents = Some((id, buf));
                tx.deferred_results = Some(at);
            }
            return;
        }
        // RFC 8601: what was verified about the client, under our name.
        let iprev = self.iprev_result();
        let results = auth_results::header(
            &p.hostname,
            &Results {
                iprev,
                auth: self.auth_as.as_deref(),
                ..Results::default()
            },
        );
        if let Some(r) = &results {
            buf.extend_from_slice(r.as_bytes());
        }
        let vouched_from = results.is_some().then_some(buf.len());
        if let Some(tx) = self.tx.as_mut() {
            tx.contents = Some((id, buf));
            tx.vouched_from = vouched_from;
        }
    }

    async fn receive_data(&mut self) -> Result<Flow, Stop> {
        let max = self.rx.params.max_message_size;
        let Some((id, mut buf)) = self.tx.as_mut().and_then(|t| t.contents.take()) else {
            return Ok(Flow::Continue);
        };
        let accepted = self.accepted();
        let header_len = buf.len();
        let mut decoder = DataDecoder::new(max);
        let limit = self.rx.params.max_memory;
        let mut no_memory = false;
        loop {
            let fed = decoder.feed(&self.input, &mut buf);
            self.input.advance(fed.consumed);
            // What the buffer holds counts against `max-memory`; once it
            // cannot grow, the rest is read but not kept.
            if !no_memory
                && let Some(hold) = self.tx.as_mut().and_then(|t| t.memory.as_mut())
                && !hold.grow_to(buf.capacity() as u64, limit)
            {
                no_memory = true;
                decoder.stop_keeping();
                buf = Vec::new();
                if let Some(t) = self.tx.as_mut() {
                    t.memory = None;
                }
            }
            if fed.done {
                break;
            }
            self.read_more(false).await?;
        }
        if no_memory {
            self.tx = None;
            tracing::warn!(remote = %self.remote.ip(), limit, "message refused: session.data.max-memory reached");
            ReceiveCounters::bump(&self.rx.counters.refused_no_memory);
            return Ok(self.answer_message(replies::no_memory(), &accepted));
        }
        debug_assert!(buf.len() >= header_len);
        if decoder.overflowed() {
            self.tx = None;
            return Ok(self.answer_message(replies::too_big(max), &accepted));
        }
        if decoder.has_nul() {
            self.tx = None;
            return Ok(self.answer_message(replies::nul_in_data(), &accepted));
        }
        let outcome = self.commit(id, buf).await;
        Ok(self.answer_message(outcome, &accepted))
    }

    /// The recipients the replies at the end of this message are for, in
    /// RCPT order: LMTP's, that is (RFC 2033 §4.2); SMTP's one reply names
    /// none, so nothing is copied for it.
    fn accepted(&self) -> Vec<String> {
        match (self.dialect, &self.tx) {
            (Dialect::Lmtp, Some(tx)) => tx.recipients.iter().map(|r| r.address.clone()).collect(),
            _ => Vec::new(),
        }
    }

    /// Sends the replies that end a message: `outcome` once on SMTP, once per
    /// `accepted` recipient on LMTP (RFC 2033 §4.2, §4.3). A refusal counts
    /// as one error towards `max_errors`, however many replies carry it.
    fn answer_message(&mut self, outcome: Reply, accepted: &[String]) -> Flow {
        let rcpts: Vec<&str> = accepted.iter().map(String::as_str).collect();
        let mut answers = self.dialect.end_of_message(outcome, &rcpts);
        let Some(last) = answers.pop() else {
            return Flow::Continue;
        };
        for r in &answers {
            r.write_to(&mut self.out);
        }
        self.reply(last)
    }

    async fn receive_bdat(&mut self, size: usize, last: bool) -> Result<Flow, Stop> {
        let max = self.rx.params.max_message_size;
        // Decide what to do with the chunk before reading it: RFC 3030 §2 says
        // the chunk must be consumed even when the command is refused.
        let refusal = match &self.tx {
            None => Some(replies::bad_sequence("send MAIL first")),
            Some(tx) if tx.recipients.is_empty() => Some(replies::bad_sequence("send RCPT first")),
            _ => None,
        };
        if refusal.is_none() && self.tx.as_ref().is_some_and(|t| t.contents.is_none()) {
            self.begin_contents();
        }
        let mut left = size;
        loop {
            let take = left.min(self.input.len());
            if take > 0 {
                let chunk = self.input.split_to(take);
                left -= take;
                if refusal.is_none()
                    && let Some(tx) = self.tx.as_mut()
                {
                    tx.bdat_size += take as u64;
                    if tx.bdat_size > max {
                        tx.bdat_overflow = true;
                    } else if tx.no_memory {
                    } else if let Some((_, buf)) = tx.contents.as_mut() {
                        // What the buffer will hold once the chunk is in:
                        // growing, a Vec doubles, so the count is of that
                        // capacity, allocated exactly, not of the bytes.
                        let need = buf.len() + take;
                        let want = if need > buf.capacity() {
                            need.max(buf.capacity() * 2)
                        } else {
                            buf.capacity()
                        };
                        let grown = tx
                            .memory
                            .as_mut()
                            .is_some_and(|h| h.grow_to(want as u64, self.rx.params.max_memory));
                        if grown {
                            buf.reserve_exact(want - buf.len());
                            buf.extend_from_slice(&chunk);
                        } else {
                            tx.no_memory = true;
                            tx.memory = None;
                            tx.contents = tx.contents.take().map(|(id, _)| (id, Vec::new()));
                        }
                    }
                }
            }
            if left == 0 {
                break;
            }
            self.read_more(false).await?;
        }
        if let Some(r) = refusal {
            // RFC 2033 §4.3: "If there were no previously successful RCPT
            // commands in the mail transaction, then the BDAT LAST command
            // returns zero replies." The transaction ends with it.
            if last && self.dialect == Dialect::Lmtp && self.tx.is_some() {
                self.tx = None;
                return Ok(Flow::Continue);
            }
            return Ok(self.reply(r));
        }
        let overflow = self.tx.as_ref().is_some_and(|t| t.bdat_overflow);
        if !last {
            if overflow {
                // Keep accepting chunks until LAST, then refuse the message.
                return Ok(self.reply(Reply::new(
                    250,
                    "2.0.0",
                    format!("{size} octets received (message already too big)"),
                )));
            }
            return Ok(self.reply(replies::chunk_ok(size)));
        }
        let accepted = self.accepted();
        if overflow {
            self.tx = None;
            return Ok(self.answer_message(replies::too_big(max), &accepted));
        }
        if self.tx.as_ref().is_some_and(|t| t.no_memory) {
            self.tx = None;
            tracing::warn!(remote = %self.remote.ip(), "message refused: session.data.max-memory reached");
            ReceiveCounters::bump(&self.rx.counters.refused_no_memory);
            return Ok(self.answer_message(replies::no_memory(), &accepted));
        }
        let Some((id, buf)) = self.tx.as_mut().and_then(|t| t.contents.take()) else {
            return Ok(self.reply(replies::bad_sequence("no transaction")));
        };
        if memchr::memchr(0, &buf).is_some() {
            self.tx = None;
            return Ok(self.answer_message(replies::nul_in_data(), &accepted));
        }
        let outcome = self.commit(id, buf).await;
        Ok(self.answer_message(outcome, &accepted))
    }

    /// Routes every recipient and makes the message durable; returns the
    /// outcome for the whole message, which the caller turns into the
    /// dialect's replies.
    async fn commit(&mut self, id: MessageId, mut contents: Vec<u8>) -> Reply {
        let Some(mut tx) = self.tx.take() else {
            return replies::bad_sequence("no transaction");
        };
        if let Some(from) = tx.vouched_from.filter(|&f| f <= contents.len())
            && let Some(client) =
                auth_results::strip_forged(&contents[from..], &self.rx.params.hostname)
        {
            tracing::info!(id = %id, "removed Authentication-Results fields claiming this server's name (RFC 8601 §5)");
            contents.truncate(from);
            contents.extend_from_slice(&client);
        }
        // Our own Received header is the first one; count it too.
        let hops = crate::protocol::received::count_received(&contents);
        if hops > self.rx.params.max_received_headers {
            tracing::info!(id = %id, hops, "refused: mail loop");
            return replies::mail_loop(hops);
        }
        let now = now_millis();
        let deferred_results = tx.deferred_results;
        let spf = tx.spf.take();
        let mut envelope = Envelope {
            id,
            sender: tx.sender,
            recipients: tx.recipients,
            size: contents.len() as u64,
            arrived: now,
            body: tx.body,
            smtputf8: tx.smtputf8,
            ret: tx.ret,
            envid: tx.envid,
            mt_priority: tx.mt_priority,
            source: Source::Smtp,
            remote_ip: Some(self.remote.ip()),
            helo: self.helo.clone(),
            authenticated_as: self.auth_as.clone(),
        };
        if let Some(at) = deferred_results.filter(|&at| at <= contents.len()) {
            contents = match self.finish_verification(&envelope, contents, at, spf).await {
                Ok(c) => c,
                Err(refusal) => return refusal,
            };
            envelope.size = contents.len() as u64;
        }
        let Some((envelope, contents)) =
            dkim_sign(self.rx.dkim.clone(), self.local.port(), envelope, contents).await
        else {
            return replies::store_failed();
        };
        let entries: Vec<QueueEntry> =
            self.rx
                .router
                .entries(&envelope, &contents, Some(self.local.port()), now);
        // The store has `store_timeout` to make the message durable; a
        // store that hangs (a database that stopped answering) must not
        // outlast the client's own 10-minute wait (RFC 5321 §4.5.3.2.6).
        let spool = self.rx.spool.clone();
        // The message's share of `max-memory`, given back when the write
        // is over: if it outlasts the timeout below, the write goes on
        // holding the message, and so must the count.
        let hold = tx.memory.take();
        let mut work = Box::pin(async move {
            let r = spool.accept(&envelope, &entries, contents.into()).await;
            (r, envelope, entries)
        });
        let (result, envelope, entries) = match tokio::time::timeout(
            self.rx.params.store_timeout,
            &mut work,
        )
        .await
        {
            Ok(done) => done,
            Err(_) => {
                // Told 451, the client tries again later; if the write
                // still lands, the message is scheduled all the same (it
                // may then arrive twice, but is never stranded unindexed).
                let queued = self.rx.queued.clone();
                tokio::spawn(async move {
                    let (r, envelope, entries) = work.await;
                    drop(hold);
                    if r.is_ok() {
                        tracing::warn!(id = %envelope.id, "made durable after the client was told 451: it may arrive twice");
                        let _ = queued.send(Queued::with_envelope(entries, &envelope));
                    }
                });
                ReceiveCounters::bump(&self.rx.counters.store_failures);
                tracing::error!(id = %id, timeout_ms = self.rx.params.store_timeout.as_millis() as u64, "the spool did not make the message durable in time");
                return replies::store_failed();
            }
        };
        match result {
            Ok(()) => {
                let c = &self.rx.counters;
                ReceiveCounters::bump(&c.messages);
                c.recipients
                    .fetch_add(envelope.recipients.len() as u64, Ordering::Relaxed);
                c.bytes.fetch_add(envelope.size, Ordering::Relaxed);
                let _ = self
                    .rx
                    .queued
                    .send(Queued::with_envelope(entries, &envelope));
                tracing::info!(
                    id = %id,
                    from = %envelope.sender,
                    rcpts = envelope.recipients.len(),
                    size = envelope.size,
                    remote = %self.remote.ip(),
                    "queued"
                );
                replies::queued(&id.to_string())
            }
            Err(e) => {
                ReceiveCounters::bump(&self.rx.counters.store_failures);
                tracing::error!(id = %id, error = %e, "could not make message durable");
                replies::store_failed()
            }
        }
    }

    /// The iprev result for the Authentication-Results field, once the
    /// connection checks have answered (RFC 8601 §2.7.3).
    fn iprev_result(&self) -> Option<IprevResult<'_>> {
        self.checks.iprev().map(|i| IprevResult {
            result: i.as_str(),
            ip: self.remote.ip(),
            name: match i {
                crate::defences::Iprev::Pass { name } => Some(name.as_str()),
                _ => None,
            },
        })
    }

    /// The end of a verified message (RFC 8601, RFC 7208, RFC 6376, RFC
    /// 7489): awaits the SPF results, verifies DKIM and DMARC over the
    /// client's bytes (`contents[at..]`) as `[auth.dkim] verify` and
    /// `[auth.dmarc] verify` say for this message, and refuses it in
    /// `strict` mode; otherwise writes our Authentication-Results field,
    /// every result in it, at `at`, and removes the client's fields that
    /// claim our name (§5). `Err` is the reply that refuses the message.
    async fn finish_verification(
        &mut self,
        envelope: &Envelope,
        contents: Vec<u8>,
        at: usize,
        mut spf: Option<SpfCheck>,
    ) -> Result<Vec<u8>, Reply> {
        let v = self.rx.verify.clone();
        let id = envelope.id;
        let mut spf_results = Vec::with_capacity(2);
        if let Some(c) = self.spf_helo.as_mut() {
            spf_results.push(c.verdict().await.clone());
        }
        if let Some(c) = spf.as_mut() {
            spf_results.push(c.verdict().await.clone());
        }
        let (dkim_mode, dmarc_mode) = v.message_modes(&ferrymail_route::RouteVars {
            envelope,
            rcpt: 0,
            contents: &contents,
            local_port: Some(self.local.port()),
            queue: None,
        });
        use ferrymail_config::VerifyMode;
        let (contents, found) =
            if dkim_mode == VerifyMode::Disable && dmarc_mode == VerifyMode::Disable {
                (contents, MessageVerdict::default())
            } else {
                let check = MessageCheck {
                    contents,
                    from: at,
                    dkim: dkim_mode,
                    dmarc: dmarc_mode,
                    spf: spf_results
                        .iter()
                        .find(|s| s.identity == Identity::MailFrom)
                        .map(|s| s.output.clone()),
                    ip: self.remote.ip(),
                    helo: self.helo.clone().unwrap_or_default(),
                    sender: envelope.sender.clone(),
                };
                match v.verify_message(check).await {
                    Some(done) => done,
                    // The task panicked and took the contents with it: the
                    // client sends the message again.
                    None => return Err(replies::store_failed()),
                }
            };
        if let Some(sigs) = &found.dkim {
            let results: Vec<&str> = sigs.iter().map(|s| s.result.as_str()).collect();
            let domains: Vec<&str> = sigs.iter().map(|s| s.domain.as_str()).collect();
            tracing::info!(id = %id, remote = %self.remote.ip(), result = ?results, domain = ?domains, mode = dkim_mode.as_str(), "dkim");
        }
        if let Some(d) = &found.dmarc {
            tracing::info!(id = %id, remote = %self.remote.ip(), result = d.result.as_str(), from = %d.from_domain, policy = d.policy.map_or("(no record)", |p| p.as_str()), mode = dmarc_mode.as_str(), "dmarc");
        }
        if dkim_mode == VerifyMode::Strict
            && let Some(r) = found.dkim.as_deref().and_then(verify::dkim_refusal)
        {
            ReceiveCounters::bump(&self.rx.counters.refused_by_dkim);
            tracing::info!(id = %id, remote = %self.remote.ip(), reply = %r.to_line(), "message refused by DKIM");
            return Err(r);
        }
        if dmarc_mode == VerifyMode::Strict
            && let Some(r) = found.dmarc.as_ref().and_then(verify::dmarc_refusal)
        {
            ReceiveCounters::bump(&self.rx.counters.refused_by_dmarc);
            tracing::info!(id = %id, remote = %self.remote.ip(), reply = %r.to_line(), "message refused by DMARC");
            return Err(r);
        }
        // RFC 8601: every result, in one field under our name.
        let iprev = self.iprev_result();
        let results = Results {
            iprev,
            auth: self.auth_as.as_deref(),
            spf: spf_results
                .iter()
                .map(|s| auth_results::SpfResult {
                    result: s.result.as_str(),
                    identity: match s.identity {
                        Identity::Helo => auth_results::SpfIdentity::Helo(&s.checked),
                        Identity::MailFrom => auth_results::SpfIdentity::MailFrom(&s.checked),
                    },
                })
                .collect(),
            dkim: found
                .dkim
                .iter()
                .flatten()
                .map(|d| auth_results::DkimResult {
                    result: d.result.as_str(),
                    reason: d.reason.as_deref(),
                    domain: &d.domain,
                    selector: &d.selector,
                    b: &d.b,
                })
                .collect(),
            dmarc: found.dmarc.as_ref().map(|d| auth_results::DmarcResult {
                result: d.result.as_str(),
                from_domain: &d.from_domain,
                policy: d.policy.map(verify::DmarcPolicy::as_str),
            }),
        };
        let Some(field) = auth_results::header(&self.rx.params.hostname, &results) else {
            return Ok(contents);
        };
        let client = auth_results::strip_forged(&contents[at..], &self.rx.params.hostname);
        if client.is_some() {
            tracing::info!(id = %id, "removed Authentication-Results fields claiming this server's name (RFC 8601 §5)");
        }
        let client = client.as_deref().unwrap_or(&contents[at..]);
        let mut out = Vec::with_capacity(at + field.len() + client.len());
        out.extend_from_slice(&contents[..at]);
        out.extend_from_slice(field.as_bytes());
        out.extend_from_slice(client);
        Ok(out)
    }

    async fn etrn(&mut self, name: String) -> Flow {
        if self.helo.is_none() {
            return self.reply(replies::bad_sequence(self.dialect.greet_first()));
        }
        if self.tx.is_some() {
            return self.reply(replies::bad_sequence("ETRN not allowed in a transaction"));
        }
        let allowed = {
            let vars = RcptVars {
                session: self,
                rcpt: "",
            };
            self.rx.etrn_allow.eval_bool(&vars)
        };
        if !allowed {
            // RFC 1985 §5: 459 node not allowed.
            return self.reply(Reply::new(
                459,
                "4.7.1",
                format!("<{name}> Node not allowed: ETRN is not permitted from this client"),
            ));
        }
        if name.is_empty() {
            return self.reply(replies::syntax("ETRN needs a node name"));
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let request = EtrnRequest {
            argument: name.clone(),
            reply: tx,
        };
        let answer = if self.rx.etrn.send(request).is_ok() {
            tokio::time::timeout(Duration::from_secs(30), rx)
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or(EtrnAnswer::Unable)
        } else {
            EtrnAnswer::Unable
        };
        // RFC 1985 §5.
        let r = match answer {
            EtrnAnswer::Started => {
                Reply::new(250, "2.0.0", format!("OK, queuing for node {name} started"))
            }
            EtrnAnswer::NoMessages => Reply::new(
                251,
                "2.0.0",
                format!("OK, no messages waiting for node {name}"),
            ),
            EtrnAnswer::Pending(None) => Reply::new(
                252,
                "2.0.0",
                format!("OK, pending messages for node {name} started"),
            ),
            EtrnAnswer::Pending(Some(n)) => Reply::new(
                253,
                "2.0.0",
                format!("OK, {n} pending messages for node {name} started"),
            ),
            EtrnAnswer::Unable => Reply::new(
                458,
                "4.3.0",
                format!("Unable to queue messages for node {name}"),
            ),
        };
        self.reply(r)
    }

    fn starttls_command(&mut self) -> Flow {
        if self.tls.is_some() {
            return self.reply(replies::bad_sequence("TLS already active"));
        }
        if self.rx.tls.is_none() {
            return self.reply(replies::tls_unavailable());
        }
        if !self.esmtp {
            return self.reply(replies::bad_sequence(self.dialect.greet_extended_first()));
        }
        replies::tls_go().write_to(&mut self.out);
        Flow::StartTls
    }
}

/// Timeouts and limits of a session, resolved from the configuration once.
#[derive(Clone, Debug)]
pub struct SessionParams {
    /// Banner and EHLO name.
    pub hostname: String,
    /// RFC 1870 SIZE limit.
    pub max_message_size: u64,
    /// `session.data.max-memory`: message contents all sessions may hold.
    pub max_memory: u64,
    /// Recipients per transaction.
    pub max_recipients: usize,
    /// Error replies before the session is closed with 421.
    pub max_errors: u32,
    /// Longest command line accepted, CRLF included.
    pub max_line_length: usize,
    /// RFC 5321 §4.5.3.2.7: awaiting a command (at least 5 minutes).
    pub command_timeout: Duration,
    /// RFC 5321 §4.5.3.2.6: awaiting a data block (3 minutes).
    pub data_timeout: Duration,
    /// How long the spool may take to make a received message durable
    /// before the client is answered 451 (`session.timeout.data-end`).
    pub store_timeout: Duration,
    /// Domains whose mail is accepted without relay permission.
    pub local_domains: std::collections::HashSet<String>,
    /// With `[session.rcpt] directory`: the only addresses accepted in the
    /// local domains (lower-cased); `None` accepts every local part.
    pub local_recipients: Option<std::collections::HashSet<String>>,
    /// More `Received:` headers than this (ours included) means a mail loop.
    pub max_received_headers: usize,
}

/// The TLS version and cipher, for the Received header (RFC 8314 §4.3).
fn tls_summary(conn: &rustls::ServerConnection) -> String {
    let version = conn
        .protocol_version()
        .and_then(|v| v.as_str())
        .unwrap_or("TLS")
        .replace('_', ".");
    let cipher = conn
        .negotiated_cipher_suite()
        .and_then(|c| c.suite().as_str())
        .unwrap_or("unknown");
    format!("version={version} cipher={cipher}")
}

/// `[auth.dkim] sign`: the DKIM-Signature fields (RFC 6376) of the
/// signers the expression names, in front of the message (above our
/// Received field, which no signer covers). A signer that fails (a
/// message without From, say) is logged and skipped: the mail goes out
/// unsigned by it rather than not at all. The signing runs off the
/// session's worker, as an RSA signature costs a millisecond or two.
/// `None` when the signing task failed.
async fn dkim_sign(
    dkim: Option<Arc<DkimSigning>>,
    local_port: u16,
    mut envelope: Envelope,
    contents: Vec<u8>,
) -> Option<(Envelope, Vec<u8>)> {
    let Some(dkim) = dkim else {
        return Some((envelope, contents));
    };
    let vars = ferrymail_route::RouteVars {
        envelope: &envelope,
        rcpt: 0,
        contents: &contents,
        local_port: Some(local_port),
        queue: None,
    };
    let ids = dkim.sign.eval_strings(&vars);
    if ids.is_empty() {
        return Some((envelope, contents));
    }
    let id = envelope.id;
    let signed = tokio::task::spawn_blocking(move || {
        let mut fields = String::new();
        for sid in &ids {
            match (dkim.signer)(sid, &contents) {
                Some(Ok(field)) => fields.push_str(&field),
                Some(Err(e)) => {
                    tracing::warn!(id = %id, signature = %sid, error = %e, "DKIM signing failed; sent without this signature")
                }
                None => {
                    tracing::warn!(id = %id, signature = %sid, "no such DKIM signer; sent without this signature")
                }
            }
        }
        if fields.is_empty() {
            return contents;
        }
        let mut out = Vec::with_capacity(fields.len() + contents.len());
        out.extend_from_slice(fields.as_bytes());
        out.extend_from_slice(&contents);
        out
    })
    .await;
    match signed {
        Ok(contents) => {
            envelope.size = contents.len() as u64;
            Some((envelope, contents))
        }
        Err(e) => {
            // The task panicked and took the contents with it: the
            // client is told 451 and sends the message again.
            tracing::error!(id = %id, error = %e, "DKIM signing task failed");
            None
        }
    }
}
