//! Exchanges that outlive their request: WebSocket tunnels and streaming responses. Each keeps the
//! credential it was admitted with and has it checked again every `proxy.reauth_interval`, by the
//! same decision a new request gets ([`super::access::decide`]); one that no longer passes ends
//! the exchange.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use hyper::body::{Body as HttpBody, Frame, SizeHint};

use super::access::decide;
use super::rejection::{GRPC_MESSAGE, GRPC_STATUS, Rejection};
use crate::auth::{Authenticator, Principal};
use crate::body::{Body, BoxError};
use crate::meter::Meter;
use crate::proxy::tunnel::{Credential, Rechecks, Verdict};
use crate::routes::Policy;
use arc_swap::ArcSwap;

/// A credential as it was presented: the headers that carry one, the route it was presented to,
/// and the principal it admitted.
pub(super) struct Admitted {
    pub(super) auth: Arc<Authenticator>,
    /// The rules in force (a reload that tightens the route ends what it no longer allows).
    pub(super) policy: Arc<ArcSwap<Policy>>,
    /// The request's match key, which picks its rule.
    pub(super) key: String,
    /// The methods the request may be acted on as (its own, and its override headers').
    pub(super) methods: crate::routes::Methods,
    /// `Authorization`, `Cookie` and the ApplicationToken header, as the client sent them.
    pub(super) credentials: HeaderMap,
    pub(super) client: IpAddr,
    pub(super) user_id: String,
}

/// The credential-carrying headers of a request as it came (before any is removed for the
/// upstream): `Authorization`, the ApplicationToken header and every `Cookie` (HTTP/2 clients
/// send one per cookie). Values are shared, not copied.
pub(super) struct Presented {
    pub(super) authorization: Option<HeaderValue>,
    pub(super) app: Option<HeaderValue>,
    pub(super) cookies: Vec<HeaderValue>,
}

impl Presented {
    /// The request's `Cookie` values, as shared values.
    pub(super) fn cookies(headers: &HeaderMap) -> Vec<HeaderValue> {
        headers.get_all(header::COOKIE).iter().cloned().collect()
    }

    /// The headers to present again.
    pub(super) fn into_headers(self, app_header: &header::HeaderName) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(v) = self.authorization {
            headers.insert(header::AUTHORIZATION, v);
        }
        if let Some(v) = self.app {
            headers.insert(app_header.clone(), v);
        }
        for v in self.cookies {
            headers.append(header::COOKIE, v);
        }
        headers
    }
}

impl Credential for Admitted {
    fn check(self: Arc<Self>) -> Pin<Box<dyn Future<Output = Verdict> + Send>> {
        Box::pin(async move {
            let policy = self.policy.load_full();
            let rules = policy
                .rules
                .rules_for_request(&self.key, &self.methods, self.client);
            let decided = decide(
                &self.auth,
                &rules,
                policy.require_app,
                &self.credentials,
                self.client,
            )
            .await;
            verdict(decided, &self.user_id)
        })
    }
}

/// What a decision on the same credential means for the exchange it admitted.
fn verdict(decided: Result<Option<Principal>, Rejection>, user_id: &str) -> Verdict {
    match decided {
        Ok(Some(principal)) if principal.user_id == user_id => Verdict::Valid,
        // Another principal, or none (the route turned public: nothing to end).
        Ok(Some(_)) => Verdict::Ended,
        Ok(None) => Verdict::Valid,
        Err(
            Rejection::AuthUnavailable(_)
            | Rejection::HashingBusy
            | Rejection::TooManyFailures(_)
            | Rejection::RateLimited(_)
            | Rejection::Internal(_),
        ) => Verdict::Unknown,
        Err(
            Rejection::BadPath(_)
            | Rejection::AmbiguousHost
            | Rejection::BadCredentials(_)
            | Rejection::Unauthenticated(_)
            | Rejection::NoApplicationToken
            | Rejection::NewUsersLimited(_)
            | Rejection::MfaRequired
            | Rejection::Redirect { .. }
            | Rejection::MissingScope(_)
            | Rejection::BodyTooLarge(_)
            | Rejection::UpstreamUnavailable(_)
            | Rejection::UpstreamTimeout
            | Rejection::UntrustedForwardAuth
            | Rejection::NoForwardedRequest
            | Rejection::ConflictingForwardedRequest
            | Rejection::OriginNotAllowed
            | Rejection::TooManyTunnels(_)
            | Rejection::MethodNotAllowed,
        ) => Verdict::Ended,
    }
}

/// Responses no longer than this, with their length known, are not watched: they cannot stream
/// for long, and most responses are such.
const UNWATCHED_MAX: u64 = 1 << 20;

/// Whether a response of a principal's needs its credential watched while it streams.
pub(super) fn is_long_lived(body: &Body) -> bool {
    body.size_hint()
        .exact()
        .is_none_or(|len| len > UNWATCHED_MAX)
}

/// A response body whose credential is checked again while it streams; once it no longer passes,
/// the body ends: with a gRPC status in trailers for a gRPC call, else with an error (the client
/// sees the response cut off: HTTP/1.1 without its last chunk, HTTP/2 with the stream reset).
pub(super) struct Rechecked {
    inner: Body,
    rechecks: Rechecks,
    check: Option<Pin<Box<dyn Future<Output = Verdict> + Send>>>,
    /// Set once the body waited for its source: from then on, the next check has a timer.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    grpc: bool,
    ended: bool,
    meter: Arc<Meter>,
}

impl Rechecked {
    pub(super) fn new(
        inner: Body,
        credential: Arc<dyn Credential>,
        every: Duration,
        grpc: bool,
        meter: Arc<Meter>,
    ) -> Rechecked {
        Rechecked {
            inner,
            rechecks: Rechecks::new(credential, every),
            check: None,
            timer: None,
            grpc,
            ended: false,
            meter,
        }
    }

    /// Advances the re-checks: `Ready(false)` once the credential no longer passes.
    fn poll_rechecks(&mut self, cx: &mut Context<'_>) -> Poll<bool> {
        loop {
            if let Some(check) = &mut self.check {
                let verdict = std::task::ready!(check.as_mut().poll(cx));
                self.check = None;
                if !self.rechecks.judge(verdict) {
                    return Poll::Ready(false);
                }
                if let Some(timer) = &mut self.timer {
                    timer.as_mut().reset(self.rechecks.due());
                }
                continue;
            }
            if tokio::time::Instant::now() >= self.rechecks.due() {
                self.check = Some(self.rechecks.start());
                continue;
            }
            if let Some(timer) = &mut self.timer {
                std::task::ready!(timer.as_mut().poll(cx));
                continue;
            }
            return Poll::Pending;
        }
    }

    /// The frame that ends the body once its credential has ended.
    fn end(&mut self) -> Option<Result<Frame<Bytes>, BoxError>> {
        self.ended = true;
        self.meter.stream_closed("credential");
        if self.grpc {
            let mut trailers = HeaderMap::new();
            trailers.insert(GRPC_STATUS, HeaderValue::from_static("16"));
            trailers.insert(GRPC_MESSAGE, HeaderValue::from_static("credential ended"));
            Some(Ok(Frame::trailers(trailers)))
        } else {
            Some(Err("the credential of this response ended".into()))
        }
    }
}

impl HttpBody for Rechecked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.ended {
            return Poll::Ready(None);
        }
        if let Poll::Ready(false) = this.poll_rechecks(cx) {
            return Poll::Ready(this.end());
        }
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if polled.is_pending() && this.timer.is_none() {
            // Waiting on the source: the next check must wake the body by itself.
            this.timer = Some(Box::pin(tokio::time::sleep_until(this.rechecks.due())));
            if let Poll::Ready(false) = this.poll_rechecks(cx) {
                return Poll::Ready(this.end());
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exchange_ends_when_its_credential_no_longer_admits_the_same_user() {
        assert_eq!(verdict(Ok(None), "7"), Verdict::Valid);
        assert_eq!(
            verdict(Err(Rejection::Unauthenticated(Some("ended".into()))), "7"),
            Verdict::Ended
        );
        assert_eq!(verdict(Err(Rejection::MfaRequired), "7"), Verdict::Ended);
        assert_eq!(
            verdict(Err(Rejection::AuthUnavailable("down".into())), "7"),
            Verdict::Unknown
        );
    }
}
