//! Durations (`30s`, `2m`, `5d`) and sizes (`50M`), shared by the TOML reader and
//! the expression lexer so both accept exactly the same spellings.

use std::time::Duration;

/// Duration units, longest suffix first so that `ms` wins over `m`.
const DURATION_UNITS: [(&str, u64); 6] = [
    ("ms", 1),
    ("s", 1_000),
    ("m", 60_000),
    ("h", 3_600_000),
    ("d", 86_400_000),
    ("w", 604_800_000),
];

/// The message shown whenever a unit is missing or unknown.
pub(crate) const DURATION_HINT: &str = "use a number followed by ms, s, m, h, d or w, e.g. 30s";

/// Turns a number and a unit suffix into a duration, or explains what is wrong.
pub(crate) fn duration_from_parts(number: &str, unit: &str) -> Result<Duration, String> {
    let Some(&(_, millis)) = DURATION_UNITS.iter().find(|(u, _)| *u == unit) else {
        return Err(if unit.is_empty() {
            format!("missing unit; {DURATION_HINT}")
        } else {
            format!("unknown unit '{unit}'; {DURATION_HINT}")
        });
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("'{number}' is not a whole number; {DURATION_HINT}"))?;
    n.checked_mul(millis)
        .map(Duration::from_millis)
        .ok_or_else(|| "duration is too large".to_string())
}

/// Parses one duration such as `30s`, `2m`, `1h`, `3d`, `1w` or `250ms`.
///
/// Compound forms (`1h30m`) are not accepted: write `90m`.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err(format!("empty duration; {DURATION_HINT}"));
    }
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    if number.is_empty() {
        return Err(format!("expected a number first; {DURATION_HINT}"));
    }
    duration_from_parts(number, unit)
}

/// Formats a duration in the largest unit that represents it exactly, so that
/// `parse_duration(&format_duration(d)) == Ok(d)` for whole milliseconds.
pub(crate) fn format_duration(d: Duration) -> String {
    let millis = d.as_millis();
    if millis == 0 {
        return "0s".to_string();
    }
    for &(unit, size) in DURATION_UNITS.iter().rev() {
        let size = u128::from(size);
        if millis.is_multiple_of(size) {
            return format!("{}{unit}", millis / size);
        }
    }
    format!("{millis}ms")
}

/// Parses a byte size: a plain number of bytes, or a number followed by
/// `K`/`KB`/`KiB`, `M`/`MB`/`MiB` or `G`/`GB`/`GiB` (case-insensitive). Every
/// suffix is binary (1024-based): mail size limits are conventionally quoted
/// that way and the difference is never what an operator means to express.
pub(crate) fn parse_size(text: &str) -> Result<u64, String> {
    const HINT: &str = "use a number of bytes or a number followed by K, M or G, e.g. 50M";
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    if number.is_empty() {
        return Err(format!("expected a number first; {HINT}"));
    }
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        other => return Err(format!("unknown size unit '{other}'; {HINT}")),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("'{number}' is too large"))?;
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| "size is too large".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let table = [
            ("250ms", 250),
            ("30s", 30_000),
            ("2m", 120_000),
            ("1h", 3_600_000),
            ("3d", 259_200_000),
            ("1w", 604_800_000),
            (" 5m ", 300_000),
            ("0s", 0),
        ];
        for (text, millis) in table {
            assert_eq!(
                parse_duration(text),
                Ok(Duration::from_millis(millis)),
                "{text}"
            );
        }
        for bad in [
            "",
            "5",
            "m",
            "5x",
            "1h30m",
            "-5s",
            "5.5s",
            "99999999999999999999s",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations_round_trip() {
        for d in ["250ms", "30s", "2m", "1h", "3d", "2w", "90m", "1500ms"] {
            assert_eq!(format_duration(parse_duration(d).unwrap()), d);
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1024"), Ok(1024));
        assert_eq!(parse_size("50M"), Ok(50 << 20));
        assert_eq!(parse_size("50 MiB"), Ok(50 << 20));
        assert_eq!(parse_size("2k"), Ok(2048));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert!(parse_size("M").is_err());
        assert!(parse_size("5T").is_err());
    }
}
