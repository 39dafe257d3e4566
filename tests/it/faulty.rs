//! A store that fails the operations a test names, around the real sled store: for the promise
//! that a store failure answers 500 and leaves nothing half-written. It can also take a moment
//! for every operation, as a loaded disk or a database does, so that concurrent requests overlap
//! between their reads and writes as they would in production.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use gatehouse::lockout::{LockoutState, Policy, Reservation};
use gatehouse::store::sled::SledStore;
use gatehouse::store::*;

pub struct FaultyStore {
    inner: SledStore,
    failing: Mutex<HashSet<&'static str>>,
    latency: Mutex<Option<std::time::Duration>>,
}

impl FaultyStore {
    pub fn new(path: &std::path::Path) -> Arc<FaultyStore> {
        Arc::new(FaultyStore {
            inner: SledStore::open(path).unwrap(),
            failing: Mutex::new(HashSet::new()),
            latency: Mutex::new(None),
        })
    }

    /// From now on, every operation first waits `latency`.
    pub fn slow(&self, latency: std::time::Duration) {
        *self.latency.lock().unwrap() = Some(latency);
    }

    /// From now on, the named operations fail as a broken backend would.
    pub fn fail(&self, operations: &[&'static str]) {
        self.failing.lock().unwrap().extend(operations);
    }

    /// Every operation works again.
    pub fn recover(&self) {
        self.failing.lock().unwrap().clear();
    }

    async fn gate(&self, operation: &str) -> StoreResult<()> {
        let latency = *self.latency.lock().unwrap();
        if let Some(latency) = latency {
            tokio::time::sleep(latency).await;
        }
        if self.failing.lock().unwrap().contains(operation) {
            return Err(StoreError::Backend(format!(
                "{operation}: injected failure"
            )));
        }
        Ok(())
    }
}

#[async_trait]
impl Store for FaultyStore {
    async fn check(&self) -> StoreResult<()> {
        self.gate("check").await?;
        self.inner.check().await
    }

    async fn create_user(&self, new: NewUser, now: i64) -> StoreResult<User> {
        self.gate("create_user").await?;
        self.inner.create_user(new, now).await
    }

    async fn user_by_name(&self, user_name: &str) -> StoreResult<Option<User>> {
        self.gate("user_by_name").await?;
        self.inner.user_by_name(user_name).await
    }

    async fn user_by_id(&self, id: u64) -> StoreResult<Option<User>> {
        self.gate("user_by_id").await?;
        self.inner.user_by_id(id).await
    }

    async fn user_by_external(&self, issuer: &str, subject: &str) -> StoreResult<Option<User>> {
        self.gate("user_by_external").await?;
        self.inner.user_by_external(issuer, subject).await
    }

    async fn modify_user(
        &self,
        user_name: &str,
        now: i64,
        change: &(dyn for<'u> Fn(&'u mut User) + Sync),
    ) -> StoreResult<User> {
        self.gate("modify_user").await?;
        self.inner.modify_user(user_name, now, change).await
    }

    async fn update_user(&self, user_name: &str, patch: UserPatch, now: i64) -> StoreResult<User> {
        self.gate("update_user").await?;
        self.inner.update_user(user_name, patch, now).await
    }

    async fn delete_user(&self, user_name: &str) -> StoreResult<bool> {
        self.gate("delete_user").await?;
        self.inner.delete_user(user_name).await
    }

    async fn reset_mfa(&self, user_id: u64) -> StoreResult<()> {
        self.gate("reset_mfa").await?;
        self.inner.reset_mfa(user_id).await
    }

    async fn create_application(&self, app: Application) -> StoreResult<()> {
        self.gate("create_application").await?;
        self.inner.create_application(app).await
    }

    async fn application_by_token_hash(
        &self,
        token_hash: &str,
    ) -> StoreResult<Option<Application>> {
        self.gate("application_by_token_hash").await?;
        self.inner.application_by_token_hash(token_hash).await
    }

    async fn create_organization(&self, org: Organization) -> StoreResult<()> {
        self.gate("create_organization").await?;
        self.inner.create_organization(org).await
    }

    async fn organization(&self, id: i64) -> StoreResult<Option<Organization>> {
        self.gate("organization").await?;
        self.inner.organization(id).await
    }

    async fn set_membership(
        &self,
        user_name: &str,
        membership: Membership,
        now: i64,
    ) -> StoreResult<User> {
        self.gate("set_membership").await?;
        self.inner.set_membership(user_name, membership, now).await
    }

    async fn grant_file(&self, user_name: &str, file_id: i64, now: i64) -> StoreResult<User> {
        self.gate("grant_file").await?;
        self.inner.grant_file(user_name, file_id, now).await
    }

    async fn create_ws_key(&self, key: WsKey) -> StoreResult<()> {
        self.gate("create_ws_key").await?;
        self.inner.create_ws_key(key).await
    }

    async fn ws_key(&self, key_hash: &str) -> StoreResult<Option<WsKey>> {
        self.gate("ws_key").await?;
        self.inner.ws_key(key_hash).await
    }

    async fn delete_user_ws_keys(&self, user_id: u64) -> StoreResult<u64> {
        self.gate("delete_user_ws_keys").await?;
        self.inner.delete_user_ws_keys(user_id).await
    }

    async fn signing_keys(&self) -> StoreResult<Vec<SigningKey>> {
        self.gate("signing_keys").await?;
        self.inner.signing_keys().await
    }

    async fn add_signing_key(&self, key: SigningKey) -> StoreResult<()> {
        self.gate("add_signing_key").await?;
        self.inner.add_signing_key(key).await
    }

    async fn rotate_signing_key(
        &self,
        key: SigningKey,
        unless_after: i64,
    ) -> StoreResult<SigningKey> {
        self.gate("rotate_signing_key").await?;
        self.inner.rotate_signing_key(key, unless_after).await
    }

    async fn delete_signing_key(&self, kid: &str) -> StoreResult<bool> {
        self.gate("delete_signing_key").await?;
        self.inner.delete_signing_key(kid).await
    }

    async fn create_ticket(&self, ticket: Ticket) -> StoreResult<()> {
        self.gate("create_ticket").await?;
        self.inner.create_ticket(ticket).await
    }

    async fn ticket(&self, id: &str) -> StoreResult<Option<Ticket>> {
        self.gate("ticket").await?;
        self.inner.ticket(id).await
    }

    async fn newest_pending_ticket(&self, user_id: u64, now: i64) -> StoreResult<Option<Ticket>> {
        self.gate("newest_pending_ticket").await?;
        self.inner.newest_pending_ticket(user_id, now).await
    }

    async fn confirm_ticket(
        &self,
        ticket_id: &str,
        factor: Factor,
        recovery_hashes: Option<Vec<String>>,
        now: i64,
    ) -> StoreResult<bool> {
        self.gate("confirm_ticket").await?;
        self.inner
            .confirm_ticket(ticket_id, factor, recovery_hashes, now)
            .await
    }

    async fn factors(&self, user_id: u64) -> StoreResult<Vec<Factor>> {
        self.gate("factors").await?;
        self.inner.factors(user_id).await
    }

    async fn accept_totp_step(&self, user_id: u64, step: u64) -> StoreResult<bool> {
        self.gate("accept_totp_step").await?;
        self.inner.accept_totp_step(user_id, step).await
    }

    async fn put_code(&self, code: OobCode) -> StoreResult<()> {
        self.gate("put_code").await?;
        self.inner.put_code(code).await
    }

    async fn consume_code(
        &self,
        user_id: u64,
        purpose: &str,
        code_hash: &str,
        now: i64,
    ) -> StoreResult<bool> {
        self.gate("consume_code").await?;
        self.inner
            .consume_code(user_id, purpose, code_hash, now)
            .await
    }

    async fn login_with_code(
        &self,
        user_id: u64,
        purpose: &str,
        code_hash: &str,
        now: i64,
        event: &AuditEvent,
    ) -> StoreResult<CodeLogin> {
        self.gate("login_with_code").await?;
        self.inner
            .login_with_code(user_id, purpose, code_hash, now, event)
            .await
    }

    async fn replace_recovery_codes(&self, user_id: u64, hashes: Vec<String>) -> StoreResult<()> {
        self.gate("replace_recovery_codes").await?;
        self.inner.replace_recovery_codes(user_id, hashes).await
    }

    async fn consume_recovery_code(&self, user_id: u64, hash: &str) -> StoreResult<bool> {
        self.gate("consume_recovery_code").await?;
        self.inner.consume_recovery_code(user_id, hash).await
    }

    async fn lockout(&self, user_id: u64) -> StoreResult<LockoutState> {
        self.gate("lockout").await?;
        self.inner.lockout(user_id).await
    }

    async fn reserve_attempt(
        &self,
        user_id: u64,
        now: i64,
        policy: Policy,
    ) -> StoreResult<Reservation> {
        self.gate("reserve_attempt").await?;
        self.inner.reserve_attempt(user_id, now, policy).await
    }

    async fn clear_failures(&self, user_id: u64) -> StoreResult<()> {
        self.gate("clear_failures").await?;
        self.inner.clear_failures(user_id).await
    }

    async fn release_attempt(
        &self,
        user_id: u64,
        reserved_at: i64,
        locks: Option<i64>,
    ) -> StoreResult<()> {
        self.gate("release_attempt").await?;
        self.inner
            .release_attempt(user_id, reserved_at, locks)
            .await
    }

    async fn count_send(&self, key: &str, now: i64, window: i64, limit: u32) -> StoreResult<bool> {
        self.gate("count_send").await?;
        self.inner.count_send(key, now, window, limit).await
    }

    async fn forget_sends(&self, key: &str) -> StoreResult<()> {
        self.gate("forget_sends").await?;
        self.inner.forget_sends(key).await
    }

    async fn create_domain(&self, domain: Domain) -> StoreResult<Domain> {
        self.gate("create_domain").await?;
        self.inner.create_domain(domain).await
    }

    async fn domains(&self, organization_id: i64) -> StoreResult<Vec<Domain>> {
        self.gate("domains").await?;
        self.inner.domains(organization_id).await
    }

    async fn domain(&self, organization_id: i64, domain_id: i64) -> StoreResult<Option<Domain>> {
        self.gate("domain").await?;
        self.inner.domain(organization_id, domain_id).await
    }

    async fn save_domain(&self, domain: Domain) -> StoreResult<()> {
        self.gate("save_domain").await?;
        self.inner.save_domain(domain).await
    }

    async fn delete_domain(&self, organization_id: i64, domain_id: i64) -> StoreResult<bool> {
        self.gate("delete_domain").await?;
        self.inner.delete_domain(organization_id, domain_id).await
    }

    async fn list_users(&self, after: Option<&str>, limit: usize) -> StoreResult<Vec<User>> {
        self.gate("list_users").await?;
        self.inner.list_users(after, limit).await
    }

    async fn append_audit(&self, event: AuditEvent) -> StoreResult<()> {
        self.gate("append_audit").await?;
        self.inner.append_audit(event).await
    }

    async fn audit(&self, limit: usize) -> StoreResult<Vec<AuditEvent>> {
        self.gate("audit").await?;
        self.inner.audit(limit).await
    }

    async fn audit_page(&self, query: &AuditQuery) -> StoreResult<AuditPage> {
        self.gate("audit_page").await?;
        self.inner.audit_page(query).await
    }

    async fn purge_audit(&self, before: &str) -> StoreResult<u64> {
        self.gate("purge_audit").await?;
        self.inner.purge_audit(before).await
    }

    async fn create_session(&self, session: Session, keep: usize) -> StoreResult<()> {
        self.gate("create_session").await?;
        self.inner.create_session(session, keep).await
    }

    async fn session(&self, id_hash: &str) -> StoreResult<Option<Session>> {
        self.gate("session").await?;
        self.inner.session(id_hash).await
    }

    async fn touch_session(&self, id_hash: &str, now: i64) -> StoreResult<bool> {
        self.gate("touch_session").await?;
        self.inner.touch_session(id_hash, now).await
    }

    async fn replace_session(&self, old_hash: &str, new: Session) -> StoreResult<bool> {
        self.gate("replace_session").await?;
        self.inner.replace_session(old_hash, new).await
    }

    async fn delete_session(&self, id_hash: &str) -> StoreResult<bool> {
        self.gate("delete_session").await?;
        self.inner.delete_session(id_hash).await
    }

    async fn delete_user_sessions(&self, user_id: u64) -> StoreResult<u64> {
        self.gate("delete_user_sessions").await?;
        self.inner.delete_user_sessions(user_id).await
    }

    async fn purge_sessions(&self, now: i64, idle_before: i64) -> StoreResult<u64> {
        self.gate("purge_sessions").await?;
        self.inner.purge_sessions(now, idle_before).await
    }

    async fn delete_idp_sessions(
        &self,
        provider: &str,
        user_id: Option<u64>,
        sid: Option<&str>,
    ) -> StoreResult<u64> {
        self.gate("delete_idp_sessions").await?;
        self.inner.delete_idp_sessions(provider, user_id, sid).await
    }

    async fn create_login_flow(&self, flow: LoginFlow) -> StoreResult<()> {
        self.gate("create_login_flow").await?;
        self.inner.create_login_flow(flow).await
    }

    async fn take_login_flow(&self, state_hash: &str, now: i64) -> StoreResult<Option<LoginFlow>> {
        self.gate("take_login_flow").await?;
        self.inner.take_login_flow(state_hash, now).await
    }

    async fn purge_login_flows(&self, now: i64) -> StoreResult<u64> {
        self.gate("purge_login_flows").await?;
        self.inner.purge_login_flows(now).await
    }

    async fn passkeys(&self, user_id: u64) -> StoreResult<Vec<Passkey>> {
        self.gate("passkeys").await?;
        self.inner.passkeys(user_id).await
    }

    async fn passkey(&self, id: &str) -> StoreResult<Option<Passkey>> {
        self.gate("passkey").await?;
        self.inner.passkey(id).await
    }

    async fn add_passkey(
        &self,
        passkey: Passkey,
        grant: PasskeyGrant<'_>,
        recovery_hashes: Option<Vec<String>>,
        now: i64,
    ) -> StoreResult<PasskeyAdded> {
        self.gate("add_passkey").await?;
        self.inner
            .add_passkey(passkey, grant, recovery_hashes, now)
            .await
    }

    async fn use_passkey(
        &self,
        id: &str,
        counter: u32,
        credential: serde_json::Value,
        last_used: &str,
    ) -> StoreResult<bool> {
        self.gate("use_passkey").await?;
        self.inner
            .use_passkey(id, counter, credential, last_used)
            .await
    }

    async fn rename_passkey(&self, user_id: u64, id: &str, name: &str) -> StoreResult<bool> {
        self.gate("rename_passkey").await?;
        self.inner.rename_passkey(user_id, id, name).await
    }

    async fn delete_passkey(
        &self,
        user_id: u64,
        id: &str,
        keep_a_factor: bool,
    ) -> StoreResult<PasskeyRemoved> {
        self.gate("delete_passkey").await?;
        self.inner.delete_passkey(user_id, id, keep_a_factor).await
    }

    async fn create_ceremony(&self, ceremony: PasskeyCeremony) -> StoreResult<()> {
        self.gate("create_ceremony").await?;
        self.inner.create_ceremony(ceremony).await
    }

    async fn take_ceremony(&self, id_hash: &str, now: i64) -> StoreResult<Option<PasskeyCeremony>> {
        self.gate("take_ceremony").await?;
        self.inner.take_ceremony(id_hash, now).await
    }

    async fn purge_ceremonies(&self, now: i64) -> StoreResult<u64> {
        self.gate("purge_ceremonies").await?;
        self.inner.purge_ceremonies(now).await
    }

    async fn flush(&self) -> StoreResult<()> {
        self.gate("flush").await?;
        self.inner.flush().await
    }
}
