//! The MFA use cases behind the Nexus endpoints and the enrollment page.

use std::sync::Arc;

use crate::audit;
use crate::auth::{Method, Principal};
use crate::clock::{self, Clock};
use crate::config::MfaConfig;
use crate::meter::{Meter, OtpResult};
use crate::notify::{self, Email, Notifier};
use crate::secrets::Vault;
use crate::store::{
    Factor, FactorKind, OPT_IN_PREFIX, OobCode, SCHEMA_VERSION, Store, StoreError, Ticket, User,
};
use crate::tokens::Tokens;

use super::codes;
use super::totp::{self, Check, TotpParams};
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

/// What an enrollment request produced.
#[derive(Debug, Clone)]
pub struct Enrollment {
    pub ticket_id: String,
    pub ticket_url: String,
    pub email_sent: bool,
}

/// The token response of verify-enrollment-otp and verify-otp.
#[derive(Debug, Clone)]
pub struct Granted {
    pub scope: String,
    pub expires_in: i64,
    pub access_token: String,
}

/// What the enrollment page shows for a ticket.
#[derive(Debug, Clone)]
pub struct TicketView {
    pub kind: FactorKind,
    pub account: String,
    /// For TOTP: base32 secret and otpauth URI.
    pub secret: Option<(String, String)>,
    /// Masked phone or email for SMS/email tickets.
    pub destination: Option<String>,
}

/// A confirmed enrollment; recovery codes when it was the user's first factor.
#[derive(Debug, Clone)]
pub struct Confirmed {
    pub kind: FactorKind,
    pub recovery_codes: Option<Vec<String>>,
}

/// The codes a verification request carries (seed 000's body).
#[derive(Debug, Clone, Default)]
pub struct Codes {
    pub otp: Option<String>,
    pub oob: Option<String>,
    pub access_token: Option<String>,
}

/// An attempt at a code whose failure is already counted (see [`Mfa::reserve`]).
#[must_use = "an attempt ends with `passed` or `failed`"]
pub(super) struct Attempt {
    /// The lock's length in seconds when this attempt's failure is the one that locks the user.
    locks: Option<i64>,
}

pub struct Mfa {
    pub(super) store: Arc<dyn Store>,
    pub(super) vault: Arc<Vault>,
    tokens: Arc<Tokens>,
    notifier: Arc<Notifier>,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) meter: Arc<Meter>,
    config: MfaConfig,
    totp: TotpParams,
    policy: Policy,
    public_url: String,
}

fn method(kind: FactorKind) -> Method {
    match kind {
        FactorKind::Otp => Method::Otp,
        FactorKind::Sms => Method::Sms,
        FactorKind::Email => Method::Email,
    }
}

/// Binds a sealed TOTP secret to its user.
fn context(user_id: u64) -> Vec<u8> {
    format!("totp:{user_id}").into_bytes()
}

fn secs(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

impl Mfa {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Arc<dyn Store>,
        vault: Arc<Vault>,
        tokens: Arc<Tokens>,
        notifier: Arc<Notifier>,
        clock: Arc<dyn Clock>,
        meter: Arc<Meter>,
        config: &MfaConfig,
        public_url: &str,
    ) -> Mfa {
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

    async fn user(&self, principal: &Principal) -> Result<User, MfaError> {
        let id = principal
            .user_id
            .parse::<u64>()
            .map_err(|_| MfaError::UnknownUser)?;
        self.store
            .user_by_id(id)
            .await?
            .ok_or(MfaError::UnknownUser)
    }

    /// `POST /v1/me/mfa-enrollment`: creates a ticket, and emails its link unless interactive.
    pub async fn enroll(
        &self,
        principal: &Principal,
        kind: FactorKind,
        interactive: bool,
    ) -> Result<Enrollment, MfaError> {
        let user = self.user(principal).await?;
        let destination = match kind {
            FactorKind::Otp => None,
            FactorKind::Sms => Some(user.phone.clone().ok_or_else(|| {
                MfaError::Invalid("the user has no phone number for an SMS factor".into())
            })?),
            FactorKind::Email => Some(user.email.clone().ok_or_else(|| {
                MfaError::Invalid("the user has no email address for an email factor".into())
            })?),
        };
        if !interactive && user.email.is_none() {
            return Err(MfaError::Invalid(
                "the user has no email address to send the enrollment link to".into(),
            ));
        }
        let second_factor = self.may_add_factor(user.id, &principal.methods).await?;
        let sealed_secret = match kind {
            FactorKind::Otp => {
                let secret = codes::totp_secret().map_err(MfaError::Internal)?;
                Some(
                    self.vault
                        .seal(&secret, &context(user.id))
                        .map_err(MfaError::Internal)?,
                )
            }
            _ => None,
        };
        let now = self.clock.unix();
        let id = codes::ticket_id().map_err(MfaError::Internal)?;
        let ticket = Ticket {
            v: SCHEMA_VERSION,
            id: id.clone(),
            user_id: user.id,
            kind,
            sealed_secret,
            destination,
            created_at: now,
            expires_at: now + secs(self.config.ticket_ttl),
            used: false,
            second_factor,
        };
        self.store.create_ticket(ticket).await?;
        self.meter.ticket(kind.as_str());
        let ticket_url = format!("{}/enroll/{id}", self.public_url);
        let mut email_sent = false;
        if !interactive && let Some(address) = &user.email {
            let email = enrollment_email(address, &ticket_url, kind);
            match self.notifier.email.send(&email).await {
                Ok(()) => email_sent = true,
                Err(e) => {
                    tracing::warn!(error = %e, user = %user.user_name, "enrollment email not sent")
                }
            }
        }
        self.audit(
            "mfa.enrollment.created",
            &user,
            Some(format!("factor {}", kind.as_str())),
        )
        .await;
        Ok(Enrollment {
            ticket_id: id,
            ticket_url,
            email_sent,
        })
    }

    /// The one rule for every way a factor is added (SPEC §4.1, §10): beside a confirmed factor,
    /// only a credential that holds a second factor may add one, or a password alone would let
    /// an attacker add their own authenticator. The answer (whether the credential holds one) is
    /// recorded in the ticket, and confirmation checks the rule again against the factors the
    /// user has by then ([`Mfa::may_confirm`], and atomically in the store).
    async fn may_add_factor(&self, user_id: u64, methods: &[Method]) -> Result<bool, MfaError> {
        let second_factor = methods.iter().any(|m| m.is_second_factor());
        if !second_factor && !self.store.factors(user_id).await?.is_empty() {
            return Err(MfaError::AlreadyEnrolled);
        }
        Ok(second_factor)
    }

    /// [`Mfa::may_add_factor`] at confirmation: a ticket made without a second factor is only
    /// good while the user has no confirmed factor (it may predate the user's enrollment).
    async fn may_confirm(&self, ticket: &Ticket) -> Result<(), MfaError> {
        if !ticket.second_factor && !self.store.factors(ticket.user_id).await?.is_empty() {
            return Err(MfaError::AlreadyEnrolled);
        }
        Ok(())
    }

    /// A ticket of the enrollment page that can still be used. Only the 256-bit ids
    /// [`codes::ticket_id`] makes are looked up: a WS opt-in registration is not a link anyone
    /// may open (its number is guessable), and it is refused before the store is asked.
    async fn live_ticket(&self, ticket_id: &str) -> Result<Ticket, MfaError> {
        if !codes::is_ticket_id(ticket_id) {
            return Err(MfaError::TicketUnknown);
        }
        let ticket = self
            .store
            .ticket(ticket_id)
            .await?
            .ok_or(MfaError::TicketUnknown)?;
        if ticket.used || ticket.expires_at <= self.clock.unix() {
            return Err(MfaError::TicketGone);
        }
        // The link is the only credential on the page: like every other credential, it is worth
        // nothing for a user who may not sign in (the same check as `Principal::admit`).
        let user = self.store.user_by_id(ticket.user_id).await?;
        if !user.is_some_and(|u| u.is_valid) {
            return Err(MfaError::TicketUnknown);
        }
        self.may_confirm(&ticket).await?;
        Ok(ticket)
    }

    /// Whether `ticket_id` names a ticket that can still be used (the page checks before it
    /// reads a form).
    pub async fn check_ticket(&self, ticket_id: &str) -> Result<(), MfaError> {
        self.live_ticket(ticket_id).await.map(drop)
    }

    /// What the enrollment page shows.
    pub async fn ticket_view(&self, ticket_id: &str) -> Result<TicketView, MfaError> {
        let ticket = self.live_ticket(ticket_id).await?;
        let user = self
            .store
            .user_by_id(ticket.user_id)
            .await?
            .ok_or(MfaError::TicketUnknown)?;
        let account = user.email.clone().unwrap_or_else(|| user.user_name.clone());
        let secret = match &ticket.sealed_secret {
            Some(sealed) => {
                let secret = self
                    .vault
                    .open(sealed, &context(user.id))
                    .map_err(MfaError::Internal)?;
                let uri = self
                    .totp
                    .uri(&secret, &account)
                    .map_err(MfaError::Internal)?;
                Some((totp::base32(&secret), uri))
            }
            None => None,
        };
        Ok(TicketView {
            kind: ticket.kind,
            account,
            secret,
            destination: ticket.destination.as_deref().map(notify::mask),
        })
    }

    /// Sends a code for an SMS or email enrollment ticket (the page's "send" button).
    pub async fn send_enrollment_code(&self, ticket_id: &str) -> Result<(), MfaError> {
        let ticket = self.live_ticket(ticket_id).await?;
        let destination = ticket
            .destination
            .clone()
            .ok_or_else(|| MfaError::Invalid("this enrollment uses an authenticator app".into()))?;
        self.send_code(
            ticket.user_id,
            ticket.kind,
            &destination,
            &enroll_purpose(&ticket.id, ticket.kind),
        )
        .await
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
            FactorKind::Otp => {
                return Err(MfaError::Invalid(
                    "authenticator apps need no code sent".into(),
                ));
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
    async fn passed(&self, user: &User, attempt: Attempt) -> Result<(), MfaError> {
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

    /// Confirms a ticket with a code (the page, and verify-enrollment-otp).
    pub async fn confirm(&self, ticket: &Ticket, code: &str) -> Result<Confirmed, MfaError> {
        let user = self
            .store
            .user_by_id(ticket.user_id)
            .await?
            .ok_or(MfaError::UnknownUser)?;
        self.may_confirm(ticket).await?;
        let attempt = self.reserve(&user).await?;
        let now = self.clock.unix();
        let last_step = match (&ticket.kind, &ticket.sealed_secret) {
            (FactorKind::Otp, Some(sealed)) => {
                let secret = self
                    .vault
                    .open(sealed, &context(user.id))
                    .map_err(MfaError::Internal)?;
                match self
                    .totp
                    .check(&secret, code, u64::try_from(now).unwrap_or(0), None)
                {
                    Check::Accepted(step) => Some(step),
                    Check::Replayed | Check::Wrong => {
                        return Err(self.failed(&user, attempt, None).await);
                    }
                }
            }
            (kind, _) => {
                let purpose = enroll_purpose(&ticket.id, *kind);
                let hash = self.vault.code_hash(&purpose, code.trim());
                if !self
                    .store
                    .consume_code(user.id, &purpose, &hash, now)
                    .await?
                {
                    return Err(self.failed(&user, attempt, None).await);
                }
                None
            }
        };
        let first = self.store.factors(user.id).await?.is_empty();
        let recovery = if first {
            Some(self.new_recovery_codes()?)
        } else {
            None
        };
        let factor = Factor {
            v: SCHEMA_VERSION,
            user_id: user.id,
            kind: ticket.kind,
            sealed_secret: ticket.sealed_secret.clone(),
            destination: ticket.destination.clone(),
            last_step,
            created: clock::rfc3339(self.clock.now()),
        };
        let hashes = recovery.as_ref().map(|codes| self.recovery_hashes(codes));
        // The store checks the rule again, atomically with the confirmation, and voids the
        // user's other pending tickets: a factor confirmed meanwhile makes this one fail.
        if !self
            .store
            .confirm_ticket(&ticket.id, factor, hashes, now)
            .await?
        {
            self.may_confirm(ticket).await?;
            return Err(MfaError::TicketGone);
        }
        self.passed(&user, attempt).await?;
        self.audit(
            "mfa.factor.confirmed",
            &user,
            Some(format!("factor {}", ticket.kind.as_str())),
        )
        .await;
        Ok(Confirmed {
            kind: ticket.kind,
            recovery_codes: recovery,
        })
    }

    /// Confirms a ticket from the enrollment page.
    pub async fn confirm_ticket(&self, ticket_id: &str, code: &str) -> Result<Confirmed, MfaError> {
        let ticket = self.live_ticket(ticket_id).await?;
        self.confirm(&ticket, code).await
    }

    fn new_recovery_codes(&self) -> Result<Vec<String>, MfaError> {
        (0..10)
            .map(|_| codes::recovery_code().map_err(MfaError::Internal))
            .collect()
    }

    fn recovery_hashes(&self, codes: &[String]) -> Vec<String> {
        codes
            .iter()
            .map(|c| self.vault.code_hash("recovery", c))
            .collect()
    }

    /// Validates `accessToken` of a verification body: a gatehouse token of the same user.
    fn session(
        &self,
        principal: &Principal,
        access_token: Option<&str>,
    ) -> Result<Principal, MfaError> {
        let Some(token) = access_token.filter(|t| !t.is_empty()) else {
            return Ok(principal.clone());
        };
        let claims = self
            .tokens
            .verify_access(token)
            .map_err(|_| MfaError::InvalidAccessToken)?;
        if claims.sub != principal.user_id {
            return Err(MfaError::InvalidAccessToken);
        }
        Ok(Principal {
            scopes: claims.scope.split_whitespace().map(str::to_owned).collect(),
            methods: crate::tokens::methods_from_amr(&claims.amr),
            ..principal.clone()
        })
    }

    /// A token for `session` stepped up with `kind`: `scope` gains `mfa`, `amr` the factor.
    async fn grant(
        &self,
        session: Principal,
        kind: FactorKind,
        user: &User,
    ) -> Result<Granted, MfaError> {
        let mut stepped = session;
        // Issued with the scopes the user holds now (SPEC §10), never those of the session
        // being stepped up: a removed scope must not come back through a step-up.
        stepped.scopes = user.scopes.clone();
        if !stepped.scopes.iter().any(|s| s == "mfa") {
            stepped.scopes.push("mfa".into());
        }
        let m = method(kind);
        if !stepped.methods.contains(&m) {
            stepped.methods.push(m);
        }
        let access_token = self
            .tokens
            .issue_access(&stepped)
            .map_err(|e| MfaError::Internal(e.to_string()))?;
        self.audit(
            "token.issued",
            user,
            Some(format!(
                "amr {}",
                stepped
                    .methods
                    .iter()
                    .map(|m| m.as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            )),
        )
        .await;
        Ok(Granted {
            scope: stepped.scopes.join(" "),
            expires_in: self.tokens.access_ttl(),
            access_token,
        })
    }

    fn one_code(codes: &Codes) -> Result<(Option<&str>, Option<&str>), MfaError> {
        let otp = codes.otp.as_deref().filter(|c| !c.is_empty());
        let oob = codes.oob.as_deref().filter(|c| !c.is_empty());
        match (otp, oob) {
            (Some(_), Some(_)) | (None, None) => Err(MfaError::Invalid(
                "give exactly one of `otp` and `oob`".into(),
            )),
            pair => Ok(pair),
        }
    }

    /// `POST /v1/me/verify-enrollment-otp`.
    pub async fn verify_enrollment(
        &self,
        principal: &Principal,
        codes: &Codes,
    ) -> Result<Granted, MfaError> {
        let (otp, oob) = Mfa::one_code(codes)?;
        let session = self.session(principal, codes.access_token.as_deref())?;
        let user = self.user(principal).await?;
        let ticket = self
            .store
            .newest_pending_ticket(user.id, self.clock.unix())
            .await?
            .ok_or(MfaError::NoPendingEnrollment)?;
        let code = match (ticket.kind, otp, oob) {
            (FactorKind::Otp, Some(code), None) => code,
            (FactorKind::Sms | FactorKind::Email, None, Some(code)) => code,
            (FactorKind::Otp, _, _) => {
                return Err(MfaError::Invalid("this enrollment expects `otp`".into()));
            }
            _ => return Err(MfaError::Invalid("this enrollment expects `oob`".into())),
        };
        let confirmed = self.confirm(&ticket, code).await?;
        self.grant(session, confirmed.kind, &user).await
    }

    /// `POST /v1/me/verify-otp`: a code of a confirmed factor, or a recovery code in `otp`.
    pub async fn verify(&self, principal: &Principal, codes: &Codes) -> Result<Granted, MfaError> {
        let (otp, oob) = Mfa::one_code(codes)?;
        let session = self.session(principal, codes.access_token.as_deref())?;
        let user = self.user(principal).await?;
        let factors = self.store.factors(user.id).await?;
        if factors.is_empty() {
            return Err(MfaError::NoFactor("the user has no confirmed factor"));
        }
        let attempt = self.reserve(&user).await?;
        let now = self.clock.unix();
        if let Some(code) = otp {
            if let Some(Factor {
                sealed_secret: Some(sealed),
                last_step,
                ..
            }) = factors.iter().find(|f| f.kind == FactorKind::Otp)
            {
                let secret = self
                    .vault
                    .open(sealed, &context(user.id))
                    .map_err(MfaError::Internal)?;
                if let Check::Accepted(step) =
                    self.totp
                        .check(&secret, code, u64::try_from(now).unwrap_or(0), *last_step)
                    && self.store.accept_totp_step(user.id, step).await?
                {
                    self.passed(&user, attempt).await?;
                    self.audit("mfa.verified", &user, Some("factor otp".into()))
                        .await;
                    return self.grant(session, FactorKind::Otp, &user).await;
                }
            }
            let recovery = self
                .vault
                .code_hash("recovery", &codes::normalise_recovery_code(code));
            if self.store.consume_recovery_code(user.id, &recovery).await? {
                self.passed(&user, attempt).await?;
                self.audit("mfa.recovery_code.used", &user, None).await;
                return self.grant(session, FactorKind::Otp, &user).await;
            }
            return Err(self.failed(&user, attempt, None).await);
        }
        let code = oob.unwrap_or_default().trim();
        for factor in factors.iter().filter(|f| f.kind != FactorKind::Otp) {
            let purpose = format!("verify:{}", factor.kind.as_str());
            let hash = self.vault.code_hash(&purpose, code);
            if self
                .store
                .consume_code(user.id, &purpose, &hash, now)
                .await?
            {
                self.passed(&user, attempt).await?;
                self.audit(
                    "mfa.verified",
                    &user,
                    Some(format!("factor {}", factor.kind.as_str())),
                )
                .await;
                return self.grant(session, factor.kind, &user).await;
            }
        }
        Err(self.failed(&user, attempt, None).await)
    }

    /// `POST /v1/me/mfa-challenge?factor=sms|email`: sends a code to the confirmed factor.
    pub async fn challenge(&self, principal: &Principal, kind: FactorKind) -> Result<(), MfaError> {
        let user = self.user(principal).await?;
        let factor = self
            .store
            .factors(user.id)
            .await?
            .into_iter()
            .find(|f| f.kind == kind)
            .ok_or(MfaError::NoFactor(
                "the user has no confirmed factor of that kind",
            ))?;
        self.check_lock(&user).await?;
        let destination = factor.destination.unwrap_or_default();
        self.send_code(
            user.id,
            kind,
            &destination,
            &format!("verify:{}", kind.as_str()),
        )
        .await?;
        self.audit(
            "mfa.challenge.sent",
            &user,
            Some(format!("factor {}", kind.as_str())),
        )
        .await;
        Ok(())
    }

    /// WS `User/2fa-opt-in`: registers `number` as the user's pending SMS factor and texts it a
    /// code. Returns the `ProviderUserId` that identifies the registration.
    pub async fn sms_opt_in(&self, principal: &Principal, number: &str) -> Result<i64, MfaError> {
        let user = &self.user(principal).await?;
        let second_factor = self.may_add_factor(user.id, &principal.methods).await?;
        let provider_user_id = loop {
            let mut bytes = [0u8; 4];
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
                .map_err(|_| MfaError::Internal("the system random source failed".into()))?;
            let id = i64::from(u32::from_be_bytes(bytes) & 0x7fff_ffff).max(1);
            if self.store.ticket(&opt_in_ticket(id)).await?.is_none() {
                break id;
            }
        };
        let now = self.clock.unix();
        self.store
            .create_ticket(Ticket {
                v: SCHEMA_VERSION,
                id: opt_in_ticket(provider_user_id),
                user_id: user.id,
                kind: FactorKind::Sms,
                sealed_secret: None,
                destination: Some(number.to_owned()),
                created_at: now,
                expires_at: now + secs(self.config.ticket_ttl),
                used: false,
                second_factor,
            })
            .await?;
        self.meter.ticket(FactorKind::Sms.as_str());
        let purpose = enroll_purpose(&opt_in_ticket(provider_user_id), FactorKind::Sms);
        self.send_code(user.id, FactorKind::Sms, number, &purpose)
            .await?;
        self.audit(
            "mfa.enrollment.created",
            user,
            Some("factor sms (ws opt-in)".into()),
        )
        .await;
        Ok(provider_user_id)
    }

    /// WS `User/verify-2fa-opt-in`: confirms the registration with the texted code.
    pub async fn sms_opt_in_verify(
        &self,
        principal: &Principal,
        provider_user_id: i64,
        otp: &str,
    ) -> Result<(), MfaError> {
        let user = self.user(principal).await?;
        let ticket = self
            .store
            .ticket(&opt_in_ticket(provider_user_id))
            .await?
            .filter(|t| t.user_id == user.id)
            .ok_or(MfaError::TicketUnknown)?;
        if ticket.used || ticket.expires_at <= self.clock.unix() {
            return Err(MfaError::TicketGone);
        }
        self.confirm(&ticket, otp).await.map(|_| ())
    }

    /// `POST /v1/me/recovery-codes`: replaces the user's recovery codes (needs an MFA credential).
    pub async fn replace_recovery_codes(
        &self,
        principal: &Principal,
    ) -> Result<Vec<String>, MfaError> {
        if !principal.methods.iter().any(|m| m.is_second_factor()) {
            return Err(MfaError::NeedsMfa);
        }
        let user = self.user(principal).await?;
        if self.store.factors(user.id).await?.is_empty() {
            return Err(MfaError::NoFactor("the user has no confirmed factor"));
        }
        let codes = self.new_recovery_codes()?;
        self.store
            .replace_recovery_codes(user.id, self.recovery_hashes(&codes))
            .await?;
        self.audit("mfa.recovery_codes.replaced", &user, None).await;
        Ok(codes)
    }
}

/// The purpose an enrollment code is stored under: the ticket's own, so that a code sent for one
/// registration (to its number or address) never confirms another of the same user.
fn enroll_purpose(ticket_id: &str, kind: FactorKind) -> String {
    format!("enroll:{}:{ticket_id}", kind.as_str())
}

/// The ticket behind a WS opt-in's `ProviderUserId`.
fn opt_in_ticket(provider_user_id: i64) -> String {
    format!("{OPT_IN_PREFIX}{provider_user_id}")
}

fn enrollment_email(to: &str, url: &str, kind: FactorKind) -> Email {
    let what = match kind {
        FactorKind::Otp => "an authenticator app",
        FactorKind::Sms => "text-message codes",
        FactorKind::Email => "email codes",
    };
    Email {
        to: to.to_owned(),
        subject: "Set up two-step verification".into(),
        text: format!(
            "You were asked to set up two-step verification with {what}.\n\nOpen this link on any device to continue:\n{url}\n\nThe link works once and expires. If you did not expect this, ignore this message."
        ),
        html: format!(
            "<p>You were asked to set up two-step verification with {what}.</p><p><a href=\"{url}\">Set up two-step verification</a></p><p>Or open this link on any device: {url}</p><p>The link works once and expires. If you did not expect this, ignore this message.</p>"
        ),
    }
}
