//! [`Store`] for [`SledStore`], one method per operation of the trait.

use std::sync::Arc;

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use sled::{Transactional, Tree};

use crate::lockout::{LockoutState, Policy, Reservation};
use crate::store::{
    AUDIT_SCAN_LIMIT, Application, AuditEvent, AuditPage, AuditQuery, CodeLogin, Domain, Factor,
    FactorKind, LoginFlow, NewUser, OPT_IN_PREFIX, OobCode, Organization, Passkey, PasskeyAdded,
    PasskeyCeremony, PasskeyGrant, PasskeyRemoved, Session, SigningKey, Snapshot, Store,
    StoreError, StoreResult, Ticket, User, WsKey, stamp,
};

use super::codec::{
    FACTOR_KINDS, abort, backend, decode, domain_key, domain_name_key, encode, external_key,
    mfa_key, name_key, tx_decode, tx_encode, tx_user_by_name, unwrap_tx,
};
use super::{SledStore, audit_id};

#[async_trait]
impl Store for SledStore {
    async fn check(&self) -> StoreResult<()> {
        self.db.insert("health", b"ok").map_err(backend)?;
        Ok(())
    }

    async fn create_user(&self, new: NewUser, now: i64) -> StoreResult<User> {
        let created = stamp(now)?;
        let id = self.db.generate_id().map_err(backend)?;
        let user = User::new(id, new, &created);
        let result = (&self.users, &self.user_names, &self.user_external).transaction(
            |(users, names, external)| {
                let key = name_key(&user.user_name);
                if names.get(&key)?.is_some() {
                    return abort(StoreError::Conflict(format!("user {}", user.user_name)));
                }
                if let Some(ext) = &user.external {
                    let ext_key = external_key(&ext.issuer, &ext.subject);
                    if external.get(&ext_key)?.is_some() {
                        return abort(StoreError::Conflict("external user".into()));
                    }
                    external.insert(ext_key, &id.to_be_bytes())?;
                }
                names.insert(key, &id.to_be_bytes())?;
                users.insert(&id.to_be_bytes(), tx_encode(&user)?)?;
                Ok(())
            },
        );
        unwrap_tx(result)?;
        self.durable().await?;
        Ok(user)
    }

    async fn user_by_name(&self, user_name: &str) -> StoreResult<Option<User>> {
        match self.user_names.get(name_key(user_name)).map_err(backend)? {
            Some(id) => self.user_at(&id),
            None => Ok(None),
        }
    }

    async fn user_by_id(&self, id: u64) -> StoreResult<Option<User>> {
        self.user_at(&id.to_be_bytes())
    }

    async fn shared_user_by_id(&self, id: u64) -> StoreResult<Option<Arc<User>>> {
        self.shared_user_at(&id.to_be_bytes())
    }

    async fn user_by_external(&self, issuer: &str, subject: &str) -> StoreResult<Option<User>> {
        match self
            .user_external
            .get(external_key(issuer, subject))
            .map_err(backend)?
        {
            Some(id) => self.user_at(&id),
            None => Ok(None),
        }
    }

    /// Read-modify-write of one user, by name, in a transaction with the name index.
    async fn modify_user(
        &self,
        user_name: &str,
        now: i64,
        change: &(dyn for<'u> Fn(&'u mut User) + Sync),
    ) -> StoreResult<User> {
        let modified = stamp(now)?;
        let result = (&self.users, &self.user_names).transaction(|(users, names)| {
            let Some(mut user) = tx_user_by_name(users, names, user_name)? else {
                return abort(StoreError::NotFound(format!("user {user_name}")));
            };
            let old_key = name_key(&user.user_name);
            change(&mut user);
            let new_key = name_key(&user.user_name);
            if new_key != old_key {
                if names.get(&new_key)?.is_some() {
                    return abort(StoreError::Conflict(format!("user {}", user.user_name)));
                }
                names.remove(old_key)?;
                names.insert(new_key, &user.id.to_be_bytes())?;
            }
            user.modified = modified.clone();
            users.insert(&user.id.to_be_bytes(), tx_encode(&user)?)?;
            Ok(user)
        });
        let user = unwrap_tx(result)?;
        self.durable().await?;
        Ok(user)
    }

    async fn delete_user(&self, user_name: &str) -> StoreResult<bool> {
        let result = (&self.users, &self.user_names, &self.user_external).transaction(
            |(users, names, external)| {
                let Some(user) = tx_user_by_name(users, names, user_name)? else {
                    return Ok(None);
                };
                names.remove(name_key(&user.user_name))?;
                users.remove(&user.id.to_be_bytes())?;
                if let Some(ext) = &user.external {
                    external.remove(external_key(&ext.issuer, &ext.subject))?;
                }
                Ok(Some(user.id))
            },
        );
        let Some(id) = unwrap_tx(result)? else {
            return Ok(false);
        };
        // Keys bound to the user go with it.
        self.remove_user_ws_keys(id)?;
        self.reset_mfa(id).await?;
        // After the user's record is gone, so no new session can be created for it (see
        // `insert_session`).
        self.remove_user_sessions(id)?;
        self.durable().await?;
        Ok(true)
    }

    async fn reset_mfa(&self, user_id: u64) -> StoreResult<()> {
        let keys = self
            .mfa
            .scan_prefix(user_id.to_be_bytes())
            .keys()
            .collect::<Result<Vec<_>, _>>()
            .map_err(backend)?;
        // One transaction, which also names every key a confirmation writes (factors, recovery
        // codes): a confirmation running meanwhile either lands before the reset (and is
        // removed) or finds its ticket gone.
        let result = (&self.tickets, &self.mfa, &self.passkey_ids).transaction(
            |(tickets, mfa, passkey_ids)| {
                // The passkey list as it is now (the scan may predate a registration), read
                // before the scanned keys go: the list's own key is among them.
                if let Some(bytes) = mfa.remove(super::passkeys::list_key(user_id))? {
                    let list: Vec<crate::store::Passkey> = tx_decode(&bytes)?;
                    for passkey in &list {
                        passkey_ids.remove(passkey.id.as_bytes())?;
                    }
                }
                for key in &keys {
                    if key.get(8) == Some(&b't') {
                        tickets.remove(&key[9..])?;
                    }
                    mfa.remove(key)?;
                }
                for kind in FACTOR_KINDS {
                    mfa.remove(mfa_key(user_id, b'f', &[kind.tag()]))?;
                }
                mfa.remove(mfa_key(user_id, b'r', &[]))?;
                Ok(())
            },
        );
        unwrap_tx(result)?;
        self.durable().await
    }

    async fn create_ticket(&self, ticket: Ticket) -> StoreResult<()> {
        let result = (&self.tickets, &self.mfa).transaction(|(tickets, mfa)| {
            tickets.insert(ticket.id.as_bytes(), tx_encode(&ticket)?)?;
            mfa.insert(
                mfa_key(ticket.user_id, b't', ticket.id.as_bytes()),
                &ticket.created_at.to_be_bytes(),
            )?;
            Ok(())
        });
        unwrap_tx(result)?;
        self.durable().await
    }

    async fn ticket(&self, id: &str) -> StoreResult<Option<Ticket>> {
        match self.tickets.get(id).map_err(backend)? {
            Some(bytes) => decode(&bytes).map(Some),
            None => Ok(None),
        }
    }

    async fn newest_pending_ticket(&self, user_id: u64, now: i64) -> StoreResult<Option<Ticket>> {
        let mut newest: Option<Ticket> = None;
        for key in self.mfa.scan_prefix(mfa_key(user_id, b't', &[])).keys() {
            let key = key.map_err(backend)?;
            let Some(bytes) = self.tickets.get(&key[9..]).map_err(backend)? else {
                continue;
            };
            let ticket: Ticket = decode(&bytes)?;
            if ticket.used || ticket.expires_at <= now || ticket.id.starts_with(OPT_IN_PREFIX) {
                continue;
            }
            if newest
                .as_ref()
                .is_none_or(|n| ticket.created_at >= n.created_at)
            {
                newest = Some(ticket);
            }
        }
        Ok(newest)
    }

    async fn confirm_ticket(
        &self,
        ticket_id: &str,
        factor: Factor,
        recovery_hashes: Option<Vec<String>>,
        now: i64,
    ) -> StoreResult<bool> {
        // The user's other tickets, voided below. One made after this scan was made against the
        // factors before this confirmation, so the rule checked at its own confirmation holds.
        let others = self
            .mfa
            .scan_prefix(mfa_key(factor.user_id, b't', &[]))
            .keys()
            .map(|key| key.map(|k| k[9..].to_vec()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(backend)?;
        let result = (&self.tickets, &self.mfa).transaction(|(tickets, mfa)| {
            let Some(bytes) = tickets.get(ticket_id.as_bytes())? else {
                return Ok(false);
            };
            let mut ticket: Ticket = tx_decode(&bytes)?;
            if ticket.used || ticket.expires_at <= now || ticket.user_id != factor.user_id {
                return Ok(false);
            }
            if !ticket.second_factor {
                for kind in FACTOR_KINDS {
                    if mfa
                        .get(mfa_key(factor.user_id, b'f', &[kind.tag()]))?
                        .is_some()
                    {
                        return Ok(false);
                    }
                }
            }
            for id in &others {
                let Some(bytes) = tickets.get(id)? else {
                    continue;
                };
                let mut other: Ticket = tx_decode(&bytes)?;
                if !other.used {
                    other.used = true;
                    tickets.insert(id.as_slice(), tx_encode(&other)?)?;
                }
            }
            ticket.used = true;
            tickets.insert(ticket_id.as_bytes(), tx_encode(&ticket)?)?;
            mfa.insert(
                mfa_key(factor.user_id, b'f', &[factor.kind.tag()]),
                tx_encode(&factor)?,
            )?;
            if let Some(hashes) = &recovery_hashes {
                mfa.insert(mfa_key(factor.user_id, b'r', &[]), tx_encode(hashes)?)?;
            }
            Ok(true)
        });
        let confirmed = unwrap_tx(result)?;
        self.durable().await?;
        Ok(confirmed)
    }

    async fn factors(&self, user_id: u64) -> StoreResult<Vec<Factor>> {
        self.mfa
            .scan_prefix(mfa_key(user_id, b'f', &[]))
            .values()
            .map(|v| decode(&v.map_err(backend)?))
            .collect()
    }

    async fn accept_totp_step(&self, user_id: u64, step: u64) -> StoreResult<bool> {
        let key = mfa_key(user_id, b'f', &[FactorKind::Otp.tag()]);
        let accepted = self.cas(&self.mfa, &key, |factor: Option<Factor>| match factor {
            Some(mut f) if f.last_step.is_none_or(|last| step > last) => {
                f.last_step = Some(step);
                Ok((Some(f), true))
            }
            other => Ok((other, false)),
        })?;
        self.durable().await?;
        Ok(accepted)
    }

    async fn put_code(&self, code: OobCode) -> StoreResult<()> {
        self.mfa
            .insert(
                mfa_key(code.user_id, b'c', code.purpose.as_bytes()),
                encode(&code)?,
            )
            .map_err(backend)?;
        self.durable().await
    }

    async fn consume_code(
        &self,
        user_id: u64,
        purpose: &str,
        code_hash: &str,
        now: i64,
    ) -> StoreResult<bool> {
        let key = mfa_key(user_id, b'c', purpose.as_bytes());
        let consumed = self.cas(&self.mfa, &key, |code: Option<OobCode>| match code {
            Some(c) if c.expires_at > now && crate::secrets::same(&c.code_hash, code_hash) => {
                Ok((None, true))
            }
            other => Ok((other, false)),
        })?;
        self.durable().await?;
        Ok(consumed)
    }

    async fn login_with_code(
        &self,
        user_id: u64,
        purpose: &str,
        code_hash: &str,
        now: i64,
        event: &AuditEvent,
    ) -> StoreResult<CodeLogin> {
        // Not a sled transaction: sled writes and syncs its log buffer twice for every
        // transaction, which on this path cost more than all the rest. The writes go in an order
        // a crash cannot make unsafe instead. sled recovers a prefix of its log, so a crash before
        // the answer leaves at most the code consumed and nothing else changed (the caller, who
        // saw no answer, asks for a new code); never a login recorded with the code still usable.
        let login_time = stamp(now)?;
        let code_key = mfa_key(user_id, b'c', purpose.as_bytes());
        let Some(stored) = self.mfa.get(&code_key).map_err(backend)? else {
            return Ok(CodeLogin::Wrong);
        };
        let code: OobCode = decode(&stored)?;
        if !crate::secrets::same(&code.code_hash, code_hash) {
            return Ok(CodeLogin::Wrong);
        }
        if code.expires_at <= now {
            return Ok(CodeLogin::Expired);
        }
        // Of concurrent logins with this code, only one removes it; a code replaced meanwhile is
        // no longer the one presented.
        if self
            .mfa
            .compare_and_swap(&code_key, Some(stored), None::<&[u8]>)
            .map_err(backend)?
            .is_err()
        {
            return Ok(CodeLogin::Wrong);
        }
        let user = self.cas(&self.users, &user_id.to_be_bytes(), |user: Option<User>| {
            let Some(mut user) = user else {
                return Err(StoreError::NotFound(format!("user {user_id}")));
            };
            user.last_login_timestamp = Some(login_time.clone());
            user.modified = login_time.clone();
            Ok((Some(user.clone()), user))
        })?;
        let lockout_key = mfa_key(user_id, b'l', &[]);
        if self.mfa.contains_key(&lockout_key).map_err(backend)? {
            self.mfa.remove(lockout_key).map_err(backend)?;
        }
        self.insert_audit(event)?;
        self.durable().await?;
        Ok(CodeLogin::Accepted(Box::new(user)))
    }

    async fn replace_recovery_codes(&self, user_id: u64, hashes: Vec<String>) -> StoreResult<()> {
        self.mfa
            .insert(mfa_key(user_id, b'r', &[]), encode(&hashes)?)
            .map_err(backend)?;
        self.durable().await
    }

    async fn consume_recovery_code(&self, user_id: u64, hash: &str) -> StoreResult<bool> {
        let key = mfa_key(user_id, b'r', &[]);
        let consumed = self.cas(&self.mfa, &key, |codes: Option<Vec<String>>| {
            let mut codes = codes.unwrap_or_default();
            match codes.iter().position(|c| crate::secrets::same(c, hash)) {
                Some(i) => {
                    codes.remove(i);
                    Ok((Some(codes), true))
                }
                None => Ok((Some(codes), false)),
            }
        })?;
        self.durable().await?;
        Ok(consumed)
    }

    async fn lockout(&self, user_id: u64) -> StoreResult<LockoutState> {
        match self.mfa.get(mfa_key(user_id, b'l', &[])).map_err(backend)? {
            Some(bytes) => decode(&bytes),
            None => Ok(LockoutState::default()),
        }
    }

    async fn reserve_attempt(
        &self,
        user_id: u64,
        now: i64,
        policy: Policy,
    ) -> StoreResult<Reservation> {
        // Not flushed here (see the trait): a success clears the record and flushes, a failure
        // is flushed before it is answered.
        let key = mfa_key(user_id, b'l', &[]);
        self.cas(&self.mfa, &key, |state: Option<LockoutState>| {
            let mut state = state.unwrap_or_default();
            let reservation = state.reserve(now, policy);
            Ok((Some(state), reservation))
        })
    }

    async fn clear_failures(&self, user_id: u64) -> StoreResult<()> {
        self.mfa
            .remove(mfa_key(user_id, b'l', &[]))
            .map_err(backend)?;
        self.durable().await
    }

    async fn release_attempt(
        &self,
        user_id: u64,
        reserved_at: i64,
        locks: Option<i64>,
    ) -> StoreResult<()> {
        let key = mfa_key(user_id, b'l', &[]);
        self.cas(&self.mfa, &key, |state: Option<LockoutState>| {
            let state = state.map(|mut state| {
                state.release(reserved_at, locks);
                state
            });
            Ok((state, ()))
        })?;
        self.durable().await
    }

    async fn count_send(&self, key: &str, now: i64, window: i64, limit: u32) -> StoreResult<bool> {
        let allowed = self.cas(&self.sends, key.as_bytes(), |sent: Option<Vec<i64>>| {
            let mut sent = sent.unwrap_or_default();
            sent.retain(|t| now - t < window);
            if sent.len() >= limit as usize {
                return Ok((Some(sent), false));
            }
            sent.push(now);
            Ok((Some(sent), true))
        })?;
        self.durable().await?;
        Ok(allowed)
    }

    async fn forget_sends(&self, key: &str) -> StoreResult<()> {
        self.sends.remove(key.as_bytes()).map_err(backend)?;
        self.durable().await
    }

    async fn create_application(&self, app: Application) -> StoreResult<()> {
        let result = (&self.applications, &self.app_tokens).transaction(|(apps, tokens)| {
            if apps.get(app.name.as_bytes())?.is_some() {
                return abort(StoreError::Conflict(format!("application {}", app.name)));
            }
            apps.insert(app.name.as_bytes(), tx_encode(&app)?)?;
            tokens.insert(app.token_hash.as_bytes(), app.name.as_bytes())?;
            Ok(())
        });
        unwrap_tx(result)?;
        self.durable().await
    }

    async fn application_by_token_hash(
        &self,
        token_hash: &str,
    ) -> StoreResult<Option<Application>> {
        let Some(name) = self.app_tokens.get(token_hash).map_err(backend)? else {
            return Ok(None);
        };
        match self.applications.get(name).map_err(backend)? {
            Some(bytes) => decode(&bytes).map(Some),
            None => Ok(None),
        }
    }

    async fn create_organization(&self, org: Organization) -> StoreResult<()> {
        let bytes = encode(&org)?;
        let swapped = self
            .organizations
            .compare_and_swap(org.id.to_be_bytes(), None as Option<&[u8]>, Some(bytes))
            .map_err(backend)?;
        if swapped.is_err() {
            return Err(StoreError::Conflict(format!("organization {}", org.id)));
        }
        self.durable().await
    }

    async fn organization(&self, id: i64) -> StoreResult<Option<Organization>> {
        match self.organizations.get(id.to_be_bytes()).map_err(backend)? {
            Some(bytes) => decode(&bytes).map(Some),
            None => Ok(None),
        }
    }

    async fn create_ws_key(&self, key: WsKey) -> StoreResult<()> {
        let bytes = encode(&key)?;
        let swapped = self
            .ws_keys
            .compare_and_swap(key.key_hash.as_bytes(), None as Option<&[u8]>, Some(bytes))
            .map_err(backend)?;
        if swapped.is_err() {
            return Err(StoreError::Conflict("ws key".into()));
        }
        self.durable().await
    }

    async fn ws_key(&self, key_hash: &str) -> StoreResult<Option<WsKey>> {
        match self.ws_keys.get(key_hash).map_err(backend)? {
            Some(bytes) => decode(&bytes).map(Some),
            None => Ok(None),
        }
    }

    async fn delete_user_ws_keys(&self, user_id: u64) -> StoreResult<u64> {
        let removed = self.remove_user_ws_keys(user_id)?;
        self.durable().await?;
        Ok(removed)
    }

    async fn signing_keys(&self) -> StoreResult<Vec<SigningKey>> {
        self.signing_keys_now()
    }

    async fn add_signing_key(&self, key: SigningKey) -> StoreResult<()> {
        let id = self.db.generate_id().map_err(backend)?;
        self.signing_keys
            .insert(id.to_be_bytes(), encode(&key)?)
            .map_err(backend)?;
        self.durable().await
    }

    async fn rotate_signing_key(
        &self,
        key: SigningKey,
        unless_after: i64,
    ) -> StoreResult<SigningKey> {
        let newest = {
            // One process holds a sled store: the lock makes the check and the insert one step
            // for concurrent calls.
            let _rotating = self
                .rotating
                .lock()
                .map_err(|_| StoreError::Backend("signing-key lock poisoned".into()))?;
            let stored = self.signing_keys_now()?;
            match crate::store::newest_signing_key(&stored) {
                Some(newest) if newest.activates > unless_after => return Ok(newest.clone()),
                _ => {}
            }
            let id = self.db.generate_id().map_err(backend)?;
            self.signing_keys
                .insert(id.to_be_bytes(), encode(&key)?)
                .map_err(backend)?;
            key
        };
        self.durable().await?;
        Ok(newest)
    }

    async fn delete_signing_key(&self, kid: &str) -> StoreResult<bool> {
        let mut deleted = false;
        for entry in self.signing_keys.iter() {
            let (id, value) = entry.map_err(backend)?;
            if decode::<SigningKey>(&value)?.kid == kid {
                self.signing_keys.remove(id).map_err(backend)?;
                deleted = true;
            }
        }
        if deleted {
            self.durable().await?;
        }
        Ok(deleted)
    }

    async fn create_domain(&self, mut domain: Domain) -> StoreResult<Domain> {
        // Domain ids are int32 on the wire (seed 002).
        let id = self.db.generate_id().map_err(backend)? % u64::from(i32::MAX as u32) + 1;
        domain.domain_id = i64::try_from(id).map_err(backend)?;
        let result = (&self.domains, &self.domain_names, &self.verified_domains).transaction(
            |(domains, names, verified)| {
                if let Some(owner) = verified.get(domain.domain.as_bytes())?
                    && owner.as_ref() != domain.organization_id.to_be_bytes()
                {
                    return abort(StoreError::Conflict(format!(
                        "domain {} (verified by another organization)",
                        domain.domain
                    )));
                }
                let name = domain_name_key(domain.organization_id, &domain.domain);
                if names.get(&name)?.is_some() {
                    return abort(StoreError::Conflict(format!("domain {}", domain.domain)));
                }
                names.insert(name, &domain.domain_id.to_be_bytes())?;
                domains.insert(
                    domain_key(domain.organization_id, domain.domain_id),
                    tx_encode(&domain)?,
                )?;
                Ok(())
            },
        );
        unwrap_tx(result)?;
        self.durable().await?;
        Ok(domain)
    }

    async fn domains(&self, organization_id: i64) -> StoreResult<Vec<Domain>> {
        self.domains
            .scan_prefix(organization_id.to_be_bytes())
            .values()
            .map(|v| decode(&v.map_err(backend)?))
            .collect()
    }

    async fn domain(&self, organization_id: i64, domain_id: i64) -> StoreResult<Option<Domain>> {
        match self
            .domains
            .get(domain_key(organization_id, domain_id))
            .map_err(backend)?
        {
            Some(bytes) => decode(&bytes).map(Some),
            None => Ok(None),
        }
    }

    async fn save_domain(&self, domain: Domain) -> StoreResult<()> {
        let result = (&self.domains, &self.verified_domains).transaction(|(domains, verified)| {
            let key = domain_key(domain.organization_id, domain.domain_id);
            if domains.get(&key)?.is_none() {
                return abort(StoreError::NotFound(format!("domain {}", domain.domain_id)));
            }
            if domain.is_verified {
                let org = domain.organization_id.to_be_bytes();
                match verified.get(domain.domain.as_bytes())? {
                    Some(owner) if owner.as_ref() != org => {
                        return abort(StoreError::Conflict(format!(
                            "domain {} (verified by another organization)",
                            domain.domain
                        )));
                    }
                    _ => {
                        verified.insert(domain.domain.as_bytes(), &org)?;
                    }
                }
            }
            domains.insert(key, tx_encode(&domain)?)?;
            Ok(())
        });
        unwrap_tx(result)?;
        self.durable().await
    }

    async fn delete_domain(&self, organization_id: i64, domain_id: i64) -> StoreResult<bool> {
        let result = (&self.domains, &self.domain_names, &self.verified_domains).transaction(
            |(domains, names, verified)| {
                let Some(bytes) = domains.remove(domain_key(organization_id, domain_id))? else {
                    return Ok(false);
                };
                let domain: Domain = tx_decode(&bytes)?;
                names.remove(domain_name_key(organization_id, &domain.domain))?;
                let org = organization_id.to_be_bytes();
                if verified.get(domain.domain.as_bytes())?.as_deref() == Some(&org[..]) {
                    verified.remove(domain.domain.as_bytes())?;
                }
                Ok(true)
            },
        );
        let deleted = unwrap_tx(result)?;
        self.durable().await?;
        Ok(deleted)
    }

    async fn list_users(&self, after: Option<&str>, limit: usize) -> StoreResult<Vec<User>> {
        use std::ops::Bound;
        let start = match after {
            Some(name) => Bound::Excluded(name_key(name)),
            None => Bound::Unbounded,
        };
        let mut users = Vec::new();
        for entry in self
            .user_names
            .range::<Vec<u8>, _>((start, Bound::Unbounded))
            .values()
        {
            if users.len() >= limit {
                break;
            }
            // An index entry whose user is gone (never left by a committed change) is skipped.
            if let Some(user) = self.user_at(&entry.map_err(backend)?)? {
                users.push(user);
            }
        }
        Ok(users)
    }

    async fn append_audit(&self, event: AuditEvent) -> StoreResult<()> {
        self.insert_audit(&event)?;
        self.durable().await
    }

    async fn audit(&self, limit: usize) -> StoreResult<Vec<AuditEvent>> {
        self.audit
            .iter()
            .values()
            .rev()
            .take(limit)
            .map(|v| decode(&v.map_err(backend)?))
            .collect()
    }

    async fn audit_page(&self, query: &AuditQuery) -> StoreResult<AuditPage> {
        let end = query.before.unwrap_or(u64::MAX).to_be_bytes();
        let mut page = AuditPage::default();
        let mut last = None;
        for (examined, entry) in self.audit.range(..end).rev().enumerate() {
            if page.events.len() >= query.limit || examined >= AUDIT_SCAN_LIMIT {
                page.next = last;
                break;
            }
            let (key, value) = entry.map_err(backend)?;
            let id = audit_id(&key)?;
            last = Some(id);
            let mut event: AuditEvent = decode(&value)?;
            // Numbered in the order they were written: older ones have older times.
            if query
                .since
                .as_ref()
                .is_some_and(|since| event.time < *since)
            {
                break;
            }
            if query.matches(&event) {
                event.id = Some(id);
                page.events.push(event);
            }
        }
        Ok(page)
    }

    async fn purge_audit(&self, before: &str) -> StoreResult<u64> {
        let mut purged = 0;
        for entry in self.audit.iter() {
            let (key, value) = entry.map_err(backend)?;
            let event: AuditEvent = decode(&value)?;
            if event.time.as_str() >= before {
                break;
            }
            self.audit.remove(key).map_err(backend)?;
            purged += 1;
        }
        if purged > 0 {
            self.durable().await?;
        }
        Ok(purged)
    }

    async fn create_session(&self, session: Session, keep: usize) -> StoreResult<()> {
        self.insert_session(&session, keep)?;
        self.durable().await
    }

    async fn session(&self, id_hash: &str) -> StoreResult<Option<Session>> {
        Ok(self.read_session(id_hash)?.map(Arc::unwrap_or_clone))
    }

    async fn shared_session(&self, id_hash: &str) -> StoreResult<Option<Arc<Session>>> {
        self.read_session(id_hash)
    }

    async fn touch_session(&self, id_hash: &str, now: i64) -> StoreResult<bool> {
        // Not flushed: `last_seen` lost in a crash only makes the session look idle sooner.
        self.touch(id_hash, now)
    }

    async fn replace_session(&self, old_hash: &str, new: Session) -> StoreResult<bool> {
        let replaced = self.rotate(old_hash, &new)?;
        self.durable().await?;
        Ok(replaced)
    }

    async fn delete_session(&self, id_hash: &str) -> StoreResult<bool> {
        let deleted = self.remove_sessions([id_hash.as_bytes().to_vec()])? == 1;
        self.durable().await?;
        Ok(deleted)
    }

    async fn delete_user_sessions(&self, user_id: u64) -> StoreResult<u64> {
        let deleted = self.remove_user_sessions(user_id)?;
        self.durable().await?;
        Ok(deleted)
    }

    async fn purge_sessions(&self, now: i64, idle_before: i64) -> StoreResult<u64> {
        // Not flushed: a purged session that comes back after a crash has ended all the same.
        self.purge(now, idle_before)
    }

    async fn delete_idp_sessions(
        &self,
        provider: &str,
        user_id: Option<u64>,
        sid: Option<&str>,
    ) -> StoreResult<u64> {
        let deleted = self.remove_idp_sessions(provider, user_id, sid)?;
        self.durable().await?;
        Ok(deleted)
    }

    async fn create_login_flow(&self, flow: LoginFlow) -> StoreResult<()> {
        self.insert_login_flow(&flow)?;
        self.durable().await
    }

    async fn take_login_flow(&self, state_hash: &str, now: i64) -> StoreResult<Option<LoginFlow>> {
        let (flow, removed) = self.remove_login_flow(state_hash, now)?;
        if removed {
            self.durable().await?;
        }
        Ok(flow)
    }

    async fn purge_login_flows(&self, now: i64) -> StoreResult<u64> {
        // Not flushed: a purged flow that comes back after a crash has expired all the same.
        self.purge_flows(now)
    }

    async fn passkeys(&self, user_id: u64) -> StoreResult<Vec<Passkey>> {
        self.passkey_list(user_id)
    }

    async fn passkey(&self, id: &str) -> StoreResult<Option<Passkey>> {
        self.passkey_by_id(id)
    }

    async fn add_passkey(
        &self,
        passkey: Passkey,
        grant: PasskeyGrant<'_>,
        recovery_hashes: Option<Vec<String>>,
        now: i64,
    ) -> StoreResult<PasskeyAdded> {
        let added = self.insert_passkey(&passkey, grant, recovery_hashes.as_ref(), now)?;
        if added == PasskeyAdded::Added {
            self.durable().await?;
        }
        Ok(added)
    }

    async fn use_passkey(
        &self,
        id: &str,
        counter: u32,
        credential: serde_json::Value,
        last_used: &str,
    ) -> StoreResult<bool> {
        let accepted = self.record_passkey_use(id, counter, &credential, last_used)?;
        if accepted {
            self.durable().await?;
        }
        Ok(accepted)
    }

    async fn rename_passkey(&self, user_id: u64, id: &str, name: &str) -> StoreResult<bool> {
        let renamed = self.rename(user_id, id, name)?;
        if renamed {
            self.durable().await?;
        }
        Ok(renamed)
    }

    async fn delete_passkey(
        &self,
        user_id: u64,
        id: &str,
        keep_a_factor: bool,
    ) -> StoreResult<PasskeyRemoved> {
        let removed = self.remove_passkey(user_id, id, keep_a_factor)?;
        if removed == PasskeyRemoved::Removed {
            self.durable().await?;
        }
        Ok(removed)
    }

    async fn create_ceremony(&self, ceremony: PasskeyCeremony) -> StoreResult<()> {
        self.insert_ceremony(&ceremony)?;
        self.durable().await
    }

    async fn take_ceremony(&self, id_hash: &str, now: i64) -> StoreResult<Option<PasskeyCeremony>> {
        let (ceremony, removed) = self.remove_ceremony(id_hash, now)?;
        if removed {
            self.durable().await?;
        }
        Ok(ceremony)
    }

    async fn purge_ceremonies(&self, now: i64) -> StoreResult<u64> {
        // Not flushed: a purged ceremony that comes back after a crash has expired all the same.
        self.purge_expired_ceremonies(now)
    }

    async fn flush(&self) -> StoreResult<()> {
        self.durable().await
    }

    async fn export(&self) -> StoreResult<Snapshot> {
        fn all<T: DeserializeOwned>(tree: &Tree) -> StoreResult<Vec<T>> {
            tree.iter()
                .values()
                .map(|v| decode(&v.map_err(backend)?))
                .collect()
        }
        let mut snapshot = Snapshot {
            users: all(&self.users)?,
            applications: all(&self.applications)?,
            organizations: all(&self.organizations)?,
            ws_keys: all(&self.ws_keys)?,
            signing_keys: all(&self.signing_keys)?,
            tickets: all(&self.tickets)?,
            domains: all(&self.domains)?,
            audit: all(&self.audit)?,
            ..Snapshot::default()
        };
        for entry in self.mfa.iter() {
            let (key, value) = entry.map_err(backend)?;
            let (Some(id), Some(tag)) = (key.get(..8), key.get(8)) else {
                continue;
            };
            let mut raw = [0u8; 8];
            raw.copy_from_slice(id);
            let user_id = u64::from_be_bytes(raw);
            match tag {
                b'f' => snapshot.factors.push(decode(&value)?),
                b'c' => snapshot.codes.push(decode(&value)?),
                b'r' => snapshot.recovery_codes.push((user_id, decode(&value)?)),
                b'l' => snapshot.lockouts.push((user_id, decode(&value)?)),
                b'p' => snapshot
                    .passkeys
                    .extend(decode::<Vec<crate::store::Passkey>>(&value)?),
                // `t`: the ticket index, rebuilt from the tickets themselves.
                _ => {}
            }
        }
        Ok(snapshot)
    }
}
