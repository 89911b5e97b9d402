//! `%{env:NAME}%` and `%{file:PATH}%` in string values, so secrets (DKIM keys,
//! API tokens, database passwords) stay out of the configuration file.
//!
//! Rules:
//! - Expansion happens before a value is interpreted (as a string, a duration,
//!   an expression...), in every string value including array items and the
//!   strings of `if/then/else` arrays. Keys are never expanded.
//! - Inserted text is not scanned again: a file or variable containing `%{` is
//!   taken literally.
//! - Environment values are inserted exactly.
//! - File contents are inserted verbatim, except when the whole value is one
//!   `%{file:...}%`: then one trailing line ending (`\n` or `\r\n`) is removed,
//!   because files written by editors and `echo` end with one, and a token or
//!   password must not. A PEM key keeps its inner newlines either way.
//! - A relative file path is resolved against the directory of the
//!   configuration file, so a config and its secrets can move together.
//! - `%{` starts a macro: an unknown kind or a missing `}%` is an error rather
//!   than literal text, so a typo never becomes a silently wrong secret.

use std::borrow::Cow;
use std::path::Path;

use crate::error::Problem;

/// Expands every macro in `value`. `base_dir` resolves relative file paths.
pub(crate) fn expand<'a>(value: &'a str, base_dir: &Path) -> Result<Cow<'a, str>, Problem> {
    if !value.contains("%{") {
        return Ok(Cow::Borrowed(value));
    }
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    let mut macros = 0;
    while let Some(start) = rest.find("%{") {
        out.push_str(&rest[..start]);
        let body_and_more = &rest[start + 2..];
        let Some(end) = body_and_more.find("}%") else {
            return Err(Problem::BadMacro(format!(
                "unterminated macro '{}': macros are written %{{env:NAME}}% or %{{file:PATH}}%",
                &rest[start..]
            )));
        };
        let body = &body_and_more[..end];
        let (kind, arg) = body.split_once(':').unwrap_or((body, ""));
        match kind {
            "env" => {
                if arg.is_empty() {
                    return Err(Problem::BadMacro(
                        "empty variable name in %{env:}%".to_string(),
                    ));
                }
                match std::env::var(arg) {
                    Ok(v) => out.push_str(&v),
                    Err(std::env::VarError::NotPresent) => {
                        return Err(Problem::EnvMissing {
                            name: arg.to_string(),
                        });
                    }
                    Err(std::env::VarError::NotUnicode(_)) => {
                        return Err(Problem::BadMacro(format!(
                            "environment variable '{arg}' is not valid UTF-8"
                        )));
                    }
                }
            }
            "file" => {
                if arg.is_empty() {
                    return Err(Problem::BadMacro("empty path in %{file:}%".to_string()));
                }
                let path = base_dir.join(arg);
                match std::fs::read_to_string(&path) {
                    Ok(text) => out.push_str(&text),
                    Err(e) => {
                        return Err(Problem::MacroFile {
                            path: path.display().to_string(),
                            reason: e.to_string(),
                        });
                    }
                }
            }
            other => {
                return Err(Problem::BadMacro(format!(
                    "unknown macro '%{{{other}:...}}%': macros are written %{{env:NAME}}% or %{{file:PATH}}%"
                )));
            }
        }
        macros += 1;
        rest = &body_and_more[end + 2..];
    }
    out.push_str(rest);
    if macros == 1
        && is_single_file_macro(value)
        && let Some(stripped) = out.strip_suffix('\n')
    {
        let stripped = stripped.strip_suffix('\r').unwrap_or(stripped);
        out.truncate(stripped.len());
    }
    Ok(Cow::Owned(out))
}

/// Whether the whole value is exactly one `%{file:...}%`.
fn is_single_file_macro(value: &str) -> bool {
    value
        .strip_prefix("%{file:")
        .and_then(|v| v.strip_suffix("}%"))
        .is_some_and(|inner| !inner.contains("}%"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_values_are_borrowed() {
        assert!(matches!(
            expand("no macros here", Path::new(".")),
            Ok(Cow::Borrowed(_))
        ));
    }

    #[test]
    fn single_file_macro_detection() {
        assert!(is_single_file_macro("%{file:/x}%"));
        assert!(!is_single_file_macro("a%{file:/x}%"));
        assert!(!is_single_file_macro("%{file:/x}%%{file:/y}%"));
        assert!(!is_single_file_macro("%{env:X}%"));
    }
}
