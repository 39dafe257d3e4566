//! The WS family's SMS opt-in: a number registered as the user's pending SMS factor, texted a
//! code, and confirmed with it.

use crate::auth::Principal;
use crate::store::{FactorKind, OPT_IN_PREFIX, SCHEMA_VERSION, Ticket};

use super::enroll::enroll_purpose;
use super::service::{Mfa, MfaError, secs};

impl Mfa {
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
}

/// The ticket behind a WS opt-in's `ProviderUserId`.
fn opt_in_ticket(provider_user_id: i64) -> String {
    format!("{OPT_IN_PREFIX}{provider_user_id}")
}
