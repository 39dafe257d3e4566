//! Passkeys (SPEC §14): registering WebAuthn credentials, and using them as a second factor
//! (step-up, `amr` `hwk`) or, when discoverable, to sign in without a password (`hwk` and
//! `user`). The ceremonies themselves (challenges, signatures, counters, origins, CBOR) are
//! webauthn-rs's; this module keeps its state in the store, so that a ceremony begun on one
//! replica finishes on another, and applies gatehouse's rules: who may add a factor, lockout,
//! single use of every challenge, counters that only move forwards, audit.
//!
//! The relying party id is the host of `server.public_url`, and the only origin accepted is that
//! URL's origin. Attestation is not asked for (`none`); user verification is preferred for a
//! second factor and required to sign in without a password.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use webauthn_rs::prelude::{
    DiscoverableAuthentication, PublicKeyCredential, RegisterPublicKeyCredential, SecurityKey,
    SecurityKeyAuthentication, SecurityKeyRegistration, Uuid, Webauthn, WebauthnError,
};

use crate::auth::{Method, Principal};
use crate::clock;
use crate::store::{
    CeremonyPurpose, FactorKind, MAX_PASSKEYS, Passkey, PasskeyAdded, PasskeyCeremony,
    PasskeyGrant, PasskeyRemoved, SCHEMA_VERSION, User,
};

use super::codes;
use super::enroll::Confirmed;
use super::service::{Mfa, MfaError};

pub use super::relying_party::{CEREMONY_TTL, relying_party};

/// The longest name a passkey may have, in characters.
pub const NAME_MAX: usize = 64;

/// Ceremonies one replica begins per [`CEREMONY_TTL`]: each is a record in the store until the
/// browser answers or it ends.
pub const CEREMONIES_PER_REPLICA: u32 = 20_000;

/// How often a replica purges the ceremonies that ended unanswered, in seconds: a purge reads
/// every ceremony, so not at every one begun.
pub const CEREMONY_PURGE_INTERVAL: i64 = 60;

/// The name a passkey gets when the user gives none.
pub const DEFAULT_NAME: &str = "Passkey";

/// A ceremony begun: the id the page sends back with the browser's answer, and the options for
/// `navigator.credentials.create()` or `.get()` (`{"publicKey": {...}}`, binary values in
/// base64url).
#[derive(Debug, Clone)]
pub struct Ceremony {
    pub id: String,
    pub options: Value,
}

/// Who registers a passkey.
#[derive(Debug, Clone, Copy)]
pub enum Registrant<'a> {
    /// A signed-in user (the session's principal).
    Session(&'a Principal),
    /// Whoever holds the enrollment link with this ticket id.
    Ticket(&'a str),
}

/// A passkey name as given: trimmed, at most [`NAME_MAX`] characters, no control characters;
/// [`DEFAULT_NAME`] when empty.
pub fn passkey_name(name: &str) -> Result<String, MfaError> {
    let name = name.trim();
    if name.chars().count() > NAME_MAX {
        return Err(MfaError::Invalid(format!(
            "a passkey name has at most {NAME_MAX} characters"
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(MfaError::Invalid(
            "a passkey name cannot hold control characters".into(),
        ));
    }
    Ok(if name.is_empty() {
        DEFAULT_NAME.to_owned()
    } else {
        name.to_owned()
    })
}

/// A credential id as the store keys it.
fn credential_id(raw: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(raw)
}

fn to_json(value: &impl Serialize) -> Result<Value, MfaError> {
    serde_json::to_value(value).map_err(|e| MfaError::Internal(e.to_string()))
}

fn from_json<T: DeserializeOwned>(value: Value) -> Result<T, MfaError> {
    serde_json::from_value(value).map_err(|e| MfaError::Internal(e.to_string()))
}

/// The browser's answer, as the page posts it (JSON).
fn answer<T: DeserializeOwned>(text: &str) -> Result<T, MfaError> {
    serde_json::from_str(text)
        .map_err(|_| MfaError::Invalid("the browser's answer could not be read".into()))
}

/// What every use of a passkey ends with: a refusal named for the audit log.
fn refused(e: impl std::fmt::Display) -> String {
    format!("passkey refused: {e}")
}

/// webauthn-rs's refusal, in the audit log's words where they say more.
fn refused_by_library(e: &WebauthnError) -> String {
    match e {
        WebauthnError::CredentialPossibleCompromise => refused(
            "the signature counter did not move forwards (a cloned authenticator, or a replay)",
        ),
        WebauthnError::InvalidRPOrigin => {
            refused("the browser signed for another origin than server.public_url's")
        }
        other => refused(other),
    }
}

impl Mfa {
    /// The time on the clock the ceremonies go by (Unix seconds).
    pub fn now(&self) -> i64 {
        self.clock.unix()
    }

    /// Whether passkeys can be used here (`server.public_url` names a host).
    pub fn passkeys_enabled(&self) -> bool {
        self.webauthn.is_some()
    }

    fn relying_party(&self) -> Result<&Arc<Webauthn>, MfaError> {
        self.webauthn.as_ref().ok_or_else(|| {
            MfaError::Invalid(
                "passkeys need server.public_url to name a host, not an IP address".into(),
            )
        })
    }

    /// The user's passkeys, oldest first.
    pub async fn passkeys(&self, principal: &Principal) -> Result<Vec<Passkey>, MfaError> {
        let user = self.user(principal).await?;
        Ok(self.store.passkeys(user.id).await?)
    }

    /// Stores a ceremony's state and gives the page its id and options.
    async fn begin(
        &self,
        record: PasskeyCeremony,
        state: &impl Serialize,
        options: Value,
    ) -> Result<Ceremony, MfaError> {
        let now = self.clock.unix();
        {
            let mut window = self
                .ceremonies
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if now - window.0 >= CEREMONY_TTL {
                *window = (now, 0);
            }
            if window.1 >= CEREMONIES_PER_REPLICA {
                return Err(MfaError::SendLimited(window.0 + CEREMONY_TTL - now));
            }
            window.1 += 1;
        }
        let id = codes::ticket_id().map_err(MfaError::Internal)?;
        self.store
            .create_ceremony(PasskeyCeremony {
                id_hash: crate::sessions::id_hash(&id),
                state: to_json(state)?,
                expires: now + CEREMONY_TTL,
                ..record
            })
            .await?;
        let last = self
            .ceremonies_purged
            .load(std::sync::atomic::Ordering::Relaxed);
        if now - last >= CEREMONY_PURGE_INTERVAL
            && self
                .ceremonies_purged
                .compare_exchange(
                    last,
                    now,
                    std::sync::atomic::Ordering::Relaxed,
                    std::sync::atomic::Ordering::Relaxed,
                )
                .is_ok()
            && let Err(e) = self.store.purge_ceremonies(now).await
        {
            tracing::warn!(error = %e, "cannot purge ended passkey ceremonies");
        }
        Ok(Ceremony { id, options })
    }

    /// Takes the ceremony `id` names, once: `TicketGone` when it is unknown, used, expired or
    /// for another purpose.
    async fn take(&self, id: &str, purpose: CeremonyPurpose) -> Result<PasskeyCeremony, MfaError> {
        if !codes::is_ticket_id(id) {
            return Err(MfaError::TicketGone);
        }
        let now = self.clock.unix();
        match self
            .store
            .take_ceremony(&crate::sessions::id_hash(id), now)
            .await?
        {
            Some(c) if c.purpose == purpose => Ok(c),
            _ => Err(MfaError::TicketGone),
        }
    }

    /// The user a ticket or a session registers for, and the ticket id.
    async fn registrant(&self, who: Registrant<'_>) -> Result<(User, Option<String>), MfaError> {
        match who {
            Registrant::Session(principal) => {
                let user = self.user(principal).await?;
                self.may_add_factor(user.id, &principal.methods).await?;
                Ok((user, None))
            }
            Registrant::Ticket(ticket_id) => {
                let ticket = self.live_ticket(ticket_id).await?;
                if ticket.kind != FactorKind::Webauthn {
                    return Err(MfaError::Invalid("this link sets up another factor".into()));
                }
                let user = self
                    .store
                    .user_by_id(ticket.user_id)
                    .await?
                    .ok_or(MfaError::TicketUnknown)?;
                Ok((user, Some(ticket.id)))
            }
        }
    }

    /// Begins registering a passkey named `name`.
    pub async fn begin_registration(
        &self,
        who: Registrant<'_>,
        name: &str,
    ) -> Result<Ceremony, MfaError> {
        let rp = self.relying_party()?.clone();
        let name = passkey_name(name)?;
        let (user, ticket) = self.registrant(who).await?;
        let existing = self.store.passkeys(user.id).await?;
        if existing.len() >= MAX_PASSKEYS {
            return Err(MfaError::Invalid(format!(
                "an account holds at most {MAX_PASSKEYS} passkeys; remove one first"
            )));
        }
        let handle = match existing.first() {
            Some(p) => Uuid::parse_str(&p.user_handle)
                .map_err(|e| MfaError::Internal(format!("a stored user handle: {e}")))?,
            None => Uuid::new_v4(),
        };
        // The user's passkeys are excluded, so an authenticator holding one says so at once.
        let exclude = existing
            .iter()
            .filter_map(|p| URL_SAFE_NO_PAD.decode(&p.id).ok())
            .collect();
        let display = user.email.as_deref().unwrap_or(&user.user_name);
        let (creation, state) = rp
            .start_securitykey_registration(
                handle,
                &user.user_name,
                display,
                Some(exclude),
                None,
                None,
            )
            .map_err(|e| MfaError::Internal(format!("cannot start a passkey registration: {e}")))?;
        let mut options = to_json(&creation)?;
        // A passkey the authenticator can keep discoverable (for sign-in without a user name)
        // where it can, with user verification preferred, on any kind of authenticator.
        options["publicKey"]["authenticatorSelection"] = json!({
            "residentKey": "preferred",
            "requireResidentKey": false,
            "userVerification": "preferred",
        });
        if let Some(public_key) = options["publicKey"].as_object_mut() {
            public_key.remove("hints");
        }
        // Nor does it ask the authenticator to require user verification for every use of the
        // credential (`credProtect`): browsers refuse that beside a preferred verification.
        if let Some(extensions) = options["publicKey"]["extensions"].as_object_mut() {
            extensions.remove("credentialProtectionPolicy");
            extensions.remove("enforceCredentialProtectionPolicy");
        }
        self.begin(
            PasskeyCeremony {
                v: SCHEMA_VERSION,
                id_hash: String::new(),
                purpose: CeremonyPurpose::Register,
                user_id: Some(user.id),
                ticket,
                name: Some(name),
                user_handle: Some(handle.to_string()),
                state: Value::Null,
                expires: 0,
            },
            &state,
            options,
        )
        .await
    }

    /// Finishes a registration with the browser's answer (`credential`, JSON): the passkey is
    /// the user's, with recovery codes when it is the user's first factor.
    pub async fn finish_registration(
        &self,
        who: Registrant<'_>,
        ceremony_id: &str,
        credential: &str,
    ) -> Result<Confirmed, MfaError> {
        let rp = self.relying_party()?.clone();
        let ceremony = self.take(ceremony_id, CeremonyPurpose::Register).await?;
        let (user, grant) = match who {
            Registrant::Session(principal) => {
                let user = self.user(principal).await?;
                if ceremony.user_id != Some(user.id) || ceremony.ticket.is_some() {
                    return Err(MfaError::TicketGone);
                }
                let grant = if principal.methods.iter().any(|m| m.is_second_factor()) {
                    PasskeyGrant::SecondFactor
                } else {
                    PasskeyGrant::FirstFactor
                };
                (user, grant)
            }
            Registrant::Ticket(ticket_id) => {
                if ceremony.ticket.as_deref() != Some(ticket_id) {
                    return Err(MfaError::TicketGone);
                }
                let ticket = self.live_ticket(ticket_id).await?;
                let user = self
                    .store
                    .user_by_id(ticket.user_id)
                    .await?
                    .ok_or(MfaError::TicketUnknown)?;
                if ceremony.user_id != Some(user.id) {
                    return Err(MfaError::TicketGone);
                }
                (user, PasskeyGrant::Ticket(ticket_id))
            }
        };
        let answer: RegisterPublicKeyCredential = answer(credential)?;
        let state: SecurityKeyRegistration = from_json(ceremony.state)?;
        let key = match rp.finish_securitykey_registration(&answer, &state) {
            Ok(key) => key,
            Err(e) => {
                self.audit("mfa.passkey.refused", &user, Some(refused_by_library(&e)))
                    .await;
                return Err(MfaError::Invalid(format!(
                    "the passkey could not be registered ({e})"
                )));
            }
        };
        let now = self.clock.unix();
        let first = self.store.factors(user.id).await?.is_empty();
        let recovery = if first {
            Some(self.new_recovery_codes()?)
        } else {
            None
        };
        let hashes = recovery.as_ref().map(|codes| self.recovery_hashes(codes));
        let name = ceremony.name.unwrap_or_else(|| DEFAULT_NAME.to_owned());
        let passkey = Passkey {
            v: SCHEMA_VERSION,
            id: credential_id(key.cred_id()),
            user_id: user.id,
            user_handle: ceremony
                .user_handle
                .ok_or_else(|| MfaError::Internal("a ceremony without a user handle".into()))?,
            name: name.clone(),
            created: clock::rfc3339(self.clock.now()),
            last_used: None,
            counter: 0,
            discoverable: answer.extensions.cred_props.as_ref().and_then(|p| p.rk),
            credential: to_json(&key)?,
        };
        match self.store.add_passkey(passkey, grant, hashes, now).await? {
            PasskeyAdded::Added => {}
            PasskeyAdded::Refused => {
                return Err(match grant {
                    PasskeyGrant::Ticket(_) => MfaError::TicketGone,
                    _ => MfaError::AlreadyEnrolled,
                });
            }
            PasskeyAdded::Duplicate => {
                return Err(MfaError::Invalid(
                    "this passkey is registered already".into(),
                ));
            }
            PasskeyAdded::Full => {
                return Err(MfaError::Invalid(format!(
                    "an account holds at most {MAX_PASSKEYS} passkeys; remove one first"
                )));
            }
        }
        self.audit(
            "mfa.factor.confirmed",
            &user,
            Some(format!("factor webauthn, passkey {name:?}")),
        )
        .await;
        Ok(Confirmed {
            kind: FactorKind::Webauthn,
            recovery_codes: recovery,
        })
    }

    /// The user's passkeys with the credentials webauthn-rs checks against.
    async fn keys(&self, user: &User) -> Result<Vec<SecurityKey>, MfaError> {
        self.store
            .passkeys(user.id)
            .await?
            .into_iter()
            .map(|p| from_json(p.credential))
            .collect()
    }

    /// Begins a step-up with one of the user's passkeys.
    pub async fn begin_step_up(&self, principal: &Principal) -> Result<Ceremony, MfaError> {
        let rp = self.relying_party()?.clone();
        let user = self.user(principal).await?;
        self.check_lock(&user).await?;
        let keys = self.keys(&user).await?;
        if keys.is_empty() {
            return Err(MfaError::NoFactor("the user has no passkey"));
        }
        let (request, state) = rp
            .start_securitykey_authentication(&keys)
            .map_err(|e| MfaError::Internal(format!("cannot start a passkey check: {e}")))?;
        let mut options = to_json(&request)?;
        if let Some(public_key) = options["publicKey"].as_object_mut() {
            public_key.remove("hints");
        }
        self.begin(
            PasskeyCeremony {
                v: SCHEMA_VERSION,
                id_hash: String::new(),
                purpose: CeremonyPurpose::StepUp,
                user_id: Some(user.id),
                ticket: None,
                name: None,
                user_handle: None,
                state: Value::Null,
                expires: 0,
            },
            &state,
            options,
        )
        .await
    }

    /// Finishes a step-up: the method it proves (`hwk`).
    pub async fn finish_step_up(
        &self,
        principal: &Principal,
        ceremony_id: &str,
        credential: &str,
    ) -> Result<Method, MfaError> {
        let rp = self.relying_party()?.clone();
        let user = self.user(principal).await?;
        let ceremony = self.take(ceremony_id, CeremonyPurpose::StepUp).await?;
        if ceremony.user_id != Some(user.id) {
            return Err(MfaError::TicketGone);
        }
        let attempt = self.reserve(&user).await?;
        let checked = answer::<PublicKeyCredential>(credential).and_then(|answer| {
            let state: SecurityKeyAuthentication = from_json(ceremony.state)?;
            rp.finish_securitykey_authentication(&answer, &state)
                .map_err(|e| MfaError::Invalid(refused_by_library(&e)))
        });
        let result = match checked {
            Ok(result) => result,
            Err(e) => {
                let detail = match &e {
                    MfaError::Invalid(why) => why.clone(),
                    other => refused(format!("{other:?}")),
                };
                return Err(self.failed(&user, attempt, Some(&detail)).await);
            }
        };
        let id = credential_id(result.cred_id());
        if let Err(why) = self.record_use(&user, &id, &result).await? {
            return Err(self.failed(&user, attempt, Some(&why)).await);
        }
        self.passed(&user, attempt).await?;
        self.audit("mfa.verified", &user, Some("factor webauthn".into()))
            .await;
        Ok(Method::Hwk)
    }

    /// Stores an accepted use of the user's passkey `id`: its counter moves forwards or the use
    /// is refused (`Err` with why, for the audit log).
    async fn record_use(
        &self,
        user: &User,
        id: &str,
        result: &webauthn_rs::prelude::AuthenticationResult,
    ) -> Result<Result<(), String>, MfaError> {
        let Some(passkey) = self.store.passkey(id).await? else {
            return Ok(Err(refused("the passkey was removed meanwhile")));
        };
        if passkey.user_id != user.id {
            return Ok(Err(refused("another user's passkey")));
        }
        let mut key: SecurityKey = from_json(passkey.credential)?;
        key.update_credential(result);
        let now = clock::rfc3339(self.clock.now());
        if self
            .store
            .use_passkey(id, result.counter(), to_json(&key)?, &now)
            .await?
        {
            Ok(Ok(()))
        } else {
            Ok(Err(refused(format!(
                "signature counter {} is not after {} (a cloned authenticator, or a replay)",
                result.counter(),
                passkey.counter
            ))))
        }
    }

    /// Begins a sign-in without a user name: the browser offers the discoverable passkeys it
    /// knows for this site.
    pub async fn begin_sign_in(&self) -> Result<Ceremony, MfaError> {
        let rp = self.relying_party()?.clone();
        let (request, state) = rp
            .start_discoverable_authentication()
            .map_err(|e| MfaError::Internal(format!("cannot start a passkey sign-in: {e}")))?;
        let mut options = to_json(&request)?;
        // Asked for by a button, so the browser's own dialog, not autofill's.
        if let Some(object) = options.as_object_mut() {
            object.remove("mediation");
        }
        self.begin(
            PasskeyCeremony {
                v: SCHEMA_VERSION,
                id_hash: String::new(),
                purpose: CeremonyPurpose::SignIn,
                user_id: None,
                ticket: None,
                name: None,
                user_handle: None,
                state: Value::Null,
                expires: 0,
            },
            &state,
            options,
        )
        .await
    }

    /// Finishes a sign-in without a user name: the user whose passkey signed, once its
    /// signature, user verification, origin and counter are right. `Err((user name, error))`:
    /// the user the answer named, when it named one, for the audit log.
    pub async fn finish_sign_in(
        &self,
        ceremony_id: &str,
        credential: &str,
    ) -> Result<(User, String), (Option<String>, MfaError)> {
        let rp = self.relying_party().map_err(|e| (None, e))?.clone();
        let ceremony = self
            .take(ceremony_id, CeremonyPurpose::SignIn)
            .await
            .map_err(|e| (None, e))?;
        let answer: PublicKeyCredential = answer(credential).map_err(|e| (None, e))?;
        let (handle, raw_id) = rp
            .identify_discoverable_authentication(&answer)
            .map_err(|e| (None, MfaError::Invalid(refused(e))))?;
        let id = credential_id(raw_id);
        let unknown = || (None, MfaError::Invalid(refused("no such passkey")));
        let passkey = self
            .store
            .passkey(&id)
            .await
            .map_err(|e| (None, e.into()))?
            .ok_or_else(unknown)?;
        if passkey.user_handle != handle.to_string() {
            return Err(unknown());
        }
        let user = self
            .store
            .user_by_id(passkey.user_id)
            .await
            .map_err(|e| (None, e.into()))?
            .ok_or_else(unknown)?;
        // A user who may not sign in is refused like an unknown passkey, before any attempt.
        if !user.is_valid {
            return Err((
                Some(user.user_name.clone()),
                MfaError::Invalid(refused("the user may not sign in")),
            ));
        }
        let named = |e: MfaError| (Some(user.user_name.clone()), e);
        let attempt = self.reserve(&user).await.map_err(named)?;
        let checked = (|| {
            let state: DiscoverableAuthentication = from_json(ceremony.state)?;
            let key: SecurityKey = from_json(passkey.credential.clone())?;
            rp.finish_discoverable_authentication_v2(&answer, state, &key)
                .map_err(|e| MfaError::Invalid(refused_by_library(&e)))
        })();
        let result = match checked {
            Ok(result) if result.user_verified() => result,
            Ok(_) => {
                let why = refused("the authenticator did not verify the user");
                return Err(named(self.failed(&user, attempt, Some(&why)).await));
            }
            Err(e) => {
                let detail = match &e {
                    MfaError::Invalid(why) => why.clone(),
                    other => refused(format!("{other:?}")),
                };
                return Err(named(self.failed(&user, attempt, Some(&detail)).await));
            }
        };
        match self.record_use(&user, &id, &result).await {
            Ok(Ok(())) => {}
            Ok(Err(why)) => return Err(named(self.failed(&user, attempt, Some(&why)).await)),
            Err(e) => return Err(named(e)),
        }
        self.passed(&user, attempt).await.map_err(named)?;
        Ok((user, id))
    }

    /// Renames one of the user's passkeys.
    pub async fn rename_passkey(
        &self,
        principal: &Principal,
        id: &str,
        name: &str,
    ) -> Result<(), MfaError> {
        let user = self.user(principal).await?;
        let name = passkey_name(name)?;
        if !self.store.rename_passkey(user.id, id, &name).await? {
            return Err(MfaError::NoFactor("the user has no such passkey"));
        }
        self.audit(
            "mfa.passkey.renamed",
            &user,
            Some(format!("passkey {name:?}")),
        )
        .await;
        Ok(())
    }

    /// Removes one of the user's passkeys. Removing the user's last factor needs a credential
    /// that holds a second factor (checked atomically with the removal).
    pub async fn remove_passkey(&self, principal: &Principal, id: &str) -> Result<(), MfaError> {
        let user = self.user(principal).await?;
        let second_factor = principal.methods.iter().any(|m| m.is_second_factor());
        let name = self
            .store
            .passkeys(user.id)
            .await?
            .into_iter()
            .find(|p| p.id == id)
            .map(|p| p.name);
        match self
            .store
            .delete_passkey(user.id, id, !second_factor)
            .await?
        {
            PasskeyRemoved::Removed => {}
            PasskeyRemoved::NotFound => {
                return Err(MfaError::NoFactor("the user has no such passkey"));
            }
            PasskeyRemoved::LastFactor => return Err(MfaError::NeedsMfa),
        }
        self.audit(
            "mfa.passkey.removed",
            &user,
            Some(format!("passkey {:?}", name.unwrap_or_default())),
        )
        .await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_relying_party_is_the_public_urls_host() {
        assert!(relying_party("https://gate.example").is_some());
        assert!(relying_party("https://localhost:8443/base").is_some());
        assert!(relying_party("https://127.0.0.1:8443").is_none());
        assert!(relying_party("https://[::1]:8443").is_none());
        assert!(relying_party("not a url").is_none());
    }

    #[test]
    fn passkey_names_are_trimmed_bounded_and_printable() {
        assert_eq!(passkey_name("  Laptop ").unwrap(), "Laptop");
        assert_eq!(passkey_name("").unwrap(), DEFAULT_NAME);
        assert!(passkey_name(&"x".repeat(NAME_MAX)).is_ok());
        assert!(passkey_name(&"x".repeat(NAME_MAX + 1)).is_err());
        assert!(passkey_name("a\u{0}b").is_err());
        assert!(passkey_name("a\nb").is_err());
    }
}
