//! Recovery codes: ten single-use codes given with the user's first factor, stored only as
//! hashes, and replaced as a set.

use crate::auth::Principal;

use super::codes;
use super::service::{Mfa, MfaError};

impl Mfa {
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

    /// Ten fresh recovery codes, as the user is shown them.
    pub(super) fn new_recovery_codes(&self) -> Result<Vec<String>, MfaError> {
        (0..10)
            .map(|_| codes::recovery_code().map_err(MfaError::Internal))
            .collect()
    }

    /// Recovery codes as the store keeps them.
    pub(super) fn recovery_hashes(&self, codes: &[String]) -> Vec<String> {
        codes
            .iter()
            .map(|c| self.vault.code_hash("recovery", c))
            .collect()
    }
}
