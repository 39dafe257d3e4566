//! Endpoints gatehouse answers itself.

pub mod admin;
