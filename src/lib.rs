//! Gatehouse: an authentication sidecar that terminates TLS in front of an application, answers
//! its own MFA/OTP APIs, and forwards everything else with identity headers the application can trust.

pub mod api;
pub mod app;
pub mod audit;
pub mod auth;
pub mod backend;
pub mod body;
pub mod bootstrap;
pub mod cli;
pub mod clock;
pub mod config;
pub mod demo;
pub mod domains;
pub mod explain;
#[doc(hidden)]
pub mod fuzzing;
pub mod gateway;
pub mod hygiene;
pub mod identity;
pub mod inject;
pub mod lockout;
pub mod meter;
pub mod mfa;
pub mod names;
pub mod notify;
pub mod oidc;
pub mod origin;
pub mod outbound;
pub mod path;
pub mod preflight;
pub mod private;
pub mod probe;
pub mod problem;
pub mod proxy;
pub mod ratelimit;
pub mod reload;
pub mod routes;
pub mod secrets;
pub mod server;
pub mod sessions;
pub mod store;
pub mod telemetry;
pub mod tokens;
