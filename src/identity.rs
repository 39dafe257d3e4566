//! Who a request is from once a credential has been verified, as tokens carry it and identity
//! headers tell the upstream. Credentials become a [`Principal`] in [`crate::auth`].

use serde::{Deserialize, Serialize};

/// Lifetime of an `X-Auth-Assertion`.
pub const ASSERTION_TTL: i64 = 60;

/// How a principal proved who it is (the JWT `amr` values, RFC 8176).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    /// A password (Basic).
    Pwd,
    /// A TOTP authenticator app or a recovery code.
    Otp,
    /// A code sent by SMS.
    Sms,
    /// A code sent by email.
    Email,
    /// An application token.
    App,
    /// A hardware-bound key (RFC 8176 `hwk`): a passkey (SPEC §14), at step-up or sign-in.
    Hwk,
    /// The authenticator verified the user (RFC 8176 `user`): beside `hwk` when a passkey signed
    /// in without a password. Not a second factor by itself.
    User,
    /// Several factors, as an external identity provider reports them (RFC 8176 `mfa`): only
    /// from a provider configured with `trust_idp_mfa`, or a trusted issuer's token.
    Mfa,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Pwd => "pwd",
            Method::Otp => "otp",
            Method::Sms => "sms",
            Method::Email => "email",
            Method::App => "app",
            Method::Hwk => "hwk",
            Method::User => "user",
            Method::Mfa => "mfa",
        }
    }

    /// Whether this method is a second factor (what `access = "mfa"` asks for).
    pub fn is_second_factor(self) -> bool {
        matches!(
            self,
            Method::Otp | Method::Sms | Method::Email | Method::Hwk | Method::Mfa
        )
    }
}

/// Who is making a request, once a credential has been verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub user_id: String,
    pub user_name: String,
    pub email: Option<String>,
    pub scopes: Vec<String>,
    pub organizations: Vec<Membership>,
    pub methods: Vec<Method>,
}

/// Membership of an organisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    pub organization_id: i64,
    pub role: Role,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    Member,
}
