//! The MFA service: its parts and errors, and what every use case shares: the user behind a
//! credential, audit records, codes sent within the send limits, and attempts counted towards
//! the lockout.

use std::sync::Arc;

use crate::audit;
use crate::auth::Principal;
use crate::clock::Clock;
use crate::config::MfaConfig;
use crate::meter::{Meter, OtpResult};
use crate::notify::{Email, Notifier};
use crate::secrets::Vault;
use crate::store::{FactorKind, OobCode, SCHEMA_VERSION, Store, StoreError, User};
use crate::tokens::Tokens;

use super::codes;
use super::totp::TotpParams;
use crate::lockout::{Policy, Reservation};

/// Why an MFA operation did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MfaError {
    /// The principal's user no longer exists.
    UnknownUser,
    /// A request that cannot be served as asked (the message says why).
    Invalid(String),
    /// A confirmed factor exists and the credential holds no second factor.
    AlreadyEnrolled,
    NoPendingEnrollment,
    NoFactor(&'static str),
    TicketUnknown,
    /// Used or expired.
    TicketGone,
    WrongCode,
    /// The code was right but has expired.
    CodeExpired,
    /// No user of that name has that phone number.
    NoSuchPhone,
    /// Locked out for this many more seconds.
    Locked(i64),
    /// Too many codes sent; retry after this many seconds.
    SendLimited(i64),
    InvalidAccessToken,
    /// The operation needs a credential with a second factor.
    NeedsMfa,
    Delivery(String),
    Store(String),
    Internal(String),
}

impl From<StoreError> for MfaError {
    fn from(e: StoreError) -> MfaError {
        MfaError::Store(e.to_string())
    }
}

/// An attempt at a code whose failure is already counted (see [`Mfa::reserve`]).
#[must_use = "an attempt ends with `passed` or `failed`"]
pub(super) struct Attempt {
    /// The lock's length in seconds when this attempt's failure is the one that locks the user.
    locks: Option<i64>,
}

/// The MFA use cases, over the store, the vault, tokens and the notifier.
pub struct Mfa {
    pub(super) store: Arc<dyn Store>,
    pub(super) vault: Arc<Vault>,
    pub(super) tokens: Arc<Tokens>,
    pub(super) notifier: Arc<Notifier>,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) meter: Arc<Meter>,
    pub(super) config: MfaConfig,
    pub(super) totp: TotpParams,
    policy: Policy,
    pub(super) public_url: String,
    /// The WebAuthn relying party of `public_url`, when its host can be one.
    pub(super) webauthn: Option<Arc<webauthn_rs::Webauthn>>,
    /// Passkey ceremonies begun in the current window (start, count): the bound on the
    /// ceremonies this replica can make the store hold.
    pub(super) ceremonies: std::sync::Mutex<(i64, u32)>,
    /// When this replica last purged the ended ceremonies (Unix seconds).
    pub(super) ceremonies_purged: std::sync::atomic::AtomicI64,
}

/// What the MFA use cases call on, shared with the rest of gatehouse.
pub struct Collaborators {
    /// Users, factors, tickets, codes and lockout state.
    pub store: Arc<dyn Store>,
    /// Seals TOTP secrets and hashes codes.
    pub vault: Arc<Vault>,
    /// Issues the stepped-up access tokens.
    pub tokens: Arc<Tokens>,
    /// Delivers codes and enrollment links.
    pub notifier: Arc<Notifier>,
    /// The time of tickets, codes and lockouts.
    pub clock: Arc<dyn Clock>,
    /// Counts codes, tickets and lockouts.
    pub meter: Arc<Meter>,
}

/// Binds a sealed TOTP secret to its user.
pub(super) fn context(user_id: u64) -> Vec<u8> {
    format!("totp:{user_id}").into_bytes()
}

pub(super) fn secs(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

impl Mfa {
    /// The service over `with`, configured by `mfa.*`; enrollment links start with `public_url`.
    pub fn new(with: Collaborators, config: &MfaConfig, public_url: &str) -> Mfa {
        let Collaborators {
            store,
            vault,
            tokens,
            notifier,
            clock,
            meter,
        } = with;
        Mfa {
            store,
            vault,
            tokens,
            notifier,
            clock,
            meter,
            totp: TotpParams::from_config(&config.totp),
            policy: Policy::from_config(&config.lockout),
            config: config.clone(),
            public_url: public_url.to_owned(),
            webauthn: {
                let rp = super::relying_party::relying_party(public_url).map(Arc::new);
                if rp.is_none() {
                    tracing::warn!(
                        public_url,
                        "passkeys are off: server.public_url must name a host, not an IP address"
                    );
                }
                rp
            },
            ceremonies: std::sync::Mutex::default(),
            ceremonies_purged: std::sync::atomic::AtomicI64::new(0),
        }
    }

    pub fn default_factor(&self) -> FactorKind {
        FactorKind::parse(&self.config.default_factor).unwrap_or(FactorKind::Otp)
    }

    pub(super) async fn audit(&self, event: &str, user: &User, detail: Option<String>) {
        audit::record(
            self.store.as_ref(),
            self.clock.as_ref(),
            event,
            Some(&user.user_name),
            detail,
        )
        .await;
    }

    /// The user a credential names.
    pub(super) async fn user(&self, principal: &Principal) -> Result<User, MfaError> {
        let id = principal
            .user_id
            .parse::<u64>()
            .map_err(|_| MfaError::UnknownUser)?;
        self.store
            .user_by_id(id)
            .await?
            .ok_or(MfaError::UnknownUser)
    }

    /// Generates, stores and delivers a code, within the send limits.
    pub(super) async fn send_code(
        &self,
        user_id: u64,
        kind: FactorKind,
        destination: &str,
        purpose: &str,
    ) -> Result<(), MfaError> {
        let now = self.clock.unix();
        let window = secs(self.config.send_window);
        for key in [format!("user:{user_id}"), format!("to:{destination}")] {
            if !self
                .store
                .count_send(&key, now, window, self.config.send_limit)
                .await?
            {
                return Err(MfaError::SendLimited(window));
            }
        }
        let code = codes::one_time_code().map_err(MfaError::Internal)?;
        self.store
            .put_code(OobCode {
                v: SCHEMA_VERSION,
                user_id,
                purpose: purpose.to_owned(),
                code_hash: self.vault.code_hash(purpose, &code),
                expires_at: now + secs(self.config.code_ttl),
            })
            .await?;
        let minutes = self.config.code_ttl.as_secs().div_ceil(60);
        let text =
            format!("Your Gatehouse code is {code}. It expires in {minutes} min. Do not share it.");
        let result = match kind {
            FactorKind::Sms => self.notifier.sms.send(destination, &text).await,
            FactorKind::Email => {
                let email = Email {
                    to: destination.to_owned(),
                    subject: "Your verification code".into(),
                    html: format!(
                        "<p>Your Gatehouse code is <strong>{code}</strong>. It expires in {minutes} min.</p><p>Do not share it.</p>"
                    ),
                    text,
                };
                self.notifier.email.send(&email).await
            }
            FactorKind::Otp | FactorKind::Webauthn => {
                return Err(MfaError::Invalid(format!(
                    "a {} factor needs no code sent",
                    kind.as_str()
                )));
            }
        };
        result.map_err(|e| MfaError::Delivery(e.to_string()))
    }

    /// Refuses when locked: sending a code to a locked user is pointless, and sending one never
    /// resets the count.
    pub(super) async fn check_lock(&self, user: &User) -> Result<(), MfaError> {
        match self
            .store
            .lockout(user.id)
            .await?
            .retry_after(self.clock.unix())
        {
            Some(retry) => {
                self.meter.otp(OtpResult::Locked);
                Err(MfaError::Locked(retry))
            }
            None => Ok(()),
        }
    }

    /// Reserves one attempt at a code before it is compared (SPEC §10): the failure is counted
    /// in the store first, so of any number of attempts at once (on every replica) at most
    /// `mfa.lockout.max_failures` are compared. Refused while locked, whether the code would have
    /// been right or not. Every path that compares a code goes through here, and ends the attempt
    /// with [`Mfa::passed`] (or [`Mfa::passed_reset`]) or [`Mfa::failed`].
    pub(super) async fn reserve(&self, user: &User) -> Result<Attempt, MfaError> {
        let now = self.clock.unix();
        match self
            .store
            .reserve_attempt(user.id, now, self.policy)
            .await?
        {
            Reservation::Granted { locks } => Ok(Attempt { locks }),
            Reservation::Refused { retry_after } => {
                self.meter.otp(OtpResult::Locked);
                Err(MfaError::Locked(retry_after))
            }
        }
    }

    /// The code of `attempt` was right: releases the reservation and resets the count.
    pub(super) async fn passed(&self, user: &User, attempt: Attempt) -> Result<(), MfaError> {
        self.store.clear_failures(user.id).await?;
        self.passed_reset(attempt);
        Ok(())
    }

    /// [`Mfa::passed`], when the store operation that accepted the code also reset the count.
    pub(super) fn passed_reset(&self, attempt: Attempt) {
        let Attempt { .. } = attempt;
        self.meter.otp(OtpResult::Accepted);
    }

    /// The code of `attempt` was wrong: its reserved failure stays counted (made durable before
    /// the answer). The answer is 429 when this failure locked the user, else a wrong code.
    pub(super) async fn failed(
        &self,
        user: &User,
        attempt: Attempt,
        detail: Option<&str>,
    ) -> MfaError {
        if let Err(e) = self.store.flush().await {
            return e.into();
        }
        self.meter.otp(OtpResult::Rejected);
        match attempt.locks {
            Some(retry) => {
                self.meter.lockout();
                let what = format!("locked for {retry} s");
                let detail = match detail {
                    Some(d) => format!("{what}; {d}"),
                    None => what,
                };
                self.audit("mfa.lockout", user, Some(detail)).await;
                MfaError::Locked(retry)
            }
            None => {
                self.audit("mfa.code.failed", user, detail.map(str::to_owned))
                    .await;
                MfaError::WrongCode
            }
        }
    }
}
