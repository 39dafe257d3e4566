//! Prometheus metrics (SPEC §9), served at `/metrics` on the admin listener. Each running
//! gatehouse owns its registry (no process-wide recorder), so that several instances in one
//! process keep apart.

use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use metrics::{
    Counter, Gauge, Histogram, Key, KeyName, Label, Level, Metadata, Recorder, SharedString, Unit,
};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

static METADATA: Metadata<'static> =
    Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

/// Upstream latency buckets, in seconds: 1 ms to 30 s (the response timeout's default).
const LATENCY_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

const REQUESTS: &str = "gatehouse_requests_total";
const UPSTREAM_LATENCY: &str = "gatehouse_upstream_latency_seconds";
const AUTH_FAILURES: &str = "gatehouse_auth_failures_total";
const OTP_VERIFICATIONS: &str = "gatehouse_otp_verifications_total";
const LOCKOUTS: &str = "gatehouse_lockouts_total";
const TICKETS: &str = "gatehouse_tickets_issued_total";
const RELOADS: &str = "gatehouse_config_reloads_total";
const CONNECTIONS_REFUSED: &str = "gatehouse_connections_refused_total";
const TUNNELS_OPEN: &str = "gatehouse_tunnels_open";
const TUNNEL_BYTES: &str = "gatehouse_tunnel_bytes_total";
const TUNNELS_CLOSED: &str = "gatehouse_tunnels_closed_total";
const STREAMS_CLOSED: &str = "gatehouse_streams_closed_total";
const AUDIT_DROPPED: &str = "gatehouse_audit_dropped_total";

/// How often the exporter's histogram samples are folded into their buckets when nobody scrapes:
/// until then each sample is held in memory (SPEC §10, memory is flat).
pub const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// What an OTP verification came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtpResult {
    Accepted,
    /// Wrong, used or expired.
    Rejected,
    /// Refused because the user is locked out.
    Locked,
}

impl OtpResult {
    fn as_str(self) -> &'static str {
        match self {
            OtpResult::Accepted => "accepted",
            OtpResult::Rejected => "rejected",
            OtpResult::Locked => "locked",
        }
    }
}

pub struct Meter {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    /// The request counters registered so far, by class and status, so the per-request path
    /// builds no key: a few dozen at most, so a scan finds one sooner than hashing would.
    requests: RwLock<Vec<(&'static str, u16, Counter)>>,
    /// Registered once: looking it up by name cost more than recording into it.
    upstream_latency: Histogram,
    /// Histogram samples recorded since the last upkeep: what upkeep has yet to drain.
    pending: AtomicU64,
    tunnels_open: Gauge,
    /// Bytes tunnelled from clients to the upstream, and back.
    tunnel_bytes: [Counter; 2],
}

/// Which way tunnelled bytes went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    ClientToUpstream,
    UpstreamToClient,
}

impl Default for Meter {
    fn default() -> Meter {
        Meter::new()
    }
}

impl Meter {
    pub fn new() -> Meter {
        let builder = PrometheusBuilder::new()
            .set_buckets(&LATENCY_BUCKETS)
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        let describe = |name: &'static str, unit: Option<Unit>, text: &'static str| {
            let name = KeyName::from_const_str(name);
            let text = SharedString::const_str(text);
            match unit {
                Some(Unit::Seconds) => recorder.describe_histogram(name, unit, text),
                _ => recorder.describe_counter(name, unit, text),
            }
        };
        describe(
            REQUESTS,
            None,
            "Requests answered on the public listeners, by route class and status.",
        );
        describe(
            UPSTREAM_LATENCY,
            Some(Unit::Seconds),
            "Time from forwarding a request to the upstream's response head.",
        );
        describe(
            AUTH_FAILURES,
            None,
            "Requests refused by authentication or route policy, by reason.",
        );
        describe(
            OTP_VERIFICATIONS,
            None,
            "One-time code verifications (TOTP, SMS, email, recovery), by result.",
        );
        describe(
            LOCKOUTS,
            None,
            "Users locked out after too many failed codes.",
        );
        describe(TICKETS, None, "Enrollment tickets issued, by factor.");
        describe(
            RELOADS,
            None,
            "Configuration reloads, by result (applied or rejected).",
        );
        describe(
            CONNECTIONS_REFUSED,
            None,
            "Connections closed at accept because a cap was reached, by listener and reason.",
        );
        describe(
            TUNNEL_BYTES,
            Some(Unit::Bytes),
            "Bytes carried by WebSocket tunnels, by direction.",
        );
        describe(
            TUNNELS_CLOSED,
            None,
            "WebSocket tunnels closed, by reason (client, upstream, credential, idle, lifetime, shutdown, error).",
        );
        describe(
            STREAMS_CLOSED,
            None,
            "Streaming responses ended by gatehouse, by reason (credential).",
        );
        recorder.describe_gauge(
            KeyName::from_const_str(TUNNELS_OPEN),
            None,
            SharedString::const_str("WebSocket tunnels open (or being opened)."),
        );
        let upstream_latency =
            recorder.register_histogram(&Key::from_static_name(UPSTREAM_LATENCY), &METADATA);
        let tunnels_open = recorder.register_gauge(&Key::from_static_name(TUNNELS_OPEN), &METADATA);
        let bytes = |direction: &'static str| {
            recorder.register_counter(
                &Key::from_parts(
                    TUNNEL_BYTES,
                    vec![Label::from_static_parts("direction", direction)],
                ),
                &METADATA,
            )
        };
        let tunnel_bytes = [bytes("client_to_upstream"), bytes("upstream_to_client")];
        Meter {
            recorder,
            handle,
            requests: RwLock::new(Vec::new()),
            upstream_latency,
            pending: AtomicU64::new(0),
            tunnels_open,
            tunnel_bytes,
        }
    }

    /// The counter of bytes tunnelled in `direction`.
    pub fn tunnel_bytes(&self, direction: Direction) -> Counter {
        match direction {
            Direction::ClientToUpstream => self.tunnel_bytes[0].clone(),
            Direction::UpstreamToClient => self.tunnel_bytes[1].clone(),
        }
    }

    /// A tunnel starts being opened.
    pub fn tunnel_opened(&self) {
        self.tunnels_open.increment(1.0);
    }

    /// A tunnel (or one that was being opened) is gone.
    pub fn tunnel_gone(&self) {
        self.tunnels_open.decrement(1.0);
    }

    /// An established tunnel closed for `reason`.
    pub fn tunnel_closed(&self, reason: &'static str) {
        self.count(
            TUNNELS_CLOSED,
            vec![Label::from_static_parts("reason", reason)],
        );
    }

    /// A streaming response ended by gatehouse for `reason`.
    pub fn stream_closed(&self, reason: &'static str) {
        self.count(
            STREAMS_CLOSED,
            vec![Label::from_static_parts("reason", reason)],
        );
    }

    fn count(&self, name: &'static str, labels: Vec<Label>) {
        self.recorder
            .register_counter(&Key::from_parts(name, labels), &METADATA)
            .increment(1);
    }

    /// One answered request; `class` is the route's access or the local endpoint family.
    pub fn request(&self, class: &'static str, status: u16) {
        if let Ok(known) = self.requests.read()
            && let Some((_, _, counter)) =
                known.iter().find(|(c, s, _)| *s == status && *c == class)
        {
            counter.increment(1);
            return;
        }
        let counter = self.recorder.register_counter(
            &Key::from_parts(
                REQUESTS,
                vec![
                    Label::from_static_parts("class", class),
                    Label::new("status", status.to_string()),
                ],
            ),
            &METADATA,
        );
        counter.increment(1);
        if let Ok(mut known) = self.requests.write()
            && !known.iter().any(|(c, s, _)| *s == status && *c == class)
        {
            known.push((class, status, counter));
        }
    }

    pub fn upstream_latency(&self, latency: Duration) {
        self.upstream_latency.record(latency.as_secs_f64());
        self.pending.fetch_add(1, Ordering::Relaxed);
    }

    pub fn auth_failure(&self, reason: &'static str) {
        self.count(
            AUTH_FAILURES,
            vec![Label::from_static_parts("reason", reason)],
        );
    }

    pub fn otp(&self, result: OtpResult) {
        self.count(
            OTP_VERIFICATIONS,
            vec![Label::from_static_parts("result", result.as_str())],
        );
    }

    pub fn lockout(&self) {
        self.count(LOCKOUTS, Vec::new());
    }

    pub fn ticket(&self, factor: &'static str) {
        self.count(TICKETS, vec![Label::from_static_parts("factor", factor)]);
    }

    pub fn reload(&self, applied: bool) {
        let result = if applied { "applied" } else { "rejected" };
        self.count(RELOADS, vec![Label::from_static_parts("result", result)]);
    }

    /// A connection closed at accept: `reason` names the cap (`max_connections`, ...).
    pub fn connection_refused(&self, listener: &'static str, reason: &'static str) {
        self.count(
            CONNECTIONS_REFUSED,
            vec![
                Label::from_static_parts("listener", listener),
                Label::from_static_parts("reason", reason),
            ],
        );
    }

    /// Folds the histogram samples recorded so far into their buckets, freeing them.
    pub fn upkeep(&self) {
        self.pending.store(0, Ordering::Relaxed);
        self.handle.run_upkeep();
    }

    /// Histogram samples held in memory until the next upkeep.
    pub fn pending_samples(&self) -> u64 {
        self.pending.load(Ordering::Relaxed)
    }

    /// Runs [`Meter::upkeep`] every `every` until `stop` turns true (or its sender is gone).
    pub async fn run_upkeep(&self, every: Duration, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => self.upkeep(),
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() {
                        return;
                    }
                }
            }
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        self.upkeep();
        let mut text = self.handle.render();
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&format!(
            "# HELP {AUDIT_DROPPED} Audit event lines not written to audit.sink because its writer fell behind or failed.\n\
             # TYPE {AUDIT_DROPPED} counter\n\
             {AUDIT_DROPPED} {}\n",
            crate::audit::dropped()
        ));
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_the_latency_histogram_render_in_prometheus_text() {
        let meter = Meter::new();
        meter.request("authenticated", 401);
        meter.request("authenticated", 401);
        meter.auth_failure("unauthenticated");
        meter.otp(OtpResult::Accepted);
        meter.upstream_latency(Duration::from_millis(3));
        let text = meter.render();
        assert!(
            text.contains("gatehouse_requests_total{class=\"authenticated\",status=\"401\"} 2"),
            "{text}"
        );
        assert!(text.contains("# HELP gatehouse_requests_total"), "{text}");
        assert!(
            text.contains("gatehouse_otp_verifications_total{result=\"accepted\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("gatehouse_upstream_latency_seconds_bucket{le=\"0.005\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("gatehouse_upstream_latency_seconds_bucket{le=\"0.0025\"} 0"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn histogram_samples_are_drained_by_the_timer_without_a_scrape() {
        let meter = std::sync::Arc::new(Meter::new());
        for _ in 0..1000 {
            meter.upstream_latency(Duration::from_millis(2));
        }
        assert_eq!(meter.pending_samples(), 1000);
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let timer = tokio::spawn({
            let meter = meter.clone();
            async move { meter.run_upkeep(Duration::from_millis(10), stopped).await }
        });
        // Waits for the timer; the test fails if it never drains.
        for _ in 0..500 {
            if meter.pending_samples() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(meter.pending_samples(), 0);
        // The drained samples are in the buckets, not lost.
        assert!(
            meter
                .handle
                .render()
                .contains("gatehouse_upstream_latency_seconds_count 1000")
        );
        let _ = stop.send(true);
        assert!(timer.await.is_ok());
    }

    #[test]
    fn separate_meters_do_not_share_counts() {
        let a = Meter::new();
        let b = Meter::new();
        a.lockout();
        assert!(a.render().contains("gatehouse_lockouts_total 1"));
        assert!(!b.render().contains("gatehouse_lockouts_total 1"));
    }
}
