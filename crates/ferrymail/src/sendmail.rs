//! `ferrymail sendmail`: the sendmail(8) command line that cron, scripts
//! and applications on the host use to send mail, as Postfix's sendmail
//! does through postdrop. It reads a message on standard input and hands
//! it to the running server's management listener (`POST /api/submit`),
//! which queues it with `source = 'local'`; the command exits 0 only once
//! the message is durable.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use ferrymail_operate::client::encode_query_value;
use mail_parser::HeaderName;

/// The sendmail options that matter to a mail queue; the others that
/// programs pass by habit (`-o...`, `-F`, `-B`, `-N`, `-v`, `-bm`) are
/// accepted and ignored, as Postfix's sendmail ignores most of them.
#[derive(Args)]
pub struct SendmailArgs {
    /// The envelope sender; without a domain, the server's hostname is
    /// added. Default: the user running the command.
    #[arg(short = 'f')]
    from: Option<String>,
    /// The envelope sender, as `-f` (the older name mailx and others use).
    #[arg(short = 'r', value_name = "FROM", conflicts_with = "from")]
    from_r: Option<String>,
    /// Verbose (ignored: the queue id is printed anyway).
    #[arg(short = 'v')]
    _verbose: bool,
    /// The mode: `-bm` (read a message and queue it) is the only one.
    #[arg(short = 'b', value_name = "MODE", value_parser = ["m"])]
    _mode: Option<String>,
    /// Take the recipients from the message's To, Cc and Bcc fields (and
    /// remove Bcc), in addition to any given as arguments.
    #[arg(short = 't')]
    from_headers: bool,
    /// A line with a single dot does not end the message.
    #[arg(short = 'i')]
    ignore_dots: bool,
    /// Sendmail options: `-oi` is `-i`; the others are ignored.
    #[arg(short = 'o', value_name = "OPTION")]
    options: Vec<String>,
    /// The sender's full name (ignored: the message's From field says it).
    #[arg(short = 'F', value_name = "NAME")]
    _full_name: Option<String>,
    /// The body type (ignored: 8-bit text is declared as 8BITMIME).
    #[arg(short = 'B', value_name = "TYPE")]
    _body: Option<String>,
    /// DSN NOTIFY (ignored).
    #[arg(short = 'N', value_name = "NOTIFY")]
    _notify: Option<String>,
    /// The server's configuration file (where its management listener is).
    #[arg(short = 'c', long = "config")]
    config: Option<PathBuf>,
    /// Recipients.
    recipients: Vec<String>,
}

/// Entry point of `ferrymail sendmail`.
pub fn main(args: SendmailArgs) -> ExitCode {
    let mut input = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut input) {
        eprintln!("ferrymail sendmail: cannot read the message: {e}");
        return ExitCode::from(1);
    }
    let ignore_dots = args.ignore_dots || args.options.iter().any(|o| o == "i");
    if !ignore_dots {
        input = up_to_lone_dot(&input);
    }
    let mut recipients = args.recipients.clone();
    if args.from_headers {
        let (message, listed) = take_header_recipients(&input);
        input = message;
        recipients.extend(listed);
    }
    // Once each (an argument also in To, or an address in To and Cc):
    // a recipient named twice must not get the message twice.
    let mut seen = std::collections::HashSet::new();
    recipients.retain(|r| seen.insert(r.to_lowercase()));
    if recipients.is_empty() {
        eprintln!("ferrymail sendmail: no recipients (name them, or use -t)");
        return ExitCode::from(2);
    }
    let (_, client) = match crate::cli::submit_client_for(args.config.as_deref()) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let from = args
        .from
        .clone()
        .or(args.from_r.clone())
        .unwrap_or_else(|| {
            std::env::var("USER")
                .or_else(|_| std::env::var("LOGNAME"))
                .unwrap_or_else(|_| "root".into())
        });
    let path = format!(
        "/api/submit?from={}&to={}",
        encode_query_value(&from),
        encode_query_value(&recipients.join(","))
    );
    let answer = match crate::cli::block_on(
        "ferrymail sendmail",
        client.call("POST", &path, Some(input)),
    ) {
        Ok(a) => a,
        Err(code) => return code,
    };
    match answer {
        Ok(body) => {
            let id = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["id"].as_str().map(str::to_string))
                .unwrap_or_default();
            eprintln!("ferrymail sendmail: queued as {id}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ferrymail sendmail: {e}");
            ExitCode::from(1)
        }
    }
}

/// Sendmail's classic end of input: a line holding a single `.` (without
/// `-i`). What follows it is not part of the message.
fn up_to_lone_dot(input: &[u8]) -> Vec<u8> {
    let mut pos = 0;
    while pos < input.len() {
        let end = memchr_nl(&input[pos..]).map_or(input.len(), |i| pos + i + 1);
        let line = &input[pos..end];
        if line == b".\n" || line == b".\r\n" || line == b"." {
            return input[..pos].to_vec();
        }
        pos = end;
    }
    input.to_vec()
}

fn memchr_nl(s: &[u8]) -> Option<usize> {
    s.iter().position(|&b| b == b'\n')
}

/// `-t`: the addresses of the To, Cc and Bcc fields (as mail-parser reads
/// them: groups, display names, comments and encoded words included), and
/// the message without its Bcc fields, which must not show (RFC 5322
/// §3.6.3).
fn take_header_recipients(input: &[u8]) -> (Vec<u8>, Vec<String>) {
    let Some(parsed) = mail_parser::MessageParser::default().parse_headers(input) else {
        return (input.to_vec(), Vec::new());
    };
    let mut recipients = Vec::new();
    let mut bcc = Vec::new();
    for h in parsed.headers() {
        if !matches!(h.name, HeaderName::To | HeaderName::Cc | HeaderName::Bcc) {
            continue;
        }
        if let Some(list) = h.value.as_address() {
            recipients.extend(
                list.iter()
                    .filter_map(|a| a.address.as_deref())
                    .map(str::to_string),
            );
        }
        if h.name == HeaderName::Bcc {
            bcc.push(h.offset_field as usize..h.offset_end as usize);
        }
    }
    let mut message = Vec::with_capacity(input.len());
    let mut at = 0;
    for field in bcc {
        message.extend_from_slice(&input[at..field.start]);
        at = field.end;
    }
    message.extend_from_slice(&input[at..]);
    (message, recipients)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipients_from_headers_and_bcc_removed() {
        let m = b"To: \"Doe, John\" <john@x.example>, jane@x.example (Jane, J.)\n\
Cc: team: a@y.example, B <b@y.example>;,\n c@z.example\n\
Bcc: hidden@w.example\nSubject: s\n\nTo: body@not.example\n";
        let (message, rcpts) = take_header_recipients(m);
        assert_eq!(
            rcpts,
            [
                "john@x.example",
                "jane@x.example",
                "a@y.example",
                "b@y.example",
                "c@z.example",
                "hidden@w.example"
            ]
        );
        let text = String::from_utf8(message).unwrap();
        assert!(!text.contains("Bcc") && !text.contains("hidden"), "{text}");
        assert!(
            text.contains("Subject: s\n\nTo: body@not.example\n"),
            "{text}"
        );
        assert!(text.starts_with("To: \"Doe, John\""), "{text}");
    }

    #[test]
    fn a_lone_dot_ends_the_input() {
        assert_eq!(up_to_lone_dot(b"a\n.\nafter\n"), b"a\n");
        assert_eq!(up_to_lone_dot(b"a\n..\nb\n"), b"a\n..\nb\n");
        assert_eq!(up_to_lone_dot(b"a\nb"), b"a\nb");
    }
}
