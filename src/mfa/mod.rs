//! Second factors: TOTP, one-time codes by SMS or email, enrollment tickets, recovery codes and
//! lockout. Domain logic only: no HTTP here.

pub mod codes;
pub use crate::lockout;
pub mod phone;
pub mod service;
pub mod totp;
