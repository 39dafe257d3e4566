//! Credentials → [`Principal`]. Route decisions live in [`policy`].

pub mod policy;

use http::request::Parts;

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
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Pwd => "pwd",
            Method::Otp => "otp",
            Method::Sms => "sms",
            Method::Email => "email",
            Method::App => "app",
        }
    }

    /// Whether this method is a second factor (what `access = "mfa"` asks for).
    pub fn is_second_factor(self) -> bool {
        matches!(self, Method::Otp | Method::Sms | Method::Email)
    }
}

/// Who is making a request, once a credential has been verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub user_id: String,
    pub user_name: String,
    pub email: Option<String>,
    pub scopes: Vec<String>,
    pub organizations: Vec<String>,
    pub methods: Vec<Method>,
}

/// Why credentials were refused; every variant answers 401 with the same body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    Invalid,
}

/// Verifies whatever credential the request carries. No credential is `Ok(None)`.
///
/// No credential scheme is configured yet, so every request is anonymous.
pub async fn authenticate(_parts: &Parts) -> Result<Option<Principal>, AuthError> {
    Ok(None)
}
