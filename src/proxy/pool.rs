//! Kept-alive HTTP/1.1 connections to the upstream application. There is one upstream address,
//! so the idle connections are a plain stack (newest on top): no per-host map, and no key to
//! hash for every request. A connection goes back on the stack when the response it carried has
//! been read to its end; one that closed meanwhile is discarded when it is next taken.
//!
//! A connection carries one user's exchange after another's, so it is reused only when the last
//! exchange is known to have ended on a message boundary: bytes the upstream sent beyond its
//! response would be read as the next user's response. It is closed instead when the response
//! has no body by rule (to `HEAD`, `204`, `304`: an upstream that writes one anyway may write it
//! after the head, too late to be seen), when the upstream said it closes (`Connection: close`,
//! HTTP/1.0), and when the request body was not completely sent by the time the response ended
//! (the upstream answered early and would read the rest of the body as a request). Bytes that are
//! already there when the connection is next taken (more than `Content-Length` announced, after
//! the last chunk) make hyper's connection fail before it accepts another request.

use std::error::Error as StdError;
use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, Version, header};
use http_body_util::BodyExt;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::body::{Body, BoxError};

/// Idle connections kept at most; more are closed when their response ends.
const MAX_IDLE: usize = 1024;

/// Why no response head arrived from the upstream.
#[derive(Debug)]
pub enum PoolError {
    /// Not connected within the connect timeout.
    ConnectTimeout,
    Connect(std::io::Error),
    /// The HTTP exchange failed (the connection closed or sent something that is not HTTP).
    Http(hyper::Error),
}

impl fmt::Display for PoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PoolError::ConnectTimeout => f.write_str("connecting to the upstream timed out"),
            PoolError::Connect(_) => f.write_str("cannot connect to the upstream"),
            PoolError::Http(_) => f.write_str("the upstream exchange failed"),
        }
    }
}

impl StdError for PoolError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            PoolError::ConnectTimeout => None,
            PoolError::Connect(e) => Some(e),
            PoolError::Http(e) => Some(e),
        }
    }
}

/// Where the upstream listens, and how long connecting to it may take: what every connection to
/// it (pooled, HTTP/2, an upgrade's own) is opened with.
#[derive(Debug, Clone)]
pub struct Address {
    host: String,
    port: u16,
    connect_timeout: Duration,
}

impl Address {
    pub fn new(host: &str, port: u16, connect_timeout: Duration) -> Address {
        // `[::1]` in a URL is `::1` to connect to.
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        Address {
            host,
            port,
            connect_timeout,
        }
    }

    /// A new TCP connection, without Nagle's delay, within the connect timeout.
    pub async fn dial(&self) -> Result<TcpStream, PoolError> {
        let stream = tokio::time::timeout(
            self.connect_timeout,
            TcpStream::connect((self.host.as_str(), self.port)),
        )
        .await
        .map_err(|_| PoolError::ConnectTimeout)?
        .map_err(PoolError::Connect)?;
        stream.set_nodelay(true).map_err(PoolError::Connect)?;
        Ok(stream)
    }
}

/// Connections to one `host:port`.
pub struct Pool {
    address: Address,
    idle_timeout: Duration,
    idle: Mutex<Vec<Idle>>,
}

struct Idle {
    sender: SendRequest<Body>,
    since: Instant,
}

impl Pool {
    pub fn new(address: Address, idle_timeout: Duration) -> Pool {
        Pool {
            address,
            idle_timeout,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Sends `req` (origin-form URI, `Host` set) on an idle connection when one is ready, else
    /// on a new one. A request that a kept-alive connection closed under before sending it is
    /// sent on the next connection; once sent, it is never sent again.
    pub async fn send(
        self: &Arc<Self>,
        mut req: Request<Body>,
    ) -> Result<Response<Body>, PoolError> {
        let head = req.method() == Method::HEAD;
        // Most requests have no body: only one that has is watched, so that the fast path
        // allocates nothing more.
        let written = if req.body().is_end_stream() {
            None
        } else {
            let written = Arc::new(AtomicBool::new(false));
            let watched = Watched {
                inner: std::mem::take(req.body_mut()),
                written: written.clone(),
            };
            *req.body_mut() = watched.boxed_unsync();
            Some(written)
        };
        while let Some(mut sender) = self.take_idle() {
            if sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(req).await {
                Ok(response) => return Ok(self.lend(sender, response, head, written)),
                Err(mut e) => match e.take_message() {
                    Some(unsent) => req = unsent,
                    None => return Err(PoolError::Http(e.into_error())),
                },
            }
        }
        let mut sender = Box::pin(self.connect()).await?;
        let response = sender.send_request(req).await.map_err(PoolError::Http)?;
        Ok(self.lend(sender, response, head, written))
    }

    fn take_idle(&self) -> Option<SendRequest<Body>> {
        let mut idle = self.idle.lock().ok()?;
        let now = Instant::now();
        while let Some(Idle { sender, since }) = idle.pop() {
            if !sender.is_closed() && now.duration_since(since) < self.idle_timeout {
                return Some(sender);
            }
        }
        None
    }

    fn put_idle(&self, sender: SendRequest<Body>) {
        if sender.is_closed() {
            return;
        }
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < MAX_IDLE
        {
            idle.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }

    async fn connect(&self) -> Result<SendRequest<Body>, PoolError> {
        let stream = self.address.dial().await?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(PoolError::Http)?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "upstream connection ended");
            }
        });
        Ok(sender)
    }

    /// The response, with a body that returns `sender` to the pool when it ends, if the
    /// exchange can end on a message boundary at all; otherwise `sender` is dropped here, and
    /// the connection closes once this response is read.
    fn lend(
        self: &Arc<Self>,
        sender: SendRequest<Body>,
        response: Response<Incoming>,
        head: bool,
        written: Option<Arc<AtomicBool>>,
    ) -> Response<Body> {
        let lent = reusable(head, &response).then(|| Lent {
            pool: self.clone(),
            sender,
            written,
        });
        response.map(|inner| Returning { inner, lent }.boxed_unsync())
    }
}

/// Whether the connection may carry another request after this response: not when the response
/// has no body by rule (a body the upstream writes anyway cannot be told from the next response),
/// nor when the upstream closes the connection after it.
fn reusable(head: bool, response: &Response<Incoming>) -> bool {
    let status = response.status();
    if head || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return false;
    }
    let connection = response.headers().get_all(header::CONNECTION);
    let says = |token: &str| {
        connection.iter().any(|value| {
            value.to_str().map_or(true, |value| {
                value
                    .split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case(token))
            })
        })
    };
    match response.version() {
        Version::HTTP_11 => !says("close"),
        Version::HTTP_10 => says("keep-alive") && !says("close"),
        _ => false,
    }
}

/// A connection out of the pool while its response body is read.
struct Lent {
    pool: Arc<Pool>,
    sender: SendRequest<Body>,
    /// Set once the request body was sent to its end; `None` for a request without a body.
    written: Option<Arc<AtomicBool>>,
}

/// A request body that records when it has been read to its end.
struct Watched {
    inner: Body,
    written: Arc<AtomicBool>,
}

impl HttpBody for Watched {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        // hyper stops polling once `is_end_stream` says so, without a final `None`.
        if matches!(polled, Poll::Ready(None))
            || (matches!(polled, Poll::Ready(Some(Ok(_)))) && self.inner.is_end_stream())
        {
            self.written.store(true, Ordering::Release);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        let end = self.inner.is_end_stream();
        if end {
            self.written.store(true, Ordering::Release);
        }
        end
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that gives its connection back when it ends.
struct Returning {
    inner: Incoming,
    lent: Option<Lent>,
}

impl Returning {
    fn give_back(&mut self) {
        if let Some(Lent {
            pool,
            sender,
            written,
        }) = self.lent.take()
            // A request body still being sent when the response ended was answered early: the
            // upstream would read its rest as another request.
            && written.is_none_or(|written| written.load(Ordering::Acquire))
        {
            pool.put_idle(sender);
        }
    }
}

impl Drop for Returning {
    fn drop(&mut self) {
        // A body dropped before its end (the client went away) leaves the rest unread on the
        // connection: it is closed rather than drained while another request waits for it.
        if self.inner.is_end_stream() {
            self.give_back();
        }
    }
}

impl HttpBody for Returning {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.give_back(),
            Poll::Ready(Some(Err(_))) => {
                // A connection that failed mid-body is not reused.
                self.lent = None;
            }
            _ => {}
        }
        polled.map_err(|e| -> BoxError { Box::new(e) })
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// How much of one response an HTTP/2 upstream may send before the client takes it.
const STREAM_WINDOW: u32 = 256 * 1024;

/// The largest window HTTP/2 allows (RFC 9113 §6.9.1): the connection never waits on a stream's
/// unread data, only each stream does.
const CONNECTION_WINDOW: u32 = (1 << 31) - 1;

/// One HTTP/2 connection (prior knowledge, cleartext) to the upstream, shared by every request:
/// HTTP/2 multiplexes them, so there is nothing to pool. A connection that closed (the upstream
/// restarted, or said GOAWAY) is replaced by the next request; one a request was not yet sent on
/// when it closed is retried once on the new one.
pub struct H2c {
    address: Address,
    current: tokio::sync::Mutex<Option<hyper::client::conn::http2::SendRequest<Body>>>,
}

impl H2c {
    pub fn new(address: Address) -> H2c {
        H2c {
            address,
            current: tokio::sync::Mutex::new(None),
        }
    }

    /// Sends `req` (absolute URI, no `Host`) and returns the response head with its body and
    /// trailers streaming.
    pub async fn send(&self, req: Request<Body>) -> Result<Response<Body>, PoolError> {
        let mut sender = self.sender(false).await?;
        let response = match sender.try_send_request(req).await {
            Ok(response) => response,
            Err(mut e) => match e.take_message() {
                Some(unsent) => {
                    let mut sender = self.sender(true).await?;
                    sender.send_request(unsent).await.map_err(PoolError::Http)?
                }
                None => return Err(PoolError::Http(e.into_error())),
            },
        };
        Ok(response.map(|body| body.map_err(|e| -> BoxError { Box::new(e) }).boxed_unsync()))
    }

    /// The open connection, or a new one (also when `fresh`).
    async fn sender(
        &self,
        fresh: bool,
    ) -> Result<hyper::client::conn::http2::SendRequest<Body>, PoolError> {
        let mut current = self.current.lock().await;
        if !fresh
            && let Some(sender) = current.as_ref()
            && !sender.is_closed()
        {
            return Ok(sender.clone());
        }
        let stream = self.address.dial().await?;
        let (sender, connection) =
            hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                .timer(hyper_util::rt::TokioTimer::new())
                .keep_alive_interval(Duration::from_secs(30))
                .keep_alive_timeout(Duration::from_secs(20))
                // Every client's calls share this connection: one client that stops reading
                // must not take the whole connection's window. Each stream may hold at most
                // STREAM_WINDOW unread; the connection as a whole is not limited beyond that.
                .initial_stream_window_size(STREAM_WINDOW)
                .initial_connection_window_size(CONNECTION_WINDOW)
                .handshake(TokioIo::new(stream))
                .await
                .map_err(PoolError::Http)?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "upstream HTTP/2 connection ended");
            }
        });
        *current = Some(sender.clone());
        Ok(sender)
    }
}
