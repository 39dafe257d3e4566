//! The least a reverse proxy on gatehouse's stack (tokio current-thread runtime, hyper 1 HTTP/1.1
//! server and client) can do: every client connection gets one kept-alive upstream connection,
//! and requests and responses pass through untouched — no headers, no routing, no logging.
//! `bench/run.py` measures it beside gatehouse as the floor that gatehouse's own work adds to.
//!
//! Usage: bare_proxy LISTEN_ADDR UPSTREAM_ADDR

use std::net::SocketAddr;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;

async fn connect(upstream: SocketAddr) -> std::io::Result<SendRequest<Incoming>> {
    let stream = TcpStream::connect(upstream).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(connection);
    Ok(sender)
}

/// Sends `req` on this client connection's upstream connection, opened on first use (and again
/// if the upstream closed it). An error closes the client connection.
async fn forward(
    upstream: SocketAddr,
    slot: &Mutex<Option<SendRequest<Incoming>>>,
    req: Request<Incoming>,
) -> std::io::Result<Response<Incoming>> {
    let mut slot = slot.lock().await;
    let sender = match slot.as_mut() {
        Some(sender) if !sender.is_closed() => sender,
        _ => slot.insert(connect(upstream).await?),
    };
    sender.ready().await.map_err(std::io::Error::other)?;
    sender
        .send_request(req)
        .await
        .map_err(std::io::Error::other)
}

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        eprintln!("usage: bare_proxy LISTEN_ADDR UPSTREAM_ADDR");
        std::process::exit(2);
    };
    let listen: SocketAddr = listen.parse().map_err(std::io::Error::other)?;
    let upstream: SocketAddr = upstream.parse().map_err(std::io::Error::other)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(listen).await?;
        loop {
            let (stream, _) = listener.accept().await?;
            stream.set_nodelay(true)?;
            let slot = Arc::new(Mutex::new(None));
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let slot = slot.clone();
                    async move { forward(upstream, &slot, req).await }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}
