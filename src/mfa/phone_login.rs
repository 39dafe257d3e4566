//! One-time codes texted to a user's registered number, for services that verify their own
//! users' logins (the Manage family). The user is named by the calling service, never by the
//! user's own credential, so the number given must be the one on record.

use std::net::IpAddr;

use crate::audit;
use crate::clock;
use crate::notify::sms::normalise_number;
use crate::store::{AuditEvent, CodeLogin, FactorKind, User};

use super::service::{Mfa, MfaError};

/// The purpose codes sent for this use are stored under.
const PURPOSE: &str = "manage:sms";

/// Who asks: the authenticated service account and the end user's address it reports.
#[derive(Debug, Clone, Copy)]
pub struct Caller<'a> {
    pub service: &'a str,
    pub client_ip: Option<IpAddr>,
}

impl Caller<'_> {
    fn detail(&self) -> String {
        match self.client_ip {
            Some(ip) => format!("by {} for client {ip}", self.service),
            None => format!("by {}", self.service),
        }
    }
}

impl Mfa {
    /// The user named `user_name` whose phone or text number is `number` (written in any usual
    /// way), with that number as registered. Unknown users, users who may not log in and other
    /// numbers are one answer, so that a caller learns nothing about which it was.
    async fn phone_user(&self, user_name: &str, number: &str) -> Result<(User, String), MfaError> {
        let wanted = normalise_number(number).ok_or_else(|| {
            MfaError::Invalid("phoneNumber must be an E.164 number such as +14155550123".into())
        })?;
        let user = self
            .store
            .user_by_name(user_name)
            .await?
            .filter(|u| u.is_valid)
            .ok_or(MfaError::NoSuchPhone)?;
        let registered = [&user.text_number, &user.phone]
            .into_iter()
            .flatten()
            .find(|n| normalise_number(n).as_deref() == Some(wanted.as_str()))
            .cloned()
            .ok_or(MfaError::NoSuchPhone)?;
        Ok((user, registered))
    }

    /// `POST /v2/user/send/otp`: texts a fresh code to the user's registered number.
    pub async fn send_phone_code(
        &self,
        user_name: &str,
        number: &str,
        caller: Caller<'_>,
    ) -> Result<(), MfaError> {
        let (user, registered) = self.phone_user(user_name, number).await?;
        self.check_lock(&user).await?;
        self.send_code(user.id, FactorKind::Sms, &registered, PURPOSE)
            .await?;
        self.audit("manage.otp.sent", &user, Some(caller.detail()))
            .await;
        Ok(())
    }

    /// `POST /v2/user/validate/otp`: accepts the code once, records the login, and returns the
    /// user as stored after it. Wrong and expired codes count towards the lockout.
    pub async fn validate_phone_code(
        &self,
        user_name: &str,
        number: &str,
        otp: &str,
        caller: Caller<'_>,
    ) -> Result<User, MfaError> {
        let (user, _) = self.phone_user(user_name, number).await?;
        let attempt = self.reserve(&user).await?;
        let hash = self.vault.code_hash(PURPOSE, otp.trim());
        let now = self.clock.now();
        let login_time = clock::rfc3339(now);
        let detail = caller.detail();
        // Stored with the login itself: one durable write for both.
        let event = AuditEvent {
            time: login_time.clone(),
            ..audit::Event::new("manage.otp.validated")
                .user(Some(&user.user_name))
                .detail(Some(detail.clone()))
                .at(self.clock.as_ref())
        };
        match self
            .store
            .login_with_code(user.id, PURPOSE, &hash, now.unix_timestamp(), &event)
            .await?
        {
            CodeLogin::Accepted(user) => {
                // The login reset the count in the same durable write.
                self.passed_reset(attempt);
                audit::log(&event);
                // Disabled while the code was on its way: refused like an unknown user.
                if !user.is_valid {
                    return Err(MfaError::NoSuchPhone);
                }
                Ok(*user)
            }
            CodeLogin::Expired => match self.failed(&user, attempt, Some(&detail)).await {
                MfaError::WrongCode => Err(MfaError::CodeExpired),
                other => Err(other),
            },
            CodeLogin::Wrong => Err(self.failed(&user, attempt, Some(&detail)).await),
        }
    }
}
