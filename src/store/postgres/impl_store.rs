//! [`Store`] for [`PgStore`]: each operation, retried as a whole on serialization failures.

use std::sync::Arc;

use async_trait::async_trait;
use tokio_postgres::types::Json;

use crate::lockout::{LockoutState, Policy, Reservation};
use crate::store::{
    Application, AuditEvent, AuditPage, AuditQuery, CodeLogin, Domain, EventFilter, Factor,
    FactorKind, LoginFlow, NewUser, OPT_IN_PREFIX, OobCode, Organization, Passkey, PasskeyAdded,
    PasskeyCeremony, PasskeyGrant, PasskeyRemoved, Session, SigningKey, Snapshot, Store,
    StoreError, StoreResult, Ticket, User, WsKey, stamp,
};

use super::cache::Change;
use super::sessions::{COLUMNS as SESSION_COLUMNS, FLOW_COLUMNS, flow_from, session_from};
use super::{
    Fail, PgStore, describe, doc, exec, external_key, factor_from, insert_audit, key, name_key,
    retry, row, rows, set_recovery_codes, step_column, storable, unique,
};

/// Whether every text of the session can be stored (none holds NUL).
fn session_storable(session: &Session) -> bool {
    storable(&session.id_hash)
        && session.methods.iter().all(|m| storable(m))
        && session
            .idp
            .as_ref()
            .is_none_or(|link| storable(&link.provider) && link.sid.as_deref().is_none_or(storable))
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

    async fn create_user(&self, new: NewUser, now: i64) -> StoreResult<User> {
        let template = User::new(0, new, &stamp(now)?);
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

    async fn shared_user_by_id(&self, id: u64) -> StoreResult<Option<Arc<User>>> {
        let read = async { Ok(self.user_by_id(id).await?.map(Arc::new)) };
        match &self.cache {
            Some(cache) => cache.user(id, read).await,
            None => read.await,
        }
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

    async fn modify_user(
        &self,
        user_name: &str,
        now: i64,
        change: &(dyn for<'u> Fn(&'u mut User) + Sync),
    ) -> StoreResult<User> {
        let modified = stamp(now)?;
        if !storable(user_name) {
            return Err(StoreError::NotFound(format!("user {user_name}")));
        }
        let result = retry(|| self.modify_user_once(user_name, &modified, change)).await;
        let changes = match &result {
            Ok(user) => vec![Change::User(user.id)],
            Err(_) => Vec::new(),
        };
        self.after(result.map_err(StoreError::from), &changes).await
    }

    async fn delete_user(&self, user_name: &str) -> StoreResult<bool> {
        if !storable(user_name) {
            return Ok(false);
        }
        let result = retry(|| self.delete_user_once(user_name)).await;
        let changes = match result {
            Ok(false) => Vec::new(),
            _ => vec![Change::Everything],
        };
        self.after(result.map_err(StoreError::from), &changes).await
    }

    async fn reset_mfa(&self, user_id: u64) -> StoreResult<()> {
        let result = retry(|| self.reset_mfa_once(user_id)).await;
        self.after(result.map_err(StoreError::from), &[Change::User(user_id)])
            .await
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
        let read = async {
            self.find(
                "SELECT a.doc FROM gatehouse_application_tokens t
                 JOIN gatehouse_applications a ON a.name = t.name
                 WHERE t.token_hash = $1",
                &[&token_hash],
            )
            .await
        };
        match &self.cache {
            // Registered tokens are never removed, only handed to a newer application.
            Some(cache) => cache.application(token_hash, read).await,
            None => read.await,
        }
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

    async fn delete_user_ws_keys(&self, user_id: u64) -> StoreResult<u64> {
        self.execute(
            "DELETE FROM gatehouse_ws_keys WHERE user_id = $1",
            &[&key(user_id)],
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
            INSERT INTO gatehouse_signing_keys (seq, kid, doc, activates)
            SELECT value, $1, $2, $3 FROM next",
            &[
                &signing_key.kid,
                &Json(&signing_key),
                &signing_key.activates,
            ],
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

    async fn rotate_signing_key(
        &self,
        signing_key: SigningKey,
        unless_after: i64,
    ) -> StoreResult<SigningKey> {
        Ok(retry(|| self.rotate_signing_key_once(&signing_key, unless_after)).await?)
    }

    async fn delete_signing_key(&self, kid: &str) -> StoreResult<bool> {
        let deleted = self
            .execute("DELETE FROM gatehouse_signing_keys WHERE kid = $1", &[&kid])
            .await?;
        Ok(deleted > 0)
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
        event: &AuditEvent,
    ) -> StoreResult<CodeLogin> {
        let login_time = stamp(now)?;
        if !storable(purpose) {
            return Ok(CodeLogin::Wrong);
        }
        let result = retry(|| {
            self.login_with_code_once(user_id, purpose, code_hash, now, &login_time, event)
        })
        .await
        .map_err(StoreError::from);
        match &result {
            Ok(CodeLogin::Accepted(_)) | Err(_) => {
                self.after(result, &[Change::User(user_id)]).await
            }
            Ok(_) => result,
        }
    }

    async fn replace_recovery_codes(&self, user_id: u64, hashes: Vec<String>) -> StoreResult<()> {
        let client = self.client().await?;
        set_recovery_codes(&client, key(user_id), &hashes).await?;
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

    async fn release_attempt(
        &self,
        user_id: u64,
        reserved_at: i64,
        locks: Option<i64>,
    ) -> StoreResult<()> {
        Ok(retry(|| self.release_attempt_once(user_id, reserved_at, locks)).await?)
    }

    async fn count_send(&self, key: &str, now: i64, window: i64, limit: u32) -> StoreResult<bool> {
        if !storable(key) {
            return Err(StoreError::Backend("a send key holds NUL".into()));
        }
        Ok(retry(|| self.count_send_once(key, now, window, limit)).await?)
    }

    async fn forget_sends(&self, key: &str) -> StoreResult<()> {
        if !storable(key) {
            return Err(StoreError::Backend("a send key holds NUL".into()));
        }
        self.execute("DELETE FROM gatehouse_sends WHERE send_key = $1", &[&key])
            .await
            .map(drop)
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

    async fn audit_page(&self, query: &AuditQuery) -> StoreResult<AuditPage> {
        let limit = i64::try_from(query.limit).unwrap_or(i64::MAX);
        let before = query
            .before
            .map(|b| i64::try_from(b).unwrap_or(i64::MAX))
            .unwrap_or(i64::MAX);
        // Only the conditions asked for, so that each shape of query has a plan using its index
        // (user, event or time) rather than one generic plan for all. An event family `signin.*`
        // is `signin` and the names in ["signin.", "signin/"): `/` follows `.` in byte order, and
        // the index is on the bytes (COLLATE "C").
        let mut sql = String::from("SELECT seq, doc FROM gatehouse_audit WHERE seq < $1");
        let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![&before];
        let family_bounds = match &query.event {
            Some(EventFilter::Family(name)) => Some((format!("{name}."), format!("{name}/"))),
            _ => None,
        };
        if let Some(user) = &query.user {
            params.push(user);
            sql.push_str(&format!(" AND user_key = ${}", params.len()));
        }
        match (&query.event, &family_bounds) {
            (Some(EventFilter::Exact(name)), _) => {
                params.push(name);
                sql.push_str(&format!(" AND (event COLLATE \"C\") = ${}", params.len()));
            }
            (Some(EventFilter::Family(name)), Some((from, until))) => {
                params.push(name);
                params.push(from);
                params.push(until);
                let n = params.len();
                sql.push_str(&format!(
                    " AND ((event COLLATE \"C\") = ${} OR ((event COLLATE \"C\") >= ${} \
                     AND (event COLLATE \"C\") < ${n}))",
                    n - 2,
                    n - 1
                ));
            }
            _ => {}
        }
        if let Some(since) = &query.since {
            params.push(since);
            sql.push_str(&format!(" AND (at COLLATE \"C\") >= ${}", params.len()));
        }
        params.push(&limit);
        sql.push_str(&format!(" ORDER BY seq DESC LIMIT ${}", params.len()));
        let client = self.client().await?;
        let found = rows(&client, &sql, &params).await?;
        let mut events = Vec::with_capacity(found.len());
        for row in &found {
            let seq: i64 = row.try_get("seq").map_err(Fail::from)?;
            let mut event: AuditEvent = doc(row)?;
            event.id = u64::try_from(seq).ok();
            events.push(event);
        }
        let next = if events.len() >= query.limit {
            events.last().and_then(|e| e.id)
        } else {
            None
        };
        Ok(AuditPage { events, next })
    }

    async fn purge_audit(&self, before: &str) -> StoreResult<u64> {
        self.execute(
            "DELETE FROM gatehouse_audit WHERE (at COLLATE \"C\") < $1",
            &[&before],
        )
        .await
    }

    async fn export(&self) -> StoreResult<Snapshot> {
        Ok(retry(|| self.export_once()).await?)
    }

    async fn import(&self, snapshot: Snapshot) -> StoreResult<()> {
        retry(|| self.import_once(&snapshot)).await?;
        self.changed(&[Change::Everything]).await;
        Ok(())
    }

    async fn create_session(&self, session: Session, keep: usize) -> StoreResult<()> {
        if !session_storable(&session) {
            return Err(StoreError::Backend("a session field holds NUL".into()));
        }
        let keep = i64::try_from(keep).unwrap_or(i64::MAX);
        let ended = retry(|| self.create_session_once(&session, keep)).await?;
        // Beyond the cap, the user's oldest sessions ended.
        if !ended.is_empty() {
            let ended: Vec<Change> = ended.into_iter().map(Change::Session).collect();
            self.changed(&ended).await;
        }
        Ok(())
    }

    async fn session(&self, id_hash: &str) -> StoreResult<Option<Session>> {
        Ok(self
            .shared_session(id_hash)
            .await?
            .map(Arc::unwrap_or_clone))
    }

    async fn shared_session(&self, id_hash: &str) -> StoreResult<Option<Arc<Session>>> {
        if !storable(id_hash) {
            return Ok(None);
        }
        let read = async {
            let client = self.client().await?;
            let found = row(
                &client,
                &format!("SELECT {SESSION_COLUMNS} FROM gatehouse_sessions WHERE id_hash = $1"),
                &[&id_hash],
            )
            .await?;
            Ok(found.as_ref().map(session_from).transpose()?.map(Arc::new))
        };
        match &self.cache {
            Some(cache) => cache.session(id_hash, read).await,
            None => read.await,
        }
    }

    async fn touch_session(&self, id_hash: &str, now: i64) -> StoreResult<bool> {
        if !storable(id_hash) {
            return Ok(false);
        }
        let updated = self
            .execute(
                "UPDATE gatehouse_sessions SET last_seen = GREATEST(last_seen, $2)
                 WHERE id_hash = $1",
                &[&id_hash, &now],
            )
            .await?;
        // A session seen again takes nothing away: its request need not wait for the others.
        self.announce(&[Change::Session(id_hash.to_owned())], false)
            .await;
        Ok(updated == 1)
    }

    async fn replace_session(&self, old_hash: &str, new: Session) -> StoreResult<bool> {
        if !storable(old_hash) {
            return Ok(false);
        }
        if !session_storable(&new) {
            return Err(StoreError::Backend("a session field holds NUL".into()));
        }
        let result = retry(|| self.replace_session_once(old_hash, &new)).await;
        self.after(
            result.map_err(StoreError::from),
            &[Change::Session(old_hash.to_owned())],
        )
        .await
    }

    async fn delete_session(&self, id_hash: &str) -> StoreResult<bool> {
        if !storable(id_hash) {
            return Ok(false);
        }
        let result = self
            .execute(
                "DELETE FROM gatehouse_sessions WHERE id_hash = $1",
                &[&id_hash],
            )
            .await
            .map(|deleted| deleted == 1);
        // Nothing deleted here: whoever ended it announced it.
        let changes = match result {
            Ok(false) => Vec::new(),
            _ => vec![Change::Session(id_hash.to_owned())],
        };
        self.after(result, &changes).await
    }

    async fn delete_user_sessions(&self, user_id: u64) -> StoreResult<u64> {
        // Announced even when none was found: a retry after an answer lost on the way finds
        // none, and what the first try ended must still be dropped.
        let result = retry(|| self.delete_user_sessions_once(user_id)).await;
        self.after(result.map_err(StoreError::from), &[Change::Sessions])
            .await
    }

    async fn purge_sessions(&self, now: i64, idle_before: i64) -> StoreResult<u64> {
        let purged = self
            .execute(
                "DELETE FROM gatehouse_sessions WHERE expires <= $1 OR last_seen <= $2",
                &[&now, &idle_before],
            )
            .await?;
        if purged > 0 {
            self.changed(&[Change::Sessions]).await;
        }
        Ok(purged)
    }

    async fn delete_idp_sessions(
        &self,
        provider: &str,
        user_id: Option<u64>,
        sid: Option<&str>,
    ) -> StoreResult<u64> {
        if !storable(provider) || sid.is_some_and(|sid| !storable(sid)) {
            return Ok(0);
        }
        let result = retry(|| self.delete_idp_sessions_once(provider, user_id, sid)).await;
        self.after(result.map_err(StoreError::from), &[Change::Sessions])
            .await
    }

    async fn create_login_flow(&self, flow: LoginFlow) -> StoreResult<()> {
        let fields = [
            &flow.state_hash,
            &flow.provider,
            &flow.nonce,
            &flow.pkce_verifier,
            &flow.rd,
        ];
        if fields.iter().any(|f| !storable(f)) {
            return Err(StoreError::Backend("a sign-in flow field holds NUL".into()));
        }
        self.execute(
            "INSERT INTO gatehouse_login_flows
                (state_hash, provider, nonce, pkce_verifier, rd, expires)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (state_hash) DO UPDATE SET provider = excluded.provider,
                nonce = excluded.nonce, pkce_verifier = excluded.pkce_verifier,
                rd = excluded.rd, expires = excluded.expires",
            &[
                &flow.state_hash,
                &flow.provider,
                &flow.nonce,
                &flow.pkce_verifier,
                &flow.rd,
                &flow.expires,
            ],
        )
        .await?;
        Ok(())
    }

    async fn take_login_flow(&self, state_hash: &str, now: i64) -> StoreResult<Option<LoginFlow>> {
        if !storable(state_hash) {
            return Ok(None);
        }
        // The row lock of the delete lets one of concurrent takes have the row; the others find
        // it gone.
        let client = self.client().await?;
        let taken = row(
            &client,
            &format!(
                "DELETE FROM gatehouse_login_flows WHERE state_hash = $1 RETURNING {FLOW_COLUMNS}"
            ),
            &[&state_hash],
        )
        .await?;
        let flow = taken.as_ref().map(flow_from).transpose()?;
        Ok(flow.filter(|flow| flow.expires > now))
    }

    async fn purge_login_flows(&self, now: i64) -> StoreResult<u64> {
        self.execute(
            "DELETE FROM gatehouse_login_flows WHERE expires <= $1",
            &[&now],
        )
        .await
    }

    async fn passkeys(&self, user_id: u64) -> StoreResult<Vec<Passkey>> {
        Ok(self.passkeys_of(user_id).await?)
    }

    async fn passkey(&self, id: &str) -> StoreResult<Option<Passkey>> {
        if !storable(id) {
            return Ok(None);
        }
        Ok(self.passkey_once(id).await?)
    }

    async fn add_passkey(
        &self,
        passkey: Passkey,
        grant: PasskeyGrant<'_>,
        recovery_hashes: Option<Vec<String>>,
        now: i64,
    ) -> StoreResult<PasskeyAdded> {
        let texts = [&passkey.id, &passkey.name, &passkey.user_handle];
        if texts.iter().any(|t| !storable(t))
            || matches!(grant, PasskeyGrant::Ticket(t) if !storable(t))
        {
            return Ok(PasskeyAdded::Refused);
        }
        Ok(retry(|| self.add_passkey_once(&passkey, grant, recovery_hashes.as_ref(), now)).await?)
    }

    async fn use_passkey(
        &self,
        id: &str,
        counter: u32,
        credential: serde_json::Value,
        last_used: &str,
    ) -> StoreResult<bool> {
        if !storable(id) {
            return Ok(false);
        }
        Ok(retry(|| self.use_passkey_once(id, counter, &credential, last_used)).await?)
    }

    async fn rename_passkey(&self, user_id: u64, id: &str, name: &str) -> StoreResult<bool> {
        if !storable(id) || !storable(name) {
            return Ok(false);
        }
        Ok(retry(|| self.rename_passkey_once(user_id, id, name)).await?)
    }

    async fn delete_passkey(
        &self,
        user_id: u64,
        id: &str,
        keep_a_factor: bool,
    ) -> StoreResult<PasskeyRemoved> {
        if !storable(id) {
            return Ok(PasskeyRemoved::NotFound);
        }
        Ok(retry(|| self.delete_passkey_once(user_id, id, keep_a_factor)).await?)
    }

    async fn create_ceremony(&self, ceremony: PasskeyCeremony) -> StoreResult<()> {
        Ok(retry(|| self.create_ceremony_once(&ceremony)).await?)
    }

    async fn take_ceremony(&self, id_hash: &str, now: i64) -> StoreResult<Option<PasskeyCeremony>> {
        if !storable(id_hash) {
            return Ok(None);
        }
        Ok(self.take_ceremony_once(id_hash, now).await?)
    }

    async fn purge_ceremonies(&self, now: i64) -> StoreResult<u64> {
        self.execute(
            "DELETE FROM gatehouse_passkey_ceremonies WHERE expires <= $1",
            &[&now],
        )
        .await
    }

    async fn flush(&self) -> StoreResult<()> {
        // A PostgreSQL commit is durable when it returns; there is nothing left to flush.
        Ok(())
    }
}
