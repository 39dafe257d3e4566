//! Security events: logged under the `audit` target, kept in the store for the admin API (and
//! purged after `audit.retention`), and with `audit.sink = "stdout" | "file"` also written as one
//! JSON line each ([`SCHEMA`]).
//!
//! The sink and the retention are process-wide: [`configure`] sets them at start and on reload.
//! A line is handed to a writer thread through a bounded queue, so a slow disk never holds a
//! request; when the queue is full the line is dropped and counted
//! (`gatehouse_audit_dropped_total`). The store keeps the event either way.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::clock::{self, Clock};
use crate::config::{AuditConfig, AuditSink};
use crate::store::{AuditEvent, Outcome, Store};

/// The `schema` of every JSON line; a change to the line's fields gets a new version.
pub const SCHEMA: &str = "gatehouse.audit.v1";

/// Lines waiting for the writer; beyond this they are dropped and counted.
const QUEUE: usize = 4096;

/// How often, at most, events older than the retention are purged (seconds).
const PURGE_EVERY: i64 = 3600;

/// How often, at most, the file's path is checked for a rotation (a new file in its place).
const ROTATION_CHECK: Duration = Duration::from_secs(1);

/// How long shutdown waits for queued lines to be written.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

static DROPPED: AtomicU64 = AtomicU64::new(0);
static RETENTION: AtomicI64 = AtomicI64::new(30 * 24 * 3600);
static LAST_PURGE: AtomicI64 = AtomicI64::new(0);
static SINK: Mutex<Option<SyncSender<String>>> = Mutex::new(None);
/// The writers of every sink configured so far that may still be writing.
static WRITERS: Mutex<Vec<std::thread::JoinHandle<()>>> = Mutex::new(Vec::new());

tokio::task_local! {
    /// The request being handled, for events recorded while handling it.
    static REQUEST: std::cell::RefCell<Request>;
}

/// The request an event was caused by: its client's address and its request id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    pub client: Option<IpAddr>,
    /// As the request carries it (a shared value: nothing is copied unless an event is made).
    pub request_id: Option<http::HeaderValue>,
}

/// Runs `work` with `request` as the request every event recorded in it (on this task) was
/// caused by, unless the event names its own; [`set_current`] changes it as more is learnt.
pub async fn within<F: std::future::Future>(request: Request, work: F) -> F::Output {
    REQUEST.scope(std::cell::RefCell::new(request), work).await
}

/// Names the request being handled, within [`within`] (elsewhere it does nothing).
pub fn set_current(request: Request) {
    let _ = REQUEST.try_with(|current| *current.borrow_mut() = request);
}

/// The request being handled on this task, if any.
pub fn current() -> Request {
    REQUEST
        .try_with(|current| current.borrow().clone())
        .unwrap_or_default()
}

/// How many JSON lines were dropped because the writer could not keep up.
pub fn dropped() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// Puts `config` in force: the retention, and the sink (a `file` sink is opened again, which
/// is how a reload takes a file rotated away). The previous writer ends once its queue is
/// written.
pub fn configure(config: &AuditConfig) -> Result<(), String> {
    RETENTION.store(
        i64::try_from(config.retention.as_secs()).unwrap_or(i64::MAX),
        Ordering::Relaxed,
    );
    let target = match &config.sink {
        AuditSink::Store => None,
        AuditSink::Stdout => Some(Target::Stdout),
        AuditSink::File(path) => Some(Target::File(Appender::open(path)?)),
    };
    let sender = match target {
        None => None,
        Some(target) => {
            let (sender, receiver) = std::sync::mpsc::sync_channel(QUEUE);
            let writer = std::thread::Builder::new()
                .name("audit-sink".into())
                .spawn(move || write_lines(target, receiver))
                .map_err(|e| format!("audit.sink: cannot start its writer: {e}"))?;
            let mut writers = WRITERS.lock().unwrap_or_else(PoisonError::into_inner);
            writers.retain(|w| !w.is_finished());
            writers.push(writer);
            Some(sender)
        }
    };
    *SINK.lock().unwrap_or_else(PoisonError::into_inner) = sender;
    Ok(())
}

/// Stops writing to the sink once the lines already queued are written (at shutdown; events
/// recorded afterwards go to the store and the log only). Blocks until then, or for at most
/// [`CLOSE_WAIT`] when the sink is stuck (a full pipe, a hung disk).
pub fn close() {
    SINK.lock().unwrap_or_else(PoisonError::into_inner).take();
    let writers = std::mem::take(&mut *WRITERS.lock().unwrap_or_else(PoisonError::into_inner));
    let started = Instant::now();
    while writers.iter().any(|w| !w.is_finished()) {
        if started.elapsed() >= CLOSE_WAIT {
            tracing::warn!(
                "audit lines still queued at shutdown are not written: the sink is stuck"
            );
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Records one event (outcome from its name, no client or request id). A store failure is
/// logged, never turned into a failed request: the event line in the log still stands.
pub async fn record(
    store: &dyn Store,
    clock: &dyn Clock,
    event: &str,
    user_name: Option<&str>,
    detail: Option<String>,
) {
    let mut e = Event::new(event);
    e.user = user_name.map(str::to_owned);
    e.detail = detail;
    e.record(store, clock).await;
}

/// One event being put together, for callers that know more than its name:
/// `audit::Event::new("signin").user(name).client(ip).request_id(id).record(store, clock)`.
#[derive(Debug, Clone)]
pub struct Event {
    event: String,
    outcome: Outcome,
    user: Option<String>,
    client: Option<String>,
    request_id: Option<String>,
    detail: Option<String>,
}

impl Event {
    /// An event named `event`; a failure when the name says so (`…failed`, `…lockout`,
    /// `rate_limited`), else a success.
    pub fn new(event: &str) -> Event {
        Event {
            event: event.to_owned(),
            outcome: Outcome::of(event),
            user: None,
            client: None,
            request_id: None,
            detail: None,
        }
    }

    pub fn failure(mut self) -> Event {
        self.outcome = Outcome::Failure;
        self
    }

    pub fn user(mut self, name: Option<&str>) -> Event {
        self.user = name.map(str::to_owned);
        self
    }

    pub fn client(mut self, address: IpAddr) -> Event {
        self.client = Some(address.to_string());
        self
    }

    pub fn request_id(mut self, id: &str) -> Event {
        self.request_id = Some(id.to_owned()).filter(|id| !id.is_empty());
        self
    }

    pub fn detail(mut self, detail: Option<String>) -> Event {
        self.detail = detail;
        self
    }

    /// The stored form, timed now; the client and request id not given are those of the
    /// request being handled ([`within`]).
    pub fn at(mut self, clock: &dyn Clock) -> AuditEvent {
        if self.client.is_none() || self.request_id.is_none() {
            let request = current();
            if self.client.is_none() {
                self.client = request.client.map(|ip| ip.to_string());
            }
            if self.request_id.is_none() {
                self.request_id = request
                    .request_id
                    .as_ref()
                    .and_then(|id| id.to_str().ok())
                    .filter(|id| !id.is_empty())
                    .map(str::to_owned);
            }
        }
        AuditEvent {
            id: None,
            time: clock::rfc3339(clock.now()),
            event: self.event,
            outcome: Some(self.outcome),
            user_name: self.user,
            client: self.client,
            request_id: self.request_id,
            detail: self.detail,
        }
    }

    /// Logs, writes to the sink and stores the event; see [`record`]. The client and request
    /// id not given are those of the request being handled ([`within`]).
    pub async fn record(self, store: &dyn Store, clock: &dyn Clock) {
        let entry = self.at(clock);
        log(&entry);
        if let Err(e) = store.append_audit(entry.clone()).await {
            tracing::error!(target: "audit", error = %e, event = entry.event, "cannot store audit event");
        }
        purge_when_due(store, clock).await;
    }
}

/// The log line of an event (and its JSON line in the sink), for one the store keeps together
/// with the change it records.
pub fn log(entry: &AuditEvent) {
    tracing::info!(
        target: "audit",
        event = entry.event.as_str(),
        outcome = entry.outcome.map(Outcome::as_str),
        user = entry.user_name.as_deref(),
        client = entry.client.as_deref(),
        request_id = entry.request_id.as_deref(),
        detail = entry.detail.as_deref(),
        "audit"
    );
    emit(entry);
}

/// The JSON line of an event (without its newline).
pub fn line(entry: &AuditEvent) -> String {
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Line<'a> {
        schema: &'static str,
        time: &'a str,
        event: &'a str,
        outcome: Option<&'static str>,
        user: Option<&'a str>,
        client: Option<&'a str>,
        request_id: Option<&'a str>,
        details: Option<&'a str>,
    }
    serde_json::to_string(&Line {
        schema: SCHEMA,
        time: &entry.time,
        event: &entry.event,
        outcome: entry.outcome.map(Outcome::as_str),
        user: entry.user_name.as_deref(),
        client: entry.client.as_deref(),
        request_id: entry.request_id.as_deref(),
        details: entry.detail.as_deref(),
    })
    .unwrap_or_default()
}

fn emit(entry: &AuditEvent) {
    let guard = SINK.lock().unwrap_or_else(PoisonError::into_inner);
    let Some(sender) = guard.as_ref() else {
        return;
    };
    let mut text = line(entry);
    text.push('\n');
    match sender.try_send(text) {
        Ok(()) => {}
        Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
            DROPPED.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Deletes events older than the retention, at most once per [`PURGE_EVERY`]; a failure is
/// logged only.
async fn purge_when_due(store: &dyn Store, clock: &dyn Clock) {
    let now = clock.now().unix_timestamp();
    let last = LAST_PURGE.load(Ordering::Relaxed);
    if now - last < PURGE_EVERY
        || LAST_PURGE
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
    {
        return;
    }
    purge(store, clock).await;
}

/// The time (RFC 3339, as stored) before which events are past `audit.retention` now: they are
/// purged at most once per [`PURGE_EVERY`], and never listed meanwhile.
pub fn oldest_kept(clock: &dyn Clock) -> Option<String> {
    let retention = RETENTION.load(Ordering::Relaxed);
    clock
        .now()
        .checked_sub(time::Duration::seconds(retention))
        .map(clock::rfc3339)
}

/// Deletes the events older than the retention now; how many.
pub async fn purge(store: &dyn Store, clock: &dyn Clock) -> u64 {
    let Some(before) = oldest_kept(clock) else {
        return 0;
    };
    match store.purge_audit(&before).await {
        Ok(n) => {
            if n > 0 {
                tracing::info!(target: "audit", purged = n, "purged audit events past audit.retention");
            }
            n
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot purge old audit events");
            0
        }
    }
}

enum Target {
    Stdout,
    File(Appender),
}

/// The writer thread: one `write` per line (stdout is locked for it, so a log line never lands
/// inside one), until every sender is gone.
fn write_lines(mut target: Target, lines: Receiver<String>) {
    for text in lines {
        let written = match &mut target {
            Target::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(text.as_bytes()).and_then(|()| out.flush())
            }
            Target::File(file) => file.append(text.as_bytes()),
        };
        if let Err(e) = written {
            DROPPED.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, "cannot write an audit line");
        }
    }
}

/// An append-only file, opened again when its path names another file (rotated away) or none.
struct Appender {
    path: PathBuf,
    file: Option<File>,
    checked: Instant,
}

impl Appender {
    fn open(path: &Path) -> Result<Appender, String> {
        let file = open_file(path)
            .map_err(|e| format!("audit.file: cannot open {}: {e}", path.display()))?;
        Ok(Appender {
            path: path.to_owned(),
            file: Some(file),
            checked: Instant::now(),
        })
    }

    fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if self.checked.elapsed() >= ROTATION_CHECK || self.file.is_none() {
            self.checked = Instant::now();
            let current = self.file.as_ref().and_then(|f| f.metadata().ok());
            let at_path = std::fs::metadata(&self.path).ok();
            let same = matches!((&current, &at_path), (Some(a), Some(b)) if a.ino() == b.ino() && a.dev() == b.dev());
            if !same {
                self.file = Some(open_file(&self.path)?);
            }
        }
        match &mut self.file {
            Some(file) => file.write_all(bytes),
            None => Err(std::io::Error::other("the audit file is not open")),
        }
    }
}

fn open_file(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_line_has_the_documented_fields() {
        let entry = AuditEvent {
            id: Some(7),
            time: "2026-01-02T03:04:05Z".into(),
            event: "signin.failed".into(),
            outcome: Some(Outcome::Failure),
            user_name: Some("ada".into()),
            client: Some("192.0.2.1".into()),
            request_id: Some("r-1".into()),
            detail: Some("Refused(\"password\")".into()),
        };
        let v: serde_json::Value = serde_json::from_str(&line(&entry)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "schema": "gatehouse.audit.v1",
                "time": "2026-01-02T03:04:05Z",
                "event": "signin.failed",
                "outcome": "failure",
                "user": "ada",
                "client": "192.0.2.1",
                "requestId": "r-1",
                "details": "Refused(\"password\")",
            })
        );
        assert!(!line(&entry).contains('\n'));
    }

    #[test]
    fn outcome_follows_the_event_name() {
        assert_eq!(Event::new("signin").outcome, Outcome::Success);
        assert_eq!(Event::new("signin.failed").outcome, Outcome::Failure);
        assert_eq!(Event::new("mfa.code.failed").outcome, Outcome::Failure);
        assert_eq!(Event::new("mfa.lockout").outcome, Outcome::Failure);
        assert_eq!(Event::new("rate_limited").outcome, Outcome::Failure);
    }
}
