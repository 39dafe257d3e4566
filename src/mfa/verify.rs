//! Verification: a code of a confirmed factor (or a recovery code), or of the pending enrollment,
//! steps the credential up to a token with `mfa` in its scope and the factor in its `amr`.

use crate::auth::{Method, Principal};
use crate::store::{Factor, FactorKind, User};

use super::codes;
use super::service::{Mfa, MfaError, context};
use super::totp::Check;

/// The token response of verify-enrollment-otp and verify-otp.
#[derive(Debug, Clone)]
pub struct Granted {
    pub scope: String,
    pub expires_in: i64,
    pub access_token: String,
}

/// The codes a verification request carries (seed 000's body).
#[derive(Debug, Clone, Default)]
pub struct Codes {
    pub otp: Option<String>,
    pub oob: Option<String>,
    pub access_token: Option<String>,
}

/// A code to accept, and what it may be.
#[derive(Debug, Clone, Copy)]
enum Code<'a> {
    /// A TOTP code or a recovery code.
    Otp(&'a str),
    /// A code sent by SMS or email.
    Oob(&'a str),
    /// Any of these.
    Any(&'a str),
}

/// The `amr` value a factor adds to a token.
fn method(kind: FactorKind) -> Method {
    match kind {
        FactorKind::Otp => Method::Otp,
        FactorKind::Sms => Method::Sms,
        FactorKind::Email => Method::Email,
        FactorKind::Webauthn => Method::Hwk,
    }
}

impl Mfa {
    /// `POST /v1/me/verify-otp`: a code of a confirmed factor, or a recovery code in `otp`.
    pub async fn verify(&self, principal: &Principal, codes: &Codes) -> Result<Granted, MfaError> {
        let (otp, oob) = Mfa::one_code(codes)?;
        let user = self.user(principal).await?;
        let session = self.session(principal, &user, codes.access_token.as_deref())?;
        let code = match (otp, oob) {
            (Some(code), _) => Code::Otp(code),
            (None, code) => Code::Oob(code.unwrap_or_default()),
        };
        let kind = self.accept_code(&user, code).await?;
        self.grant(session, kind, &user).await
    }

    /// The sign-in page's step-up (SPEC §11): one code, whichever of the user's factors made it
    /// (TOTP, a recovery code, or a code sent by SMS or email). The method it proves.
    pub async fn step_up(&self, principal: &Principal, code: &str) -> Result<Method, MfaError> {
        let user = self.user(principal).await?;
        let code = code.trim();
        if code.is_empty() || code.len() > 64 {
            return Err(MfaError::Invalid("enter a code".into()));
        }
        Ok(method(self.accept_code(&user, Code::Any(code)).await?))
    }

    /// Accepts `code` for one of the user's confirmed factors, within the lockout: one attempt
    /// is reserved before any comparison, whatever the code is tried against.
    async fn accept_code(&self, user: &User, code: Code<'_>) -> Result<FactorKind, MfaError> {
        let factors = self.store.factors(user.id).await?;
        if factors.is_empty() {
            return Err(MfaError::NoFactor("the user has no confirmed factor"));
        }
        let attempt = self.reserve(user).await?;
        let now = self.clock.unix();
        if let Code::Otp(code) | Code::Any(code) = code {
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
                    self.passed(user, attempt).await?;
                    self.audit("mfa.verified", user, Some("factor otp".into()))
                        .await;
                    return Ok(FactorKind::Otp);
                }
            }
            let recovery = self
                .vault
                .code_hash("recovery", &codes::normalise_recovery_code(code));
            if self.store.consume_recovery_code(user.id, &recovery).await? {
                self.passed(user, attempt).await?;
                self.audit("mfa.recovery_code.used", user, None).await;
                return Ok(FactorKind::Otp);
            }
        }
        if let Code::Oob(code) | Code::Any(code) = code {
            let code = code.trim();
            let sent = |f: &&Factor| matches!(f.kind, FactorKind::Sms | FactorKind::Email);
            for factor in factors.iter().filter(sent) {
                let purpose = format!("verify:{}", factor.kind.as_str());
                let hash = self.vault.code_hash(&purpose, code);
                if self
                    .store
                    .consume_code(user.id, &purpose, &hash, now)
                    .await?
                {
                    self.passed(user, attempt).await?;
                    self.audit(
                        "mfa.verified",
                        user,
                        Some(format!("factor {}", factor.kind.as_str())),
                    )
                    .await;
                    return Ok(factor.kind);
                }
            }
        }
        Err(self.failed(user, attempt, None).await)
    }

    /// `POST /v1/me/verify-enrollment-otp`.
    pub async fn verify_enrollment(
        &self,
        principal: &Principal,
        codes: &Codes,
    ) -> Result<Granted, MfaError> {
        let (otp, oob) = Mfa::one_code(codes)?;
        let user = self.user(principal).await?;
        let session = self.session(principal, &user, codes.access_token.as_deref())?;
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
            (FactorKind::Webauthn, _, _) => {
                return Err(MfaError::Invalid(
                    "this enrollment registers a passkey: open its link in a browser".into(),
                ));
            }
            _ => return Err(MfaError::Invalid("this enrollment expects `oob`".into())),
        };
        let confirmed = self.confirm(&ticket, code).await?;
        self.grant(session, confirmed.kind, &user).await
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

    /// Validates `accessToken` of a verification body: a gatehouse token of the same user.
    /// A token revoked since it was issued (SPEC §13) is as invalid here as anywhere.
    fn session(
        &self,
        principal: &Principal,
        user: &User,
        access_token: Option<&str>,
    ) -> Result<Principal, MfaError> {
        let Some(token) = access_token.filter(|t| !t.is_empty()) else {
            return Ok(principal.clone());
        };
        let claims = self
            .tokens
            .verify_access(token)
            .map_err(|_| MfaError::InvalidAccessToken)?;
        if claims.sub != principal.user_id || !user.accepts_token_issued(claims.iat) {
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
        // The user read again: a disable or a revocation that landed while the code was being
        // checked refuses the grant, rather than a token issued from the record read before it.
        let fresh = self.user(&session).await?;
        if !fresh.is_valid || fresh.tokens_not_before != user.tokens_not_before {
            return Err(MfaError::InvalidAccessToken);
        }
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
            .issue_access_after(&stepped, user.tokens_not_before)
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
}
