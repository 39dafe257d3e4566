//! The long-lived services the request handlers of every listener share, whatever configuration
//! their pipeline was built from: a reload builds a new pipeline around the same services.

use std::sync::Arc;

use super::Bodies;
use crate::auth::Authenticator;
use crate::clock::Clock;
use crate::domains::Domains;
use crate::meter::Meter;
use crate::mfa::service::Mfa;
use crate::sessions::Sessions;
use crate::store::Store;
use crate::tokens::Tokens;

/// The store, keys, authentication, MFA, domains, clock, metrics and body budget of one running
/// gatehouse.
#[derive(Clone)]
pub struct Services {
    pub store: Arc<dyn Store>,
    pub tokens: Arc<Tokens>,
    pub auth: Arc<Authenticator>,
    pub mfa: Arc<Mfa>,
    pub domains: Arc<Domains>,
    pub clock: Arc<dyn Clock>,
    pub meter: Arc<Meter>,
    /// The one reader of local endpoints' bodies, with its budget shared by every listener.
    pub bodies: Arc<Bodies>,
    pub sessions: Arc<Sessions>,
    /// The access rules in force, for the exchanges that outlive a reload.
    pub policy: Arc<arc_swap::ArcSwap<crate::routes::Policy>>,
    /// The open WebSocket tunnels, shared by every pipeline a reload builds.
    pub tunnels: Arc<crate::server::tunnels::Tunnels>,
}
