//! Listeners, TLS and shutdown around the handlers it is given. This module moves bytes; it
//! decides no auth outcome.

pub mod caps;
pub mod listener;
pub mod shutdown;
pub mod tls;
pub mod tunnels;

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::{Request, Response};
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use crate::body::Body;
use crate::config::Config;
use crate::meter::{self, Meter};
use listener::{Limits, Listener, SharedTls};
use tunnels::Tunnels;

/// How long closing tunnels may take at the end of a shutdown.
const TUNNEL_CLOSE: Duration = Duration::from_secs(1);

/// The connection a request arrived on.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub tls: bool,
}

/// A request handler as the transport sees it: any request in, a response out, never an error.
pub type Handler = Arc<
    dyn Fn(Request<Incoming>, ConnInfo) -> Pin<Box<dyn Future<Output = Response<Body>> + Send>>
        + Send
        + Sync,
>;

/// Why the server could not start.
#[derive(Debug)]
pub enum StartError {
    Tls(String),
    Bind {
        key: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Tls(message) => f.write_str(message),
            StartError::Bind { key, addr, source } => {
                write!(f, "{key}: cannot listen on {addr}: {source}")
            }
        }
    }
}

impl std::error::Error for StartError {}

/// The addresses the listeners actually bound (useful with port 0).
#[derive(Debug, Clone, Copy)]
pub struct BoundAddrs {
    pub https: Option<SocketAddr>,
    pub http: Option<SocketAddr>,
    pub admin: SocketAddr,
}

/// A server whose listeners are bound and which serves once [`Server::run`] is called.
pub struct Server {
    listeners: Vec<(&'static str, Listener)>,
    addrs: BoundAddrs,
    ready: Arc<AtomicBool>,
    shutdown_grace: Duration,
    tls: Option<SharedTls>,
    meter: Arc<Meter>,
    tunnels: Arc<Tunnels>,
}

impl Server {
    /// Loads TLS material and binds every listener `config.listen` names, bounded by
    /// `config.server`: `public` answers on the HTTPS and HTTP listeners, `admin` on the admin
    /// listener. [`Server::run`] keeps `ready` true while the listeners accept traffic; `meter`
    /// counts the connections they refuse.
    pub async fn bind(
        config: &Config,
        public: Handler,
        admin: Handler,
        meter: Arc<Meter>,
        ready: Arc<AtomicBool>,
        tunnels: Arc<Tunnels>,
    ) -> Result<Server, StartError> {
        let limits = Limits::of(&config.server);

        let mut listeners = Vec::new();
        let mut bind =
            |key: &'static str, addr: SocketAddr, tls: Option<SharedTls>, handler: &Handler| {
                let std_listener = std::net::TcpListener::bind(addr)
                    .and_then(|l| l.set_nonblocking(true).map(|()| l))
                    .and_then(TcpListener::from_std)
                    .map_err(|source| StartError::Bind { key, addr, source })?;
                let local = std_listener
                    .local_addr()
                    .map_err(|source| StartError::Bind { key, addr, source })?;
                let meter = Some(meter.clone());
                let listener =
                    Listener::new(key, std_listener, tls, handler.clone(), &limits, meter);
                listeners.push((key, listener));
                Ok::<SocketAddr, StartError>(local)
            };

        let mut shared_tls = None;
        let https = match config.listen.https {
            Some(addr) => {
                let tls = tls::server_config(&config.tls, &config.server.public_url)
                    .map_err(StartError::Tls)?;
                let tls: SharedTls = Arc::new(ArcSwap::new(tls));
                shared_tls = Some(tls.clone());
                Some(bind("listen.https", addr, Some(tls), &public)?)
            }
            None => None,
        };
        let http = match config.listen.http {
            Some(addr) => Some(bind("listen.http", addr, None, &public)?),
            None => None,
        };
        let admin_addr = bind("listen.admin", config.listen.admin, None, &admin)?;
        Ok(Server {
            listeners,
            addrs: BoundAddrs {
                https,
                http,
                admin: admin_addr,
            },
            ready,
            shutdown_grace: config.server.shutdown_grace,
            tls: shared_tls,
            meter,
            tunnels,
        })
    }

    pub fn addrs(&self) -> BoundAddrs {
        self.addrs
    }

    /// The HTTPS listener's certificate, which each handshake takes as it is then (a reload
    /// replaces it); `None` without an HTTPS listener.
    pub fn tls(&self) -> Option<SharedTls> {
        self.tls.clone()
    }

    /// Serves until `shutdown` resolves, then stops accepting, lets in-flight requests finish and
    /// WebSocket tunnels carry on for up to `server.shutdown_grace`, closes the tunnels still
    /// open, and returns.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let (stop_tx, stop_rx) = watch::channel(false);
        let (open_tx, mut open_rx) = mpsc::channel::<()>(1);
        let mut loops = tokio::task::JoinSet::new();
        for (key, listener) in self.listeners {
            if let Ok(addr) = listener.tcp.local_addr() {
                tracing::info!(listener = key, addr = %addr, "listening");
            }
            loops.spawn(listener::accept_loop(
                listener,
                stop_rx.clone(),
                open_tx.clone(),
            ));
        }
        drop(open_tx);
        // Histogram samples are freed by upkeep; a scrape is not guaranteed to come.
        let meter = self.meter.clone();
        let upkeep_stop = stop_rx.clone();
        let upkeep =
            tokio::spawn(async move { meter.run_upkeep(meter::UPKEEP_EVERY, upkeep_stop).await });
        self.ready.store(true, Ordering::SeqCst);

        shutdown.await;
        self.ready.store(false, Ordering::SeqCst);
        let _ = stop_tx.send(true);
        // The accept loops end at once and drop their listeners: no new connections from here on.
        while loops.join_next().await.is_some() {}
        let _ = upkeep.await;
        // Every connection task holds a sender; `recv` yields `None` once the last one is gone.
        // A tunnel outlives its HTTP/1.1 connection's task: it is waited for on its own.
        let tunnels = self.tunnels.clone();
        let drained = async move {
            let _ = open_rx.recv().await;
            tunnels.drained().await;
        };
        match tokio::time::timeout(self.shutdown_grace, drained).await {
            Ok(()) => tracing::info!("all connections drained"),
            Err(_) => tracing::warn!(
                grace = %humantime::format_duration(self.shutdown_grace),
                tunnels = self.tunnels.open(),
                "shutdown grace elapsed with connections still open; closing them"
            ),
        }
        self.tunnels.close_all();
        let _ = tokio::time::timeout(TUNNEL_CLOSE, self.tunnels.drained()).await;
    }
}
