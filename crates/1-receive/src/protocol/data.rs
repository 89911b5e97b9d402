//! The DATA body decoder (RFC 5321 §4.1.4, §4.5.2): finds the end-of-data marker
//! and removes dot-stuffing, without I/O.
//!
//! Written here rather than taken from smtp-proto because Ferrymail needs three
//! things that parser does not give: a leading "." on the very first line is
//! unstuffed too (the DATA command's own CRLF starts the first line), a running
//! size limit that keeps consuming but stops storing, and NUL detection.
//!
//! SMTP smuggling: the end of data is recognised only as `CRLF . CRLF`. A bare LF
//! or bare CR never starts a line, so `LF . LF`, `LF . CRLF` and `CR . CR` are
//! ordinary content and can never end the message early.

/// Where the decoder is within the current line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// The previous bytes were CRLF (or this is the first byte of the body).
    LineStart,
    /// A line started with ".": the dot is dropped either way.
    Dot,
    /// The line so far is ".\r": one more "\n" ends the data.
    DotCr,
    /// Inside a line; `prev_cr` says whether the last byte emitted was CR.
    Mid { prev_cr: bool },
}

/// Decodes one DATA body incrementally.
#[derive(Debug)]
pub struct DataDecoder {
    state: State,
    size: u64,
    limit: u64,
    has_nul: bool,
}

/// What [`DataDecoder::feed`] found.
#[derive(Debug, PartialEq, Eq)]
pub struct Fed {
    /// Bytes of the input that belong to the body (including the end marker).
    pub consumed: usize,
    /// The end-of-data marker was seen; the rest of the input is commands.
    pub done: bool,
}

impl DataDecoder {
    /// A decoder that stores at most `limit` bytes; beyond that it keeps reading
    /// to the end marker but discards (see [`DataDecoder::overflowed`]).
    pub fn new(limit: u64) -> Self {
        DataDecoder {
            state: State::LineStart,
            size: 0,
            limit,
            has_nul: false,
        }
    }

    /// The decoded size so far, counting discarded bytes too.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Lowers the limit to what was decoded so far: the rest of the
    /// message is read (to find its end) but not kept, and the message
    /// counts as [`DataDecoder::overflowed`].
    pub fn stop_keeping(&mut self) {
        self.limit = self.size.saturating_sub(1);
    }

    /// True once the body exceeded the limit: the message must be refused
    /// (552 5.3.4) after the end marker.
    pub fn overflowed(&self) -> bool {
        self.size > self.limit
    }

    /// True if the body contained a NUL byte, which RFC 5321 §2.4 and RFC 6152
    /// exclude from SMTP text and 8BITMIME alike.
    pub fn has_nul(&self) -> bool {
        self.has_nul
    }

    fn emit(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        if bytes.is_empty() {
            return;
        }
        self.size += bytes.len() as u64;
        if memchr::memchr(0, bytes).is_some() {
            self.has_nul = true;
        }
        if self.size <= self.limit {
            out.extend_from_slice(bytes);
        }
    }

    /// Feeds bytes from the wire; appends decoded content to `out`.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Fed {
        let mut i = 0;
        while i < input.len() {
            match self.state {
                State::LineStart => {
                    if input[i] == b'.' {
                        self.state = State::Dot;
                        i += 1;
                    } else {
                        self.state = State::Mid { prev_cr: false };
                    }
                }
                State::Dot => {
                    if input[i] == b'\r' {
                        self.state = State::DotCr;
                        i += 1;
                    } else {
                        // Transparency (§4.5.2): the leading dot is removed and
                        // the rest of the line is content.
                        self.state = State::Mid { prev_cr: false };
                    }
                }
                State::DotCr => {
                    if input[i] == b'\n' {
                        return Fed {
                            consumed: i + 1,
                            done: true,
                        };
                    }
                    self.emit(b"\r", out);
                    self.state = State::Mid { prev_cr: true };
                }
                State::Mid { prev_cr } => {
                    let rest = &input[i..];
                    match memchr::memchr(b'\n', rest) {
                        Some(j) => {
                            let crlf = if j == 0 {
                                prev_cr
                            } else {
                                rest[j - 1] == b'\r'
                            };
                            self.emit(&rest[..=j], out);
                            i += j + 1;
                            self.state = if crlf {
                                State::LineStart
                            } else {
                                State::Mid { prev_cr: false }
                            };
                        }
                        None => {
                            self.emit(rest, out);
                            self.state = State::Mid {
                                prev_cr: rest.last() == Some(&b'\r'),
                            };
                            i = input.len();
                        }
                    }
                }
            }
        }
        Fed {
            consumed: input.len(),
            done: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in every possible two-piece split and checks that the
    /// result never depends on how TCP cut it.
    fn decode(input: &[u8]) -> Option<(Vec<u8>, usize)> {
        let mut first: Option<(Vec<u8>, usize)> = None;
        for cut in 0..=input.len() {
            let mut d = DataDecoder::new(u64::MAX);
            let mut out = Vec::new();
            let a = d.feed(&input[..cut], &mut out);
            let result = if a.done {
                Some((out, a.consumed))
            } else {
                let b = d.feed(&input[cut..], &mut out);
                b.done.then(|| (out, cut + b.consumed))
            };
            match (&first, cut) {
                (_, 0) => first = result.clone(),
                (f, _) => assert_eq!(f, &result, "split at {cut} of {input:?}"),
            }
        }
        first
    }

    #[test]
    fn plain_body_ends_at_crlf_dot_crlf() {
        let (body, used) = decode(b"Subject: x\r\n\r\nhello\r\n.\r\nQUIT\r\n").unwrap();
        assert_eq!(body, b"Subject: x\r\n\r\nhello\r\n");
        assert_eq!(used, 24);
    }

    #[test]
    fn empty_body() {
        assert_eq!(decode(b".\r\n").unwrap().0, b"");
    }

    #[test]
    fn dot_stuffing_is_removed_including_first_line() {
        let (body, _) = decode(b"..first\r\nx\r\n..\r\n...\r\n.\r\n").unwrap();
        assert_eq!(body, b".first\r\nx\r\n.\r\n..\r\n");
    }

    #[test]
    fn smuggling_bare_lf_never_ends_data() {
        // Pinned down: the "SMTP smuggling" attack (2023) relies on a receiver
        // accepting <LF>.<LF> or <LF>.<CRLF> as end of data.
        assert_eq!(decode(b"a\n.\nMAIL FROM:<x@y>\r\n"), None);
        assert_eq!(decode(b"a\n.\r\nMAIL FROM:<x@y>\r\n"), None);
        assert_eq!(decode(b"a\r\n.\nMAIL FROM:<x@y>\r\n"), None);
        assert_eq!(decode(b"a\r.\rMAIL\r\n"), None);
        assert_eq!(decode(b"a\r.\r\n"), None);
        let (body, _) = decode(b"a\n.\nb\r\n.\r\n").unwrap();
        assert_eq!(body, b"a\n.\nb\r\n");
    }

    #[test]
    fn dot_cr_without_lf_is_content() {
        let (body, _) = decode(b".\rx\r\n.\r\n").unwrap();
        assert_eq!(body, b"\rx\r\n");
    }

    #[test]
    fn limit_discards_but_reads_to_end() {
        let mut d = DataDecoder::new(5);
        let mut out = Vec::new();
        let f = d.feed(b"0123456789\r\n.\r\nNOOP\r\n", &mut out);
        assert!(f.done);
        assert_eq!(f.consumed, 15);
        assert!(d.overflowed());
        assert!(out.len() <= 5);
    }

    #[test]
    fn nul_is_detected() {
        let mut d = DataDecoder::new(100);
        let mut out = Vec::new();
        assert!(d.feed(b"a\0b\r\n.\r\n", &mut out).done);
        assert!(d.has_nul());
    }
}
