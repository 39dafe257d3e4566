//! Challenges: a code sent by SMS or email to a signed-in user's confirmed factor, to be given
//! back to verify-otp.

use crate::auth::Principal;
use crate::store::FactorKind;

use super::service::{Mfa, MfaError};

impl Mfa {
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
}
