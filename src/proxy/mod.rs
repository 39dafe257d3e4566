//! Everything about talking to the upstream application: header hygiene, forwarding, upgrades
//! and the tunnels that follow them.

pub mod forward;
pub mod headers;
pub mod pool;
pub mod tunnel;
pub mod upgrade;
