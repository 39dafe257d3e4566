//! Security events: logged under the `audit` target and kept in the store for the admin API.

use crate::clock::{self, Clock};
use crate::store::{AuditEvent, Store};

/// Records one event. A store failure is logged, never turned into a failed request: the event
/// line in the log still stands.
pub async fn record(
    store: &dyn Store,
    clock: &dyn Clock,
    event: &str,
    user_name: Option<&str>,
    detail: Option<String>,
) {
    let entry = AuditEvent {
        time: clock::rfc3339(clock.now()),
        event: event.to_owned(),
        user_name: user_name.map(str::to_owned),
        detail,
    };
    log(&entry);
    if let Err(e) = store.append_audit(entry).await {
        tracing::error!(target: "audit", error = %e, event, "cannot store audit event");
    }
}

/// The log line of an event, for one the store keeps together with the change it records.
pub fn log(entry: &AuditEvent) {
    tracing::info!(
        target: "audit",
        event = entry.event.as_str(),
        user = entry.user_name.as_deref(),
        detail = entry.detail.as_deref(),
        "audit"
    );
}
