//! Export and import of the whole store, each one transaction.

use deadpool_postgres::GenericClient;
use serde::de::DeserializeOwned;
use tokio_postgres::IsolationLevel;
use tokio_postgres::types::Json;

use crate::store::{
    Application, Domain, OobCode, Organization, Snapshot, StoreError, Ticket, User, WsKey,
};

use super::{
    Fail, PgStore, doc, exec, external_key, factor_from, key, name_key, next_value, row, rows,
    step_column, unique, unkey,
};

impl PgStore {
    /// Reads everything in one read-only snapshot, in the order sled's export has (its key
    /// order), so that exports of the two backends compare equal.
    pub(super) async fn export_once(&self) -> Result<Snapshot, Fail> {
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
        let passkeys = all(
            &tx,
            "SELECT doc FROM gatehouse_passkeys ORDER BY user_id, seq",
        )
        .await?;
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
            passkeys,
        })
    }

    /// Writes the whole snapshot in one transaction, so a refused or failed import leaves nothing
    /// behind. Counters move past the imported ids, so new users and domains get fresh ones.
    pub(super) async fn import_once(&self, snapshot: &Snapshot) -> Result<(), Fail> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        Self::refuse_unless_empty(&tx).await?;
        Self::import_users(&tx, snapshot).await?;
        Self::import_accounts(&tx, snapshot).await?;
        Self::import_mfa(&tx, snapshot).await?;
        Self::import_domains(&tx, snapshot).await?;
        Self::import_audit(&tx, snapshot).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn refuse_unless_empty(tx: &impl GenericClient) -> Result<(), Fail> {
        // Two concurrent imports both pass this check; the users' primary key then refuses one.
        if row(tx, "SELECT id FROM gatehouse_users LIMIT 1", &[])
            .await?
            .is_some()
        {
            return Err(StoreError::Conflict("a user (the store is not empty)".into()).into());
        }
        Ok(())
    }

    /// Users, with the user counter moved past the highest imported id.
    async fn import_users(tx: &impl GenericClient, snapshot: &Snapshot) -> Result<(), Fail> {
        for user in &snapshot.users {
            let external = user
                .external
                .as_ref()
                .map(|e| external_key(&e.issuer, &e.subject));
            exec(
                tx,
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
            exec(tx, RAISE_COUNTER, &[&"user", &last]).await?;
        }
        Ok(())
    }

    /// Applications (with their token index), organisations, WS keys and signing keys.
    async fn import_accounts(tx: &impl GenericClient, snapshot: &Snapshot) -> Result<(), Fail> {
        for app in &snapshot.applications {
            exec(
                tx,
                "INSERT INTO gatehouse_applications (name, doc) VALUES ($1, $2)",
                &[&app.name, &Json(app)],
            )
            .await
            .map_err(conflict)?;
            exec(
                tx,
                "INSERT INTO gatehouse_application_tokens (token_hash, name) VALUES ($1, $2)
                 ON CONFLICT (token_hash) DO UPDATE SET name = excluded.name",
                &[&app.token_hash, &app.name],
            )
            .await?;
        }
        for org in &snapshot.organizations {
            exec(
                tx,
                "INSERT INTO gatehouse_organizations (id, doc) VALUES ($1, $2)",
                &[&org.id, &Json(org)],
            )
            .await
            .map_err(conflict)?;
        }
        for ws_key in &snapshot.ws_keys {
            exec(
                tx,
                "INSERT INTO gatehouse_ws_keys (key_hash, user_id, doc) VALUES ($1, $2, $3)",
                &[&ws_key.key_hash, &key(ws_key.user_id), &Json(ws_key)],
            )
            .await
            .map_err(conflict)?;
        }
        for signing_key in &snapshot.signing_keys {
            let seq = next_value(tx, "signing_key").await?;
            exec(
                tx,
                "INSERT INTO gatehouse_signing_keys (seq, kid, doc, activates)
                 VALUES ($1, $2, $3, $4)",
                &[
                    &seq,
                    &signing_key.kid,
                    &Json(signing_key),
                    &signing_key.activates,
                ],
            )
            .await?;
        }
        Ok(())
    }

    /// Tickets, factors, one-time codes, recovery codes and lockouts.
    async fn import_mfa(tx: &impl GenericClient, snapshot: &Snapshot) -> Result<(), Fail> {
        for ticket in &snapshot.tickets {
            exec(
                tx,
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
                tx,
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
                tx,
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
                tx,
                "INSERT INTO gatehouse_recovery_codes (user_id, doc) VALUES ($1, $2)",
                &[&key(*user_id), &Json(hashes)],
            )
            .await
            .map_err(conflict)?;
        }
        for (user_id, state) in &snapshot.lockouts {
            exec(
                tx,
                "INSERT INTO gatehouse_lockouts (user_id, doc) VALUES ($1, $2)",
                &[&key(*user_id), &Json(state)],
            )
            .await
            .map_err(conflict)?;
        }
        for passkey in &snapshot.passkeys {
            exec(
                tx,
                "INSERT INTO gatehouse_passkeys (id, user_id, doc) VALUES ($1, $2, $3)",
                &[&passkey.id, &key(passkey.user_id), &Json(passkey)],
            )
            .await
            .map_err(conflict)?;
        }
        Ok(())
    }

    /// Domains and the claims of verified ones, with the domain counter moved past the
    /// highest imported id.
    async fn import_domains(tx: &impl GenericClient, snapshot: &Snapshot) -> Result<(), Fail> {
        for domain in &snapshot.domains {
            exec(
                tx,
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
                    tx,
                    "INSERT INTO gatehouse_verified_domains (name, organization_id) VALUES ($1, $2)
                     ON CONFLICT (name) DO NOTHING",
                    &[&domain.domain, &domain.organization_id],
                )
                .await?;
            }
        }
        if let Some(last) = snapshot.domains.iter().map(|d| d.domain_id).max() {
            exec(tx, RAISE_COUNTER, &[&"domain", &last]).await?;
        }
        Ok(())
    }

    /// Audit events, numbered by the `audit` counter in their order.
    async fn import_audit(tx: &impl GenericClient, snapshot: &Snapshot) -> Result<(), Fail> {
        for event in &snapshot.audit {
            super::insert_audit(tx, event.clone()).await?;
        }
        Ok(())
    }
}

/// Raises a counter to at least the given value, creating it if missing.
const RAISE_COUNTER: &str = "INSERT INTO gatehouse_counters (name, value) VALUES ($1, $2)
            ON CONFLICT (name)
            DO UPDATE SET value = GREATEST(gatehouse_counters.value, excluded.value)";

/// A unique violation while importing means the store already holds that record.
fn conflict(f: Fail) -> Fail {
    match f {
        Fail::Db(e) => unique(e, |constraint| {
            format!("a record ({constraint}; the store is not empty)")
        }),
        other => other,
    }
}
