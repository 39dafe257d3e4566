//! Accept loops and connections: HTTP/1.1 and HTTP/2 (ALPN over TLS, prior knowledge in the clear),
//! header read and TLS handshake timeouts, and graceful draining on shutdown.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;

use super::Handler;
use crate::body::Body;
use crate::config::ServerConfig;
use crate::gateway::ConnInfo;
use hyper::body::Body as _;

/// Per-connection protocol settings, built once per listener.
pub struct Protocols {
    /// Either protocol, chosen by the connection preface (cleartext listeners: HTTP/1.1 and h2c).
    any: auto::Builder<TokioExecutor>,
    http1: auto::Builder<TokioExecutor>,
    http2: auto::Builder<TokioExecutor>,
    tls_handshake_timeout: Duration,
}

impl Protocols {
    pub fn new(config: &ServerConfig) -> Protocols {
        let mut any = auto::Builder::new(TokioExecutor::new());
        {
            let mut h1 = any.http1();
            // Without a timer hyper applies no header read timeout at all.
            h1.timer(TokioTimer::new())
                .header_read_timeout(config.header_read_timeout)
                .max_buf_size(config.max_header_bytes);
            if config.max_headers != 100 {
                h1.max_headers(config.max_headers);
            }
        }
        any.http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(config.h2_max_concurrent_streams)
            .max_header_list_size(u32::try_from(config.max_header_bytes).unwrap_or(u32::MAX))
            // Bounds for rapid-reset style abuse (CVE-2023-44487).
            .max_pending_accept_reset_streams(50)
            .max_local_error_reset_streams(256)
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(20));
        Protocols {
            http1: any.clone().http1_only(),
            http2: any.clone().http2_only(),
            any,
            tls_handshake_timeout: config.tls_handshake_timeout,
        }
    }
}

/// The TLS configuration of a listener, replaced on reload; each handshake takes the current one.
pub type SharedTls = Arc<arc_swap::ArcSwap<rustls::ServerConfig>>;

/// Everything an accept loop needs.
pub struct Listener {
    pub tcp: TcpListener,
    pub tls: Option<SharedTls>,
    pub handler: Handler,
    pub protocols: Arc<Protocols>,
}

/// Accepts connections until `stop` turns true. Each connection task holds a clone of `open`,
/// so the server knows all connections have finished when every clone is dropped.
pub async fn accept_loop(
    listener: Listener,
    mut stop: watch::Receiver<bool>,
    open: mpsc::Sender<()>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.tcp.accept() => accepted,
            () = stopped(&mut stop) => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Usually EMFILE: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let tls = listener
            .tls
            .as_ref()
            .map(|tls| TlsAcceptor::from(tls.load_full()));
        let handler = listener.handler.clone();
        let protocols = listener.protocols.clone();
        let stop = stop.clone();
        let open = open.clone();
        tokio::spawn(async move {
            connection(stream, peer, tls, handler, protocols, stop).await;
            drop(open);
        });
    }
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    handler: Handler,
    protocols: Arc<Protocols>,
    stop: watch::Receiver<bool>,
) {
    let Some(acceptor) = tls else {
        let info = ConnInfo { peer, tls: false };
        return serve(&protocols.any, TokioIo::new(stream), handler, info, stop).await;
    };
    let stream = match tokio::time::timeout(
        protocols.tls_handshake_timeout,
        acceptor.accept(stream),
    )
    .await
    {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            return;
        }
    };
    let builder = match stream.get_ref().1.alpn_protocol() {
        Some(b"h2") => &protocols.http2,
        _ => &protocols.http1,
    };
    let info = ConnInfo { peer, tls: true };
    serve(builder, TokioIo::new(stream), handler, info, stop).await;
}

async fn serve<I>(
    builder: &auto::Builder<TokioExecutor>,
    io: TokioIo<I>,
    handler: Handler,
    info: ConnInfo,
    mut stop: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req: hyper::Request<Incoming>| {
        let head = req.method() == http::Method::HEAD;
        let response = handler(req, info);
        async move {
            let response = response.await;
            Ok::<_, Infallible>(if head {
                without_body(response)
            } else {
                response
            })
        }
    });
    // Owned, so the connection future does not borrow the builder across the spawn.
    let conn = builder.serve_connection(io, service).into_owned();
    tokio::pin!(conn);
    // Once `stop` turns true, the connection finishes its in-flight requests and closes.
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = stopped(&mut stop) => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// The answer to a `HEAD`: the same head, no body (RFC 9110 §9.3.2). HTTP/1.1 would drop the body
/// itself, but over HTTP/2 a DATA frame on a HEAD stream is a protocol error for the client, and
/// every answer gatehouse writes itself (pages, JWKS, problems) has one. `Content-Length` keeps the
/// length the body had. A proxied answer to a HEAD arrives without a body and is left as it is.
pub fn without_body(response: http::Response<Body>) -> http::Response<Body> {
    if response.body().is_end_stream() {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    if let Some(len) = body.size_hint().exact() {
        parts
            .headers
            .entry(http::header::CONTENT_LENGTH)
            .or_insert_with(|| http::HeaderValue::from(len));
    }
    http::Response::from_parts(parts, crate::body::empty())
}

/// Resolves once `stop` is (or already was) true; also when the sender is gone.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopping| *stopping).await;
}
