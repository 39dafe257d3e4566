//! The shared store: PostgreSQL (or CockroachDB), for any number of gatehouse replicas on one
//! database. Records are the same serde_json documents sled keeps, in JSONB columns beside the key
//! columns that lookups, unique constraints and conditional updates need. Every guarantee of
//! [`Store`] is enforced by the database (unique constraints, conditional `UPDATE`/`DELETE`, and
//! `SELECT … FOR UPDATE` read-modify-writes), never by in-process locks; multi-statement
//! transactions are retried on serialization failures, which CockroachDB reports routinely.

use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{
    GenericClient, Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime, Timeouts,
};
use serde::de::DeserializeOwned;
use tokio_postgres::config::SslMode;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{Json, ToSql};
use tokio_postgres::{IsolationLevel, NoTls, Row};

use super::{
    Application, AuditEvent, CodeLogin, Domain, Factor, FactorKind, Membership, NewUser,
    OPT_IN_PREFIX, OobCode, Organization, SigningKey, Snapshot, Store, StoreError, StoreResult,
    Ticket, User, UserPatch, WsKey,
};
use crate::mfa::lockout::{LockoutState, Policy, Reservation};

/// Connecting, waiting for a pooled connection and recycling one each give up after this, so an
/// outage answers errors quickly instead of piling up requests.
const TIMEOUT: Duration = Duration::from_secs(5);

/// How often a transaction runs before a serialization failure is reported.
const ATTEMPTS: u32 = 10;

/// Versioned schema changes, applied in order, each exactly once per database.
const MIGRATIONS: &[(i64, &[&str])] = &[(
    1,
    &[
        "CREATE TABLE gatehouse_counters (name TEXT PRIMARY KEY, value INT8 NOT NULL)",
        "CREATE TABLE gatehouse_users (
            id INT8 PRIMARY KEY,
            name_key TEXT NOT NULL,
            external_key TEXT,
            doc JSONB NOT NULL,
            CONSTRAINT gatehouse_users_name_unique UNIQUE (name_key),
            CONSTRAINT gatehouse_users_external_unique UNIQUE (external_key)
        )",
        "CREATE TABLE gatehouse_applications (name TEXT PRIMARY KEY, doc JSONB NOT NULL)",
        // Like sled's token index: the latest application registered with a token hash owns it.
        "CREATE TABLE gatehouse_application_tokens (
            token_hash TEXT PRIMARY KEY,
            name TEXT NOT NULL
        )",
        "CREATE TABLE gatehouse_organizations (id INT8 PRIMARY KEY, doc JSONB NOT NULL)",
        "CREATE TABLE gatehouse_ws_keys (
            key_hash TEXT PRIMARY KEY,
            user_id INT8 NOT NULL,
            doc JSONB NOT NULL
        )",
        "CREATE INDEX gatehouse_ws_keys_user ON gatehouse_ws_keys (user_id)",
        // A kid may be added twice, as in sled; `seq` keeps insertion order.
        "CREATE TABLE gatehouse_signing_keys (
            seq INT8 PRIMARY KEY,
            kid TEXT NOT NULL,
            doc JSONB NOT NULL
        )",
        "CREATE TABLE gatehouse_audit (seq INT8 PRIMARY KEY, doc JSONB NOT NULL)",
        "CREATE TABLE gatehouse_tickets (
            id TEXT PRIMARY KEY,
            user_id INT8 NOT NULL,
            created_at INT8 NOT NULL,
            expires_at INT8 NOT NULL,
            used BOOL NOT NULL,
            doc JSONB NOT NULL
        )",
        "CREATE INDEX gatehouse_tickets_user ON gatehouse_tickets (user_id)",
        // `last_step` is authoritative for the replay guard; the doc's copy is kept in step.
        "CREATE TABLE gatehouse_factors (
            user_id INT8 NOT NULL,
            kind TEXT NOT NULL,
            last_step INT8,
            doc JSONB NOT NULL,
            PRIMARY KEY (user_id, kind)
        )",
        "CREATE TABLE gatehouse_codes (
            user_id INT8 NOT NULL,
            purpose TEXT NOT NULL,
            code_hash TEXT NOT NULL,
            expires_at INT8 NOT NULL,
            doc JSONB NOT NULL,
            PRIMARY KEY (user_id, purpose)
        )",
        "CREATE TABLE gatehouse_recovery_codes (user_id INT8 PRIMARY KEY, doc JSONB NOT NULL)",
        "CREATE TABLE gatehouse_lockouts (user_id INT8 PRIMARY KEY, doc JSONB NOT NULL)",
        "CREATE TABLE gatehouse_sends (send_key TEXT PRIMARY KEY, doc JSONB NOT NULL)",
        // `name` is fixed at creation: domains are saved with changed state, never renamed.
        "CREATE TABLE gatehouse_domains (
            organization_id INT8 NOT NULL,
            domain_id INT8 NOT NULL,
            name TEXT NOT NULL,
            doc JSONB NOT NULL,
            PRIMARY KEY (organization_id, domain_id),
            CONSTRAINT gatehouse_domains_name_unique UNIQUE (organization_id, name)
        )",
        "CREATE TABLE gatehouse_verified_domains (
            name TEXT PRIMARY KEY,
            organization_id INT8 NOT NULL
        )",
    ],
)];

const CREATE_MIGRATIONS: &str = "CREATE TABLE IF NOT EXISTS gatehouse_migrations (
    version INT8 PRIMARY KEY,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
)";

/// Takes the next value of a named counter; the row stays locked until the transaction ends, so
/// a rolled-back creation gives its number back.
const NEXT: &str = "INSERT INTO gatehouse_counters (name, value) VALUES ($1, 1)
    ON CONFLICT (name) DO UPDATE SET value = gatehouse_counters.value + 1 RETURNING value";

/// The PostgreSQL store: a connection pool; all state lives in the database.
pub struct PgStore {
    pool: Pool,
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
        time: without_nul(event.time),
        event: without_nul(event.event),
        user_name: event.user_name.map(without_nul),
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

/// Appends an audit event, numbered by the `audit` counter.
async fn insert_audit(c: &impl GenericClient, event: AuditEvent) -> Result<u64, Fail> {
    exec(
        c,
        "WITH next AS (
            INSERT INTO gatehouse_counters (name, value) VALUES ('audit', 1)
            ON CONFLICT (name) DO UPDATE SET value = gatehouse_counters.value + 1
            RETURNING value
        )
        INSERT INTO gatehouse_audit (seq, doc) SELECT value, $1 FROM next",
        &[&Json(&storable_event(event))],
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

/// Everything under a user's MFA state, as sled's `reset_mfa` removes it (codes and the failure
/// count included).
async fn reset_mfa_in(c: &impl GenericClient, user_id: i64) -> Result<(), Fail> {
    for sql in [
        "DELETE FROM gatehouse_tickets WHERE user_id = $1",
        "DELETE FROM gatehouse_factors WHERE user_id = $1",
        "DELETE FROM gatehouse_codes WHERE user_id = $1",
        "DELETE FROM gatehouse_recovery_codes WHERE user_id = $1",
        "DELETE FROM gatehouse_lockouts WHERE user_id = $1",
    ] {
        exec(c, sql, &[&user_id]).await?;
    }
    Ok(())
}

/// Roots for verifying the database's certificate. libpq's `sslmode=require` skips verification;
/// here it verifies against the system's roots.
fn tls() -> StoreResult<tokio_postgres_rustls::MakeRustlsConnect> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = rustls::RootCertStore::empty();
    let (added, _unparsable) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        tracing::warn!("no trusted root certificates found: TLS to the database will fail");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| StoreError::Backend(format!("TLS to the database: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

fn parse_url(url: &str) -> StoreResult<tokio_postgres::Config> {
    // The parser's message can quote part of a malformed URL, password included.
    tokio_postgres::Config::from_str(url)
        .map_err(|_| StoreError::Backend("the database URL is not a valid PostgreSQL URL".into()))
}

/// What [`PgStore::connect`] would refuse before connecting: a URL it cannot parse.
pub fn check_url(url: &str) -> StoreResult<()> {
    parse_url(url).map(drop)
}

impl PgStore {
    /// Opens a pool on the database at `url` and brings its schema up to date. Fails with
    /// [`StoreError::Backend`] when the database cannot be reached.
    pub async fn connect(url: &str, max_connections: usize) -> StoreResult<PgStore> {
        let mut config = parse_url(url)?;
        config.connect_timeout(TIMEOUT);
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        // TLS when the URL asks for it (`sslmode=require`), and then always verified. Without it
        // (libpq's default `prefer` included) the connection is plain: unverified TLS would
        // only look safer.
        let manager = if config.get_ssl_mode() == SslMode::Require {
            Manager::from_config(config, tls()?, manager_config)
        } else {
            Manager::from_config(config, NoTls, manager_config)
        };
        let pool = Pool::builder(manager)
            .max_size(max_connections.max(1))
            .runtime(Runtime::Tokio1)
            .timeouts(Timeouts {
                wait: Some(TIMEOUT),
                create: Some(TIMEOUT),
                recycle: Some(TIMEOUT),
            })
            .build()
            .map_err(|e| StoreError::Backend(format!("cannot set up the database pool: {e}")))?;
        let store = PgStore { pool };
        store.migrate().await?;
        Ok(store)
    }

    /// Applies the migrations this database lacks. Safe to run from several replicas at once: a
    /// migration's row in `gatehouse_migrations` is inserted in the same transaction as its
    /// changes, so a second replica's insert waits for the first and then finds it done.
    pub async fn migrate(&self) -> StoreResult<()> {
        let client = self.pool.get().await.map_err(Fail::from)?;
        let mut tries = 1;
        loop {
            match client.batch_execute(CREATE_MIGRATIONS).await {
                Ok(()) => break,
                // Concurrent `CREATE TABLE IF NOT EXISTS` can still collide on the table's row
                // type in the catalog; the next try finds the table.
                Err(e)
                    if tries < ATTEMPTS
                        && e.code().is_some_and(|c| {
                            *c == SqlState::UNIQUE_VIOLATION
                                || *c == SqlState::DUPLICATE_TABLE
                                || *c == SqlState::DUPLICATE_OBJECT
                                || *c == SqlState::T_R_SERIALIZATION_FAILURE
                        }) =>
                {
                    tokio::time::sleep(Duration::from_millis(20 * u64::from(tries))).await;
                    tries += 1;
                }
                Err(e) => return Err(describe(&e)),
            }
        }
        drop(client);
        for (version, statements) in MIGRATIONS {
            let applied = retry(|| self.apply_migration(*version, statements)).await?;
            if applied {
                tracing::info!(version, "applied a database migration");
            }
        }
        Ok(())
    }

    async fn apply_migration(&self, version: i64, statements: &[&str]) -> Result<bool, Fail> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let claimed = tx
            .query_opt(
                "INSERT INTO gatehouse_migrations (version) VALUES ($1)
                 ON CONFLICT DO NOTHING RETURNING version",
                &[&version],
            )
            .await?
            .is_some();
        if claimed {
            for sql in statements {
                tx.batch_execute(sql).await?;
            }
        }
        tx.commit().await?;
        Ok(claimed)
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

    async fn create_user_once(&self, template: &User) -> Result<User, Fail> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let id = next_value(&tx, "user").await?;
        let mut user = template.clone();
        user.id = u64::try_from(id)
            .map_err(|_| StoreError::Backend("the user counter went negative".into()))?;
        let external = user
            .external
            .as_ref()
            .map(|e| external_key(&e.issuer, &e.subject));
        exec(
            &tx,
            "INSERT INTO gatehouse_users (id, name_key, external_key, doc) VALUES ($1, $2, $3, $4)",
            &[&id, &name_key(&user.user_name), &external, &Json(&user)],
        )
        .await
        .map_err(|f| match f {
            Fail::Db(e) => unique(e, |constraint| {
                if constraint.contains("external") {
                    "external user".into()
                } else {
                    format!("user {}", user.user_name)
                }
            }),
            other => other,
        })?;
        tx.commit().await?;
        Ok(user)
    }

    /// Read-modify-write of one user, by name, with the row locked; a rename moves the unique
    /// name key in the same statement.
    async fn modify_user_once(
        &self,
        user_name: &str,
        now: &str,
        change: &(impl Fn(&mut User) + Sync),
    ) -> Result<User, Fail> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let found = row(
            &tx,
            "SELECT doc FROM gatehouse_users WHERE name_key = $1 FOR UPDATE",
            &[&name_key(user_name)],
        )
        .await?;
        let Some(found) = found else {
            return Err(StoreError::NotFound(format!("user {user_name}")).into());
        };
        let mut user: User = doc(&found)?;
        change(&mut user);
        user.modified = now.to_owned();
        exec(
            &tx,
            "UPDATE gatehouse_users SET name_key = $2, doc = $3 WHERE id = $1",
            &[&key(user.id), &name_key(&user.user_name), &Json(&user)],
        )
        .await
        .map_err(|f| match f {
            Fail::Db(e) => unique(e, |_| format!("user {}", user.user_name)),
            other => other,
        })?;
        tx.commit().await?;
        Ok(user)
    }

    async fn modify_user(
        &self,
        user_name: &str,
        now: &str,
        change: impl Fn(&mut User) + Sync,
    ) -> StoreResult<User> {
        if !storable(user_name) {
            return Err(StoreError::NotFound(format!("user {user_name}")));
        }
        Ok(retry(|| self.modify_user_once(user_name, now, &change)).await?)
    }

    async fn delete_user_once(&self, user_name: &str) -> Result<bool, Fail> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let deleted = row(
            &tx,
            "DELETE FROM gatehouse_users WHERE name_key = $1 RETURNING id",
            &[&name_key(user_name)],
        )
        .await?;
        let Some(deleted) = deleted else {
            return Ok(false);
        };
        let id: i64 = deleted.try_get(0)?;
        exec(
            &tx,
            "DELETE FROM gatehouse_ws_keys WHERE user_id = $1",
            &[&id],
        )
        .await?;
        reset_mfa_in(&tx, id).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn reset_mfa_once(&self, user_id: u64) -> Result<(), Fail> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        reset_mfa_in(&tx, key(user_id)).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn create_application_once(&self, app: &Application) -> Result<(), Fail> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        exec(
            &tx,
            "INSERT INTO gatehouse_applications (name, doc) VALUES ($1, $2)",
            &[&app.name, &Json(app)],
        )
        .await
        .map_err(|f| match f {
            Fail::Db(e) => unique(e, |_| format!("application {}", app.name)),
            other => other,
        })?;
        exec(
            &tx,
            "INSERT INTO gatehouse_application_tokens (token_hash, name) VALUES ($1, $2)
             ON CONFLICT (token_hash) DO UPDATE SET name = excluded.name",
            &[&app.token_hash, &app.name],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Marks the ticket used only if it is still pending: the conditional `UPDATE` is what makes a
    /// ticket confirm once, since a concurrent confirmation finds `used` already set.
    async fn confirm_ticket_once(
        &self,
        ticket_id: &str,
        factor: &Factor,
        recovery_hashes: Option<&Vec<String>>,
        now: i64,
    ) -> Result<bool, Fail> {
        let user_id = key(factor.user_id);
        let last_step = factor.last_step.map(step_column).transpose()?;
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // Confirmations of one user's tickets take turns on the user's row, so the factors the
        // next one reads include those the previous one stored.
        exec(
            &tx,
            "SELECT 1 FROM gatehouse_users WHERE id = $1 FOR UPDATE",
            &[&user_id],
        )
        .await?;
        let marked = exec(
            &tx,
            "UPDATE gatehouse_tickets
             SET used = true, doc = jsonb_set(doc, ARRAY['used'], 'true'::JSONB)
             WHERE id = $1 AND user_id = $2 AND NOT used AND expires_at > $3
               AND (COALESCE((doc->>'second_factor')::BOOL, false)
                    OR NOT EXISTS (SELECT 1 FROM gatehouse_factors WHERE user_id = $2))",
            &[&ticket_id, &user_id, &now],
        )
        .await?;
        if marked == 0 {
            return Ok(false);
        }
        // The user's other pending tickets were made against the factors before this one.
        exec(
            &tx,
            "UPDATE gatehouse_tickets
             SET used = true, doc = jsonb_set(doc, ARRAY['used'], 'true'::JSONB)
             WHERE user_id = $1 AND NOT used",
            &[&user_id],
        )
        .await?;
        exec(
            &tx,
            "INSERT INTO gatehouse_factors (user_id, kind, last_step, doc) VALUES ($1, $2, $3, $4)
             ON CONFLICT (user_id, kind)
             DO UPDATE SET last_step = excluded.last_step, doc = excluded.doc",
            &[&user_id, &factor.kind.as_str(), &last_step, &Json(factor)],
        )
        .await?;
        if let Some(hashes) = recovery_hashes {
            exec(
                &tx,
                "INSERT INTO gatehouse_recovery_codes (user_id, doc) VALUES ($1, $2)
                 ON CONFLICT (user_id) DO UPDATE SET doc = excluded.doc",
                &[&user_id, &Json(hashes)],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn login_with_code_once(
        &self,
        user_id: u64,
        purpose: &str,
        code_hash: &str,
        now: i64,
        login_time: &str,
        event: &AuditEvent,
    ) -> Result<CodeLogin, Fail> {
        let id = key(user_id);
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // Locked, so two logins with one code cannot both find it.
        let code = row(
            &tx,
            "SELECT code_hash, expires_at FROM gatehouse_codes
             WHERE user_id = $1 AND purpose = $2 FOR UPDATE",
            &[&id, &purpose],
        )
        .await?;
        let Some(code) = code else {
            return Ok(CodeLogin::Wrong);
        };
        let stored: String = code.try_get("code_hash")?;
        let expires_at: i64 = code.try_get("expires_at")?;
        if !crate::secrets::same(&stored, code_hash) {
            return Ok(CodeLogin::Wrong);
        }
        if expires_at <= now {
            return Ok(CodeLogin::Expired);
        }
        let found = row(
            &tx,
            "SELECT doc FROM gatehouse_users WHERE id = $1 FOR UPDATE",
            &[&id],
        )
        .await?;
        let Some(found) = found else {
            return Err(StoreError::NotFound(format!("user {user_id}")).into());
        };
        let mut user: User = doc(&found)?;
        user.last_login_timestamp = Some(login_time.to_owned());
        user.modified = login_time.to_owned();
        exec(
            &tx,
            "UPDATE gatehouse_users SET doc = $2 WHERE id = $1",
            &[&id, &Json(&user)],
        )
        .await?;
        exec(
            &tx,
            "DELETE FROM gatehouse_codes WHERE user_id = $1 AND purpose = $2",
            &[&id, &purpose],
        )
        .await?;
        exec(
            &tx,
            "DELETE FROM gatehouse_lockouts WHERE user_id = $1",
            &[&id],
        )
        .await?;
        insert_audit(&tx, event.clone()).await?;
        tx.commit().await?;
        Ok(CodeLogin::Accepted(Box::new(user)))
    }

    async fn consume_recovery_code_once(&self, user_id: u64, hash: &str) -> Result<bool, Fail> {
        let id = key(user_id);
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let found = row(
            &tx,
            "SELECT doc FROM gatehouse_recovery_codes WHERE user_id = $1 FOR UPDATE",
            &[&id],
        )
        .await?;
        let Some(found) = found else {
            return Ok(false);
        };
        let mut codes: Vec<String> = doc(&found)?;
        let Some(i) = codes.iter().position(|c| crate::secrets::same(c, hash)) else {
            return Ok(false);
        };
        codes.remove(i);
        exec(
            &tx,
            "UPDATE gatehouse_recovery_codes SET doc = $2 WHERE user_id = $1",
            &[&id, &Json(&codes)],
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Read-modify-write of one JSON document with its row locked, so concurrent changes queue
    /// up and each sees the one before. The no-op `DO UPDATE` both creates a missing row (with the
    /// default document) and takes the lock of an existing one, returning its current state.
    /// `table` and `column` are this module's constants, never input.
    async fn locked_change<T, R>(
        &self,
        table: &str,
        column: &str,
        key: &(dyn ToSql + Sync),
        change: impl FnOnce(&mut T) -> R,
    ) -> Result<R, Fail>
    where
        T: serde::Serialize + DeserializeOwned + Default + Sync + std::fmt::Debug,
    {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let locked = row(
            &tx,
            &format!(
                "INSERT INTO {table} ({column}, doc) VALUES ($1, $2)
                 ON CONFLICT ({column}) DO UPDATE SET doc = {table}.doc RETURNING doc"
            ),
            &[key, &Json(T::default())],
        )
        .await?;
        let mut value: T = match locked {
            Some(r) => doc(&r)?,
            None => T::default(),
        };
        let result = change(&mut value);
        exec(
            &tx,
            &format!("UPDATE {table} SET doc = $2 WHERE {column} = $1"),
            &[key, &Json(&value)],
        )
        .await?;
        tx.commit().await?;
        Ok(result)
    }

    /// Reserves an attempt with the user's lockout row locked: concurrent reservations, from any
    /// replica, queue on the row and each sees the failures counted before it.
    async fn reserve_attempt_once(
        &self,
        user_id: u64,
        now: i64,
        policy: Policy,
    ) -> Result<Reservation, Fail> {
        self.locked_change(
            "gatehouse_lockouts",
            "user_id",
            &key(user_id),
            |state: &mut LockoutState| state.reserve(now, policy),
        )
        .await
    }

    /// Counts a send with its row locked: `false` (and nothing counted) at the limit.
    async fn count_send_once(
        &self,
        send_key: &str,
        now: i64,
        window: i64,
        limit: u32,
    ) -> Result<bool, Fail> {
        self.locked_change(
            "gatehouse_sends",
            "send_key",
            &send_key,
            |sent: &mut Vec<i64>| {
                sent.retain(|t| now - t < window);
                let allowed = sent.len() < limit as usize;
                if allowed {
                    sent.push(now);
                }
                allowed
            },
        )
        .await
    }

    async fn create_domain_once(&self, template: &Domain) -> Result<Domain, Fail> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let mut domain = template.clone();
        // Domain ids are int32 on the wire (seed 002): 1..=i32::MAX, as sled allocates them.
        let n = next_value(&tx, "domain").await?;
        domain.domain_id = (n - 1).rem_euclid(i64::from(i32::MAX)) + 1;
        let owner = row(
            &tx,
            "SELECT organization_id FROM gatehouse_verified_domains WHERE name = $1",
            &[&domain.domain],
        )
        .await?;
        if let Some(owner) = owner
            && owner.try_get::<_, i64>(0)? != domain.organization_id
        {
            return Err(StoreError::Conflict(format!(
                "domain {} (verified by another organization)",
                domain.domain
            ))
            .into());
        }
        exec(
            &tx,
            "INSERT INTO gatehouse_domains (organization_id, domain_id, name, doc)
             VALUES ($1, $2, $3, $4)",
            &[
                &domain.organization_id,
                &domain.domain_id,
                &domain.domain,
                &Json(&domain),
            ],
        )
        .await
        .map_err(|f| match f {
            Fail::Db(e) => unique(e, |_| format!("domain {}", domain.domain)),
            other => other,
        })?;
        tx.commit().await?;
        Ok(domain)
    }

    /// Saving a verified domain claims its name in the same transaction. The no-op `DO UPDATE`
    /// returns the claim that stands, ours or one committed first by another organisation.
    async fn save_domain_once(&self, domain: &Domain) -> Result<(), Fail> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let updated = exec(
            &tx,
            "UPDATE gatehouse_domains SET doc = $3 WHERE organization_id = $1 AND domain_id = $2",
            &[&domain.organization_id, &domain.domain_id, &Json(domain)],
        )
        .await?;
        if updated == 0 {
            return Err(StoreError::NotFound(format!("domain {}", domain.domain_id)).into());
        }
        if domain.is_verified {
            let claim = row(
                &tx,
                "INSERT INTO gatehouse_verified_domains (name, organization_id) VALUES ($1, $2)
                 ON CONFLICT (name) DO UPDATE
                 SET organization_id = gatehouse_verified_domains.organization_id
                 RETURNING organization_id",
                &[&domain.domain, &domain.organization_id],
            )
            .await?;
            let owner = match claim {
                Some(r) => r.try_get::<_, i64>(0)?,
                None => domain.organization_id,
            };
            if owner != domain.organization_id {
                return Err(StoreError::Conflict(format!(
                    "domain {} (verified by another organization)",
                    domain.domain
                ))
                .into());
            }
        }
        tx.commit().await?;
        Ok(())
    }

    async fn delete_domain_once(&self, organization_id: i64, domain_id: i64) -> Result<bool, Fail> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let deleted = row(
            &tx,
            "DELETE FROM gatehouse_domains WHERE organization_id = $1 AND domain_id = $2
             RETURNING name",
            &[&organization_id, &domain_id],
        )
        .await?;
        let Some(deleted) = deleted else {
            return Ok(false);
        };
        let name: String = deleted.try_get(0)?;
        exec(
            &tx,
            "DELETE FROM gatehouse_verified_domains WHERE name = $1 AND organization_id = $2",
            &[&name, &organization_id],
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Adds `signing_key` only to an empty key table. Locking the signing-key counter row, which
    /// every insertion of a key takes, makes the check and the insert one step for all replicas.
    async fn init_signing_key_once(
        &self,
        signing_key: &SigningKey,
    ) -> Result<Vec<SigningKey>, Fail> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let seq = next_value(&tx, "signing_key").await?;
        let existing = row(&tx, "SELECT seq FROM gatehouse_signing_keys LIMIT 1", &[]).await?;
        if existing.is_none() {
            exec(
                &tx,
                "INSERT INTO gatehouse_signing_keys (seq, kid, doc) VALUES ($1, $2, $3)",
                &[&seq, &signing_key.kid, &Json(signing_key)],
            )
            .await?;
        }
        let stored = rows(
            &tx,
            "SELECT doc FROM gatehouse_signing_keys ORDER BY seq",
            &[],
        )
        .await?;
        let stored = stored.iter().map(doc).collect::<Result<_, _>>()?;
        tx.commit().await?;
        Ok(stored)
    }

    /// Reads everything in one read-only snapshot, in the order sled's export has (its key
    /// order), so that exports of the two backends compare equal.
    async fn export_once(&self) -> Result<Snapshot, Fail> {
        async fn all<T: DeserializeOwned>(
            c: &impl GenericClient,
            sql: &str,
        ) -> Result<Vec<T>, Fail> {
            rows(c, sql, &[]).await?.iter().map(doc).collect()
        }
        async fn per_user<T: DeserializeOwned>(
            c: &impl GenericClient,
            sql: &str,
        ) -> Result<Vec<(u64, T)>, Fail> {
            let mut found = rows(c, sql, &[])
                .await?
                .iter()
                .map(|r| Ok((unkey(r.try_get("user_id")?), doc(r)?)))
                .collect::<Result<Vec<_>, Fail>>()?;
            found.sort_by_key(|(user_id, _)| *user_id);
            Ok(found)
        }

        let mut client = self.client().await?;
        let tx = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        let mut users: Vec<User> = all(&tx, "SELECT doc FROM gatehouse_users").await?;
        users.sort_by_key(|u| u.id);
        let mut applications: Vec<Application> =
            all(&tx, "SELECT doc FROM gatehouse_applications").await?;
        applications.sort_by(|a, b| a.name.cmp(&b.name));
        let mut organizations: Vec<Organization> =
            all(&tx, "SELECT doc FROM gatehouse_organizations").await?;
        organizations.sort_by_key(|o| unkey(o.id));
        let mut ws_keys: Vec<WsKey> = all(&tx, "SELECT doc FROM gatehouse_ws_keys").await?;
        ws_keys.sort_by(|a, b| a.key_hash.cmp(&b.key_hash));
        let signing_keys = all(&tx, "SELECT doc FROM gatehouse_signing_keys ORDER BY seq").await?;
        let mut tickets: Vec<Ticket> = all(&tx, "SELECT doc FROM gatehouse_tickets").await?;
        tickets.sort_by(|a, b| a.id.cmp(&b.id));
        let mut factors = rows(&tx, "SELECT last_step, doc FROM gatehouse_factors", &[])
            .await?
            .iter()
            .map(factor_from)
            .collect::<Result<Vec<_>, _>>()?;
        factors.sort_by_key(|f| (f.user_id, f.kind.tag()));
        let mut codes: Vec<OobCode> = all(&tx, "SELECT doc FROM gatehouse_codes").await?;
        codes.sort_by(|a, b| (a.user_id, &a.purpose).cmp(&(b.user_id, &b.purpose)));
        let recovery_codes =
            per_user(&tx, "SELECT user_id, doc FROM gatehouse_recovery_codes").await?;
        let lockouts = per_user(&tx, "SELECT user_id, doc FROM gatehouse_lockouts").await?;
        let mut domains: Vec<Domain> = all(&tx, "SELECT doc FROM gatehouse_domains").await?;
        domains.sort_by_key(|d| (unkey(d.organization_id), unkey(d.domain_id)));
        let audit = all(&tx, "SELECT doc FROM gatehouse_audit ORDER BY seq").await?;
        tx.commit().await?;
        Ok(Snapshot {
            users,
            applications,
            organizations,
            ws_keys,
            signing_keys,
            tickets,
            factors,
            codes,
            recovery_codes,
            lockouts,
            domains,
            audit,
        })
    }

    /// Writes the whole snapshot in one transaction, so a refused or failed import leaves nothing
    /// behind. Counters move past the imported ids, so new users and domains get fresh ones.
    async fn import_once(&self, snapshot: &Snapshot) -> Result<(), Fail> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // Two concurrent imports both pass this check; the users' primary key then refuses one.
        if row(&tx, "SELECT id FROM gatehouse_users LIMIT 1", &[])
            .await?
            .is_some()
        {
            return Err(StoreError::Conflict("a user (the store is not empty)".into()).into());
        }
        let conflict = |f: Fail| match f {
            Fail::Db(e) => unique(e, |constraint| {
                format!("a record ({constraint}; the store is not empty)")
            }),
            other => other,
        };
        let raise = "INSERT INTO gatehouse_counters (name, value) VALUES ($1, $2)
            ON CONFLICT (name)
            DO UPDATE SET value = GREATEST(gatehouse_counters.value, excluded.value)";
        for user in &snapshot.users {
            let external = user
                .external
                .as_ref()
                .map(|e| external_key(&e.issuer, &e.subject));
            exec(
                &tx,
                "INSERT INTO gatehouse_users (id, name_key, external_key, doc)
                 VALUES ($1, $2, $3, $4)",
                &[
                    &key(user.id),
                    &name_key(&user.user_name),
                    &external,
                    &Json(user),
                ],
            )
            .await
            .map_err(conflict)?;
        }
        if let Some(last) = snapshot.users.iter().map(|u| key(u.id)).max() {
            exec(&tx, raise, &[&"user", &last]).await?;
        }
        for app in &snapshot.applications {
            exec(
                &tx,
                "INSERT INTO gatehouse_applications (name, doc) VALUES ($1, $2)",
                &[&app.name, &Json(app)],
            )
            .await
            .map_err(conflict)?;
            exec(
                &tx,
                "INSERT INTO gatehouse_application_tokens (token_hash, name) VALUES ($1, $2)
                 ON CONFLICT (token_hash) DO UPDATE SET name = excluded.name",
                &[&app.token_hash, &app.name],
            )
            .await?;
        }
        for org in &snapshot.organizations {
            exec(
                &tx,
                "INSERT INTO gatehouse_organizations (id, doc) VALUES ($1, $2)",
                &[&org.id, &Json(org)],
            )
            .await
            .map_err(conflict)?;
        }
        for ws_key in &snapshot.ws_keys {
            exec(
                &tx,
                "INSERT INTO gatehouse_ws_keys (key_hash, user_id, doc) VALUES ($1, $2, $3)",
                &[&ws_key.key_hash, &key(ws_key.user_id), &Json(ws_key)],
            )
            .await
            .map_err(conflict)?;
        }
        for signing_key in &snapshot.signing_keys {
            let seq = next_value(&tx, "signing_key").await?;
            exec(
                &tx,
                "INSERT INTO gatehouse_signing_keys (seq, kid, doc) VALUES ($1, $2, $3)",
                &[&seq, &signing_key.kid, &Json(signing_key)],
            )
            .await?;
        }
        for ticket in &snapshot.tickets {
            exec(
                &tx,
                "INSERT INTO gatehouse_tickets (id, user_id, created_at, expires_at, used, doc)
                 VALUES ($1, $2, $3, $4, $5, $6)",
                &[
                    &ticket.id,
                    &key(ticket.user_id),
                    &ticket.created_at,
                    &ticket.expires_at,
                    &ticket.used,
                    &Json(ticket),
                ],
            )
            .await
            .map_err(conflict)?;
        }
        for factor in &snapshot.factors {
            let last_step = factor.last_step.map(step_column).transpose()?;
            exec(
                &tx,
                "INSERT INTO gatehouse_factors (user_id, kind, last_step, doc)
                 VALUES ($1, $2, $3, $4)",
                &[
                    &key(factor.user_id),
                    &factor.kind.as_str(),
                    &last_step,
                    &Json(factor),
                ],
            )
            .await
            .map_err(conflict)?;
        }
        for code in &snapshot.codes {
            exec(
                &tx,
                "INSERT INTO gatehouse_codes (user_id, purpose, code_hash, expires_at, doc)
                 VALUES ($1, $2, $3, $4, $5)",
                &[
                    &key(code.user_id),
                    &code.purpose,
                    &code.code_hash,
                    &code.expires_at,
                    &Json(code),
                ],
            )
            .await
            .map_err(conflict)?;
        }
        for (user_id, hashes) in &snapshot.recovery_codes {
            exec(
                &tx,
                "INSERT INTO gatehouse_recovery_codes (user_id, doc) VALUES ($1, $2)",
                &[&key(*user_id), &Json(hashes)],
            )
            .await
            .map_err(conflict)?;
        }
        for (user_id, state) in &snapshot.lockouts {
            exec(
                &tx,
                "INSERT INTO gatehouse_lockouts (user_id, doc) VALUES ($1, $2)",
                &[&key(*user_id), &Json(state)],
            )
            .await
            .map_err(conflict)?;
        }
        for domain in &snapshot.domains {
            exec(
                &tx,
                "INSERT INTO gatehouse_domains (organization_id, domain_id, name, doc)
                 VALUES ($1, $2, $3, $4)",
                &[
                    &domain.organization_id,
                    &domain.domain_id,
                    &domain.domain,
                    &Json(domain),
                ],
            )
            .await
            .map_err(conflict)?;
            // The snapshot has no claims of its own: a verified domain is its organisation's claim.
            if domain.is_verified {
                exec(
                    &tx,
                    "INSERT INTO gatehouse_verified_domains (name, organization_id) VALUES ($1, $2)
                     ON CONFLICT (name) DO NOTHING",
                    &[&domain.domain, &domain.organization_id],
                )
                .await?;
            }
        }
        if let Some(last) = snapshot.domains.iter().map(|d| d.domain_id).max() {
            exec(&tx, raise, &[&"domain", &last]).await?;
        }
        for event in &snapshot.audit {
            exec(
                &tx,
                "WITH next AS (
                    INSERT INTO gatehouse_counters (name, value) VALUES ('audit', 1)
                    ON CONFLICT (name) DO UPDATE SET value = gatehouse_counters.value + 1
                    RETURNING value
                )
                INSERT INTO gatehouse_audit (seq, doc) SELECT value, $1 FROM next",
                &[&Json(storable_event(event.clone()))],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

#[async_trait]
impl Store for PgStore {
    async fn check(&self) -> StoreResult<()> {
        let client = self.client().await?;
        client
            .simple_query("SELECT 1")
            .await
            .map_err(|e| describe(&e))?;
        Ok(())
    }

    async fn create_user(&self, new: NewUser, now: &str) -> StoreResult<User> {
        let template = User::new(0, new, now);
        Ok(retry(|| self.create_user_once(&template)).await?)
    }

    async fn user_by_name(&self, user_name: &str) -> StoreResult<Option<User>> {
        if !storable(user_name) {
            return Ok(None);
        }
        self.find(
            "SELECT doc FROM gatehouse_users WHERE name_key = $1",
            &[&name_key(user_name)],
        )
        .await
    }

    async fn user_by_id(&self, id: u64) -> StoreResult<Option<User>> {
        self.find("SELECT doc FROM gatehouse_users WHERE id = $1", &[&key(id)])
            .await
    }

    async fn user_by_external(&self, issuer: &str, subject: &str) -> StoreResult<Option<User>> {
        if !storable(issuer) || !storable(subject) {
            return Ok(None);
        }
        self.find(
            "SELECT doc FROM gatehouse_users WHERE external_key = $1",
            &[&external_key(issuer, subject)],
        )
        .await
    }

    async fn update_user(&self, user_name: &str, patch: UserPatch, now: &str) -> StoreResult<User> {
        self.modify_user(user_name, now, |user| patch.clone().apply(user))
            .await
    }

    async fn delete_user(&self, user_name: &str) -> StoreResult<bool> {
        if !storable(user_name) {
            return Ok(false);
        }
        Ok(retry(|| self.delete_user_once(user_name)).await?)
    }

    async fn reset_mfa(&self, user_id: u64) -> StoreResult<()> {
        Ok(retry(|| self.reset_mfa_once(user_id)).await?)
    }

    async fn create_application(&self, app: Application) -> StoreResult<()> {
        Ok(retry(|| self.create_application_once(&app)).await?)
    }

    async fn application_by_token_hash(
        &self,
        token_hash: &str,
    ) -> StoreResult<Option<Application>> {
        if !storable(token_hash) {
            return Ok(None);
        }
        self.find(
            "SELECT a.doc FROM gatehouse_application_tokens t
             JOIN gatehouse_applications a ON a.name = t.name
             WHERE t.token_hash = $1",
            &[&token_hash],
        )
        .await
    }

    async fn create_organization(&self, org: Organization) -> StoreResult<()> {
        let client = self.client().await?;
        exec(
            &client,
            "INSERT INTO gatehouse_organizations (id, doc) VALUES ($1, $2)",
            &[&org.id, &Json(&org)],
        )
        .await
        .map_err(|f| match f {
            Fail::Db(e) => unique(e, |_| format!("organization {}", org.id)),
            other => other,
        })?;
        Ok(())
    }

    async fn organization(&self, id: i64) -> StoreResult<Option<Organization>> {
        self.find(
            "SELECT doc FROM gatehouse_organizations WHERE id = $1",
            &[&id],
        )
        .await
    }

    async fn set_membership(
        &self,
        user_name: &str,
        membership: Membership,
        now: &str,
    ) -> StoreResult<User> {
        if self
            .organization(membership.organization_id)
            .await?
            .is_none()
        {
            return Err(StoreError::NotFound(format!(
                "organization {}",
                membership.organization_id
            )));
        }
        self.modify_user(user_name, now, |user| {
            user.memberships
                .retain(|m| m.organization_id != membership.organization_id);
            user.memberships.push(membership);
        })
        .await
    }

    async fn grant_file(&self, user_name: &str, file_id: i64, now: &str) -> StoreResult<User> {
        self.modify_user(user_name, now, |user| {
            if !user.files.contains(&file_id) {
                user.files.push(file_id);
            }
        })
        .await
    }

    async fn create_ws_key(&self, ws_key: WsKey) -> StoreResult<()> {
        let client = self.client().await?;
        exec(
            &client,
            "INSERT INTO gatehouse_ws_keys (key_hash, user_id, doc) VALUES ($1, $2, $3)",
            &[&ws_key.key_hash, &key(ws_key.user_id), &Json(&ws_key)],
        )
        .await
        .map_err(|f| match f {
            Fail::Db(e) => unique(e, |_| "ws key".into()),
            other => other,
        })?;
        Ok(())
    }

    async fn ws_key(&self, key_hash: &str) -> StoreResult<Option<WsKey>> {
        if !storable(key_hash) {
            return Ok(None);
        }
        self.find(
            "SELECT doc FROM gatehouse_ws_keys WHERE key_hash = $1",
            &[&key_hash],
        )
        .await
    }

    async fn signing_keys(&self) -> StoreResult<Vec<SigningKey>> {
        self.find_all("SELECT doc FROM gatehouse_signing_keys ORDER BY seq", &[])
            .await
    }

    async fn add_signing_key(&self, signing_key: SigningKey) -> StoreResult<()> {
        self.execute(
            "WITH next AS (
                INSERT INTO gatehouse_counters (name, value) VALUES ('signing_key', 1)
                ON CONFLICT (name) DO UPDATE SET value = gatehouse_counters.value + 1
                RETURNING value
            )
            INSERT INTO gatehouse_signing_keys (seq, kid, doc) SELECT value, $1, $2 FROM next",
            &[&signing_key.kid, &Json(&signing_key)],
        )
        .await?;
        Ok(())
    }

    async fn init_signing_key(&self, signing_key: SigningKey) -> StoreResult<Vec<SigningKey>> {
        // Most starts find a key: answer them without taking the lock.
        let stored = self.signing_keys().await?;
        if !stored.is_empty() {
            return Ok(stored);
        }
        Ok(retry(|| self.init_signing_key_once(&signing_key)).await?)
    }

    async fn create_ticket(&self, ticket: Ticket) -> StoreResult<()> {
        self.execute(
            "INSERT INTO gatehouse_tickets (id, user_id, created_at, expires_at, used, doc)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (id) DO UPDATE SET user_id = excluded.user_id,
                created_at = excluded.created_at, expires_at = excluded.expires_at,
                used = excluded.used, doc = excluded.doc",
            &[
                &ticket.id,
                &key(ticket.user_id),
                &ticket.created_at,
                &ticket.expires_at,
                &ticket.used,
                &Json(&ticket),
            ],
        )
        .await?;
        Ok(())
    }

    async fn ticket(&self, id: &str) -> StoreResult<Option<Ticket>> {
        if !storable(id) {
            return Ok(None);
        }
        self.find("SELECT doc FROM gatehouse_tickets WHERE id = $1", &[&id])
            .await
    }

    async fn newest_pending_ticket(&self, user_id: u64, now: i64) -> StoreResult<Option<Ticket>> {
        let pending: Vec<Ticket> = self
            .find_all(
                "SELECT doc FROM gatehouse_tickets
                 WHERE user_id = $1 AND NOT used AND expires_at > $2
                   AND left(id, length($3)) <> $3",
                &[&key(user_id), &now, &OPT_IN_PREFIX],
            )
            .await?;
        // Ties go to the greatest id in byte order, which is the one sled's scan meets last.
        Ok(pending
            .into_iter()
            .max_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id))))
    }

    async fn confirm_ticket(
        &self,
        ticket_id: &str,
        factor: Factor,
        recovery_hashes: Option<Vec<String>>,
        now: i64,
    ) -> StoreResult<bool> {
        if !storable(ticket_id) {
            return Ok(false);
        }
        Ok(
            retry(|| self.confirm_ticket_once(ticket_id, &factor, recovery_hashes.as_ref(), now))
                .await?,
        )
    }

    async fn factors(&self, user_id: u64) -> StoreResult<Vec<Factor>> {
        let client = self.client().await?;
        let found = rows(
            &client,
            "SELECT last_step, doc FROM gatehouse_factors WHERE user_id = $1 ORDER BY kind",
            &[&key(user_id)],
        )
        .await?;
        let factors = found.iter().map(factor_from).collect::<Result<_, _>>()?;
        Ok(factors)
    }

    async fn accept_totp_step(&self, user_id: u64, step: u64) -> StoreResult<bool> {
        let step = step_column(step)?;
        // Conditional on the stored step: of concurrent acceptances of one step, the first to
        // update makes the condition false for the others.
        let updated = self
            .execute(
                "UPDATE gatehouse_factors
                 SET last_step = $3, doc = jsonb_set(doc, ARRAY['last_step'], to_jsonb($3::INT8))
                 WHERE user_id = $1 AND kind = $2 AND (last_step IS NULL OR last_step < $3)",
                &[&key(user_id), &FactorKind::Otp.as_str(), &step],
            )
            .await?;
        Ok(updated == 1)
    }

    async fn put_code(&self, code: OobCode) -> StoreResult<()> {
        self.execute(
            "INSERT INTO gatehouse_codes (user_id, purpose, code_hash, expires_at, doc)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (user_id, purpose) DO UPDATE SET code_hash = excluded.code_hash,
                expires_at = excluded.expires_at, doc = excluded.doc",
            &[
                &key(code.user_id),
                &code.purpose,
                &code.code_hash,
                &code.expires_at,
                &Json(&code),
            ],
        )
        .await?;
        Ok(())
    }

    async fn consume_code(
        &self,
        user_id: u64,
        purpose: &str,
        code_hash: &str,
        now: i64,
    ) -> StoreResult<bool> {
        if !storable(purpose) || !storable(code_hash) {
            return Ok(false);
        }
        // One statement: of concurrent consumers, only the one whose DELETE removed the row wins.
        let deleted = self
            .execute(
                "DELETE FROM gatehouse_codes
                 WHERE user_id = $1 AND purpose = $2 AND code_hash = $3 AND expires_at > $4",
                &[&key(user_id), &purpose, &code_hash, &now],
            )
            .await?;
        Ok(deleted == 1)
    }

    async fn login_with_code(
        &self,
        user_id: u64,
        purpose: &str,
        code_hash: &str,
        now: i64,
        login_time: &str,
        event: &AuditEvent,
    ) -> StoreResult<CodeLogin> {
        if !storable(purpose) {
            return Ok(CodeLogin::Wrong);
        }
        Ok(
            retry(|| {
                self.login_with_code_once(user_id, purpose, code_hash, now, login_time, event)
            })
            .await?,
        )
    }

    async fn replace_recovery_codes(&self, user_id: u64, hashes: Vec<String>) -> StoreResult<()> {
        self.execute(
            "INSERT INTO gatehouse_recovery_codes (user_id, doc) VALUES ($1, $2)
             ON CONFLICT (user_id) DO UPDATE SET doc = excluded.doc",
            &[&key(user_id), &Json(&hashes)],
        )
        .await?;
        Ok(())
    }

    async fn consume_recovery_code(&self, user_id: u64, hash: &str) -> StoreResult<bool> {
        Ok(retry(|| self.consume_recovery_code_once(user_id, hash)).await?)
    }

    async fn lockout(&self, user_id: u64) -> StoreResult<LockoutState> {
        Ok(self
            .find(
                "SELECT doc FROM gatehouse_lockouts WHERE user_id = $1",
                &[&key(user_id)],
            )
            .await?
            .unwrap_or_default())
    }

    async fn reserve_attempt(
        &self,
        user_id: u64,
        now: i64,
        policy: Policy,
    ) -> StoreResult<Reservation> {
        Ok(retry(|| self.reserve_attempt_once(user_id, now, policy)).await?)
    }

    async fn clear_failures(&self, user_id: u64) -> StoreResult<()> {
        self.execute(
            "DELETE FROM gatehouse_lockouts WHERE user_id = $1",
            &[&key(user_id)],
        )
        .await?;
        Ok(())
    }

    async fn count_send(&self, key: &str, now: i64, window: i64, limit: u32) -> StoreResult<bool> {
        if !storable(key) {
            return Err(StoreError::Backend("a send key holds NUL".into()));
        }
        Ok(retry(|| self.count_send_once(key, now, window, limit)).await?)
    }

    async fn create_domain(&self, domain: Domain) -> StoreResult<Domain> {
        Ok(retry(|| self.create_domain_once(&domain)).await?)
    }

    async fn domains(&self, organization_id: i64) -> StoreResult<Vec<Domain>> {
        self.find_all(
            "SELECT doc FROM gatehouse_domains WHERE organization_id = $1 ORDER BY domain_id",
            &[&organization_id],
        )
        .await
    }

    async fn domain(&self, organization_id: i64, domain_id: i64) -> StoreResult<Option<Domain>> {
        self.find(
            "SELECT doc FROM gatehouse_domains WHERE organization_id = $1 AND domain_id = $2",
            &[&organization_id, &domain_id],
        )
        .await
    }

    async fn save_domain(&self, domain: Domain) -> StoreResult<()> {
        Ok(retry(|| self.save_domain_once(&domain)).await?)
    }

    async fn delete_domain(&self, organization_id: i64, domain_id: i64) -> StoreResult<bool> {
        Ok(retry(|| self.delete_domain_once(organization_id, domain_id)).await?)
    }

    async fn list_users(&self, after: Option<&str>, limit: usize) -> StoreResult<Vec<User>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        // `COLLATE "C"` orders by bytes, as sled orders its name index, whatever the
        // database's own collation (CockroachDB, which orders strings by bytes anyway, accepts
        // it in expressions since 22.2).
        match after {
            // A name holding NUL cannot be stored; every stored name sorts after its prefix.
            Some(name) => {
                let after = name_key(name.split('\0').next().unwrap_or_default());
                self.find_all(
                    "SELECT doc FROM gatehouse_users WHERE name_key COLLATE \"C\" > $1 \
                     ORDER BY name_key COLLATE \"C\" LIMIT $2",
                    &[&after, &limit],
                )
                .await
            }
            None => {
                self.find_all(
                    "SELECT doc FROM gatehouse_users ORDER BY name_key COLLATE \"C\" LIMIT $1",
                    &[&limit],
                )
                .await
            }
        }
    }

    async fn append_audit(&self, event: AuditEvent) -> StoreResult<()> {
        let client = self.client().await?;
        insert_audit(&client, event).await?;
        Ok(())
    }

    async fn audit(&self, limit: usize) -> StoreResult<Vec<AuditEvent>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.find_all(
            "SELECT doc FROM gatehouse_audit ORDER BY seq DESC LIMIT $1",
            &[&limit],
        )
        .await
    }

    async fn export(&self) -> StoreResult<Snapshot> {
        Ok(retry(|| self.export_once()).await?)
    }

    async fn import(&self, snapshot: Snapshot) -> StoreResult<()> {
        Ok(retry(|| self.import_once(&snapshot)).await?)
    }

    async fn flush(&self) -> StoreResult<()> {
        // A PostgreSQL commit is durable when it returns; there is nothing left to flush.
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;
    use crate::store::{ExternalId, Role, SCHEMA_VERSION};

    const NOW: &str = "2026-01-01T00:00:00Z";

    /// The server the tests create their databases on: `GATEHOUSE_TEST_DATABASE_URL`, a URL
    /// without a database name (tests/run.sh starts a throwaway server and sets it).
    fn server() -> String {
        match std::env::var("GATEHOUSE_TEST_DATABASE_URL") {
            Ok(url) if !url.trim().is_empty() => url.trim().trim_end_matches('/').to_owned(),
            _ => panic!(
                "this test needs a PostgreSQL server: run the tests with tests/run.sh, which \
                 starts a throwaway one, or set GATEHOUSE_TEST_DATABASE_URL to a server URL \
                 without a database (such as postgres://postgres@127.0.0.1:PORT) whose user may \
                 create databases"
            ),
        }
    }

    async fn admin() -> tokio_postgres::Client {
        let url = format!("{}/postgres?sslmode=disable", server());
        let (client, connection) = tokio_postgres::connect(&url, NoTls)
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL at {}: {e}", server()));
        tokio::spawn(connection);
        client
    }

    /// A fresh database for one test, dropped (best effort) when the test ends, even by a panic.
    struct TestDb {
        name: String,
    }

    impl TestDb {
        async fn new() -> TestDb {
            let name = format!("gh_test_{}", uuid::Uuid::new_v4().simple());
            admin()
                .await
                .batch_execute(&format!("CREATE DATABASE {name}"))
                .await
                .unwrap();
            TestDb { name }
        }

        fn url(&self) -> String {
            format!("{}/{}?sslmode=disable", server(), self.name)
        }

        async fn store(&self) -> PgStore {
            PgStore::connect(&self.url(), 8).await.unwrap()
        }
    }

    impl Drop for TestDb {
        fn drop(&mut self) {
            let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
            // Drop cannot await, and the test's runtime may be shutting down: use a runtime of
            // our own on a thread of our own.
            let _ = std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(async { admin().await.batch_execute(&sql).await })
            })
            .join();
        }
    }

    fn new_user(name: &str) -> NewUser {
        NewUser {
            user_name: name.into(),
            ..NewUser::default()
        }
    }

    fn factor(user_id: u64) -> Factor {
        Factor {
            v: SCHEMA_VERSION,
            user_id,
            kind: FactorKind::Otp,
            sealed_secret: Some(vec![1, 2, 3]),
            destination: None,
            last_step: None,
            created: NOW.into(),
        }
    }

    fn ticket(id: &str, user_id: u64, created_at: i64) -> Ticket {
        Ticket {
            v: SCHEMA_VERSION,
            id: id.into(),
            user_id,
            kind: FactorKind::Otp,
            sealed_secret: None,
            destination: None,
            created_at,
            expires_at: created_at + 100,
            used: false,
            second_factor: false,
        }
    }

    fn domain(organization_id: i64, name: &str) -> Domain {
        Domain {
            v: SCHEMA_VERSION,
            organization_id,
            domain_id: 0,
            domain: name.into(),
            authentication_method: None,
            created: NOW.into(),
            created_by: "ada".into(),
            modified: NOW.into(),
            modified_by: "ada".into(),
            is_verified: false,
            verification_code: None,
            verification_code_expires: None,
            verification_code_expires_at: None,
            verification_method: None,
            owner_organization_id: organization_id,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn migrations_run_once_even_when_replicas_start_together() {
        let db = TestDb::new().await;
        let url = db.url();
        let mut starts = Vec::new();
        for _ in 0..4 {
            let url = url.clone();
            starts.push(tokio::spawn(async move { PgStore::connect(&url, 2).await }));
        }
        for s in starts {
            s.await.unwrap().unwrap();
        }
        let again = db.store().await;
        again.migrate().await.unwrap();
        let client = again.client().await.unwrap();
        let versions: Vec<(i64, i64)> = client
            .query(
                "SELECT version, count(*) FROM gatehouse_migrations
                 GROUP BY version ORDER BY version",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let expected: Vec<(i64, i64)> = MIGRATIONS.iter().map(|(v, _)| (*v, 1)).collect();
        assert_eq!(versions, expected);
        again.check().await.unwrap();
    }

    #[tokio::test]
    async fn an_unreachable_database_fails_quickly_without_quoting_the_url() {
        let started = std::time::Instant::now();
        let Err(err) =
            PgStore::connect("postgres://u:hunter2@127.0.0.1:1/db?sslmode=disable", 2).await
        else {
            panic!("connected to nothing");
        };
        assert!(matches!(err, StoreError::Backend(_)), "{err}");
        assert!(!err.to_string().contains("hunter2"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(15));
        let Err(err) = PgStore::connect("postgres://u:hun?ter2@host/db", 2).await else {
            panic!("a malformed URL was accepted");
        };
        assert!(!err.to_string().contains("ter2"), "{err}");
    }

    #[tokio::test]
    async fn tls_verifies_the_server_certificate() {
        // The test server's certificate is not one the system trusts (tests/run.sh's throwaway
        // server has a self-signed one for `localhost`): asked for by address, verified TLS must
        // refuse it.
        let ssl: String = admin()
            .await
            .query_one("SHOW ssl", &[])
            .await
            .unwrap()
            .get(0);
        if ssl != "on" {
            return;
        }
        let url = format!("{}/postgres?sslmode=require", server());
        let Err(err) = PgStore::connect(&url, 1).await else {
            panic!("sslmode=require accepted a certificate for another name");
        };
        assert!(err.to_string().contains("TLS"), "{err}");
    }

    #[tokio::test]
    async fn users_are_unique_by_name_regardless_of_case_and_by_external_id() {
        let db = TestDb::new().await;
        let store = db.store().await;
        let ada = store.create_user(new_user("Ada"), NOW).await.unwrap();
        assert_eq!(ada.id, 1);
        let err = store.create_user(new_user("ada"), NOW).await.unwrap_err();
        assert!(
            matches!(&err, StoreError::Conflict(what) if what == "user ada"),
            "{err}"
        );
        assert_eq!(store.user_by_name("ADA").await.unwrap().unwrap(), ada);
        assert_eq!(store.user_by_id(ada.id).await.unwrap().unwrap(), ada);
        assert!(store.user_by_name("a\0da").await.unwrap().is_none());

        let external = |name: &str| NewUser {
            external: Some(ExternalId {
                issuer: "https://idp".into(),
                subject: "42".into(),
            }),
            ..new_user(name)
        };
        let grace = store.create_user(external("grace"), NOW).await.unwrap();
        let err = store
            .create_user(external("hopper"), NOW)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, StoreError::Conflict(what) if what == "external user"),
            "{err}"
        );
        assert_eq!(
            store.user_by_external("https://idp", "42").await.unwrap(),
            Some(grace)
        );
        assert!(
            store
                .user_by_external("https://idp", "4")
                .await
                .unwrap()
                .is_none()
        );

        store.create_user(new_user("bob"), NOW).await.unwrap();
        let taken = UserPatch {
            user_name: Some("BOB".into()),
            ..UserPatch::default()
        };
        assert!(matches!(
            store.update_user("ada", taken, NOW).await,
            Err(StoreError::Conflict(_))
        ));
        let rename = UserPatch {
            user_name: Some("Lovelace".into()),
            email: Some("ada@example.org".into()),
            ..UserPatch::default()
        };
        let later = "2026-02-01T00:00:00Z";
        let renamed = store.update_user("ada", rename, later).await.unwrap();
        assert_eq!(renamed.email.as_deref(), Some("ada@example.org"));
        assert_eq!(renamed.modified, later);
        assert!(store.user_by_name("ada").await.unwrap().is_none());
        assert_eq!(store.user_by_name("lovelace").await.unwrap(), Some(renamed));
        assert!(matches!(
            store.update_user("nobody", UserPatch::default(), NOW).await,
            Err(StoreError::NotFound(_))
        ));
    }

    #[tokio::test]
    async fn memberships_files_applications_and_keys() {
        let db = TestDb::new().await;
        let store = db.store().await;
        let ada = store.create_user(new_user("ada"), NOW).await.unwrap();
        let m = Membership {
            organization_id: 7,
            role: Role::Admin,
        };
        assert!(matches!(
            store.set_membership("ada", m, NOW).await,
            Err(StoreError::NotFound(_))
        ));
        let org = Organization {
            v: SCHEMA_VERSION,
            id: 7,
            name: "Acme".into(),
            created: NOW.into(),
        };
        store.create_organization(org.clone()).await.unwrap();
        assert!(matches!(
            store.create_organization(org.clone()).await,
            Err(StoreError::Conflict(_))
        ));
        assert_eq!(store.organization(7).await.unwrap(), Some(org));
        store.set_membership("ada", m, NOW).await.unwrap();
        let member = Membership {
            role: Role::Member,
            ..m
        };
        let user = store.set_membership("ada", member, NOW).await.unwrap();
        assert_eq!(user.memberships, vec![member]);
        store.grant_file("ada", 5, NOW).await.unwrap();
        let user = store.grant_file("ada", 5, NOW).await.unwrap();
        assert_eq!(user.files, vec![5]);

        let app = |name: &str, token_hash: &str| Application {
            v: SCHEMA_VERSION,
            name: name.into(),
            token_hash: token_hash.into(),
            created: NOW.into(),
        };
        store.create_application(app("one", "t1")).await.unwrap();
        assert!(matches!(
            store.create_application(app("one", "t2")).await,
            Err(StoreError::Conflict(_))
        ));
        assert_eq!(
            store.application_by_token_hash("t1").await.unwrap(),
            Some(app("one", "t1"))
        );
        assert!(
            store
                .application_by_token_hash("t2")
                .await
                .unwrap()
                .is_none()
        );

        let ws = WsKey {
            v: SCHEMA_VERSION,
            key_hash: "h".into(),
            user_id: ada.id,
            file_id: 1,
            created: NOW.into(),
        };
        store.create_ws_key(ws.clone()).await.unwrap();
        assert!(matches!(
            store.create_ws_key(ws.clone()).await,
            Err(StoreError::Conflict(_))
        ));
        assert_eq!(store.ws_key("h").await.unwrap(), Some(ws));

        for kid in ["b", "a", "c"] {
            store
                .add_signing_key(SigningKey {
                    v: SCHEMA_VERSION,
                    kid: kid.into(),
                    pkcs8: vec![1, 2],
                    created: NOW.into(),
                })
                .await
                .unwrap();
        }
        let kids: Vec<String> = store
            .signing_keys()
            .await
            .unwrap()
            .into_iter()
            .map(|k| k.kid)
            .collect();
        assert_eq!(kids, ["b", "a", "c"], "oldest first");

        for i in 0..5 {
            store
                .append_audit(AuditEvent {
                    time: NOW.into(),
                    event: format!("e{i}"),
                    user_name: Some("nul\0name".into()),
                    detail: None,
                })
                .await
                .unwrap();
        }
        let events: Vec<String> = store
            .audit(3)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.event)
            .collect();
        assert_eq!(events, ["e4", "e3", "e2"], "newest first");

        // Deleting a user takes its keys and MFA state along.
        store
            .create_ticket(ticket("t", ada.id, 1000))
            .await
            .unwrap();
        assert!(
            store
                .confirm_ticket("t", factor(ada.id), Some(vec!["r".into()]), 1000)
                .await
                .unwrap()
        );
        assert!(store.delete_user("ada").await.unwrap());
        assert!(store.ws_key("h").await.unwrap().is_none());
        assert!(store.factors(ada.id).await.unwrap().is_empty());
        assert!(store.ticket("t").await.unwrap().is_none());
        assert!(!store.consume_recovery_code(ada.id, "r").await.unwrap());
        assert!(!store.delete_user("ada").await.unwrap());
        store.flush().await.unwrap();
    }

    #[tokio::test]
    async fn a_ticket_confirms_once_and_not_after_expiry() {
        let db = TestDb::new().await;
        let store = db.store().await;
        store.create_ticket(ticket("t1", 1, 1000)).await.unwrap();
        store.create_ticket(ticket("t2", 1, 1001)).await.unwrap();
        let newest = store.newest_pending_ticket(1, 1050).await.unwrap().unwrap();
        assert_eq!(newest.id, "t2");
        assert!(
            store
                .confirm_ticket("t2", factor(1), Some(vec!["h".into()]), 1050)
                .await
                .unwrap()
        );
        assert!(store.ticket("t2").await.unwrap().unwrap().used);
        assert!(
            !store
                .confirm_ticket("t2", factor(1), None, 1050)
                .await
                .unwrap()
        );
        assert!(
            !store
                .confirm_ticket("t1", factor(1), None, 1100)
                .await
                .unwrap(),
            "expired"
        );
        assert!(
            !store
                .confirm_ticket("t1", factor(2), None, 1050)
                .await
                .unwrap(),
            "other user"
        );
        assert!(
            !store
                .confirm_ticket("nope", factor(1), None, 1050)
                .await
                .unwrap()
        );
        // Confirming t2 voided t1: it was made against the factors before.
        assert!(
            store
                .newest_pending_ticket(1, 1050)
                .await
                .unwrap()
                .is_none()
        );
        assert!(store.ticket("t1").await.unwrap().unwrap().used);
        assert_eq!(store.factors(1).await.unwrap(), vec![factor(1)]);
        assert!(store.consume_recovery_code(1, "h").await.unwrap());
        assert!(!store.consume_recovery_code(1, "h").await.unwrap());
        store.reset_mfa(1).await.unwrap();
        assert!(store.factors(1).await.unwrap().is_empty());
        assert!(store.ticket("t1").await.unwrap().is_none());
        assert!(
            store
                .newest_pending_ticket(1, 1050)
                .await
                .unwrap()
                .is_none()
        );
    }

    #[tokio::test]
    async fn a_code_is_consumed_once_and_only_before_expiry() {
        let db = TestDb::new().await;
        let store = db.store().await;
        let code = OobCode {
            v: SCHEMA_VERSION,
            user_id: 1,
            purpose: "verify:sms".into(),
            code_hash: "abc".into(),
            expires_at: 2000,
        };
        store.put_code(code.clone()).await.unwrap();
        assert!(
            !store
                .consume_code(1, "verify:sms", "abd", 1000)
                .await
                .unwrap()
        );
        assert!(
            !store
                .consume_code(1, "verify:email", "abc", 1000)
                .await
                .unwrap()
        );
        assert!(
            store
                .consume_code(1, "verify:sms", "abc", 1000)
                .await
                .unwrap()
        );
        assert!(
            !store
                .consume_code(1, "verify:sms", "abc", 1000)
                .await
                .unwrap()
        );
        store.put_code(code.clone()).await.unwrap();
        assert!(
            !store
                .consume_code(1, "verify:sms", "abc", 2000)
                .await
                .unwrap()
        );
        // A new code replaces the old one.
        store
            .put_code(OobCode {
                code_hash: "new".into(),
                ..code
            })
            .await
            .unwrap();
        assert!(
            !store
                .consume_code(1, "verify:sms", "abc", 1000)
                .await
                .unwrap()
        );
        assert!(
            store
                .consume_code(1, "verify:sms", "new", 1000)
                .await
                .unwrap()
        );
    }

    fn signing_key(kid: &str) -> SigningKey {
        SigningKey {
            v: SCHEMA_VERSION,
            kid: kid.into(),
            pkcs8: vec![1, 2, 3],
            created: NOW.into(),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn replicas_starting_together_agree_on_one_signing_key() {
        let db = TestDb::new().await;
        let replicas = [Arc::new(db.store().await), Arc::new(db.store().await)];
        let mut tasks = Vec::new();
        for i in 0..10 {
            let store = replicas[i % 2].clone();
            tasks.push(tokio::spawn(async move {
                store
                    .init_signing_key(signing_key(&format!("k{i}")))
                    .await
                    .unwrap()
            }));
        }
        let mut seen = Vec::new();
        for t in tasks {
            seen.push(t.await.unwrap());
        }
        assert_eq!(seen[0].len(), 1);
        assert!(seen.iter().all(|keys| *keys == seen[0]), "{seen:?}");
        assert_eq!(replicas[1].signing_keys().await.unwrap(), seen[0]);
    }

    #[tokio::test]
    async fn a_sled_store_moves_over_unchanged() {
        use crate::store::sled::SledStore;
        let sled = SledStore::temporary().unwrap();
        let ada = sled.create_user(new_user("ada"), NOW).await.unwrap();
        let external = NewUser {
            external: Some(ExternalId {
                issuer: "https://idp".into(),
                subject: "7".into(),
            }),
            ..new_user("grace")
        };
        let grace = sled.create_user(external, NOW).await.unwrap();
        for id in [7, -1] {
            sled.create_organization(Organization {
                v: SCHEMA_VERSION,
                id,
                name: format!("org {id}"),
                created: NOW.into(),
            })
            .await
            .unwrap();
        }
        sled.set_membership(
            "ada",
            Membership {
                organization_id: 7,
                role: Role::Admin,
            },
            NOW,
        )
        .await
        .unwrap();
        sled.create_application(Application {
            v: SCHEMA_VERSION,
            name: "app".into(),
            token_hash: "th".into(),
            created: NOW.into(),
        })
        .await
        .unwrap();
        sled.create_ws_key(WsKey {
            v: SCHEMA_VERSION,
            key_hash: "wk".into(),
            user_id: ada.id,
            file_id: 3,
            created: NOW.into(),
        })
        .await
        .unwrap();
        sled.add_signing_key(signing_key("new")).await.unwrap();
        sled.add_signing_key(signing_key("k2")).await.unwrap();
        sled.create_ticket(ticket("t1", ada.id, 1000))
            .await
            .unwrap();
        sled.create_ticket(ticket("t2", grace.id, 1000))
            .await
            .unwrap();
        sled.confirm_ticket(
            "t1",
            factor(ada.id),
            Some(vec!["r1".into(), "r2".into()]),
            1000,
        )
        .await
        .unwrap();
        assert!(sled.accept_totp_step(ada.id, 42).await.unwrap());
        for purpose in ["verify:sms", "manage:email"] {
            sled.put_code(OobCode {
                v: SCHEMA_VERSION,
                user_id: grace.id,
                purpose: purpose.into(),
                code_hash: "abc".into(),
                expires_at: 2000,
            })
            .await
            .unwrap();
        }
        let policy = Policy {
            max_failures: 5,
            window: 300,
            duration: 900,
        };
        sled.reserve_attempt(grace.id, 1000, policy).await.unwrap();
        let verified = sled.create_domain(domain(7, "example.org")).await.unwrap();
        sled.save_domain(Domain {
            is_verified: true,
            ..verified.clone()
        })
        .await
        .unwrap();
        sled.create_domain(domain(-1, "example.com")).await.unwrap();
        for i in 0..3 {
            sled.append_audit(AuditEvent {
                time: NOW.into(),
                event: format!("e{i}"),
                user_name: None,
                detail: None,
            })
            .await
            .unwrap();
        }
        let expected = sled.export().await.unwrap();

        let db = TestDb::new().await;
        let pg = db.store().await;
        pg.import(expected.clone()).await.unwrap();
        assert_eq!(pg.export().await.unwrap(), expected);

        let carol = pg.create_user(new_user("carol"), NOW).await.unwrap();
        assert!(expected.users.iter().all(|u| u.id < carol.id));
        assert!(!pg.accept_totp_step(ada.id, 42).await.unwrap());
        assert!(pg.consume_recovery_code(ada.id, "r2").await.unwrap());
        assert!(
            pg.consume_code(grace.id, "verify:sms", "abc", 1000)
                .await
                .unwrap()
        );
        assert_eq!(
            pg.user_by_external("https://idp", "7")
                .await
                .unwrap()
                .map(|u| u.id),
            Some(grace.id)
        );
        assert_eq!(
            pg.application_by_token_hash("th")
                .await
                .unwrap()
                .map(|a| a.name),
            Some("app".into())
        );
        let theirs = pg.create_domain(domain(-1, "example.org")).await;
        assert!(
            matches!(theirs, Err(StoreError::Conflict(_))),
            "the claim came along"
        );
        let fresh = pg.create_domain(domain(7, "example.net")).await.unwrap();
        assert!(
            expected
                .domains
                .iter()
                .all(|d| d.domain_id < fresh.domain_id)
        );
        pg.append_audit(AuditEvent {
            time: NOW.into(),
            event: "after".into(),
            user_name: None,
            detail: None,
        })
        .await
        .unwrap();
        assert_eq!(pg.audit(1).await.unwrap()[0].event, "after");

        let before = pg.export().await.unwrap();
        let err = pg.import(expected).await.unwrap_err();
        assert!(matches!(err, StoreError::Conflict(_)), "{err}");
        assert!(err.to_string().contains("not empty"), "{err}");
        assert_eq!(pg.export().await.unwrap(), before, "nothing written");
    }
}
