//! Second factors: TOTP, one-time codes by SMS or email, enrollment tickets, recovery codes and
//! lockout. Domain logic only: no HTTP here.
//!
//! [`service::Mfa`] holds what the use cases share; each use case is an `impl Mfa` of its own:
//! [`enroll`], [`verify`], [`passkeys`], `challenge`, `recovery`, `sms_opt_in` (the WS family's opt-in) and
//! [`phone_login`] (the Manage family's code logins).

mod challenge;
pub mod codes;
pub mod enroll;
pub use crate::lockout;
pub mod passkeys;
pub mod phone_login;
mod recovery;
mod relying_party;
pub mod service;
mod sms_opt_in;
pub mod totp;
pub mod verify;

#[cfg(test)]
mod tests;
