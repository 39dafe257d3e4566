//! The shared store: PostgreSQL (or CockroachDB), for any number of gatehouse replicas on one
//! database. Records are the same serde_json documents sled keeps, in JSONB columns beside the key
//! columns that lookups, unique constraints and conditional updates need. Every guarantee of
//! [`Store`] is enforced by the database (unique constraints, conditional `UPDATE`/`DELETE`, and
//! `SELECT … FOR UPDATE` read-modify-writes), never by in-process locks; multi-statement
//! transactions are retried on serialization failures, which CockroachDB reports routinely.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{GenericClient, Pool, PoolError};
use serde::de::DeserializeOwned;
use tokio_postgres::Row;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{Json, ToSql};

use super::{AuditEvent, Factor, StoreError, StoreResult};

mod cache;
mod domains;
mod impl_store;
mod mfa;
mod passkeys;
mod schema;
mod sessions;
mod snapshot;
#[cfg(test)]
mod tests;
mod users;

pub use schema::check_url;

use cache::{Change, ReadCache};

/// Connecting, waiting for a pooled connection and recycling one each give up after this, so an
/// outage answers errors quickly instead of piling up requests.
const TIMEOUT: Duration = Duration::from_secs(5);

/// How often a transaction runs before a serialization failure is reported.
const ATTEMPTS: u32 = 10;

/// Takes the next value of a named counter; the row stays locked until the transaction ends, so
/// a rolled-back creation gives its number back.
const NEXT: &str = "INSERT INTO gatehouse_counters (name, value) VALUES ($1, 1)
    ON CONFLICT (name) DO UPDATE SET value = gatehouse_counters.value + 1 RETURNING value";

/// The PostgreSQL store: a connection pool; all state lives in the database, and what every
/// authenticated request reads may be kept in memory for `auth.revocation_lag`
/// ([`PgStore::with_read_cache`]).
pub struct PgStore {
    pool: Pool,
    /// How the pool connects, for the connection that listens for other replicas' changes.
    config: tokio_postgres::Config,
    tls: bool,
    /// Whether the database takes `pg_notify` (PostgreSQL does, CockroachDB does not).
    announce: bool,
    cache: Option<Arc<ReadCache>>,
    listener: Option<tokio::task::AbortHandle>,
}

impl Drop for PgStore {
    fn drop(&mut self) {
        if let Some(listener) = &self.listener {
            listener.abort();
        }
    }
}

/// Why an attempt failed, before it becomes a [`StoreError`]: database errors keep their SQLSTATE
/// so that serialization failures can be retried.
#[derive(Debug)]
enum Fail {
    Db(tokio_postgres::Error),
    Pool(PoolError),
    Store(StoreError),
}

impl From<tokio_postgres::Error> for Fail {
    fn from(e: tokio_postgres::Error) -> Fail {
        Fail::Db(e)
    }
}

impl From<PoolError> for Fail {
    fn from(e: PoolError) -> Fail {
        Fail::Pool(e)
    }
}

impl From<StoreError> for Fail {
    fn from(e: StoreError) -> Fail {
        Fail::Store(e)
    }
}

impl From<Fail> for StoreError {
    fn from(fail: Fail) -> StoreError {
        match fail {
            Fail::Store(e) => e,
            Fail::Db(e) => match e.as_db_error() {
                Some(db) if *db.code() == SqlState::UNIQUE_VIOLATION => {
                    StoreError::Conflict(format!("a record ({})", db.constraint().unwrap_or("?")))
                }
                _ => describe(&e),
            },
            Fail::Pool(PoolError::Backend(e)) => describe(&e),
            Fail::Pool(PoolError::Timeout(_)) => {
                StoreError::Backend("timed out waiting for a connection to the database".into())
            }
            Fail::Pool(e) => StoreError::Backend(format!("no connection to the database: {e}")),
        }
    }
}

impl Fail {
    /// Whether running the transaction again may succeed.
    fn transient(&self) -> bool {
        match self {
            Fail::Db(e) => matches!(
                e.code(),
                Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE
                    || *c == SqlState::T_R_DEADLOCK_DETECTED
            ),
            _ => false,
        }
    }
}

/// A database failure without its DETAIL, which can quote stored values (user names, hashes).
fn describe(e: &tokio_postgres::Error) -> StoreError {
    StoreError::Backend(match e.as_db_error() {
        Some(db) => format!(
            "the database refused: {} (SQLSTATE {})",
            db.message(),
            db.code().code()
        ),
        None => {
            // The causes (an I/O or certificate error) say what to fix; none holds the URL.
            let mut text = format!("the database failed: {e}");
            let mut cause = std::error::Error::source(e);
            while let Some(c) = cause {
                let line = c.to_string();
                if !text.ends_with(&line) {
                    text = format!("{text}: {line}");
                }
                cause = c.source();
            }
            text
        }
    })
}

/// Turns a unique violation into `Conflict(what(constraint))`.
fn unique(e: tokio_postgres::Error, what: impl FnOnce(&str) -> String) -> Fail {
    match e.as_db_error() {
        Some(db) if *db.code() == SqlState::UNIQUE_VIOLATION => {
            Fail::Store(StoreError::Conflict(what(db.constraint().unwrap_or(""))))
        }
        _ => Fail::Db(e),
    }
}

/// Runs `attempt` again after a serialization failure or deadlock, with a growing, jittered pause
/// so that colliding replicas fall out of step.
async fn retry<T, F, Fut>(mut attempt: F) -> Result<T, Fail>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Fail>>,
{
    let mut tries = 1;
    loop {
        match attempt().await {
            Err(fail) if fail.transient() && tries < ATTEMPTS => {
                let base = 5u64 << tries.min(5);
                let jitter = (uuid::Uuid::new_v4().as_u128() % u128::from(base)) as u64;
                tokio::time::sleep(Duration::from_millis(base + jitter)).await;
                tries += 1;
            }
            result => return result,
        }
    }
}

/// A u64 id as INT8, bit for bit: ids are only compared for equality, so the whole u64 range maps
/// onto INT8 without two ids meeting.
fn key(id: u64) -> i64 {
    i64::from_ne_bytes(id.to_ne_bytes())
}

/// The inverse of [`key`]. Ordering by it is ordering by big-endian bytes, which is how sled
/// orders its numeric keys (a negative i64 after every positive one).
fn unkey(column: i64) -> u64 {
    u64::from_ne_bytes(column.to_ne_bytes())
}

fn name_key(user_name: &str) -> String {
    user_name.to_lowercase()
}

/// `(iss, sub)` as one TEXT value. sled joins them with NUL, which TEXT cannot hold; a JSON array
/// is as unambiguous.
fn external_key(issuer: &str, subject: &str) -> String {
    serde_json::json!([issuer, subject]).to_string()
}

/// TEXT and JSONB cannot hold NUL, so a key containing one names no stored record; looking it up
/// would only make the database refuse the parameter.
fn storable(s: &str) -> bool {
    !s.contains('\0')
}

/// Audit events quote what clients sent; JSONB refuses NUL, and the event must still be kept.
fn without_nul(s: String) -> String {
    if storable(&s) {
        s
    } else {
        s.replace('\0', "\u{FFFD}")
    }
}

fn storable_event(event: AuditEvent) -> AuditEvent {
    AuditEvent {
        id: None,
        time: without_nul(event.time),
        event: without_nul(event.event),
        outcome: event.outcome,
        user_name: event.user_name.map(without_nul),
        client: event.client.map(without_nul),
        request_id: event.request_id.map(without_nul),
        detail: event.detail.map(without_nul),
    }
}

fn step_column(step: u64) -> Result<i64, Fail> {
    i64::try_from(step)
        .map_err(|_| Fail::Store(StoreError::Backend("TOTP step out of range".into())))
}

fn doc<T: DeserializeOwned>(row: &Row) -> Result<T, Fail> {
    Ok(row.try_get::<_, Json<T>>("doc")?.0)
}

/// A factor whose `last_step` comes from its column, the one the replay guard updates.
fn factor_from(row: &Row) -> Result<Factor, Fail> {
    let mut factor: Factor = doc(row)?;
    let last_step: Option<i64> = row.try_get("last_step")?;
    factor.last_step = last_step
        .map(u64::try_from)
        .transpose()
        .map_err(|_| StoreError::Backend("a negative TOTP step is stored".into()))?;
    Ok(factor)
}

async fn rows(
    c: &impl GenericClient,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Row>, Fail> {
    let statement = c.prepare_cached(sql).await?;
    Ok(c.query(&statement, params).await?)
}

async fn row(
    c: &impl GenericClient,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Option<Row>, Fail> {
    let statement = c.prepare_cached(sql).await?;
    Ok(c.query_opt(&statement, params).await?)
}

/// Appends an audit event, numbered by the `audit` counter. The counter's row stays locked
/// until the transaction ends, so events become visible in the order of their numbers.
async fn insert_audit(c: &impl GenericClient, event: AuditEvent) -> Result<u64, Fail> {
    let event = storable_event(event);
    let user_key = event.user_name.as_deref().map(name_key);
    exec(
        c,
        "WITH next AS (
            INSERT INTO gatehouse_counters (name, value) VALUES ('audit', 1)
            ON CONFLICT (name) DO UPDATE SET value = gatehouse_counters.value + 1
            RETURNING value
        )
        INSERT INTO gatehouse_audit (seq, doc, at, event, user_key)
        SELECT value, $1, $2, $3, $4 FROM next",
        &[&Json(&event), &event.time, &event.event, &user_key],
    )
    .await
}

async fn exec(
    c: &impl GenericClient,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<u64, Fail> {
    let statement = c.prepare_cached(sql).await?;
    Ok(c.execute(&statement, params).await?)
}

async fn next_value(c: &impl GenericClient, counter: &str) -> Result<i64, Fail> {
    let statement = c.prepare_cached(NEXT).await?;
    Ok(c.query_one(&statement, &[&counter]).await?.try_get(0)?)
}

/// Sets the user's recovery codes (their hashes), replacing any.
async fn set_recovery_codes(
    c: &impl GenericClient,
    user_id: i64,
    hashes: &[String],
) -> Result<u64, Fail> {
    exec(
        c,
        "INSERT INTO gatehouse_recovery_codes (user_id, doc) VALUES ($1, $2)
         ON CONFLICT (user_id) DO UPDATE SET doc = excluded.doc",
        &[&user_id, &Json(hashes)],
    )
    .await
}

/// Everything under a user's MFA state, as sled's `reset_mfa` removes it (codes and the failure
/// count included).
async fn reset_mfa_in(c: &impl GenericClient, user_id: i64) -> Result<(), Fail> {
    for sql in [
        "DELETE FROM gatehouse_tickets WHERE user_id = $1",
        "DELETE FROM gatehouse_factors WHERE user_id = $1",
        "DELETE FROM gatehouse_codes WHERE user_id = $1",
        "DELETE FROM gatehouse_recovery_codes WHERE user_id = $1",
        "DELETE FROM gatehouse_lockouts WHERE user_id = $1",
        "DELETE FROM gatehouse_passkeys WHERE user_id = $1",
    ] {
        exec(c, sql, &[&user_id]).await?;
    }
    Ok(())
}

impl PgStore {
    /// Keeps what every authenticated request reads (its user, its session, its
    /// ApplicationToken's registration) for at most `lag`, and listens for the changes other
    /// replicas announce; `lag` zero keeps nothing.
    pub fn with_read_cache(mut self, lag: Duration) -> PgStore {
        if lag.is_zero() {
            return self;
        }
        let cache = Arc::new(ReadCache::new(lag, self.announce));
        let listener = tokio::spawn(cache::listen(
            self.config.clone(),
            self.tls,
            Arc::downgrade(&cache),
        ));
        self.listener = Some(listener.abort_handle());
        self.cache = Some(cache);
        self
    }

    /// Whether this store's cache hears the changes other replicas announce.
    #[cfg(test)]
    fn hears_changes(&self) -> bool {
        self.cache.as_ref().is_some_and(|c| c.listening())
    }

    /// How many of this store's announcements its listener heard back before they were answered.
    #[cfg(test)]
    fn changes_heard_back(&self) -> u64 {
        self.cache.as_ref().map_or(0, |c| c.heard_back())
    }

    /// Whether the database takes `pg_notify`: an empty announcement, which listeners ignore.
    async fn can_announce(&self) -> bool {
        let Ok(client) = self.pool.get().await else {
            return false;
        };
        client
            .simple_query(&format!("SELECT pg_notify('{}', '')", cache::CHANNEL))
            .await
            .is_ok()
    }

    /// After a committed change: drops what it made stale here, and announces it to the other
    /// replicas, returning once this replica's listener has heard the announcement back (see
    /// [`cache`]; briefly at most): by then the database has sent it to every listening replica,
    /// which drop what it names as they read it. An announcement that fails is only logged:
    /// their cached reads still expire after `auth.revocation_lag`.
    async fn changed(&self, changes: &[Change]) {
        self.announce(changes, true).await;
    }

    /// [`PgStore::changed`], waiting for the announcement to come back only when `wait`: a
    /// change that takes nothing away (a session seen again) need not hold its request.
    async fn announce(&self, changes: &[Change], wait: bool) {
        if changes.is_empty() {
            return;
        }
        if let Some(cache) = &self.cache {
            cache.drop_changed(changes);
        }
        if !self.announce {
            return;
        }
        let mut payload = Change::payload(changes);
        if payload.len() > cache::MAX_PAYLOAD {
            // NOTIFY takes less than 8000 bytes: many ended sessions are announced as "sessions".
            let sessions_only = changes
                .iter()
                .all(|c| matches!(c, Change::Session(_) | Change::Sessions));
            payload = Change::payload(&[match sessions_only {
                true => Change::Sessions,
                false => Change::Everything,
            }]);
        }
        let echo = match wait {
            true => self.cache.as_deref().and_then(ReadCache::echo),
            false => None,
        };
        if let Some(echo) = &echo {
            payload.push('\n');
            payload.push_str(&echo.line());
        }
        let sent = async {
            let client = self.client().await?;
            exec(
                &client,
                "SELECT pg_notify($1, $2)",
                &[&cache::CHANNEL, &payload],
            )
            .await
        };
        if let Err(fail) = sent.await {
            tracing::warn!(
                "could not announce a change to other replicas ({}); they see it within \
                 auth.revocation_lag",
                StoreError::from(fail)
            );
            return;
        }
        if let Some(echo) = echo
            && !echo.heard().await
        {
            tracing::debug!("an announced change was not heard back within auth.revocation_lag");
        }
    }

    /// `result` of a change that, had it been committed, would have made `changes` stale; a
    /// failure may still have committed (the answer to COMMIT lost), so after one everything
    /// is dropped and announced.
    async fn after<T>(&self, result: StoreResult<T>, changes: &[Change]) -> StoreResult<T> {
        match &result {
            Ok(_) => self.changed(changes).await,
            Err(StoreError::Backend(_)) => self.changed(&[Change::Everything]).await,
            Err(_) => {}
        }
        result
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, Fail> {
        Ok(self.pool.get().await?)
    }

    /// One document found by a single-row query.
    async fn find<T: DeserializeOwned>(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> StoreResult<Option<T>> {
        let client = self.client().await?;
        match row(&client, sql, params).await? {
            Some(r) => Ok(Some(doc(&r)?)),
            None => Ok(None),
        }
    }

    /// Every document a query returns, in its order.
    async fn find_all<T: DeserializeOwned>(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> StoreResult<Vec<T>> {
        let client = self.client().await?;
        let found = rows(&client, sql, params).await?;
        Ok(found.iter().map(doc).collect::<Result<_, _>>()?)
    }

    async fn execute(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> StoreResult<u64> {
        let client = self.client().await?;
        Ok(exec(&client, sql, params).await?)
    }
}
