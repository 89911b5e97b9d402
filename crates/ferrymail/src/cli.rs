//! `ferrymail queue ...`: the operator's view of a running server's queue,
//! through its management listener.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use ferrymail_config::{Config, Protocol};
use ferrymail_operate::client::{Client, ClientError, ClientTls, encode_query_value};
use ferrymail_operate::view::{
    ActionRequest, ActionResult, Filter, LANES, MessageList, MessageView, RecipientRef, ShapeView,
};

/// The queue subcommands of INTERFACE.md.
#[derive(Subcommand)]
pub enum QueueCmd {
    /// List queued messages and their recipients.
    List {
        /// Only this virtual queue.
        #[arg(long, value_parser = not_blank)]
        queue: Option<String>,
        /// Only senders containing this text.
        #[arg(long, value_parser = not_blank)]
        sender: Option<String>,
        /// Only recipients containing this text.
        #[arg(long, value_parser = not_blank)]
        rcpt: Option<String>,
        /// Only recipients in this domain (as the bulk actions select).
        #[arg(long = "rcpt-domain", value_parser = not_blank)]
        rcpt_domain: Option<String>,
        /// Only this lane: pending (first attempt not made), deferred
        /// (waiting for a retry) or held.
        #[arg(long, value_parser = LANES)]
        lane: Option<String>,
        /// One JSON document on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Show one message: envelope, recipients, attempts, next retry.
    Show {
        /// Queue id.
        #[arg(value_parser = queue_id)]
        id: String,
        /// One JSON document on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Recipients by destination domain and age in minutes, like Postfix's
    /// qshape: where mail is piling up, and since when.
    Shape {
        /// Only this virtual queue.
        #[arg(long)]
        queue: Option<String>,
        /// One row per virtual queue instead of per recipient domain.
        #[arg(long, conflicts_with = "by_sender")]
        by_queue: bool,
        /// One row per sender domain instead of per recipient domain
        /// (qshape -s); the null sender's notifications are MAILER-DAEMON.
        #[arg(long)]
        by_sender: bool,
        /// Only this lane: pending (first attempts), deferred (retries) or
        /// held. Default: every recipient that is not held.
        #[arg(long, value_parser = LANES)]
        lane: Option<String>,
        /// Show at most this many rows after TOTAL (the largest).
        #[arg(long, default_value_t = 20)]
        top: usize,
        /// One JSON document on stdout (every row).
        #[arg(long)]
        json: bool,
    },
    /// Print a message's stored contents (like Postfix's postcat -q).
    Cat {
        /// Queue id.
        #[arg(value_parser = queue_id)]
        id: String,
    },
    /// Make messages due now (a destination suspended as dead is probed at once).
    Retry(Selection),
    /// Keep messages from being attempted until released.
    Hold(Selection),
    /// Undo a hold.
    Release(Selection),
    /// Remove messages from the queue without notifying anyone.
    Cancel(Selection),
    /// Route messages again with the routing expressions as configured
    /// now, due at once (Postfix's postsuper -r): after a route was renamed
    /// or removed. The virtual queue stays; held mail is released.
    Requeue(Selection),
    /// Return messages to their senders now, undelivered, each sender
    /// getting the failure notice its NOTIFY asks for (Postfix's
    /// postsuper -e/-f). Held mail is returned too; mail being delivered
    /// at this moment is not.
    Bounce {
        #[command(flatten)]
        selection: Selection,
        /// The reason the failure notices give.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Attempt delivery now (what ETRN does remotely).
    Flush {
        /// Only mail for this domain.
        domain: Option<String>,
    },
}

/// Which messages a bulk action applies to.
#[derive(Args)]
pub struct Selection {
    /// Queue ids.
    #[arg(value_parser = queue_id)]
    ids: Vec<String>,
    /// Every message in this virtual queue.
    #[arg(long, value_parser = not_blank)]
    queue: Option<String>,
    /// Every recipient in this domain.
    #[arg(long = "rcpt-domain", value_parser = not_blank)]
    rcpt_domain: Option<String>,
    /// Every message whose sender contains this text.
    #[arg(long, value_parser = not_blank)]
    sender: Option<String>,
    /// Every recipient in this lane: pending, deferred or held (with the
    /// other options: only those in it), as Postfix's `postsuper -d ALL
    /// deferred`.
    #[arg(long, value_parser = LANES)]
    lane: Option<String>,
    /// The whole queue.
    #[arg(long)]
    all: bool,
    /// One JSON document on stdout.
    #[arg(long)]
    json: bool,
}

/// A queue id as `queue list` prints them (hex digits): anything else is
/// a usage error (exit 2), found before the server is asked.
fn queue_id(value: &str) -> Result<String, String> {
    value
        .parse::<ferrymail_spool::MessageId>()
        .map(|_| value.to_string())
        .map_err(|_| format!("'{value}' is not a queue id (hex digits, as queue list prints them)"))
}

/// A filter value must say something: an empty one (`--sender "$UNSET"`)
/// would match every address and turn a bulk action on some mail into one
/// on the whole queue. A usage error (exit 2).
fn not_blank(value: &str) -> Result<String, String> {
    if value.trim().is_empty() {
        Err("must not be empty".into())
    } else {
        Ok(value.to_string())
    }
}

/// Entry point of `ferrymail queue`.
pub fn main(cmd: QueueCmd, config: Option<PathBuf>) -> ExitCode {
    // A bulk action must say what it applies to: a usage error, found before
    // anything is contacted.
    if let QueueCmd::Retry(s)
    | QueueCmd::Hold(s)
    | QueueCmd::Release(s)
    | QueueCmd::Cancel(s)
    | QueueCmd::Requeue(s)
    | QueueCmd::Bounce { selection: s, .. } = &cmd
        && s.ids.is_empty()
        && s.queue.is_none()
        && s.rcpt_domain.is_none()
        && s.sender.is_none()
        && s.lane.is_none()
        && !s.all
    {
        eprintln!("ferrymail: name message ids, --queue, --rcpt-domain, --sender, --lane or --all");
        return ExitCode::from(2);
    }
    let (_, client) = match client_for(config.as_deref()) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let result = match block_on("ferrymail", run(cmd, &client)) {
        Ok(r) => r,
        Err(code) => return code,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferrymail: {e}");
            ExitCode::from(1)
        }
    }
}

/// Runs `fut` on a single-threaded runtime: what each client command
/// (queue, reload, sendmail) does with its one request. Exit 1, with
/// `who: why` printed, when no runtime can be made.
pub fn block_on<F: std::future::Future>(who: &str, fut: F) -> Result<F::Output, ExitCode> {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => Ok(r.block_on(fut)),
        Err(e) => {
            eprintln!("{who}: {e}");
            Err(ExitCode::from(1))
        }
    }
}

/// The server's configuration (`-c FILE`, or the built-in defaults) and a
/// client for its management listener; the exit code (2, with the
/// problem printed) when there is none. The client presents the
/// listener's `token`.
pub fn client_for(config: Option<&std::path::Path>) -> Result<(Config, Client), ExitCode> {
    client_with(config, false)
}

/// [`client_for`] for submitting mail (`ferrymail sendmail`): the client
/// presents the listener's `submit-token` when it has one, which a user
/// who may not read the full `token` can read.
pub fn submit_client_for(config: Option<&std::path::Path>) -> Result<(Config, Client), ExitCode> {
    client_with(config, true)
}

fn client_with(
    config: Option<&std::path::Path>,
    submit: bool,
) -> Result<(Config, Client), ExitCode> {
    let config = match config {
        None => Config::default(),
        Some(p) => match ferrymail_config::load_for_client(p) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("{e}");
                return Err(ExitCode::from(2));
            }
        },
    };
    let Some(listener) = config.listener(Protocol::Http) else {
        eprintln!("ferrymail: the configuration has no management listener (protocol = \"http\")");
        return Err(ExitCode::from(2));
    };
    let Some(&addr) = listener.bind.first() else {
        eprintln!(
            "ferrymail: management listener '{}' binds no address",
            listener.id
        );
        return Err(ExitCode::from(2));
    };
    // A wildcard bind is reached through loopback.
    let addr = if addr.ip().is_unspecified() {
        std::net::SocketAddr::new(
            if addr.is_ipv4() {
                std::net::Ipv4Addr::LOCALHOST.into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            },
            addr.port(),
        )
    } else {
        addr
    };
    // HTTPS: the server's own certificate, from the same configuration.
    let tls = if listener.tls_implicit {
        match ClientTls::new(
            crate::serve::own_certificates(&config),
            &config.server.hostname,
        ) {
            Ok(t) => Some(t),
            Err(e) => {
                eprintln!("ferrymail: cannot set up TLS to the management listener: {e}");
                return Err(ExitCode::from(2));
            }
        }
    } else {
        None
    };
    let client = Client {
        addr,
        token: match &listener.submit_token {
            Some(t) if submit => Some(t.clone()),
            _ => listener.token.clone(),
        },
        timeout: Duration::from_secs(300),
        tls,
    };
    Ok((config, client))
}

async fn run(cmd: QueueCmd, client: &Client) -> Result<(), ClientError> {
    let mut out = std::io::stdout().lock();
    match cmd {
        QueueCmd::List {
            queue,
            sender,
            rcpt,
            rcpt_domain,
            lane,
            json,
        } => {
            let mut q = Vec::new();
            for (k, v) in [
                ("queue", queue),
                ("sender", sender),
                ("rcpt", rcpt),
                ("rcpt_domain", rcpt_domain),
                ("lane", lane),
            ] {
                if let Some(v) = v {
                    q.push(format!("{k}={}", encode_query_value(&v)));
                }
            }
            let path = if q.is_empty() {
                "/api/queue/messages".to_string()
            } else {
                format!("/api/queue/messages?{}", q.join("&"))
            };
            let body = client.call("GET", &path, None).await?;
            if json {
                let _ = out.write_all(&body);
            } else {
                let list: MessageList = parse(&body)?;
                print_list(&mut out, &list);
            }
        }
        QueueCmd::Show { id, json } => {
            let body = client
                .call(
                    "GET",
                    &format!("/api/queue/messages/{}", encode_query_value(&id)),
                    None,
                )
                .await?;
            if json {
                let _ = out.write_all(&body);
            } else {
                let m: MessageView = parse(&body)?;
                print_message(&mut out, &m);
            }
        }
        QueueCmd::Shape {
            queue,
            by_queue,
            by_sender,
            lane,
            top,
            json,
        } => {
            let by = match (by_queue, by_sender) {
                (true, _) => "queue",
                (_, true) => "sender",
                _ => "domain",
            };
            let mut q = vec![format!("by={by}")];
            if let Some(v) = queue {
                q.push(format!("queue={}", encode_query_value(&v)));
            }
            if let Some(v) = lane {
                q.push(format!("lane={v}"));
            }
            let body = client
                .call("GET", &format!("/api/queue/shape?{}", q.join("&")), None)
                .await?;
            if json {
                let _ = out.write_all(&body);
            } else {
                let view: ShapeView = parse(&body)?;
                print_shape(&mut out, &view, top);
            }
        }
        QueueCmd::Cat { id } => {
            let body = client
                .call(
                    "GET",
                    &format!("/api/queue/messages/{}/contents", encode_query_value(&id)),
                    None,
                )
                .await?;
            let _ = out.write_all(&body);
        }
        QueueCmd::Retry(s) => action(client, "retry", s, None, &mut out).await?,
        QueueCmd::Hold(s) => action(client, "hold", s, None, &mut out).await?,
        QueueCmd::Release(s) => action(client, "release", s, None, &mut out).await?,
        QueueCmd::Cancel(s) => action(client, "cancel", s, None, &mut out).await?,
        QueueCmd::Requeue(s) => action(client, "requeue", s, None, &mut out).await?,
        QueueCmd::Bounce { selection, reason } => {
            action(client, "bounce", selection, reason, &mut out).await?
        }
        QueueCmd::Flush { domain } => {
            let path = match &domain {
                Some(d) => format!("/api/queue/flush?domain={}", encode_query_value(d)),
                None => "/api/queue/flush".to_string(),
            };
            client.call("POST", &path, None).await?;
            let _ = writeln!(
                out,
                "flush requested for {}",
                domain.as_deref().unwrap_or("all destinations")
            );
        }
    }
    Ok(())
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ClientError> {
    serde_json::from_slice(body).map_err(|e| ClientError::Http(format!("unexpected answer: {e}")))
}

/// Recipients per request of a bulk action: small enough that progress moves
/// and one request stays short, large enough that a million recipients take
/// a few hundred requests.
const BULK_CHUNK: usize = 500;

async fn action(
    client: &Client,
    name: &str,
    s: Selection,
    reason: Option<String>,
    out: &mut impl Write,
) -> Result<(), ClientError> {
    let result = if !s.ids.is_empty() {
        // Named messages: one request.
        let req = ActionRequest {
            action: name.to_string(),
            ids: s.ids,
            recipients: Vec::new(),
            filter: Filter::default(),
            all: false,
            reason: reason.clone(),
        };
        let body = serde_json::to_vec(&req).unwrap_or_default();
        parse::<ActionResult>(&client.call("POST", "/api/queue/action", Some(body)).await?)?
    } else {
        // A selection: list what matches, then act on it in chunks, with a
        // progress bar on a terminal.
        let mut q = Vec::new();
        if let Some(v) = &s.queue {
            q.push(format!("queue={}", encode_query_value(v)));
        }
        if let Some(v) = &s.rcpt_domain {
            q.push(format!("rcpt_domain={}", encode_query_value(v)));
        }
        if let Some(v) = &s.sender {
            q.push(format!("sender={}", encode_query_value(v)));
        }
        if let Some(v) = &s.lane {
            q.push(format!("lane={v}"));
        }
        let path = format!("/api/queue/messages?{}", q.join("&"));
        let list: MessageList = parse(&client.call("GET", &path, None).await?)?;
        let targets: Vec<RecipientRef> = list
            .messages
            .iter()
            .flat_map(|m| {
                m.recipients.iter().map(|r| RecipientRef {
                    id: m.id.clone(),
                    rcpt: r.index,
                })
            })
            .collect();
        let mut progress = Progress::new(name, targets.len());
        let mut total = ActionResult {
            recipients: 0,
            removed_messages: 0,
        };
        for chunk in targets.chunks(BULK_CHUNK) {
            let req = ActionRequest {
                action: name.to_string(),
                ids: Vec::new(),
                recipients: chunk.to_vec(),
                filter: Filter::default(),
                all: false,
                reason: reason.clone(),
            };
            let body = serde_json::to_vec(&req).unwrap_or_default();
            let answer = match client.call("POST", "/api/queue/action", Some(body)).await {
                Ok(b) => parse::<ActionResult>(&b),
                Err(e) => Err(e),
            };
            let r = match answer {
                Ok(r) => r,
                Err(e) => {
                    // What the earlier chunks did stays done: say so.
                    progress.finish();
                    if total.recipients > 0 {
                        eprintln!(
                            "{name}: {} recipient(s) done before this error",
                            total.recipients
                        );
                    }
                    return Err(e);
                }
            };
            total.recipients += r.recipients;
            total.removed_messages += r.removed_messages;
            progress.advance(chunk.len());
        }
        progress.finish();
        total
    };
    if s.json {
        let _ = serde_json::to_writer(&mut *out, &result);
        let _ = writeln!(out);
    } else {
        let _ = writeln!(out, "{name}: {} recipient(s)", result.recipients);
        if result.removed_messages > 0 {
            let _ = writeln!(out, "removed {} message(s)", result.removed_messages);
        }
    }
    Ok(())
}

/// A one-line progress bar on stderr, drawn only when stderr is a terminal
/// (scripts and logs get the final summary alone).
struct Progress {
    label: String,
    total: usize,
    done: usize,
    visible: bool,
}

impl Progress {
    fn new(label: &str, total: usize) -> Self {
        use std::io::IsTerminal;
        let p = Progress {
            label: label.to_string(),
            total,
            done: 0,
            visible: std::io::stderr().is_terminal() && total > 0,
        };
        p.draw();
        p
    }

    fn advance(&mut self, n: usize) {
        self.done += n;
        self.draw();
    }

    fn draw(&self) {
        if !self.visible {
            return;
        }
        const WIDTH: usize = 30;
        let filled = (self.done * WIDTH).checked_div(self.total).unwrap_or(WIDTH);
        eprint!(
            "\r{} [{}{}] {}/{} recipients",
            self.label,
            "#".repeat(filled),
            "-".repeat(WIDTH - filled),
            self.done,
            self.total
        );
    }

    fn finish(&self) {
        if self.visible {
            eprintln!();
        }
    }
}

fn when(ms: u64) -> String {
    let now = ferrymail_spool::now_millis();
    if ms <= now {
        "now".to_string()
    } else {
        format!("in {}s", (ms - now).div_ceil(1000))
    }
}

/// qshape's layout: a name column, the total, then one column per age
/// bucket (minutes, upper bounds); TOTAL first, then at most `top` rows.
fn print_shape(out: &mut impl Write, view: &ShapeView, top: usize) {
    let width = view
        .rows
        .iter()
        .take(top.saturating_add(1))
        .map(|r| r.name.len())
        .max()
        .unwrap_or(5)
        .max(6);
    let mut header = format!("{:>width$} {:>6}", "", "T");
    for b in &view.buckets {
        header.push_str(&format!(" {b:>6}"));
    }
    let _ = writeln!(out, "{}", header.trim_end());
    for r in view.rows.iter().take(top.saturating_add(1)) {
        let mut line = format!("{:>width$} {:>6}", r.name, r.total);
        for c in &r.counts {
            line.push_str(&format!(" {c:>6}"));
        }
        let _ = writeln!(out, "{line}");
    }
    if view.rows.len() > top.saturating_add(1) {
        let _ = writeln!(
            out,
            "({} more rows; --top N or --json shows them)",
            view.rows.len() - top - 1
        );
    }
}

fn print_list(out: &mut impl Write, list: &MessageList) {
    let _ = writeln!(
        out,
        "{:<16}  {:>9}  {:<24}  SENDER",
        "ID", "SIZE", "ARRIVED"
    );
    for m in &list.messages {
        let _ = writeln!(
            out,
            "{:<16}  {:>9}  {:<24}  <{}>",
            m.id,
            m.size,
            ferrymail_receive::protocol::received::rfc5322_date(m.arrived / 1000)
                .split_once(", ")
                .map(|(_, d)| d.trim_end_matches(" +0000").to_string())
                .unwrap_or_default(),
            m.sender
        );
        for r in &m.recipients {
            let _ = writeln!(
                out,
                "    {:<40} {}/{}{}{} attempts={} due={}{}",
                r.address,
                r.queue,
                r.lane,
                if r.held { " HELD" } else { "" },
                notice_marker(r),
                r.attempts,
                when(r.due),
                r.last_error
                    .as_ref()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            );
        }
    }
    let _ = writeln!(
        out,
        "-- {} message(s), {} recipient(s)",
        list.messages.len(),
        list.recipients
    );
}

fn print_message(out: &mut impl Write, m: &MessageView) {
    let _ = writeln!(out, "id:          {}", m.id);
    let _ = writeln!(out, "sender:      <{}>", m.sender);
    let _ = writeln!(out, "size:        {}", m.size);
    let _ = writeln!(
        out,
        "arrived:     {}",
        ferrymail_receive::protocol::received::rfc5322_date(m.arrived / 1000)
    );
    let _ = writeln!(out, "source:      {}", m.source);
    let _ = writeln!(out, "body:        {}", m.body);
    let _ = writeln!(out, "smtputf8:    {}", m.smtputf8);
    if let Some(r) = &m.ret {
        let _ = writeln!(out, "ret:         {r}");
    }
    if let Some(e) = &m.envid {
        let _ = writeln!(out, "envid:       {e}");
    }
    let _ = writeln!(out, "mt-priority: {}", m.mt_priority);
    if let Some(ip) = &m.remote_ip {
        let _ = writeln!(out, "client:      [{ip}]");
    }
    if let Some(a) = &m.authenticated_as {
        let _ = writeln!(out, "auth:        {a}");
    }
    let _ = writeln!(out, "recipients:");
    for r in &m.recipients {
        let _ = writeln!(out, "  {}", r.address);
        let _ = writeln!(
            out,
            "    queue={} lane={} held={} attempts={} weight={} next={}",
            r.queue,
            r.lane,
            r.held,
            r.attempts,
            r.weight,
            when(r.due)
        );
        if let Some(action) = &r.notice_owed {
            let _ = writeln!(out, "    notice owed: {action} (not yet queued)");
        }
        if !r.notify.is_empty() {
            let _ = writeln!(out, "    notify={}", r.notify.join(","));
        }
        if let Some(o) = &r.orcpt {
            let _ = writeln!(out, "    orcpt={o}");
        }
        if let Some(e) = &r.last_error {
            let _ = writeln!(out, "    last error: {e}");
        }
    }
}

/// The state shown after a recipient's lane in `queue list`: a recipient
/// whose final outcome is recorded and whose notification is not yet
/// queued is ` NOTICE-OWED` (it is never attempted again); one with a delay
/// notice not yet queued is ` DELAY-NOTICE-OWED` (still being attempted).
fn notice_marker(r: &ferrymail_operate::view::RecipientView) -> &'static str {
    match r.notice_owed.as_deref() {
        None => "",
        Some("delayed") => " DELAY-NOTICE-OWED",
        Some(_) => " NOTICE-OWED",
    }
}
