//! Configuration errors. Each one names the file and the line of the key or
//! value at fault, because an operator fixes a config in an editor, and
//! `ferrymail check` prints exactly `FILE:LINE: problem` (the form compilers
//! use, which editors jump to).

use std::fmt;
use std::path::PathBuf;

use crate::expr::ExprError;

/// One problem in a configuration file, located by file and line.
///
/// Display is exactly `FILE:LINE: problem`, e.g.
/// `/etc/ferrymail.toml:12: unknown key 'retyr' in [queue.schedule]; did you mean 'retry'?`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}:{line}: {problem}", path.display())]
pub struct ConfigError {
    /// The configuration file (as given to [`crate::load`] or [`crate::parse`]).
    pub path: PathBuf,
    /// 1-based line of the offending key or value. Problems with the file as a
    /// whole (unreadable, not UTF-8) point at line 1.
    pub line: usize,
    /// What is wrong; callers can match on it, tests compare its text.
    /// Boxed so that `Result<Config, ConfigError>` stays small.
    pub problem: Box<Problem>,
}

/// What is wrong, without the location.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// The configuration file itself could not be read.
    #[error("cannot read configuration: {0}")]
    Read(String),
    /// The file is not valid TOML.
    #[error("invalid TOML: {0}")]
    Syntax(String),
    /// A key that no section knows; catches typos that would otherwise be
    /// silently ignored.
    #[error("unknown key '{key}' in {section}{}", DidYouMean(suggestion.as_deref()))]
    UnknownKey {
        /// The key as written.
        key: String,
        /// Where it was found, `[queue.schedule]` or `the top-level table`.
        section: String,
        /// The closest known key, if one is close.
        suggestion: Option<String>,
    },
    /// A value of the wrong TOML type (`max-errors = "ten"`).
    #[error("'{key}' must be {expected}, found {found}")]
    WrongType {
        /// Full dotted key, e.g. `session.max-errors`.
        key: String,
        /// What was expected, e.g. `an integer`.
        expected: &'static str,
        /// What was found, e.g. `a string`.
        found: String,
    },
    /// A required key is absent.
    #[error("missing required key '{key}' in {section}")]
    Missing {
        /// The key that must be set.
        key: String,
        /// The section it belongs in.
        section: String,
    },
    /// A value that is not one of a fixed set of words (`protocol = "smpt"`).
    #[error("'{key}' must be one of {}, found '{value}'{}", allowed.join(", "), DidYouMean(suggestion.as_deref()))]
    BadChoice {
        /// Full dotted key.
        key: String,
        /// The value as written.
        value: String,
        /// The accepted values.
        allowed: Vec<&'static str>,
        /// The closest accepted value, if one is close.
        suggestion: Option<String>,
    },
    /// A malformed duration (`"5 minutes"`).
    #[error("invalid duration '{value}' for '{key}': {reason}")]
    BadDuration {
        /// Full dotted key.
        key: String,
        /// The value as written.
        value: String,
        /// Why it is not a duration.
        reason: String,
    },
    /// A malformed `IP:PORT`.
    #[error(
        "invalid socket address '{value}' for '{key}': expected IP:PORT, e.g. 0.0.0.0:25 or [::]:25"
    )]
    BadAddress {
        /// Full dotted key.
        key: String,
        /// The value as written.
        value: String,
    },
    /// An expression that does not parse (unknown variable or function,
    /// syntax error).
    #[error("invalid expression for '{key}': {error}")]
    BadExpr {
        /// Full dotted key.
        key: String,
        /// The parser's explanation and column.
        error: ExprError,
    },
    /// A `[storage]` value naming neither a configured store nor a store type.
    #[error(
        "'{key}' = '{value}' is neither a store defined under [store.<id>]{} nor a supported store type (supported types: {})",
        defined_list(defined),
        supported.join(", ")
    )]
    UnknownStore {
        /// Full dotted key (`storage.data`).
        key: String,
        /// The value as written.
        value: String,
        /// Store ids defined in the file.
        defined: Vec<String>,
        /// Store types Ferrymail supports.
        supported: Vec<&'static str>,
    },
    /// A reference to an id that is not defined (a certificate, a schedule, a route).
    #[error("'{key}' refers to {what} '{id}', which is not defined{}", DidYouMean(suggestion.as_deref()))]
    UnknownReference {
        /// Full dotted key.
        key: String,
        /// What kind of thing is referenced, e.g. `schedule`.
        what: &'static str,
        /// The id as written.
        id: String,
        /// The closest defined id, if one is close.
        suggestion: Option<String>,
    },
    /// `%{env:NAME}%` naming an unset variable.
    #[error("environment variable '{name}' is not set (used as %{{env:{name}}}%)")]
    EnvMissing {
        /// The variable name.
        name: String,
    },
    /// `%{file:PATH}%` naming a file that cannot be read.
    #[error("cannot read '{path}' (used as %{{file:{path}}}%): {reason}")]
    MacroFile {
        /// The path as resolved.
        path: String,
        /// The operating system's explanation.
        reason: String,
    },
    /// A malformed `%{...}%` macro.
    #[error("{0}")]
    BadMacro(String),
    /// Any other invalid value; the text says what and why.
    #[error("{0}")]
    Invalid(String),
}

/// Formats `; did you mean 'x'?` or nothing.
struct DidYouMean<'a>(Option<&'a str>);

impl fmt::Display for DidYouMean<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(s) => write!(f, "; did you mean '{s}'?"),
            None => Ok(()),
        }
    }
}

fn defined_list(defined: &[String]) -> String {
    if defined.is_empty() {
        String::new()
    } else {
        format!(" (defined: {})", defined.join(", "))
    }
}
