//! The schema: versioned migrations, and connecting to the database that holds it.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{
    GenericClient, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime, Timeouts,
};
use tokio_postgres::NoTls;
use tokio_postgres::config::SslMode;
use tokio_postgres::error::SqlState;

use crate::store::{StoreError, StoreResult};

use super::{ATTEMPTS, Fail, PgStore, TIMEOUT, describe, retry};

/// Versioned schema changes, applied in order, each exactly once per database.
pub(super) const MIGRATIONS: &[(i64, &[&str])] = &[
    (
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
    ),
    // Browser sessions (SPEC §11): a database from before them gains the table at its next start.
    (
        2,
        &[
            "CREATE TABLE gatehouse_sessions (
            id_hash TEXT PRIMARY KEY,
            user_id INT8 NOT NULL,
            methods JSONB NOT NULL,
            created INT8 NOT NULL,
            last_seen INT8 NOT NULL,
            expires INT8 NOT NULL
        )",
            "CREATE INDEX gatehouse_sessions_user ON gatehouse_sessions (user_id)",
        ],
    ),
    // Sign-in at external providers (SPEC §12): a session remembers the provider and its session
    // id, for back-channel logout, and a sign-in in progress is kept until its callback.
    (
        3,
        &[
            "ALTER TABLE gatehouse_sessions ADD COLUMN idp_provider TEXT, ADD COLUMN idp_sid TEXT",
            "CREATE INDEX gatehouse_sessions_idp ON gatehouse_sessions (idp_provider, idp_sid)",
            "CREATE TABLE gatehouse_login_flows (
            state_hash TEXT PRIMARY KEY,
            provider TEXT NOT NULL,
            nonce TEXT NOT NULL,
            pkce_verifier TEXT NOT NULL,
            rd TEXT NOT NULL,
            expires INT8 NOT NULL
        )",
        ],
    ),
    // Signing-key rotation (SPEC §13): the instant from which a key signs, kept beside its
    // document so that a rotation finds the newest key in the same locked step that adds one.
    // Keys stored before have no such instant: they signed from the start.
    (
        4,
        &["ALTER TABLE gatehouse_signing_keys
             ADD COLUMN IF NOT EXISTS activates INT8 NOT NULL DEFAULT 0"],
    ),
    // Audit filters and retention (SPEC §13): the time, event and user of each event in columns,
    // indexed, so that a filtered page and the purge do not read every event.
    (
        5,
        &[
            "ALTER TABLE gatehouse_audit ADD COLUMN IF NOT EXISTS at TEXT,
            ADD COLUMN IF NOT EXISTS event TEXT,
            ADD COLUMN IF NOT EXISTS user_key TEXT",
            "UPDATE gatehouse_audit SET at = doc->>'time', event = doc->>'event',
            user_key = lower(doc->>'userName') WHERE at IS NULL",
            "CREATE INDEX IF NOT EXISTS gatehouse_audit_user ON gatehouse_audit (user_key, seq)",
            "CREATE INDEX IF NOT EXISTS gatehouse_audit_event
            ON gatehouse_audit ((event COLLATE \"C\"), seq)",
            "CREATE INDEX IF NOT EXISTS gatehouse_audit_at ON gatehouse_audit ((at COLLATE \"C\"))",
        ],
    ),
    // Passkeys (SPEC §14): one row per credential (its id unique across users), numbered in the
    // order they were added; ceremonies in progress until the browser answers.
    (
        6,
        &[
            "CREATE TABLE IF NOT EXISTS gatehouse_passkeys (
            id TEXT PRIMARY KEY,
            user_id INT8 NOT NULL,
            seq INT8 GENERATED ALWAYS AS IDENTITY,
            doc JSONB NOT NULL
        )",
            "CREATE INDEX IF NOT EXISTS gatehouse_passkeys_user ON gatehouse_passkeys (user_id, seq)",
            "CREATE TABLE IF NOT EXISTS gatehouse_passkey_ceremonies (
            id_hash TEXT PRIMARY KEY,
            expires INT8 NOT NULL,
            doc JSONB NOT NULL
        )",
        ],
    ),
];

const CREATE_MIGRATIONS: &str = "CREATE TABLE IF NOT EXISTS gatehouse_migrations (
    version INT8 PRIMARY KEY,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
)";

/// Roots for verifying the database's certificate. libpq's `sslmode=require` skips verification;
/// here it verifies against the system's roots.
pub(super) fn tls() -> StoreResult<tokio_postgres_rustls::MakeRustlsConnect> {
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
        let tls = config.get_ssl_mode() == SslMode::Require;
        let manager = if tls {
            Manager::from_config(config.clone(), self::tls()?, manager_config)
        } else {
            Manager::from_config(config.clone(), NoTls, manager_config)
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
        let mut store = PgStore {
            pool,
            config,
            tls,
            announce: false,
            cache: None,
            listener: None,
        };
        store.migrate().await?;
        store.announce = store.can_announce().await;
        if !store.announce {
            tracing::info!(
                "the database does not take NOTIFY: replicas see each other's changes to users \
                 and sessions within auth.revocation_lag"
            );
        }
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

    pub(super) async fn apply_migration(
        &self,
        version: i64,
        statements: &[&str],
    ) -> Result<bool, Fail> {
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
}
