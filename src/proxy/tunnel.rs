//! WebSocket tunnels: what runs once both sides of an upgrade have switched protocols. Bytes are
//! copied both ways unchanged (the framing is the peers' business); the tunnel is closed when it
//! has been idle or open too long, when the credential it was admitted with no longer passes, and
//! at the end of a graceful shutdown's grace period ([`crate::server::tunnels`] counts them).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use crate::meter::Direction;
use crate::server::tunnels::Slot;

/// What a re-check of a tunnel's (or a stream's) credential found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// It still admits the same principal to the same route.
    Valid,
    /// It no longer does: the session ended, the user is gone, the token expired…
    Ended,
    /// It could not be checked now (the store is down, hashing is at capacity).
    Unknown,
}

/// The credential a long-lived exchange was admitted with, checked again as a new request would be.
pub trait Credential: Send + Sync {
    fn check(self: Arc<Self>) -> Pin<Box<dyn Future<Output = Verdict> + Send>>;
}

/// When a credential that cannot be checked is given up on: after this many intervals without a
/// successful check.
const UNKNOWN_INTERVALS: u32 = 3;

/// The longest wait before a check that could not be done is tried again.
const UNKNOWN_RETRY: Duration = Duration::from_secs(5);

/// Re-checks of one credential every `every`: when the next is due, and when one last passed.
pub struct Rechecks {
    credential: Arc<dyn Credential>,
    every: Duration,
    due: Instant,
    confirmed: Instant,
}

impl Rechecks {
    pub fn new(credential: Arc<dyn Credential>, every: Duration) -> Rechecks {
        let now = Instant::now();
        Rechecks {
            credential,
            every,
            due: now + every,
            confirmed: now,
        }
    }

    /// When the next check is due.
    pub fn due(&self) -> Instant {
        self.due
    }

    /// A check of the credential, to be run to its end and given to [`Rechecks::judge`].
    pub fn start(&self) -> Pin<Box<dyn Future<Output = Verdict> + Send>> {
        self.credential.clone().check()
    }

    /// Whether the exchange may go on after a check found `verdict`; schedules the next check.
    pub fn judge(&mut self, verdict: Verdict) -> bool {
        let now = Instant::now();
        match verdict {
            Verdict::Valid => {
                self.confirmed = now;
                self.due = now + self.every;
                true
            }
            Verdict::Ended => false,
            Verdict::Unknown => {
                if now.duration_since(self.confirmed) >= self.every * UNKNOWN_INTERVALS {
                    return false;
                }
                self.due = now + self.every.min(UNKNOWN_RETRY);
                true
            }
        }
    }
}

/// Why a tunnel closed (the `reason` label of `gatehouse_tunnels_closed_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// The client closed its side first.
    Client,
    /// The upstream closed its side first.
    Upstream,
    /// The credential the tunnel was admitted with no longer passes.
    Credential,
    Idle,
    Lifetime,
    Shutdown,
    /// A read or write failed, or an upgrade never completed.
    Error,
}

impl Closed {
    pub fn as_str(self) -> &'static str {
        match self {
            Closed::Client => "client",
            Closed::Upstream => "upstream",
            Closed::Credential => "credential",
            Closed::Idle => "idle",
            Closed::Lifetime => "lifetime",
            Closed::Shutdown => "shutdown",
            Closed::Error => "error",
        }
    }
}

/// The limits of one tunnel.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub idle: Duration,
    pub lifetime: Duration,
}

/// Everything a tunnel holds while it runs, besides its two sides.
pub struct Tunnel {
    pub slot: Slot,
    pub limits: Limits,
    /// `None` on a public route: nothing was admitted, nothing can end.
    pub rechecks: Option<Rechecks>,
    /// Whatever else must live as long as the tunnel (an HTTP/2 stream's hold on its connection).
    pub hold: Option<Box<dyn Send>>,
}

impl Tunnel {
    /// Waits for both sides to switch protocols, then carries bytes until the tunnel closes.
    pub async fn run(self, client: OnUpgrade, upstream: OnUpgrade) {
        let meter = self.slot.meter();
        let (client, upstream) = match tokio::try_join!(client, upstream) {
            Ok(sides) => sides,
            Err(e) => {
                tracing::debug!(error = %e, "an upgrade did not complete");
                meter.tunnel_closed(Closed::Error.as_str());
                return;
            }
        };
        let reason = self.carry(client, upstream).await;
        meter.tunnel_closed(reason.as_str());
        tracing::debug!(reason = reason.as_str(), "tunnel closed");
    }

    async fn carry(mut self, client: Upgraded, upstream: Upgraded) -> Closed {
        let meter = self.slot.meter();
        let started = Instant::now();
        let activity = Arc::new(Activity {
            started: std::time::Instant::now(),
            last_ms: AtomicU64::new(0),
            first_eof: AtomicU8::new(0),
        });
        let mut client = Metered {
            io: TokioIo::new(client),
            bytes: meter.tunnel_bytes(Direction::ClientToUpstream),
            activity: activity.clone(),
            side: CLIENT,
        };
        let mut upstream = Metered {
            io: TokioIo::new(upstream),
            bytes: meter.tunnel_bytes(Direction::UpstreamToClient),
            activity: activity.clone(),
            side: UPSTREAM,
        };
        let copy = tokio::io::copy_bidirectional(&mut client, &mut upstream);
        tokio::pin!(copy);
        let mut closing = self.slot.closing();
        let ends = started + self.limits.lifetime;
        let mut check: Option<Pin<Box<dyn Future<Output = Verdict> + Send>>> = None;
        loop {
            let idle_at = started
                + Duration::from_millis(activity.last_ms.load(Ordering::Relaxed))
                + self.limits.idle;
            let mut wake = idle_at.min(ends);
            if check.is_none()
                && let Some(rechecks) = &self.rechecks
            {
                wake = wake.min(rechecks.due());
            }
            tokio::select! {
                copied = &mut copy => {
                    return match copied {
                        Ok(_) if activity.first_eof.load(Ordering::Relaxed) == UPSTREAM => {
                            Closed::Upstream
                        }
                        Ok(_) => Closed::Client,
                        Err(e) => {
                            tracing::debug!(error = %e, "tunnel failed");
                            Closed::Error
                        }
                    };
                }
                verdict = running(&mut check) => {
                    check = None;
                    if let Some(rechecks) = &mut self.rechecks
                        && !rechecks.judge(verdict)
                    {
                        return Closed::Credential;
                    }
                }
                () = tokio::time::sleep_until(wake) => {
                    let now = Instant::now();
                    if now >= ends {
                        return Closed::Lifetime;
                    }
                    let last = started
                        + Duration::from_millis(activity.last_ms.load(Ordering::Relaxed));
                    if now >= last + self.limits.idle {
                        return Closed::Idle;
                    }
                    if check.is_none()
                        && let Some(rechecks) = &self.rechecks
                        && now >= rechecks.due()
                    {
                        check = Some(rechecks.start());
                    }
                }
                _ = closing.wait_for(|closing| *closing) => return Closed::Shutdown,
            }
        }
    }
}

/// The check in progress, if any; never resolves without one.
async fn running(check: &mut Option<Pin<Box<dyn Future<Output = Verdict> + Send>>>) -> Verdict {
    match check {
        Some(check) => check.await,
        None => std::future::pending().await,
    }
}

const CLIENT: u8 = 1;
const UPSTREAM: u8 = 2;

/// When a tunnel last carried a byte, and which side closed first.
struct Activity {
    started: std::time::Instant,
    /// Milliseconds from `started` to the last byte read from either side.
    last_ms: AtomicU64,
    /// [`CLIENT`] or [`UPSTREAM`]: the side whose end of stream came first; 0 before.
    first_eof: AtomicU8,
}

/// One side of a tunnel: counts the bytes read from it, and notes when it last sent any.
struct Metered {
    io: TokioIo<Upgraded>,
    bytes: metrics::Counter,
    activity: Arc<Activity>,
    side: u8,
}

impl AsyncRead for Metered {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let read = buf.filled().len() - before;
            if read == 0 {
                let _ = self.activity.first_eof.compare_exchange(
                    0,
                    self.side,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            } else {
                self.bytes.increment(read as u64);
                let ms =
                    u64::try_from(self.activity.started.elapsed().as_millis()).unwrap_or(u64::MAX);
                self.activity.last_ms.store(ms, Ordering::Relaxed);
            }
        }
        polled
    }
}

impl AsyncWrite for Metered {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(Verdict);

    impl Credential for Fixed {
        fn check(self: Arc<Self>) -> Pin<Box<dyn Future<Output = Verdict> + Send>> {
            Box::pin(async move { self.0 })
        }
    }

    #[tokio::test]
    async fn a_credential_that_cannot_be_checked_is_given_up_after_three_intervals() {
        let every = Duration::from_millis(20);
        let mut rechecks = Rechecks::new(Arc::new(Fixed(Verdict::Unknown)), every);
        let verdict = rechecks.start().await;
        assert!(rechecks.judge(verdict));
        assert!(rechecks.due() <= Instant::now() + every);
        tokio::time::sleep(every * 3).await;
        assert!(!rechecks.judge(Verdict::Unknown));
        let mut valid = Rechecks::new(Arc::new(Fixed(Verdict::Valid)), every);
        tokio::time::sleep(every * 3).await;
        assert!(valid.judge(Verdict::Valid));
        assert!(!valid.judge(Verdict::Ended));
    }
}
