//! A configuration file as an operator may write it: `check` reports
//! problems with a line, never panics; an expression parses or is refused.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let path = std::path::Path::new("fuzz.toml");
    if let Err(errors) = ferrymail_config::check(text, path) {
        assert!(!errors.is_empty());
        let lines = text.lines().count().max(1);
        for e in errors {
            let shown = e.to_string();
            assert!(shown.starts_with("fuzz.toml:"), "{shown}");
            // The line named is one of the file's.
            assert!(
                e.line >= 1 && e.line <= lines + 1,
                "{shown} ({lines} lines)"
            );
        }
    }
    let _ = ferrymail_config::expr::Expr::parse(text);
});
