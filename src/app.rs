//! Everything a running gatehouse shares between listeners: configuration, store, keys, clock.

use std::sync::Arc;

use crate::api::Bodies;
use crate::auth::Authenticator;
use crate::clock::{Clock, SystemClock};
use crate::config::{Config, Environment};
use crate::domains::Domains;
use crate::meter::Meter;
use crate::mfa::service::Mfa;
use crate::notify::Notifier;
use crate::secrets::Vault;
use crate::services::Services;
use crate::store::Store;
use crate::tokens::Tokens;

pub struct App {
    pub config: Config,
    pub store: Arc<dyn Store>,
    pub tokens: Arc<Tokens>,
    pub auth: Arc<Authenticator>,
    pub mfa: Arc<Mfa>,
    pub domains: Arc<Domains>,
    pub clock: Arc<dyn Clock>,
    pub meter: Arc<Meter>,
    /// The one reader of local endpoints' bodies, with its budget shared by every listener.
    pub bodies: Arc<Bodies>,
}

impl App {
    /// The services every request handler shares.
    pub fn services(&self) -> Services {
        Services {
            store: self.store.clone(),
            tokens: self.tokens.clone(),
            auth: self.auth.clone(),
            mfa: self.mfa.clone(),
            domains: self.domains.clone(),
            clock: self.clock.clone(),
            meter: self.meter.clone(),
            bodies: self.bodies.clone(),
        }
    }

    /// Opens the configured store and loads keys, with the system clock.
    pub async fn open(config: Config) -> Result<App, String> {
        let store = crate::store::configured::open(&config.store).await?;
        App::with_store(config, store, Arc::new(SystemClock)).await
    }

    /// Builds the shared state around a store and a clock of the caller's choosing.
    pub async fn with_store(
        config: Config,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
    ) -> Result<App, String> {
        if let Some(path) = &config.bootstrap.file {
            let development = config.server.environment == Environment::Development;
            let applied =
                crate::bootstrap::apply(path, store.as_ref(), clock.as_ref(), development).await?;
            tracing::info!(
                created = applied.created,
                unchanged = applied.unchanged,
                "applied the bootstrap file"
            );
        }
        let vault = Arc::new(Vault::load(&config.secrets, &config.store.path)?);
        let tokens =
            Arc::new(Tokens::load(&config.tokens, store.as_ref(), &vault, clock.clone()).await?);
        let auth = Arc::new(Authenticator::new(
            &config.auth,
            store.clone(),
            tokens.clone(),
            clock.clone(),
        )?);
        let notifier = Arc::new(Notifier::new(
            &config.smtp,
            &config.sms,
            &config.store.path,
        )?);
        let meter = Arc::new(Meter::new());
        let mfa = Arc::new(Mfa::new(
            store.clone(),
            vault,
            tokens.clone(),
            notifier,
            clock.clone(),
            meter.clone(),
            &config.mfa,
            &config.server.public_url,
        ));
        let domains = Arc::new(Domains::new(
            &config.domains,
            store.clone(),
            clock.clone(),
            config.bootstrap.file.clone(),
        )?);
        let bodies = Arc::new(Bodies::new(
            config.server.body_read_timeout,
            config.server.max_buffered_bytes,
        ));
        Ok(App {
            config,
            store,
            tokens,
            auth,
            mfa,
            domains,
            clock,
            meter,
            bodies,
        })
    }
}
