//! `ferrymail`: the one binary. `serve` runs the MTA; `check` validates a
//! configuration; `queue ...` talks to a running server's management
//! listener, and `sendmail` submits a message through it.
//!
//! Exit codes (INTERFACE.md): 0 success, 1 operation failed, 2 usage or
//! configuration error.

mod cli;
mod metrics;
mod reload;
mod sendmail;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Ferrymail, a mail transfer agent built around its outbound queue.
#[derive(Parser)]
#[command(name = "ferrymail", version, about)]
struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the MTA in the foreground until SIGTERM or SIGINT.
    Serve {
        /// Configuration file; without it, built-in defaults (SMTP on
        /// 127.0.0.1:2525, embedded store under ./data).
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Validate a configuration file: exit 0, or 2 with `file:line: problem`.
    Check {
        /// Configuration file.
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Read the running server's configuration file again and put it in
    /// force without a restart (as SIGHUP does): routes, queues, schedules,
    /// session rules, limits, certificates, keys. Listeners and stores
    /// change only at a restart.
    Reload {
        /// The server's configuration file (tells where its management
        /// listener is, and its token).
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Send a message read on standard input through the running server,
    /// like sendmail(8): `ferrymail sendmail [-f FROM] [-t] [-i] [RCPT...]`.
    Sendmail(sendmail::SendmailArgs),
    /// Inspect and act on the running server's queue.
    Queue {
        #[command(subcommand)]
        command: cli::QueueCmd,
        /// The server's configuration file (tells where its management
        /// listener is, and its token).
        #[arg(short, long, global = true)]
        config: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    match args.command {
        Cmd::Serve { config } => serve::main(config),
        // Every problem at once, in line order, so one run fixes them all.
        Cmd::Check { config } => match load_checked(&config) {
            Ok(cfg) => {
                for w in &cfg.warnings {
                    eprintln!("warning: {w}");
                }
                println!("{}: OK", config.display());
                ExitCode::SUCCESS
            }
            Err(errors) => {
                for e in errors {
                    eprintln!("{e}");
                }
                ExitCode::from(2)
            }
        },
        Cmd::Reload { config } => reload::main(config),
        Cmd::Queue { command, config } => cli::main(command, config),
        Cmd::Sendmail(args) => sendmail::main(args),
    }
}

/// A configuration file checked as `ferrymail check` does: every problem
/// at once, in line order (`file:line: problem`), DKIM keys included. A
/// reload checks the file the same way, so that what `check` passes a
/// reload takes and what it refuses a reload refuses.
pub(crate) fn load_checked(
    path: &std::path::Path,
) -> Result<ferrymail_config::Config, Vec<String>> {
    let cfg = ferrymail_config::check_file(path)
        .map_err(|errors| errors.iter().map(ToString::to_string).collect::<Vec<_>>())?;
    // DKIM keys are only known to be usable once parsed, which the report
    // crate does (as `serve` does at start).
    if let Err(e) = ferrymail_report::Signers::from_config(&cfg) {
        let line = signature_line(path, &e.id);
        return Err(vec![format!("{}:{line}: {e}", path.display())]);
    }
    // A route's CA certificates, likewise (a PEM block that rustls refuses).
    let bad: Vec<String> = ferrymail_deliver::unusable_route_cas(&cfg)
        .into_iter()
        .map(|(id, why)| {
            let line = route_ca_line(path, &id);
            format!("{}:{line}: route '{id}': {why}", path.display())
        })
        .collect();
    if !bad.is_empty() {
        return Err(bad);
    }
    // TLS certificates and keys, as `serve` loads them: text that merely
    // looks like PEM (a certificate where the key belongs, a key that does
    // not match) passes the config crate.
    let bad: Vec<String> = cfg
        .certificates
        .iter()
        .filter_map(|(id, c)| {
            let e = ferrymail_receive::tls::acceptor_from_pem(&c.cert, &c.private_key).err()?;
            let line = table_line(
                path,
                &[
                    format!("[certificate.{id}]"),
                    format!("[certificate.\"{id}\"]"),
                    format!("certificate.{id}."),
                ],
            );
            Some(format!(
                "{}:{line}: certificate '{id}': {e}",
                path.display()
            ))
        })
        .collect();
    if !bad.is_empty() {
        return Err(bad);
    }
    Ok(cfg)
}

/// The line of the `[signature.<id>]` table (or of its `private-key`
/// dotted key) in `path`, for `FILE:LINE:` messages; 1 when not found.
fn signature_line(path: &std::path::Path, id: &str) -> usize {
    table_line(
        path,
        &[
            format!("[signature.{id}]"),
            format!("[signature.\"{id}\"]"),
            format!("signature.{id}.private-key"),
        ],
    )
}

/// The line of route `id`'s `tls.ca` in `path`: `ca =` under
/// `[queue.route.<id>.tls]` or `tls.ca =` under `[queue.route.<id>]`, else
/// that table's header; 1 when not found.
fn route_ca_line(path: &std::path::Path, id: &str) -> usize {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<String> = text
        .lines()
        .map(|l| l.chars().filter(|c| !c.is_whitespace()).collect())
        .collect();
    for (header, key) in [
        (format!("[queue.route.{id}.tls]"), "ca="),
        (format!("[queue.route.{id}]"), "tls.ca="),
    ] {
        if let Some(start) = lines.iter().position(|l| l.starts_with(&header)) {
            let found = lines[start + 1..]
                .iter()
                .take_while(|l| !l.starts_with('['))
                .position(|l| l.starts_with(key));
            return start + 1 + found.map_or(0, |i| i + 1);
        }
    }
    1
}

/// The first line of `path` that starts (white space aside) with one of
/// `headers`; 1 when none does.
fn table_line(path: &std::path::Path, headers: &[String]) -> usize {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .position(|l| {
            let l: String = l.chars().filter(|c| !c.is_whitespace()).collect();
            headers.iter().any(|h| l.starts_with(h.as_str()))
        })
        .map_or(1, |i| i + 1)
}
