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
    tracing::info!(target: "audit", event, user = user_name, detail = detail.as_deref(), "audit");
    let entry = AuditEvent {
        time: clock::rfc3339(clock.now()),
        event: event.to_owned(),
        user_name: user_name.map(str::to_owned),
        detail,
    };
    if let Err(e) = store.append_audit(entry).await {
        tracing::error!(target: "audit", error = %e, event, "cannot store audit event");
    }
}
