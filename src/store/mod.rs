//! Persistence behind a narrow trait of use cases. Each backend lives in a sibling file.
//!
//! Every record carries a schema version (`v`) so that later releases can migrate old records.
//! Operations that security depends on (unique names, consumed secrets) are atomic in the backend,
//! and every write a response acknowledges is durable before the call returns.

pub mod postgres;
pub mod sled;

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::clock;
use crate::lockout::{LockoutState, Policy, Reservation};

/// How the ids of WS opt-in registrations begin (`ws-optin-{ProviderUserId}`). They are kept
/// beside enrollment tickets but are not tickets (SPEC §10): no enrollment link or
/// verify-enrollment-otp reaches them.
pub const OPT_IN_PREFIX: &str = "ws-optin-";

/// Schema version written into every record of this release.
pub const SCHEMA_VERSION: u32 = 1;

/// Why a store operation failed.
#[derive(Debug)]
pub enum StoreError {
    /// A unique name or id is already taken.
    Conflict(String),
    /// A record the operation refers to does not exist.
    NotFound(String),
    /// The backend failed (I/O, corruption, unreachable).
    Backend(String),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Conflict(what) => write!(f, "{what} already exists"),
            StoreError::NotFound(what) => write!(f, "{what} not found"),
            StoreError::Backend(e) => write!(f, "store failure: {e}"),
        }
    }
}

impl std::error::Error for StoreError {}

pub type StoreResult<T> = Result<T, StoreError>;

/// An instant given to the store (Unix seconds) as records write it: RFC 3339 in UTC with second
/// precision ([`clock::rfc3339`]), the form every API shows.
fn stamp(now: i64) -> StoreResult<String> {
    time::OffsetDateTime::from_unix_timestamp(now)
        .map(clock::rfc3339)
        .map_err(|_| StoreError::Backend(format!("the time {now} is out of range")))
}

/// A user: every field of the Manage seed's user object, plus credentials and grants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub v: u32,
    /// Stable numeric id.
    pub id: u64,
    pub uuid: String,
    pub user_name: String,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub nick_name: Option<String>,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub text_number: Option<String>,
    /// argon2id PHC string; `None` for users who cannot log in with a password.
    pub password_hash: Option<String>,
    pub password_expires: Option<String>,
    pub force_password_change: bool,
    pub latest_invite_status: Option<String>,
    pub latest_invite_date: Option<String>,
    pub latest_invite_uuid: Option<String>,
    pub is_valid: bool,
    pub last_login_timestamp: Option<String>,
    pub user_rollout_stage: Option<String>,
    pub scopes: Vec<String>,
    pub memberships: Vec<Membership>,
    /// WS family FileIds this user may use.
    pub files: Vec<i64>,
    /// `(iss, sub)` for users created from a trusted issuer's token.
    pub external: Option<ExternalId>,
    pub created: String,
    pub modified: String,
    /// Unix seconds: a token of this user whose `iat` is earlier is refused (SPEC §13, "revoke
    /// tokens"); 0 for a user whose tokens were never revoked (and in records written before the
    /// field existed). See [`User::revoke_tokens`].
    #[serde(default)]
    pub tokens_not_before: i64,
}

impl User {
    /// A new user as both backends store it: valid, with no grants, a fresh UUID and `now` as
    /// its creation and change time. The backend assigns `id`.
    pub fn new(id: u64, new: NewUser, now: &str) -> User {
        User {
            v: SCHEMA_VERSION,
            id,
            uuid: uuid::Uuid::new_v4().to_string(),
            user_name: new.user_name,
            first_name: new.first_name,
            last_name: new.last_name,
            nick_name: new.nick_name,
            email: new.email,
            phone: new.phone,
            text_number: None,
            password_hash: new.password_hash,
            password_expires: None,
            force_password_change: false,
            latest_invite_status: None,
            latest_invite_date: None,
            latest_invite_uuid: None,
            is_valid: true,
            last_login_timestamp: None,
            user_rollout_stage: None,
            scopes: new.scopes,
            memberships: Vec::new(),
            files: Vec::new(),
            external: new.external,
            created: now.to_owned(),
            modified: now.to_owned(),
            tokens_not_before: 0,
        }
    }

    /// Whether the user may use credentials at all: `false` once disabled (the seed's
    /// `isValid`, shown as `disabled` by the admin API).
    pub fn disabled(&self) -> bool {
        !self.is_valid
    }

    /// Refuses every token issued to the user up to and including the second `now`.
    ///
    /// Tokens carry `iat` in whole seconds, so a cut-off at `now` itself could not tell a token
    /// issued earlier in that second from one issued later in it. The cut-off is therefore the
    /// next second, `now + 1`, which refuses all of second `now`; tokens issued afterwards take
    /// `iat = max(now, cut-off)` ([`User::token_iat`]), so one issued right after the revocation,
    /// still within second `now`, carries `now + 1` and is accepted. The cut-off never moves
    /// back (a replica whose clock lags cannot undo a later revocation), and each revocation
    /// moves it past the one before: a token issued since then carries at most that cut-off as
    /// its `iat` (a second revocation within the same second, or on a replica whose clock lags,
    /// must refuse it too).
    pub fn revoke_tokens(&mut self, now: i64) {
        self.tokens_not_before = self.tokens_not_before.max(now).saturating_add(1);
    }

    /// Whether a token of this user issued at `iat` (Unix seconds) is still accepted.
    pub fn accepts_token_issued(&self, iat: i64) -> bool {
        iat >= self.tokens_not_before
    }

    /// The `iat` a token issued to this user at `now` carries: never before the cut-off, so that
    /// a token issued within the second of a revocation outlives it.
    pub fn token_iat(&self, now: i64) -> i64 {
        now.max(self.tokens_not_before)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExternalId {
    pub issuer: String,
    pub subject: String,
}

pub use crate::identity::{Membership, Role};

/// The fields a new user is created with (the admin API's POST body, password already hashed).
#[derive(Debug, Clone, Default)]
pub struct NewUser {
    pub user_name: String,
    pub password_hash: Option<String>,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub nick_name: Option<String>,
    pub scopes: Vec<String>,
    pub external: Option<ExternalId>,
}

/// A change to a user; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct UserPatch {
    pub user_name: Option<String>,
    pub password_hash: Option<String>,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub nick_name: Option<String>,
    pub scopes: Option<Vec<String>>,
    pub last_login_timestamp: Option<String>,
    /// `false` refuses every credential of the user ([`crate::auth::Principal::admit`]).
    pub is_valid: Option<bool>,
}

impl UserPatch {
    /// Applies the change to a user record (every backend uses this one definition).
    pub fn apply(self, user: &mut User) {
        if let Some(v) = self.user_name {
            user.user_name = v;
        }
        if let Some(v) = self.password_hash {
            user.password_hash = Some(v);
        }
        if let Some(v) = self.email {
            user.email = Some(v);
        }
        if let Some(v) = self.phone {
            user.phone = Some(v);
        }
        if let Some(v) = self.first_name {
            user.first_name = Some(v);
        }
        if let Some(v) = self.last_name {
            user.last_name = Some(v);
        }
        if let Some(v) = self.nick_name {
            user.nick_name = Some(v);
        }
        if let Some(v) = self.scopes {
            user.scopes = v;
        }
        if let Some(v) = self.last_login_timestamp {
            user.last_login_timestamp = Some(v);
        }
        if let Some(v) = self.is_valid {
            user.is_valid = v;
        }
    }
}

/// A registered application; its ApplicationToken is kept only as a hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Application {
    pub v: u32,
    pub name: String,
    pub token_hash: String,
    pub created: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Organization {
    pub v: u32,
    pub id: i64,
    pub name: String,
    pub created: String,
}

/// A legacy WS access key, bound to one user and one FileId; kept only as a hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WsKey {
    pub v: u32,
    pub key_hash: String,
    pub user_id: u64,
    pub file_id: i64,
    pub created: String,
}

/// A token signing key: Ed25519 PKCS#8 DER, sealed with the master key.
///
/// A key is published in the JWKS from the moment it is stored and signs from `activates` on,
/// until a newer key's `activates` comes (then it is retired: it only verifies what it signed,
/// until that has expired).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SigningKey {
    pub v: u32,
    pub kid: String,
    pub pkcs8: Vec<u8>,
    pub created: String,
    /// Unix seconds from which the key may sign. Keys stored before rotation existed have 0:
    /// they signed from the start.
    #[serde(default)]
    pub activates: i64,
}

/// A security event, kept for `audit.retention` and readable through the admin API. Fields
/// added since the first version default, so that events stored before them still decode.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEvent {
    /// The store's number for the event (newer events have larger ones); set when read, never
    /// stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    pub time: String,
    pub event: String,
    /// Absent on events stored before outcomes were recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_name: Option<String>,
    /// The client's address, when the event was caused by a request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    /// The request's `X-Request-Id`, when the event was caused by a request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// Whether what an audit event records succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Success,
    Failure,
}

impl Outcome {
    /// The outcome an event's name implies: failures are named so (`…failed`, `…lockout`,
    /// `rate_limited`).
    pub fn of(event: &str) -> Outcome {
        if event.ends_with("failed")
            || event.ends_with("refused")
            || event.ends_with("lockout")
            || event == "rate_limited"
        {
            Outcome::Failure
        } else {
            Outcome::Success
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
        }
    }
}

/// Which audit events [`Store::audit_page`] returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    /// The user's name, lower-cased (names compare regardless of letter case).
    pub user: Option<String>,
    pub event: Option<EventFilter>,
    /// Events at or after this RFC 3339 time (`YYYY-MM-DDTHH:MM:SSZ`, as stored).
    pub since: Option<String>,
    /// Events older than the one with this id (the cursor of the previous page).
    pub before: Option<u64>,
    pub limit: usize,
}

/// An event name, or a family of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventFilter {
    Exact(String),
    /// `signin.*`: `signin` and every name that begins `signin.`; holds `signin`.
    Family(String),
}

impl EventFilter {
    pub fn matches(&self, event: &str) -> bool {
        match self {
            EventFilter::Exact(name) => event == name,
            EventFilter::Family(name) => {
                event == name
                    || event
                        .strip_prefix(name.as_str())
                        .is_some_and(|rest| rest.starts_with('.'))
            }
        }
    }
}

impl AuditQuery {
    pub fn matches(&self, event: &AuditEvent) -> bool {
        self.user.as_ref().is_none_or(|user| {
            event
                .user_name
                .as_ref()
                .is_some_and(|name| name.to_lowercase() == *user)
        }) && self.event.as_ref().is_none_or(|f| f.matches(&event.event))
            && self
                .since
                .as_ref()
                .is_none_or(|since| event.time.as_str() >= since.as_str())
    }
}

/// One page of audit events, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditPage {
    pub events: Vec<AuditEvent>,
    /// Where the next page begins ([`AuditQuery::before`]) when more events may match.
    pub next: Option<u64>,
}

/// The most events [`Store::audit_page`] examines per call where it cannot use an index: a page
/// may come back short (with `next`) rather than make one call scan the whole log.
pub const AUDIT_SCAN_LIMIT: usize = 20_000;

/// A browser session (SPEC §11). Its id (256 random bits) is only ever in the visitor's cookie;
/// the store knows it by `id_hash`, the SHA-256 of the id in lower-case hex.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub id_hash: String,
    pub user_id: u64,
    /// The `amr` values the session proved (`pwd`, then a second factor after step-up).
    pub methods: Vec<String>,
    /// Unix seconds.
    pub created: i64,
    /// Unix seconds of the last request seen with it (updated coarsely, see `touch_session`).
    pub last_seen: i64,
    /// Unix seconds of its absolute end (`created` + `sessions.max_age`).
    pub expires: i64,
    /// The external provider the session was signed in through (SPEC §12), for back-channel
    /// logout; `None` for a local sign-in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idp: Option<IdpLink>,
}

/// Where an external provider's sign-in came from: the provider's `id` in the configuration and
/// the provider's own session id (`sid` of the ID token), when it sent one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdpLink {
    pub provider: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
}

/// A sign-in at an external provider in progress (SPEC §12), from the redirect to the provider
/// until its callback: found by the SHA-256 (lower-case hex) of the `state` the browser carries,
/// taken once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginFlow {
    pub state_hash: String,
    /// The provider's `id` in the configuration.
    pub provider: String,
    pub nonce: String,
    /// The PKCE code verifier (RFC 7636).
    pub pkce_verifier: String,
    /// Where the browser goes after signing in (a same-origin path).
    pub rd: String,
    /// Unix seconds after which the flow is void.
    pub expires: i64,
}

/// A kind of second factor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FactorKind {
    /// A TOTP authenticator app.
    Otp,
    Sms,
    Email,
    /// Passkeys (SPEC §14). The factor record stands for all of the user's passkeys: it exists
    /// while the user has at least one; the passkeys themselves are [`Passkey`] records.
    Webauthn,
}

impl FactorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FactorKind::Otp => "otp",
            FactorKind::Sms => "sms",
            FactorKind::Email => "email",
            FactorKind::Webauthn => "webauthn",
        }
    }

    pub fn parse(s: &str) -> Option<FactorKind> {
        match s {
            "otp" => Some(FactorKind::Otp),
            "sms" => Some(FactorKind::Sms),
            "email" => Some(FactorKind::Email),
            "webauthn" => Some(FactorKind::Webauthn),
            _ => None,
        }
    }

    pub(crate) fn tag(self) -> u8 {
        match self {
            FactorKind::Otp => b'o',
            FactorKind::Sms => b's',
            FactorKind::Email => b'e',
            FactorKind::Webauthn => b'w',
        }
    }
}

/// The most passkeys one user may hold.
pub const MAX_PASSKEYS: usize = 10;

/// A passkey (SPEC §14): a WebAuthn credential registered to a user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Passkey {
    pub v: u32,
    /// The credential id, base64url without padding; unique across users.
    pub id: String,
    pub user_id: u64,
    /// The user handle the authenticator keeps with a discoverable credential (a random UUID,
    /// one per user while the user has passkeys).
    pub user_handle: String,
    /// The name the user gave it.
    pub name: String,
    /// RFC 3339.
    pub created: String,
    /// RFC 3339 of its last accepted use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used: Option<String>,
    /// The signature counter last accepted; 0 while the authenticator keeps none.
    pub counter: u32,
    /// Whether the authenticator said it keeps the credential discoverable (for sign-in
    /// without a user name), when it said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discoverable: Option<bool>,
    /// The credential as the WebAuthn library keeps it (public key, counter, flags).
    pub credential: serde_json::Value,
}

/// What allows a passkey to be added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PasskeyGrant<'a> {
    /// An enrollment ticket of kind `webauthn`, checked and used as
    /// [`Store::confirm_ticket`] does.
    Ticket(&'a str),
    /// The credential that asked holds a second factor.
    SecondFactor,
    /// A credential without a second factor: only while the user has no confirmed factor.
    FirstFactor,
}

/// What [`Store::add_passkey`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PasskeyAdded {
    Added,
    /// The grant does not allow it (ticket unknown, used or expired, or a first factor for a
    /// user who has one); nothing changed.
    Refused,
    /// The credential id is registered already (to this user or another).
    Duplicate,
    /// The user holds [`MAX_PASSKEYS`] already.
    Full,
}

/// What [`Store::delete_passkey`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PasskeyRemoved {
    Removed,
    /// The user has no passkey of that id.
    NotFound,
    /// It is the user's last factor and the caller asked to keep one; nothing changed.
    LastFactor,
}

/// What a passkey ceremony in progress is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CeremonyPurpose {
    /// Registering a passkey (from a session or an enrollment ticket).
    Register,
    /// A second factor for a signed-in user.
    StepUp,
    /// Signing in without a user name (a discoverable credential).
    SignIn,
}

/// A WebAuthn ceremony between its options and the browser's answer: found by the SHA-256
/// (lower-case hex) of the ceremony id the page carries, taken once, on any replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PasskeyCeremony {
    pub v: u32,
    pub id_hash: String,
    pub purpose: CeremonyPurpose,
    /// The user it is for (none for a sign-in, where the credential names the user).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<u64>,
    /// The enrollment ticket a registration came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket: Option<String>,
    /// The name a new passkey will get.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The user handle a new passkey will carry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_handle: Option<String>,
    /// The WebAuthn library's state for the ceremony (its challenge).
    pub state: serde_json::Value,
    /// Unix seconds after which the ceremony is void.
    pub expires: i64,
}

/// A confirmed second factor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Factor {
    pub v: u32,
    pub user_id: u64,
    pub kind: FactorKind,
    /// The TOTP secret, sealed with the master key (never stored in clear).
    pub sealed_secret: Option<Vec<u8>>,
    /// Phone number or email address codes go to.
    pub destination: Option<String>,
    /// The last accepted TOTP time step (replay guard).
    pub last_step: Option<u64>,
    pub created: String,
}

/// A pending enrollment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ticket {
    pub v: u32,
    pub id: String,
    pub user_id: u64,
    pub kind: FactorKind,
    pub sealed_secret: Option<Vec<u8>>,
    pub destination: Option<String>,
    /// Unix time.
    pub created_at: i64,
    /// Unix time.
    pub expires_at: i64,
    pub used: bool,
    /// Whether the credential that made the ticket held a second factor. Only such a ticket may
    /// be confirmed beside a factor the user already has (SPEC §10); older records lack the
    /// field and count as made without one.
    #[serde(default)]
    pub second_factor: bool,
}

/// A one-time code sent out of band, kept as a keyed hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OobCode {
    pub v: u32,
    pub user_id: u64,
    /// What the code is for, e.g. `enroll:sms` or `verify:email`.
    pub purpose: String,
    pub code_hash: String,
    pub expires_at: i64,
}

/// What presenting a one-time code to [`Store::login_with_code`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CodeLogin {
    /// The code matched and was consumed; the user as now stored.
    Accepted(Box<User>),
    /// The code matched but had expired.
    Expired,
    /// No code of that purpose matched (never sent, already used, or wrong).
    Wrong,
}

/// An organisation's domain (seed 002's domain object).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Domain {
    pub v: u32,
    pub organization_id: i64,
    pub domain_id: i64,
    /// Normalised: IDNA ASCII, lower case, no trailing dot.
    pub domain: String,
    pub authentication_method: Option<String>,
    pub created: String,
    pub created_by: String,
    pub modified: String,
    pub modified_by: String,
    pub is_verified: bool,
    pub verification_code: Option<String>,
    /// RFC 3339, and the same instant as Unix seconds for comparisons.
    pub verification_code_expires: Option<String>,
    pub verification_code_expires_at: Option<i64>,
    pub verification_method: Option<String>,
    pub owner_organization_id: i64,
}

/// Everything a store holds that outlives a request, for moving a store to another backend
/// (`gatehouse migrate`). Send counters (rate-limit windows) are transient and left out, and so
/// are browser sessions: they are ephemeral, and a store moved to another backend starts with
/// everyone signed out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub users: Vec<User>,
    pub applications: Vec<Application>,
    pub organizations: Vec<Organization>,
    pub ws_keys: Vec<WsKey>,
    /// Oldest first.
    pub signing_keys: Vec<SigningKey>,
    pub tickets: Vec<Ticket>,
    pub factors: Vec<Factor>,
    pub codes: Vec<OobCode>,
    /// Per user id, the hashes of the unused recovery codes.
    pub recovery_codes: Vec<(u64, Vec<String>)>,
    pub lockouts: Vec<(u64, LockoutState)>,
    pub domains: Vec<Domain>,
    /// Oldest first.
    pub audit: Vec<AuditEvent>,
    pub passkeys: Vec<Passkey>,
}

impl Snapshot {
    /// A one-line account of what the snapshot holds.
    pub fn summary(&self) -> String {
        format!(
            "{} users, {} factors, {} passkeys, {} pending enrollments, {} domains, {} organisations, {} applications, {} WS keys, {} signing keys, {} audit events",
            self.users.len(),
            self.factors.len(),
            self.passkeys.len(),
            self.tickets.len(),
            self.domains.len(),
            self.organizations.len(),
            self.applications.len(),
            self.ws_keys.len(),
            self.signing_keys.len(),
            self.audit.len()
        )
    }
}

/// The newest of `keys` (stored order, oldest first): the latest `activates`, the last stored
/// among equals.
pub fn newest_signing_key(keys: &[SigningKey]) -> Option<&SigningKey> {
    keys.iter()
        .enumerate()
        .max_by_key(|(i, k)| (k.activates, *i))
        .map(|(_, k)| k)
}

/// Copies everything `from` holds into the empty store `to` (`gatehouse migrate`).
pub async fn copy(from: &dyn Store, to: &dyn Store) -> StoreResult<Snapshot> {
    let snapshot = from.export().await?;
    to.import(snapshot.clone()).await?;
    to.flush().await?;
    Ok(snapshot)
}

/// Use-case operations on gatehouse's state.
///
/// Every instant an operation takes (`now`) is Unix seconds, as the caller's [`clock::Clock`]
/// reads it. Records keep the form they are stored in: integer Unix times where the store
/// compares them (tickets, codes, lockouts, sends), RFC 3339 strings where an API shows them
/// (`created`, `modified`, `last_login_timestamp`).
#[async_trait]
pub trait Store: Send + Sync {
    /// Whether the store can be read and written (for `/readyz`).
    async fn check(&self) -> StoreResult<()>;

    /// Creates a user; `Conflict` when the name (case-insensitive) or external id is taken.
    async fn create_user(&self, new: NewUser, now: i64) -> StoreResult<User>;
    async fn user_by_name(&self, user_name: &str) -> StoreResult<Option<User>>;
    async fn user_by_id(&self, id: u64) -> StoreResult<Option<User>>;
    /// [`Store::user_by_id`] for a caller that only reads the record (every authenticated
    /// request): a backend that keeps decoded users shares its copy instead of cloning it.
    async fn shared_user_by_id(&self, id: u64) -> StoreResult<Option<Arc<User>>> {
        Ok(self.user_by_id(id).await?.map(Arc::new))
    }
    async fn user_by_external(&self, issuer: &str, subject: &str) -> StoreResult<Option<User>>;
    /// Changes the user named `user_name` (in any letter case) with `change` and records `now`
    /// as the time of the change, atomically: of concurrent changes to one user, each sees the
    /// one before, and none is lost. `change` only edits the record, and may run more than once
    /// when a backend retries. `NotFound` for an unknown user, `Conflict` when the change renames
    /// the user to a name that is taken (in any letter case).
    async fn modify_user(
        &self,
        user_name: &str,
        now: i64,
        // `for<'u>` spelled out: `async_trait` would otherwise tie the borrow to one lifetime.
        change: &(dyn for<'u> Fn(&'u mut User) + Sync),
    ) -> StoreResult<User>;
    /// Applies `patch`; `NotFound` for an unknown user, `Conflict` for a taken new name.
    async fn update_user(&self, user_name: &str, patch: UserPatch, now: i64) -> StoreResult<User> {
        self.modify_user(user_name, now, &|user| patch.clone().apply(user))
            .await
    }
    /// Deletes a user and everything bound to it; `false` when there was no such user.
    async fn delete_user(&self, user_name: &str) -> StoreResult<bool>;
    /// Removes every MFA factor (passkeys included), pending enrollment (WS opt-in
    /// registrations included) and recovery code of the user, atomically.
    async fn reset_mfa(&self, user_id: u64) -> StoreResult<()>;

    async fn create_application(&self, app: Application) -> StoreResult<()>;
    async fn application_by_token_hash(&self, token_hash: &str)
    -> StoreResult<Option<Application>>;

    async fn create_organization(&self, org: Organization) -> StoreResult<()>;
    async fn organization(&self, id: i64) -> StoreResult<Option<Organization>>;
    /// Adds the user to the organisation, or changes their role; `NotFound` for an unknown
    /// organisation or user.
    async fn set_membership(
        &self,
        user_name: &str,
        membership: Membership,
        now: i64,
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
        self.modify_user(user_name, now, &|user| {
            user.memberships
                .retain(|m| m.organization_id != membership.organization_id);
            user.memberships.push(membership);
        })
        .await
    }
    /// Grants the user a WS FileId (idempotent).
    async fn grant_file(&self, user_name: &str, file_id: i64, now: i64) -> StoreResult<User> {
        self.modify_user(user_name, now, &|user| {
            if !user.files.contains(&file_id) {
                user.files.push(file_id);
            }
        })
        .await
    }

    async fn create_ws_key(&self, key: WsKey) -> StoreResult<()>;
    async fn ws_key(&self, key_hash: &str) -> StoreResult<Option<WsKey>>;
    /// Deletes every WS access key bound to the user (a revocation of the user's tokens); how
    /// many there were.
    async fn delete_user_ws_keys(&self, user_id: u64) -> StoreResult<u64>;

    /// Signing keys, oldest first.
    async fn signing_keys(&self) -> StoreResult<Vec<SigningKey>>;
    async fn add_signing_key(&self, key: SigningKey) -> StoreResult<()>;
    /// Stores `key` if the store holds no signing key yet, and returns the stored keys (oldest
    /// first). Replicas starting at once on an empty shared store must end up with one key, or
    /// each would sign with a key the others do not know; backends shared by several processes
    /// make this atomic. For a single process the default (check, then add) suffices.
    async fn init_signing_key(&self, key: SigningKey) -> StoreResult<Vec<SigningKey>> {
        if self.signing_keys().await?.is_empty() {
            self.add_signing_key(key).await?;
        }
        self.signing_keys().await
    }

    /// Rotation, atomically across replicas: stores `key` unless the newest stored key (the one
    /// with the latest `activates`, the last stored among equals) activates after
    /// `unless_after`, and returns the newest key once done: `key` itself, or the one that made
    /// the rotation unnecessary. A manual rotation passes `now` (a key still pending is not
    /// replaced by another), a scheduled one the latest `activates` that is still recent enough.
    async fn rotate_signing_key(
        &self,
        key: SigningKey,
        unless_after: i64,
    ) -> StoreResult<SigningKey>;
    /// Deletes the signing key `kid` (one that no token still valid can name); `false` when
    /// there was none.
    async fn delete_signing_key(&self, kid: &str) -> StoreResult<bool>;

    async fn create_ticket(&self, ticket: Ticket) -> StoreResult<()>;
    async fn ticket(&self, id: &str) -> StoreResult<Option<Ticket>>;
    /// The user's most recent unused, unexpired enrollment ticket (not a WS registration).
    async fn newest_pending_ticket(&self, user_id: u64, now: i64) -> StoreResult<Option<Ticket>>;
    /// Atomically: marks the ticket used, stores `factor` as confirmed (replacing one of the
    /// same kind), sets `recovery_hashes` when given, and voids every other pending ticket of the
    /// user (they were made against the factors the user had before). `false` (nothing changed)
    /// when the ticket is unknown, used or expired, or was made without a second factor while
    /// the user now has a confirmed factor.
    async fn confirm_ticket(
        &self,
        ticket_id: &str,
        factor: Factor,
        recovery_hashes: Option<Vec<String>>,
        now: i64,
    ) -> StoreResult<bool>;
    async fn factors(&self, user_id: u64) -> StoreResult<Vec<Factor>>;
    /// Records `step` as the TOTP factor's last accepted step if it is later than the stored one;
    /// `false` when it is not (a replay, possibly a concurrent one).
    async fn accept_totp_step(&self, user_id: u64, step: u64) -> StoreResult<bool>;

    /// Stores a code, replacing any earlier one for the same user and purpose.
    async fn put_code(&self, code: OobCode) -> StoreResult<()>;
    /// Removes and returns the user's code for `purpose` if its hash matches and it has not expired.
    async fn consume_code(
        &self,
        user_id: u64,
        purpose: &str,
        code_hash: &str,
        now: i64,
    ) -> StoreResult<bool>;

    /// Consumes the user's code for `purpose` if its hash matches and it has not expired, clears
    /// the user's failure count, records `now` as the user's last login and stores `event` in
    /// the audit log, all made durable together before it returns. Nothing changes unless the
    /// answer is [`CodeLogin::Accepted`]; of two concurrent logins with one code, one is accepted.
    async fn login_with_code(
        &self,
        user_id: u64,
        purpose: &str,
        code_hash: &str,
        now: i64,
        event: &AuditEvent,
    ) -> StoreResult<CodeLogin>;

    async fn replace_recovery_codes(&self, user_id: u64, hashes: Vec<String>) -> StoreResult<()>;
    /// Removes the recovery code if the user has it.
    async fn consume_recovery_code(&self, user_id: u64, hash: &str) -> StoreResult<bool>;

    async fn lockout(&self, user_id: u64) -> StoreResult<LockoutState>;
    /// Reserves one attempt at a code (SPEC §10) with [`LockoutState::reserve`], atomically
    /// across concurrent callers and replicas: of any number of attempts at once, at most
    /// `policy.max_failures` are granted per window. A granted attempt's failure is counted
    /// already; a success releases it with [`Store::clear_failures`]. The write need not be
    /// durable on return: the caller flushes before answering a failure, and a success's own
    /// write makes it durable.
    async fn reserve_attempt(
        &self,
        user_id: u64,
        now: i64,
        policy: Policy,
    ) -> StoreResult<Reservation>;
    /// Releases the user's reserved attempts and resets the failure count and the lock.
    async fn clear_failures(&self, user_id: u64) -> StoreResult<()>;
    /// Gives back one attempt [`Store::reserve_attempt`] granted at `reserved_at` (with its
    /// `locks`) whose credential was right, leaving the failures of other attempts counted
    /// ([`LockoutState::release`]), atomically like the reservation. For a password: its
    /// success says nothing about the second factor's wrong codes.
    async fn release_attempt(
        &self,
        user_id: u64,
        reserved_at: i64,
        locks: Option<i64>,
    ) -> StoreResult<()>;
    /// Counts one send under `key`; `false` (and nothing counted) when `limit` sends already
    /// happened within `window` seconds.
    async fn count_send(&self, key: &str, now: i64, window: i64, limit: u32) -> StoreResult<bool>;
    /// Forgets every send counted under `key`: what they counted for did not happen after all.
    async fn forget_sends(&self, key: &str) -> StoreResult<()>;

    /// Adds a domain with a fresh id; `Conflict` when the organisation already has the name or
    /// another organisation has verified it.
    async fn create_domain(&self, domain: Domain) -> StoreResult<Domain>;
    async fn domains(&self, organization_id: i64) -> StoreResult<Vec<Domain>>;
    async fn domain(&self, organization_id: i64, domain_id: i64) -> StoreResult<Option<Domain>>;
    /// Stores a changed domain (same ids). Marking it verified is atomic with claiming the name:
    /// `Conflict` when another organisation verified it first.
    async fn save_domain(&self, domain: Domain) -> StoreResult<()>;
    async fn delete_domain(&self, organization_id: i64, domain_id: i64) -> StoreResult<bool>;

    async fn append_audit(&self, event: AuditEvent) -> StoreResult<()>;
    /// The newest `limit` events, newest first.
    async fn audit(&self, limit: usize) -> StoreResult<Vec<AuditEvent>>;
    /// At most `query.limit` events matching `query`, newest first, each with its `id`. Bounded
    /// work per call: a page may be short, with `next`, when [`AUDIT_SCAN_LIMIT`] events were
    /// examined without filling it. Events appended meanwhile are newer than any page's cursor,
    /// so paging neither repeats nor skips an event.
    async fn audit_page(&self, query: &AuditQuery) -> StoreResult<AuditPage>;
    /// Deletes the events whose time is before `before` (RFC 3339, as stored); how many.
    async fn purge_audit(&self, before: &str) -> StoreResult<u64>;

    /// At most `limit` users ordered by name (compared as their lower-cased UTF-8 bytes, the
    /// key that makes names unique regardless of letter case), beginning after the user named
    /// `after` in that order (who need not exist); for listing users a page at a time.
    async fn list_users(&self, after: Option<&str>, limit: usize) -> StoreResult<Vec<User>>;

    /// Stores a new session. When the user then holds more than `keep` sessions, the ones
    /// created first are deleted (by `created`, ties by `id_hash` in byte order), so that no user
    /// can make the store hold unboundedly many. `NotFound` when the user does not exist, so that
    /// a sign-in racing the user's deletion leaves no session behind.
    async fn create_session(&self, session: Session, keep: usize) -> StoreResult<()>;
    /// The session whose id hashes to `id_hash`, whether or not it has expired.
    async fn session(&self, id_hash: &str) -> StoreResult<Option<Session>>;
    /// [`Store::session`] for a caller that only reads the record (every request with a session
    /// cookie): a backend that keeps decoded sessions shares its copy instead of cloning it.
    async fn shared_session(&self, id_hash: &str) -> StoreResult<Option<Arc<Session>>> {
        Ok(self.session(id_hash).await?.map(Arc::new))
    }
    /// Sets the session's `last_seen` to `now` when that is later; `false` when there is no such
    /// session (nothing written).
    async fn touch_session(&self, id_hash: &str, now: i64) -> StoreResult<bool>;
    /// Atomically deletes the session `old_hash` and stores `new` in its place (rotation at
    /// sign-in and step-up). `false`, and nothing written, when `old_hash` no longer exists: of
    /// concurrent rotations of one session, exactly one succeeds.
    async fn replace_session(&self, old_hash: &str, new: Session) -> StoreResult<bool>;
    /// Deletes the session; `false` when there was none.
    async fn delete_session(&self, id_hash: &str) -> StoreResult<bool>;
    /// Deletes every session of the user ("sign out everywhere"); how many there were.
    async fn delete_user_sessions(&self, user_id: u64) -> StoreResult<u64>;
    /// Deletes every session that has ended: `expires <= now`, or `last_seen <= idle_before`.
    /// How many were deleted.
    async fn purge_sessions(&self, now: i64, idle_before: i64) -> StoreResult<u64>;
    /// Deletes the sessions signed in through `provider` (their `idp.provider`) that also match
    /// `user_id` and `sid` where those are given (back-channel logout; at least one is given);
    /// how many there were.
    async fn delete_idp_sessions(
        &self,
        provider: &str,
        user_id: Option<u64>,
        sid: Option<&str>,
    ) -> StoreResult<u64>;

    /// Stores a sign-in at an external provider until its callback.
    async fn create_login_flow(&self, flow: LoginFlow) -> StoreResult<()>;
    /// Removes and returns the flow whose state hashes to `state_hash`, unless it has expired
    /// (`expires <= now`; an expired one is removed all the same). Of concurrent takes of one
    /// flow, on any replica, exactly one gets it.
    async fn take_login_flow(&self, state_hash: &str, now: i64) -> StoreResult<Option<LoginFlow>>;
    /// Deletes every flow with `expires <= now`; how many.
    async fn purge_login_flows(&self, now: i64) -> StoreResult<u64>;

    /// The user's passkeys, oldest first.
    async fn passkeys(&self, user_id: u64) -> StoreResult<Vec<Passkey>>;
    /// The passkey with credential id `id`, whoever holds it.
    async fn passkey(&self, id: &str) -> StoreResult<Option<Passkey>>;
    /// Atomically adds `passkey` to its user as `grant` allows, with the `webauthn` factor
    /// record beside it; sets `recovery_hashes` when given. A ticket grant is checked and used
    /// as [`Store::confirm_ticket`] does; whatever the grant, an added passkey voids the user's
    /// pending tickets, as a confirmed factor does (SPEC §10).
    async fn add_passkey(
        &self,
        passkey: Passkey,
        grant: PasskeyGrant<'_>,
        recovery_hashes: Option<Vec<String>>,
        now: i64,
    ) -> StoreResult<PasskeyAdded>;
    /// Records an accepted use of passkey `id`: when `counter` is later than the stored one, or
    /// both are 0, stores it with `credential` and `last_used` and answers `true`; otherwise
    /// (a cloned authenticator, or another use with the same counter that got there first)
    /// `false` and nothing changes. Of concurrent uses with one counter, on any replica, one
    /// gets `true`.
    async fn use_passkey(
        &self,
        id: &str,
        counter: u32,
        credential: serde_json::Value,
        last_used: &str,
    ) -> StoreResult<bool>;
    /// Renames the user's passkey `id`; `false` when the user has none of that id.
    async fn rename_passkey(&self, user_id: u64, id: &str, name: &str) -> StoreResult<bool>;
    /// Removes the user's passkey `id` (the `webauthn` factor record with the last one). With
    /// `keep_a_factor`, atomically refuses when it is the last factor the user has.
    async fn delete_passkey(
        &self,
        user_id: u64,
        id: &str,
        keep_a_factor: bool,
    ) -> StoreResult<PasskeyRemoved>;
    /// Stores a passkey ceremony until the browser answers.
    async fn create_ceremony(&self, ceremony: PasskeyCeremony) -> StoreResult<()>;
    /// Removes and returns the ceremony whose id hashes to `id_hash`, unless it has expired
    /// (an expired one is removed all the same). Of concurrent takes, exactly one gets it.
    async fn take_ceremony(&self, id_hash: &str, now: i64) -> StoreResult<Option<PasskeyCeremony>>;
    /// Deletes every ceremony with `expires <= now`; how many.
    async fn purge_ceremonies(&self, now: i64) -> StoreResult<u64>;

    /// Makes every write so far durable.
    async fn flush(&self) -> StoreResult<()>;

    /// Everything in the store (for `gatehouse migrate`).
    async fn export(&self) -> StoreResult<Snapshot> {
        Err(StoreError::Backend(
            "this backend cannot be exported".into(),
        ))
    }

    /// Loads `snapshot` into an empty store keeping every id; `Conflict` (and nothing written)
    /// when the store already holds users.
    async fn import(&self, _snapshot: Snapshot) -> StoreResult<()> {
        Err(StoreError::Backend(
            "this backend cannot be imported into".into(),
        ))
    }
}
