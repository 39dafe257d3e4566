//! WebSocket message throughput for `bench/tunnels.py`: an echo server to put behind the proxies,
//! and a load client that keeps N connections each sending one small message at a time and
//! counting the echoes. Both are written for a single core (a current-thread runtime) and do as
//! little as the protocol allows, so that the proxy between them is what is measured: a Python
//! client on one core tops out well below what nginx tunnels.
//!
//! Framing is the minimum of RFC 6455 (<https://www.rfc-editor.org/rfc/rfc6455#section-5.2>):
//! client frames masked, server frames not, ping answered with pong, close echoed.
//!
//! Usage:
//!   ws_bench echo LISTEN_ADDR
//!   ws_bench load URL [--connections N] [--seconds S] [--size BYTES] [--header 'Name: value']...
//!
//! `load` prints `name value` lines: messages, seconds, rate, p50_us, p99_us, refused (handshakes
//! answered other than 101) and errors (connections that failed or closed, echoes that differed).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// <https://www.rfc-editor.org/rfc/rfc6455#section-1.3>
const ACCEPT_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
const MAX_HEAD: usize = 16 * 1024;
const MAX_FRAME: u64 = 1 << 24;

type Error = Box<dyn std::error::Error + Send + Sync>;

fn accept_key(key: &str) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(key.trim().as_bytes());
    ctx.update(ACCEPT_GUID.as_bytes());
    STANDARD.encode(ctx.finish())
}

/// Reads until the end of an HTTP head; returns the head and whatever followed it.
async fn read_head(stream: &mut TcpStream) -> Result<(String, Vec<u8>), Error> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return Ok((String::from_utf8_lossy(&buf).into_owned(), rest));
        }
        if buf.len() > MAX_HEAD {
            return Err("HTTP head too large".into());
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err("connection closed during the HTTP head".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

/// One parsed frame: FIN+opcode byte, payload range in the buffer, mask, total length.
struct Frame {
    first: u8,
    payload: std::ops::Range<usize>,
    mask: Option<[u8; 4]>,
    len: usize,
}

/// The frame at the start of `buf`, or None while it is incomplete.
fn parse_frame(buf: &[u8]) -> Result<Option<Frame>, Error> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let masked = buf[1] & 0x80 != 0;
    let (len, mut at) = match buf[1] & 0x7f {
        126 if buf.len() >= 4 => (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
        127 if buf.len() >= 10 => {
            let mut eight = [0u8; 8];
            eight.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(eight), 10)
        }
        126 | 127 => return Ok(None),
        n => (u64::from(n), 2),
    };
    if len > MAX_FRAME {
        return Err("frame too large".into());
    }
    let mask = if masked {
        if buf.len() < at + 4 {
            return Ok(None);
        }
        let m = [buf[at], buf[at + 1], buf[at + 2], buf[at + 3]];
        at += 4;
        Some(m)
    } else {
        None
    };
    let end = at + len as usize;
    if buf.len() < end {
        return Ok(None);
    }
    Ok(Some(Frame {
        first: buf[0],
        payload: at..end,
        mask,
        len: end,
    }))
}

/// Appends a frame with `first` (FIN+opcode) and `payload`, masked with `mask` when given.
fn write_frame(out: &mut Vec<u8>, first: u8, payload: &[u8], mask: Option<[u8; 4]>) {
    out.push(first);
    let bit = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(bit | n as u8),
        n if n <= usize::from(u16::MAX) => {
            out.push(bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(m) => {
            out.extend_from_slice(&m);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ m[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
}

// --- echo server ----------------------------------------------------------------------------------

async fn echo_connection(mut stream: TcpStream) -> Result<(), Error> {
    stream.set_nodelay(true)?;
    let (head, mut buf) = read_head(&mut stream).await?;
    let upgrade = header(&head, "upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let Some(key) = header(&head, "sec-websocket-key").filter(|_| upgrade) else {
        // Readiness probes and anything else that is not an upgrade.
        stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
            .await?;
        return Ok(());
    };
    let answer = format!(
        "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\
         sec-websocket-accept: {}\r\n\r\n",
        accept_key(key)
    );
    stream.write_all(answer.as_bytes()).await?;

    let mut out = Vec::with_capacity(4096);
    let mut chunk = vec![0u8; 64 * 1024];
    let mut payload = Vec::new();
    loop {
        let mut consumed = 0;
        let mut closing = false;
        while let Some(frame) = parse_frame(&buf[consumed..])? {
            let range = consumed + frame.payload.start..consumed + frame.payload.end;
            payload.clear();
            match frame.mask {
                Some(m) => payload.extend(buf[range].iter().enumerate().map(|(i, b)| b ^ m[i % 4])),
                None => payload.extend_from_slice(&buf[range]),
            }
            consumed += frame.len;
            match frame.first & 0x0f {
                0x9 => write_frame(&mut out, 0x8a, &payload, None),
                0xa => {}
                0x8 => {
                    write_frame(&mut out, 0x88, &payload, None);
                    closing = true;
                    break;
                }
                _ => write_frame(&mut out, frame.first, &payload, None),
            }
        }
        buf.drain(..consumed);
        if !out.is_empty() {
            stream.write_all(&out).await?;
            out.clear();
        }
        if closing {
            stream.shutdown().await?;
            return Ok(());
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn echo(listen: SocketAddr) -> Result<(), Error> {
    let listener = TcpListener::bind(listen).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            // A client that goes away mid-message is its own business.
            let _ = echo_connection(stream).await;
        });
    }
}

// --- load client ----------------------------------------------------------------------------------

struct Load {
    host: String,
    addr: String,
    path: String,
    connections: usize,
    seconds: f64,
    size: usize,
    headers: Vec<String>,
}

enum Refusal {
    /// The handshake was answered, but not with 101 (the status line).
    Refused(String),
    Failed(Error),
}

impl From<Error> for Refusal {
    fn from(e: Error) -> Self {
        Refusal::Failed(e)
    }
}

impl From<std::io::Error> for Refusal {
    fn from(e: std::io::Error) -> Self {
        Refusal::Failed(e.into())
    }
}

/// Connects and upgrades; returns the stream and any bytes read past the 101's head.
async fn open(load: &Load, seed: u64) -> Result<(TcpStream, Vec<u8>), Refusal> {
    let mut stream = TcpStream::connect(&load.addr).await?;
    stream.set_nodelay(true)?;
    let key = STANDARD.encode(seed.to_le_bytes().repeat(2));
    let mut request = format!(
        "GET {} HTTP/1.1\r\nhost: {}\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\
         sec-websocket-key: {key}\r\nsec-websocket-version: 13\r\n",
        load.path, load.host
    );
    for h in &load.headers {
        request.push_str(h);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await?;
    let (head, rest) = read_head(&mut stream).await?;
    let status = head.lines().next().unwrap_or_default().to_owned();
    if !status.starts_with("HTTP/1.1 101") {
        return Err(Refusal::Refused(status));
    }
    if header(&head, "sec-websocket-accept") != Some(accept_key(&key).as_str()) {
        return Err(Refusal::Failed("wrong Sec-WebSocket-Accept".into()));
    }
    Ok((stream, rest))
}

/// Sends one message at a time until `deadline`, each after the echo of the one before; returns
/// the round-trip time of each, in microseconds.
async fn exchange(
    mut stream: TcpStream,
    mut buf: Vec<u8>,
    size: usize,
    seed: u64,
    deadline: Instant,
    rtts: &mut Vec<u32>,
) -> Result<(), Error> {
    let message: Vec<u8> = (0..size)
        .map(|i| b'a' + ((i as u64 + seed) % 26) as u8)
        .collect();
    let mut out = Vec::with_capacity(size + 14);
    let mut chunk = vec![0u8; 64 * 1024];
    let mut state = seed | 1;
    while Instant::now() < deadline {
        // xorshift: a fresh mask per frame, as RFC 6455 asks, for the price of three shifts.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let m = (state as u32).to_be_bytes();
        out.clear();
        write_frame(&mut out, 0x81, &message, Some(m));
        let sent = Instant::now();
        stream.write_all(&out).await?;
        let frame = loop {
            if let Some(frame) = parse_frame(&buf)? {
                break frame;
            }
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err("connection closed".into());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        if frame.first != 0x81 || frame.mask.is_some() || buf[frame.payload.clone()] != message[..]
        {
            return Err("the echo differs from the message".into());
        }
        buf.drain(..frame.len);
        rtts.push(sent.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
    }
    Ok(())
}

fn percentile(sorted: &[u32], pct: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((pct / 100.0 * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

async fn load(load: Load) -> Result<(), Error> {
    let load = std::rc::Rc::new(load);
    let mut refused = 0usize;
    let mut errors = 0usize;
    let mut first_refusal = None;
    // Every connection is upgraded before the clock starts.
    let mut opened = Vec::with_capacity(load.connections);
    for i in 0..load.connections {
        let seed = 0x9e37_79b9_7f4a_7c15u64.wrapping_mul(i as u64 + 1);
        match open(&load, seed).await {
            Ok((stream, rest)) => opened.push((stream, rest, seed)),
            Err(Refusal::Refused(status)) => {
                refused += 1;
                first_refusal.get_or_insert(status);
            }
            Err(Refusal::Failed(e)) => {
                errors += 1;
                first_refusal.get_or_insert(e.to_string());
            }
        }
    }
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(load.seconds);
    let local = tokio::task::LocalSet::new();
    let mut tasks = Vec::new();
    for (stream, rest, seed) in opened {
        let size = load.size;
        tasks.push(local.spawn_local(async move {
            let mut rtts = Vec::with_capacity(1 << 16);
            let outcome = exchange(stream, rest, size, seed, deadline, &mut rtts).await;
            (rtts, outcome.err().map(|e| e.to_string()))
        }));
    }
    let results = local
        .run_until(async move {
            let mut all = Vec::new();
            for task in tasks {
                all.push(task.await);
            }
            all
        })
        .await;
    let elapsed = started.elapsed().as_secs_f64();
    let mut rtts = Vec::new();
    for result in results {
        match result {
            Ok((mut some, failure)) => {
                rtts.append(&mut some);
                if let Some(e) = failure {
                    errors += 1;
                    first_refusal.get_or_insert(e);
                }
            }
            Err(e) => {
                errors += 1;
                first_refusal.get_or_insert(e.to_string());
            }
        }
    }
    rtts.sort_unstable();
    println!("messages {}", rtts.len());
    println!("seconds {elapsed:.3}");
    println!("rate {:.1}", rtts.len() as f64 / elapsed);
    println!("p50_us {}", percentile(&rtts, 50.0));
    println!("p99_us {}", percentile(&rtts, 99.0));
    println!("refused {refused}");
    println!("errors {errors}");
    if let Some(first) = first_refusal {
        println!("first_problem {first}");
    }
    Ok(())
}

fn parse_load(mut args: impl Iterator<Item = String>) -> Result<Load, Error> {
    let url: http::Uri = args.next().ok_or("load needs a URL")?.parse()?;
    if url.scheme_str() != Some("ws") {
        return Err("only ws:// URLs".into());
    }
    let authority = url.authority().ok_or("the URL needs a host")?;
    let port = authority.port_u16().unwrap_or(80);
    let mut load = Load {
        host: authority.as_str().to_owned(),
        addr: format!("{}:{port}", authority.host()),
        path: url.path_and_query().map_or("/", |p| p.as_str()).to_owned(),
        connections: 32,
        seconds: 5.0,
        size: 64,
        headers: Vec::new(),
    };
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--connections" => load.connections = value.parse()?,
            "--seconds" => load.seconds = value.parse()?,
            "--size" => load.size = value.parse()?,
            "--header" => load.headers.push(value),
            other => return Err(format!("unknown option {other}").into()),
        }
    }
    Ok(load)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("ws_bench: {e}");
            std::process::exit(1);
        }
    };
    let outcome = match args.next().as_deref() {
        Some("echo") => match args.next().map(|a| a.parse::<SocketAddr>()) {
            Some(Ok(listen)) => runtime.block_on(echo(listen)),
            _ => Err("usage: ws_bench echo LISTEN_ADDR".into()),
        },
        Some("load") => parse_load(args).and_then(|l| runtime.block_on(load(l))),
        _ => Err(
            "usage: ws_bench echo LISTEN_ADDR | ws_bench load URL [--connections N] \
                  [--seconds S] [--size BYTES] [--header 'Name: value']..."
                .into(),
        ),
    };
    if let Err(e) = outcome {
        eprintln!("ws_bench: {e}");
        std::process::exit(1);
    }
}
