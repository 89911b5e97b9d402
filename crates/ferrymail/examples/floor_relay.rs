//! The least an SMTP relay can do on the benchmark's path, to measure the
//! floor of relaying on this machine: not part of Ferrymail, and not a
//! mail server anyone should run.
//!
//! Why it exists: issue 4's target is 0.6× the raw hop (smtp-source
//! straight into smtp-sink) for 1 KiB messages, one connection per
//! message, with smtp-source, the relay and smtp-sink sharing two cores.
//! A relay does the sink's work for every inbound message and then a
//! client's work on the way out, so the question is what any relay
//! reaches there, not only Ferrymail. This one does only what the
//! protocol makes every relay do:
//!
//! * inbound, per connection: 220, then one reply per command (EHLO,
//!   MAIL, RCPT, DATA, the end of data, QUIT), reading the message up to
//!   `CRLF.CRLF` without parsing or unstuffing it;
//! * optionally (`--fsync DIR`), before the 250 to the end of data, the
//!   message appended to a journal file and `fdatasync`ed, shared by the
//!   messages waiting at that moment (group commit, as Ferrymail does);
//! * outbound, on `--connections` persistent connections to the next hop:
//!   MAIL, RCPT and DATA pipelined, then the still dot-stuffed contents
//!   and `.`: two round trips per message, as Ferrymail's client.
//!
//! No command parsing beyond the first four bytes, no queue, no
//! scheduler, no logging, no retries: anything but 2xx/3xx from the next
//! hop ends the program.
//!
//! ```sh
//! cargo build --release -p ferrymail --example floor_relay
//! target/release/examples/floor_relay --listen 127.0.0.1:2600 \
//!     [--next-hop 127.0.0.1:2700] [--connections 20] \
//!     [--fsync /var/tmp/floor [--prealloc]]
//! ```
//!
//! Without `--next-hop` messages are dropped once acknowledged (the
//! accept-only floor). `bench/relay.py --only floor` (also `floor-fsync`,
//! `floor-prealloc`) and `bench/accept.py --with-floor` run it beside the
//! others.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Mutex, mpsc, oneshot};

/// One message on its way out: the dot-stuffed contents with the final
/// `.CRLF`.
type Message = Vec<u8>;

/// A request to the journal thread: contents to make durable, and whom to
/// tell.
type Durable = (Arc<Vec<u8>>, oneshot::Sender<()>);

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let listen: SocketAddr = arg(&args, "--listen")
        .expect("--listen ADDR")
        .parse()
        .expect("--listen address");
    // Without a next hop, messages are dropped once acknowledged: the
    // accept-only floor (bench/accept.py).
    let next_hop: Option<SocketAddr> =
        arg(&args, "--next-hop").map(|a| a.parse().expect("--next-hop address"));
    let connections: usize = arg(&args, "--connections")
        .map(|n| n.parse().expect("--connections N"))
        .unwrap_or(20);
    let prealloc = args.iter().any(|a| a == "--prealloc");
    let journal = arg(&args, "--fsync").map(|dir| {
        std::fs::create_dir_all(&dir).expect("--fsync directory");
        let (tx, rx) = std::sync::mpsc::channel::<Durable>();
        let path = std::path::Path::new(&dir).join("journal");
        let (ready_tx, ready) = std::sync::mpsc::channel();
        std::thread::spawn(move || group_commit(&path, &rx, prealloc, ready_tx));
        ready.recv().expect("journal ready");
        tx
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let (out_tx, out_rx) = mpsc::channel::<Message>(4096);
        let out_rx = Arc::new(Mutex::new(out_rx));
        for _ in 0..connections {
            let rx = out_rx.clone();
            tokio::spawn(async move {
                let Some(next_hop) = next_hop else {
                    while rx.lock().await.recv().await.is_some() {}
                    return;
                };
                if let Err(e) = forward(next_hop, rx).await {
                    eprintln!("floor_relay: next hop: {e}");
                    std::process::exit(1);
                }
            });
        }
        let listener = TcpListener::bind(listen).await.expect("bind");
        println!("READY");
        let _ = std::io::stdout().flush();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let (out, journal) = (out_tx.clone(), journal.clone());
            tokio::spawn(async move {
                let _ = receive(stream, out, journal).await;
            });
        }
    });
}

/// The journal thread: takes every request waiting, writes them, one
/// `fdatasync`, then answers them all. Appending grows the file, so each
/// `fdatasync` also writes the inode (and, on ext4, commits the file
/// system's journal); with `prealloc` (`--prealloc`) the file is written
/// full of zeros and synced first, and the messages overwrite it in place,
/// so that a sync writes data blocks only, as PostgreSQL's pre-zeroed WAL
/// segments are written.
fn group_commit(
    path: &std::path::Path,
    rx: &std::sync::mpsc::Receiver<Durable>,
    prealloc: bool,
    ready: std::sync::mpsc::Sender<()>,
) {
    use std::io::{Seek, SeekFrom};
    const SIZE: u64 = 256 << 20;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(path)
        .expect("journal");
    if prealloc {
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..(SIZE >> 20) {
            file.write_all(&zeros).expect("journal zeros");
        }
        file.sync_all().expect("journal sync");
        file.seek(SeekFrom::Start(0)).expect("journal seek");
    }
    let _ = ready.send(());
    let mut at = 0u64;
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        batch.extend(rx.try_iter());
        for (data, _) in &batch {
            if prealloc && at + data.len() as u64 > SIZE {
                file.seek(SeekFrom::Start(0)).expect("journal seek");
                at = 0;
            }
            file.write_all(data).expect("journal write");
            at += data.len() as u64;
        }
        file.sync_data().expect("fdatasync");
        for (_, done) in batch {
            let _ = done.send(());
        }
    }
}

/// One inbound session.
async fn receive(
    stream: TcpStream,
    out: mpsc::Sender<Message>,
    journal: Option<std::sync::mpsc::Sender<Durable>>,
) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    w.write_all(b"220 floor ESMTP\r\n").await?;
    let mut line = Vec::with_capacity(512);
    loop {
        line.clear();
        if r.read_until(b'\n', &mut line).await? == 0 {
            return Ok(());
        }
        let verb = line.get(..4).map(|v| v.to_ascii_uppercase());
        match verb.as_deref() {
            Some(b"EHLO") => w.write_all(b"250-floor\r\n250 8BITMIME\r\n").await?,
            Some(b"HELO") => w.write_all(b"250 floor\r\n").await?,
            Some(b"MAIL") | Some(b"RCPT") | Some(b"RSET") | Some(b"NOOP") => {
                w.write_all(b"250 2.0.0 ok\r\n").await?
            }
            Some(b"DATA") => {
                w.write_all(b"354 go ahead\r\n").await?;
                let mut message = Vec::with_capacity(2048);
                loop {
                    let before = message.len();
                    if r.read_until(b'\n', &mut message).await? == 0 {
                        return Ok(());
                    }
                    if &message[before..] == b".\r\n" {
                        break;
                    }
                }
                if let Some(j) = &journal {
                    let (done, wait) = oneshot::channel();
                    let _ = j.send((Arc::new(message.clone()), done));
                    let _ = wait.await;
                }
                if out.send(message).await.is_err() {
                    return Ok(());
                }
                w.write_all(b"250 2.0.0 queued\r\n").await?;
            }
            Some(b"QUIT") => {
                w.write_all(b"221 2.0.0 bye\r\n").await?;
                return Ok(());
            }
            _ => w.write_all(b"500 5.5.1 what\r\n").await?,
        }
    }
}

/// Reads one reply (the last line of a multi-line one); an error unless
/// its code is `want`'s class.
async fn reply(r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>, want: u8) -> std::io::Result<()> {
    let mut line = Vec::new();
    loop {
        line.clear();
        if r.read_until(b'\n', &mut line).await? == 0 {
            return Err(std::io::Error::other("next hop closed the connection"));
        }
        if line.get(3) != Some(&b'-') {
            break;
        }
    }
    if line.first() != Some(&want) {
        return Err(std::io::Error::other(format!(
            "next hop said {}",
            String::from_utf8_lossy(&line).trim_end()
        )));
    }
    Ok(())
}

/// One persistent connection to the next hop, taking messages as they
/// come.
async fn forward(
    next_hop: SocketAddr,
    rx: Arc<Mutex<mpsc::Receiver<Message>>>,
) -> std::io::Result<()> {
    let stream = TcpStream::connect(next_hop).await?;
    stream.set_nodelay(true)?;
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    reply(&mut r, b'2').await?;
    w.write_all(b"EHLO floor\r\n").await?;
    reply(&mut r, b'2').await?;
    loop {
        let Some(message) = rx.lock().await.recv().await else {
            return Ok(());
        };
        w.write_all(b"MAIL FROM:<floor@example.org>\r\nRCPT TO:<x@example.org>\r\nDATA\r\n")
            .await?;
        reply(&mut r, b'2').await?;
        reply(&mut r, b'2').await?;
        reply(&mut r, b'3').await?;
        w.write_all(&message).await?;
        reply(&mut r, b'2').await?;
    }
}
