//! Ferrymail's configuration: a TOML file read into typed settings, with
//! errors that point at `FILE:LINE`, and the small expression language that
//! makes settings dynamic (`retry = "[2m, 5m, 10m]"`).
//!
//! Every other crate reads its settings from [`Config`]; nothing else parses
//! the file. The key names are the operator contract of
//! `shared/design/INTERFACE.md`, following Stalwart's where it has one.
//!
//! # Code map
//! - `model.rs`: the typed settings and their built-in defaults.
//! - `build.rs`: document → [`Config`], one function per section; the lists of
//!   known keys live there.
//! - `reader.rs`: typed getters over the span-preserving TOML tree; turns byte
//!   spans into line numbers and collects every error.
//! - `macros.rs`: `%{env:NAME}%` and `%{file:PATH}%`.
//! - `expr/`: the expression language (lexer/parser, evaluator).
//! - `units.rs`: durations and sizes, shared by both.
//!
//! # Invariants
//! - Every error carries a file and a 1-based line.
//! - No key is silently ignored: an unknown key anywhere is an error.
//! - After a successful load, every id reference resolves: `storage.*` names a
//!   store in [`Config::stores`], `session.tls.certificate` a certificate,
//!   virtual queue schedules a schedule, constant strategy ids a schedule or route.
//! - Schedule `default`, virtual queue `default` and route `mx` always exist.
//! - Expression evaluation never panics and never does I/O.
//! - This crate does no I/O beyond reading the configuration file, macro
//!   files and the machine's hostname (for the default `server.hostname`).
//!
//! # Naming decisions (beyond INTERFACE.md)
//! - Listener TLS: `tls.implicit`. Route TLS: `tls.implicit`, `tls.mode`
//!   (`optional`/`require`/`disable`), `tls.allow-invalid-certs`; route auth:
//!   `auth.username`, `auth.secret`.
//! - Session timeouts: `[session.timeout] command, data-block, data-end`.
//! - Sizes (`session.data.max-message-size`) take bytes or `"50M"` (1024-based).
//! - Named schedules inherit unset keys from `[queue.schedule]`; setting
//!   `expire` or `max-attempts` in one replaces both.
//! - `[storage]` values are a `[store.<id>]` id or a store type (then an
//!   implicit store of that type with default settings, id = type name; a
//!   configured id wins). If only one of `data`/`blob` is set, the other uses
//!   the same store. Without either: the only `[store.<id>]` if there is
//!   one, an implicit `embedded` store under `./data` if there is none, an
//!   error if there are several. An `fs` store holds contents only: `data`
//!   ending up on one (named, following `blob`, or the only store) is an
//!   error on the line that put it there.
//! - Macros: a value that is exactly one `%{file:PATH}%` loses one trailing
//!   line ending (a token or password must not end in `\n`); anywhere else
//!   file contents and env values are inserted verbatim and not re-expanded.
//! - Relative store paths are used as written (the server's working
//!   directory); relative `%{file:...}%` paths resolve against the
//!   configuration file's directory.

#![warn(missing_docs)]

mod build;
mod error;
pub mod expr;
mod macros;
mod model;
mod reader;
mod units;

#[cfg(test)]
mod tests;

use std::path::Path;

pub use error::{ConfigError, Problem};
pub use expr::{Expr, ExprError, Value, Var, Variables};
pub use model::*;

/// Reads and checks the configuration file at `path`. The first problem found
/// (lowest line) is returned; [`check`] returns them all.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = read(path)?;
    parse(&text, path)
}

/// Parses configuration text. `path_for_errors` names the file in error
/// messages, becomes [`Config::source`], and anchors relative
/// `%{file:...}%` paths (they resolve against its directory).
pub fn parse(text: &str, path_for_errors: &Path) -> Result<Config, ConfigError> {
    check(text, path_for_errors).map_err(|mut errors| errors.swap_remove(0))
}

/// Like [`parse`], but on failure returns every problem found, ordered by
/// line, so `ferrymail check` can list them all at once. Never returns an
/// empty error list.
pub fn check(text: &str, path_for_errors: &Path) -> Result<Config, Vec<ConfigError>> {
    build::build(text, path_for_errors)
}

/// The configuration as a client command (`queue`, `sendmail`) needs it:
/// like [`load`], except that a `%{file:}%` the user cannot read or an
/// `%{env:}%` that is not set leaves its value out rather than failing.
/// Why: `sendmail` is run by any local user and program, who may read the
/// configuration but not the server's DKIM keys, TLS key or database
/// password; all a client needs is where the management listener is, its
/// certificate and its token. The token is the exception: one that cannot
/// be read is an error here too.
pub fn load_for_client(path: &Path) -> Result<Config, ConfigError> {
    let text = read(path)?;
    build::build_for_client(&text, path).map_err(|mut errors| errors.swap_remove(0))
}

/// Like [`load`], returning every problem found (see [`check`]).
pub fn check_file(path: &Path) -> Result<Config, Vec<ConfigError>> {
    let text = read(path).map_err(|e| vec![e])?;
    check(&text, path)
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read(path)
        .map_err(|e| e.to_string())
        .and_then(|bytes| {
            String::from_utf8(bytes).map_err(|_| "the file is not valid UTF-8".to_string())
        })
        .map_err(|reason| ConfigError {
            path: path.to_path_buf(),
            line: 1,
            problem: Box::new(Problem::Read(reason)),
        })
}

/// Picks the closest known name for a did-you-mean hint: Jaro-Winkler
/// similarity of at least 0.85, or at most two edits for names of four
/// characters or more.
pub(crate) fn suggest<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .filter_map(|c| {
            let jw = strsim::jaro_winkler(name, c);
            let close =
                jw >= 0.85 || (name.chars().count() >= 4 && strsim::levenshtein(name, c) <= 2);
            close.then_some((jw, c))
        })
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}
