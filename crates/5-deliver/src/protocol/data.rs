//! The message contents on the wire: DATA with dot-stuffing (RFC 5321
//! §4.5.2) or BDAT chunks (RFC 3030). No I/O: these functions say where the
//! bytes go, the session writes them.

use std::ops::Range;

/// Largest BDAT chunk. One chunk per MiB keeps each write large while
/// letting a server refuse early; RFC 3030 sets no limit.
pub const BDAT_CHUNK: usize = 1 << 20;

/// The offsets at which a `.` must be inserted before sending `contents`
/// after DATA: the start of every line that begins with a dot.
///
/// A line starts at offset 0 and after every LF, also a bare LF, and after
/// a bare CR: a next hop that ends lines at a bare LF or a bare CR would
/// otherwise read `LF . CR LF` or `CR . CR` in the contents as the end of
/// data (SMTP smuggling; some gateways end data at `CR . CR`). A next hop
/// that does not treat them as line ends keeps the extra dot, which is the
/// safe side.
pub fn stuffing_points(contents: &[u8]) -> Vec<usize> {
    let mut points = Vec::new();
    if contents.first() == Some(&b'.') {
        points.push(0);
    }
    points.extend(memchr::memmem::find_iter(contents, b"\n.").map(|i| i + 1));
    let before = points.len();
    points.extend(memchr::memmem::find_iter(contents, b"\r.").map(|i| i + 1));
    if points.len() > before {
        points.sort_unstable();
    }
    points
}

/// What follows the contents after DATA: the end-of-data line, preceded by
/// a CRLF when the contents do not end with one (RFC 5321 §4.1.1.4).
pub fn terminator(contents: &[u8]) -> &'static [u8] {
    if contents.is_empty() || contents.ends_with(b"\r\n") {
        b".\r\n"
    } else {
        b"\r\n.\r\n"
    }
}

/// The contents split into BDAT chunks: ranges of at most `chunk` bytes;
/// empty contents give one empty chunk (`BDAT 0 LAST`).
pub fn chunks(len: usize, chunk: usize) -> Vec<Range<usize>> {
    if len == 0 {
        return std::iter::once(0..0).collect();
    }
    (0..len)
        .step_by(chunk.max(1))
        .map(|start| start..(start + chunk.max(1)).min(len))
        .collect()
}

/// Applies [`stuffing_points`] and [`terminator`]: the exact DATA bytes.
/// Used by tests; the session writes the pieces without this copy.
pub fn dot_stuffed(contents: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(contents.len() + 5);
    let mut last = 0;
    for p in stuffing_points(contents) {
        out.extend_from_slice(&contents[last..p]);
        out.push(b'.');
        last = p;
    }
    out.extend_from_slice(&contents[last..]);
    out.extend_from_slice(terminator(contents));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stuffing_table() {
        let table: &[(&[u8], &[u8])] = &[
            (b"", b".\r\n"),
            (b"a\r\n", b"a\r\n.\r\n"),
            (b"a", b"a\r\n.\r\n"),
            (b".\r\n", b"..\r\n.\r\n"),
            (b"a\r\n.\r\nb\r\n", b"a\r\n..\r\nb\r\n.\r\n"),
            (b"a\r\n..x\r\n", b"a\r\n...x\r\n.\r\n"),
            (b"a.b\r\n", b"a.b\r\n.\r\n"),
            // smuggling shapes: a bare LF before a dot is a line start too
            (
                b"a\n.\r\nMAIL FROM:<x>\r\n",
                b"a\n..\r\nMAIL FROM:<x>\r\n.\r\n",
            ),
            (b"a\r\n.", b"a\r\n..\r\n.\r\n"),
            // ... and so is a bare CR (gateways that end data at CR . CR)
            (b"a\r.\rMAIL FROM:<x>\r\n", b"a\r..\rMAIL FROM:<x>\r\n.\r\n"),
            (b"\r\n.x\r.y\n.z", b"\r\n..x\r..y\n..z\r\n.\r\n"),
        ];
        for (input, want) in table {
            assert_eq!(
                dot_stuffed(input),
                *want,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    /// Whatever the contents, the stuffed form holds exactly one end-of-data
    /// line, at its end, and unstuffing gives the contents back.
    #[test]
    fn never_ends_early() {
        let pieces: [&[u8]; 6] = [b".", b"\r\n", b"\n", b"\r", b"x", b".."];
        let mut n = 0;
        for a in pieces {
            for b in pieces {
                for c in pieces {
                    for d in pieces {
                        let input = [a, b, c, d].concat();
                        let out = dot_stuffed(&input);
                        let end = memchr::memmem::find(&out, b"\r\n.\r\n").map(|i| i + 5);
                        let first = if out.starts_with(b".\r\n") {
                            Some(3)
                        } else {
                            end
                        };
                        assert_eq!(first, Some(out.len()), "{input:?} -> {out:?}");
                        // Nor does a lax next hop, ending lines at a bare
                        // CR or LF, find a lone dot line before the end.
                        let body = &out[..out.len() - terminator(&input).len()];
                        let eol = |b: u8| b == b'\r' || b == b'\n';
                        assert!(
                            !body
                                .windows(3)
                                .any(|w| eol(w[0]) && w[1] == b'.' && eol(w[2])),
                            "{input:?} -> {out:?}"
                        );
                        n += 1;
                    }
                }
            }
        }
        assert_eq!(n, 6usize.pow(4));
    }

    #[test]
    fn chunking() {
        assert_eq!(chunks(0, 10).len(), 1);
        assert_eq!(chunks(0, 10)[0], 0..0);
        assert_eq!(chunks(10, 10).len(), 1);
        assert_eq!(chunks(10, 10)[0], 0..10);
        assert_eq!(chunks(25, 10), vec![0..10, 10..20, 20..25]);
    }
}
