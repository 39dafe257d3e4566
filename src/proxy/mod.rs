//! Everything about talking to the upstream application: header hygiene and forwarding.

pub mod forward;
pub mod headers;
pub mod pool;
