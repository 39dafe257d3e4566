//! Accept loops and connections: HTTP/1.1 and HTTP/2 (ALPN over TLS, prior knowledge in the clear),
//! connection caps, TLS handshake and header read timeouts, idle connections, and graceful
//! draining on shutdown. The public, admin and inject webhook listeners all run through here.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use super::caps::{CapSettings, Caps, Slot};
use super::{ConnInfo, Handler};
use crate::body::Body;
use crate::config::ServerConfig;
use crate::meter::Meter;
use hyper::body::Body as _;

/// After a connection's idle deadline it is asked to close (an HTTP/1.1 client mid-head gets its
/// 408, an HTTP/2 client a GOAWAY); one that has not closed this much later is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// How a listener bounds its connections (SPEC §10).
#[derive(Debug, Clone)]
pub struct Limits {
    /// The longest a connection may go without a request in flight: until its first request head
    /// (protocol detection, the HTTP/2 preface and SETTINGS, the head itself), and between requests.
    pub header_read_timeout: Duration,
    pub tls_handshake_timeout: Duration,
    /// The longest a connection may go with a response ready whose data the client takes none
    /// of (it stopped reading: a zero HTTP/2 window, a full TCP window).
    pub send_timeout: Duration,
    pub max_headers: usize,
    pub max_header_bytes: usize,
    pub h2_max_concurrent_streams: u32,
    pub caps: CapSettings,
}

impl Limits {
    /// The limits `server.*` configures, shared by the public and admin listeners.
    pub fn of(config: &ServerConfig) -> Limits {
        Limits {
            header_read_timeout: config.header_read_timeout,
            tls_handshake_timeout: config.tls_handshake_timeout,
            send_timeout: config.send_timeout,
            max_headers: config.max_headers,
            max_header_bytes: config.max_header_bytes,
            h2_max_concurrent_streams: config.h2_max_concurrent_streams,
            caps: CapSettings {
                max_connections: config.max_connections,
                max_connections_per_ip: config.max_connections_per_ip,
                names: ["server.max_connections", "server.max_connections_per_ip"],
            },
        }
    }
}

/// Per-connection protocol settings, built once per listener.
pub struct Protocols {
    /// Either protocol, chosen by the connection preface (cleartext listeners: HTTP/1.1 and h2c).
    any: auto::Builder<TokioExecutor>,
    http1: auto::Builder<TokioExecutor>,
    http2: auto::Builder<TokioExecutor>,
    tls_handshake_timeout: Duration,
    header_read_timeout: Duration,
    send_timeout: Duration,
}

impl Protocols {
    pub fn new(limits: &Limits) -> Protocols {
        let mut any = auto::Builder::new(TokioExecutor::new());
        {
            let mut h1 = any.http1();
            // Without a timer hyper applies no header read timeout at all. hyper restarts it
            // whenever the connection goes idle, so it also bounds keep-alive between requests.
            h1.timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .max_buf_size(limits.max_header_bytes);
            if limits.max_headers != 100 {
                h1.max_headers(limits.max_headers);
            }
        }
        any.http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(limits.h2_max_concurrent_streams)
            .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
            // Bounds for rapid-reset style abuse (CVE-2023-44487).
            .max_pending_accept_reset_streams(50)
            .max_local_error_reset_streams(256)
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(20))
            // WebSockets over HTTP/2 (RFC 8441).
            .enable_connect_protocol();
        Protocols {
            http1: any.clone().http1_only(),
            http2: any.clone().http2_only(),
            any,
            tls_handshake_timeout: limits.tls_handshake_timeout,
            header_read_timeout: limits.header_read_timeout,
            send_timeout: limits.send_timeout,
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
    pub caps: Arc<Caps>,
}

impl Listener {
    /// `name` is how logs and metrics call the listener (`listen.http`, `inject-webhook`).
    pub fn new(
        name: &'static str,
        tcp: TcpListener,
        tls: Option<SharedTls>,
        handler: Handler,
        limits: &Limits,
        meter: Option<Arc<Meter>>,
    ) -> Listener {
        Listener {
            tcp,
            tls,
            handler,
            protocols: Arc::new(Protocols::new(limits)),
            caps: Arc::new(Caps::new(name, limits.caps, meter)),
        }
    }
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
        // Over a cap: closed before any TLS or HTTP work (the refusal is logged and counted).
        let Some(slot) = listener.caps.admit(peer.ip()) else {
            drop(stream);
            continue;
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
        // Shared with the tunnels the connection's requests become: an upgraded connection
        // still counts against the caps.
        let slot = Arc::new(slot);
        tokio::spawn(async move {
            connection(stream, peer, tls, handler, protocols, stop, slot).await;
            drop(open);
        });
    }
}

/// Either a cleartext or a TLS connection, as hyper reads and writes it.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// One connection from accept to close: the TLS handshake on a TLS listener, then HTTP served
/// by the protocol ALPN (or, in the clear, the connection preface) chose.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    handler: Handler,
    protocols: Arc<Protocols>,
    stop: watch::Receiver<bool>,
    slot: Arc<Slot>,
) {
    // The first request head is due this long after the connection was accepted, handshake
    // included: a TLS client that says nothing is held no longer than a cleartext one.
    let accepted = Instant::now();
    let first_head_due = accepted + protocols.header_read_timeout;
    let (io, builder, info): (Box<dyn Io>, _, _) = match tls {
        None => (
            Box::new(stream),
            &protocols.any,
            ConnInfo { peer, tls: false },
        ),
        Some(acceptor) => {
            let handshake_due = first_head_due.min(accepted + protocols.tls_handshake_timeout);
            let Some(stream) = handshake(acceptor, stream, peer, handshake_due).await else {
                return;
            };
            let builder = match stream.get_ref().1.alpn_protocol() {
                Some(b"h2") => &protocols.http2,
                _ => &protocols.http1,
            };
            (Box::new(stream), builder, ConnInfo { peer, tls: true })
        }
    };
    let conn = Accepted { info, slot };
    serve(&protocols, builder, io, handler, conn, first_head_due, stop).await;
}

/// An accepted connection: what its requests learn of it, and its place under the caps.
struct Accepted {
    info: ConnInfo,
    slot: Arc<Slot>,
}

/// The TLS handshake, if it completes by `due`; a failed or late one is logged and ends the
/// connection.
async fn handshake(
    acceptor: TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
    due: Instant,
) -> Option<TlsStream<TcpStream>> {
    match tokio::time::timeout_at(due, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            None
        }
    }
}

async fn serve(
    protocols: &Protocols,
    builder: &auto::Builder<TokioExecutor>,
    io: Box<dyn Io>,
    handler: Handler,
    Accepted { info, slot }: Accepted,
    first_head_due: Instant,
    mut stop: watch::Receiver<bool>,
) {
    // Requests in flight (from the head's arrival until the response body is dropped), and
    // whether the client takes the responses it is sent.
    let activity = Activity::default();
    let watched = activity.clone();
    let service = TowerToHyperService::new(
        tower::ServiceBuilder::new()
            .layer(Accounting { activity, slot })
            .service(Handle { handler, info }),
    );
    // Owned, so the connection future does not borrow the builder across the spawn.
    let conn = builder
        .serve_connection_with_upgrades(TokioIo::new(io), service)
        .into_owned();
    tokio::pin!(conn);
    // The connection's task wakes for every read and write; its two watchers are polled only
    // when what they wait for may have happened.
    let mut idle = OnWake::new(idle_for(
        watched,
        first_head_due,
        protocols.header_read_timeout,
        protocols.send_timeout,
    ));
    let mut stopping = OnWake::new(async move { stopped(&mut stop).await });
    let result = tokio::select! {
        result = conn.as_mut() => result,
        // Once `stop` turns true, the connection finishes its in-flight requests and closes.
        () = &mut stopping => {
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                result = conn.as_mut() => result,
                // An idle or silent connection does not hold up the drain.
                () = &mut idle => return,
            }
        }
        // Silent from the start (no protocol preface, no HTTP/2 SETTINGS or HEADERS, no request
        // line), idle since its last response, or taking no data of a response for
        // `send_timeout`: hyper bounds none of the HTTP/2 cases, nor a client that stops reading.
        () = &mut idle => {
            conn.as_mut().graceful_shutdown();
            match tokio::time::timeout(CLOSE_GRACE, conn.as_mut()).await {
                Ok(result) => result,
                Err(_) => {
                    tracing::debug!(peer = %info.peer, "closed a connection that sent no request, or took no response data, in time");
                    return;
                }
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// Resolves at `first` if no request has come by then, later once no request has been in
/// flight for `limit`, and whenever responses have waited `send_timeout` for the client to take
/// any of their data.
///
/// Requests do not wake it: its one timer fires no later than the earliest moment one of these
/// could be due, and it looks then at what the connection did meanwhile. What happens between
/// two looks only moves these moments later than the next look, so the timer is never late, and
/// a busy connection costs it one wake per `header_read_timeout` however many requests it
/// carries.
async fn idle_for(activity: Activity, first: Instant, limit: Duration, send_timeout: Duration) {
    let timer = tokio::time::sleep_until(first);
    tokio::pin!(timer);
    loop {
        let now = Instant::now();
        let seen = activity.seen();
        let stalled = seen.waiting_since.map(|since| since + send_timeout);
        if stalled.is_some_and(|at| now >= at) {
            return;
        }
        let due = seen.changed.map_or(first, |at| at + limit);
        if seen.in_flight == 0 && now >= due {
            return;
        }
        // A response may start waiting at any moment: look again at least every `send_timeout`.
        let check = stalled.unwrap_or(now + send_timeout);
        // While requests are in flight, look again within `limit`: the last of them may end
        // from now on, and the connection is idle `limit` after that, not before this look.
        let wake = if seen.in_flight == 0 {
            check.min(due)
        } else {
            check.min(now + limit)
        };
        timer.as_mut().reset(wake);
        timer.as_mut().await;
    }
}

/// A future polled only once its own waker has fired (and the first time): its task may wake
/// for many other reasons, each of which would otherwise poll it again.
struct OnWake<F> {
    future: Pin<Box<F>>,
    gate: Arc<Gate>,
    waker: std::task::Waker,
}

/// Whether an [`OnWake`]'s future was woken since it was last polled, and the task to wake.
struct Gate {
    woken: AtomicBool,
    task: Mutex<Option<std::task::Waker>>,
}

impl std::task::Wake for Gate {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        let task = self
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some(task) = task {
            task.wake();
        }
    }
}

impl<F: Future> OnWake<F> {
    fn new(future: F) -> OnWake<F> {
        let gate = Arc::new(Gate {
            woken: AtomicBool::new(true),
            task: Mutex::new(None),
        });
        OnWake {
            future: Box::pin(future),
            waker: std::task::Waker::from(gate.clone()),
            gate,
        }
    }
}

impl<F: Future> Future for OnWake<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        // Registered before the flag is read: a wake in between is not lost.
        {
            let mut task = this
                .gate
                .task
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            match task.as_mut() {
                Some(known) if known.will_wake(cx.waker()) => {}
                _ => *task = Some(cx.waker().clone()),
            }
        }
        if !this.gate.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        this.future
            .as_mut()
            .poll(&mut Context::from_waker(&this.waker))
    }
}

/// What a connection did, as its idle watcher reads it: how many requests are in flight and
/// when that last changed, and how many responses wait for the client to take data (hyper asks
/// for more of a body as the client reads) and when one last was asked. A response whose body
/// waits on its own source (an upstream, a stream) is not counted: the client is not the one
/// holding it up.
#[derive(Clone, Default)]
struct Activity(Arc<Mutex<State>>);

#[derive(Default)]
struct State {
    in_flight: usize,
    /// When a request last started or ended.
    changed: Option<Instant>,
    waiting: usize,
    /// The last time a response body was asked for data, or began to wait.
    progress: Option<Instant>,
}

/// What [`idle_for`] reads of an [`Activity`].
struct Seen {
    in_flight: usize,
    changed: Option<Instant>,
    /// Since when the client has taken nothing while a response waits for it.
    waiting_since: Option<Instant>,
}

impl Activity {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn seen(&self) -> Seen {
        let state = self.lock();
        Seen {
            in_flight: state.in_flight,
            changed: state.changed,
            waiting_since: if state.waiting == 0 {
                None
            } else {
                state.progress
            },
        }
    }

    /// A request starts (`true`) or ends.
    fn request(&self, starts: bool) {
        let now = Instant::now();
        let mut state = self.lock();
        if starts {
            state.in_flight += 1;
        } else {
            state.in_flight = state.in_flight.saturating_sub(1);
        }
        state.changed = Some(now);
    }

    /// A response starts or stops waiting for the client.
    fn set_waiting(&self, was: bool, now: bool) {
        if was == now {
            return;
        }
        let mut state = self.lock();
        if now {
            if state.waiting == 0 {
                state.progress = Some(Instant::now());
            }
            state.waiting += 1;
        } else {
            state.waiting = state.waiting.saturating_sub(1);
        }
    }

    /// hyper asked a response body for data: the client is taking what it was sent.
    fn progressed(&self) {
        self.lock().progress = Some(Instant::now());
    }
}

/// The gateway's handler as the tower service a connection's requests go to.
#[derive(Clone)]
struct Handle {
    handler: Handler,
    info: ConnInfo,
}

impl tower::Service<hyper::Request<Incoming>> for Handle {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Handled;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: hyper::Request<Incoming>) -> Handled {
        Handled((self.handler)(req, self.info))
    }
}

/// The response [`Handle`] is working on; errors become responses, so it never fails.
struct Handled(Pin<Box<dyn Future<Output = http::Response<Body>> + Send>>);

impl Future for Handled {
    type Output = Result<http::Response<Body>, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.0.as_mut().poll(cx).map(Ok)
    }
}

/// The tower layer that keeps a connection's account of its requests (see [`Accounted`]).
struct Accounting {
    activity: Activity,
    slot: Arc<Slot>,
}

impl<S> tower::Layer<S> for Accounting {
    type Service = Accounted<S>;

    fn layer(&self, inner: S) -> Accounted<S> {
        Accounted {
            inner,
            activity: self.activity.clone(),
            slot: self.slot.clone(),
        }
    }
}

/// Every request of a connection counts as in flight from its head until hyper drops its
/// response body, whose progress tells whether the client takes what it is sent; a request that
/// may become a tunnel keeps the connection in use for as long as the tunnel lives; the answer to
/// a `HEAD` loses its body.
#[derive(Clone)]
struct Accounted<S> {
    inner: S,
    activity: Activity,
    slot: Arc<Slot>,
}

impl<S> tower::Service<hyper::Request<Incoming>> for Accounted<S>
where
    S: tower::Service<
            hyper::Request<Incoming>,
            Response = http::Response<Body>,
            Error = Infallible,
        >,
    S::Future: Unpin,
{
    type Response = http::Response<Tracked>;
    type Error = Infallible;
    type Future = Answering<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: hyper::Request<Incoming>) -> Answering<S::Future> {
        let in_flight = InFlight::start(self.activity.clone());
        if req.method() == http::Method::CONNECT
            || req.headers().contains_key(http::header::UPGRADE)
        {
            // A request that may become a tunnel: the tunnel keeps the connection in use (an
            // HTTP/2 stream's connection is not closed as idle) and counted against the caps.
            req.extensions_mut().insert(KeepOpen {
                _in_flight: Arc::new(InFlight::start(self.activity.clone())),
                _slot: self.slot.clone(),
            });
        }
        let head = req.method() == http::Method::HEAD;
        Answering {
            response: self.inner.call(req),
            in_flight: Some(in_flight),
            head,
        }
    }
}

/// The response an [`Accounted`] request is waiting for.
struct Answering<F> {
    response: F,
    /// Handed to the response body once the response is there.
    in_flight: Option<InFlight>,
    head: bool,
}

impl<F> Future for Answering<F>
where
    F: Future<Output = Result<http::Response<Body>, Infallible>> + Unpin,
{
    type Output = Result<http::Response<Tracked>, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Poll::Ready(Ok(response)) = Pin::new(&mut self.response).poll(cx) else {
            return Poll::Pending;
        };
        let response = match self.head {
            true => without_body(response),
            false => response,
        };
        let Some(in_flight) = self.in_flight.take() else {
            // Polled again after it was ready: a bug of the caller; the request is no longer
            // counted, so nothing is left to track.
            return Poll::Pending;
        };
        Poll::Ready(Ok(response.map(|body| Tracked::new(body, in_flight))))
    }
}

/// Keeps a connection counted as in use while a tunnel made of one of its requests lives: an
/// HTTP/2 connection is not closed as idle, and an upgraded HTTP/1.1 one (whose task has ended)
/// still holds its place under `server.max_connections`. The tunnel takes it from the request's
/// extensions.
#[derive(Clone)]
pub struct KeepOpen {
    _in_flight: Arc<InFlight>,
    _slot: Arc<Slot>,
}

/// One request in flight on a connection; dropping it (with the response body) ends it.
struct InFlight(Activity);

impl InFlight {
    fn start(activity: Activity) -> InFlight {
        activity.request(true);
        InFlight(activity)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.request(false);
    }
}

/// A response body that keeps its request counted as in flight until hyper is done with it, and
/// tells the connection whether the client is taking its data.
struct Tracked {
    body: Body,
    in_flight: InFlight,
    /// Ready for hyper to ask for more (just made, or a frame handed over), not waiting on its
    /// own source.
    waiting: bool,
}

impl Tracked {
    fn new(body: Body, in_flight: InFlight) -> Tracked {
        // A body with nothing to send waits for nobody (hyper may never ask it for data).
        let waiting = !body.is_end_stream();
        in_flight.0.set_waiting(false, waiting);
        Tracked {
            body,
            in_flight,
            waiting,
        }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.in_flight.0.set_waiting(self.waiting, false);
    }
}

impl hyper::body::Body for Tracked {
    type Data = bytes::Bytes;
    type Error = crate::body::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.in_flight.0.progressed();
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        // Pending: the body waits on its source. A frame: it waits for hyper to ask again.
        let waiting = matches!(polled, Poll::Ready(Some(Ok(_))));
        self.in_flight.0.set_waiting(self.waiting, waiting);
        self.waiting = waiting;
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
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
