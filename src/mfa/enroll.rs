//! Enrollment: a ticket for a new factor, the enrollment page's view of it, the code sent for an
//! SMS or email ticket, and the confirmation that makes the factor the user's.

use crate::auth::{Method, Principal};
use crate::clock;
use crate::notify::{self, Email};
use crate::store::{Factor, FactorKind, SCHEMA_VERSION, Ticket};

use super::codes;
use super::service::{Mfa, MfaError, context, secs};
use super::totp::{self, Check};

/// What an enrollment request produced.
#[derive(Debug, Clone)]
pub struct Enrollment {
    pub ticket_id: String,
    pub ticket_url: String,
    pub email_sent: bool,
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

impl Mfa {
    /// `POST /v1/me/mfa-enrollment`: creates a ticket, and emails its link unless interactive.
    pub async fn enroll(
        &self,
        principal: &Principal,
        kind: FactorKind,
        interactive: bool,
    ) -> Result<Enrollment, MfaError> {
        let user = self.user(principal).await?;
        if kind == FactorKind::Webauthn && !self.passkeys_enabled() {
            return Err(MfaError::Invalid(
                "passkeys need server.public_url to name a host, not an IP address".into(),
            ));
        }
        // A user who already has a factor is refused that way first, whatever else the request
        // lacks: the answer does not depend on which contact details the user has.
        let second_factor = self.may_add_factor(user.id, &principal.methods).await?;
        let destination = match kind {
            FactorKind::Otp | FactorKind::Webauthn => None,
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
    pub(super) async fn may_add_factor(
        &self,
        user_id: u64,
        methods: &[Method],
    ) -> Result<bool, MfaError> {
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
    pub(super) async fn live_ticket(&self, ticket_id: &str) -> Result<Ticket, MfaError> {
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

    /// Confirms a ticket with a code (the page, and verify-enrollment-otp).
    pub async fn confirm(&self, ticket: &Ticket, code: &str) -> Result<Confirmed, MfaError> {
        if ticket.kind == FactorKind::Webauthn {
            return Err(MfaError::Invalid(
                "a passkey is registered on the enrollment page, in a browser, not with a code"
                    .into(),
            ));
        }
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
}

/// The purpose an enrollment code is stored under: the ticket's own, so that a code sent for one
/// registration (to its number or address) never confirms another of the same user.
pub(super) fn enroll_purpose(ticket_id: &str, kind: FactorKind) -> String {
    format!("enroll:{}:{ticket_id}", kind.as_str())
}

fn enrollment_email(to: &str, url: &str, kind: FactorKind) -> Email {
    let what = match kind {
        FactorKind::Otp => "an authenticator app",
        FactorKind::Sms => "text-message codes",
        FactorKind::Email => "email codes",
        FactorKind::Webauthn => "a passkey",
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
