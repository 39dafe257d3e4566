//! Everything a running gatehouse shares between listeners: configuration, store, keys, clock.

use std::sync::Arc;

use crate::api::Bodies;
use crate::auth::Authenticator;
use crate::clock::{Clock, SystemClock};
use crate::config::{Config, Environment, StoreConfig};
use crate::domains::Domains;
use crate::meter::Meter;
use crate::mfa::service::{Collaborators, Mfa};
use crate::notify::Notifier;
use crate::secrets::Vault;
use crate::store::Store;
use crate::store::postgres::PgStore;
use crate::store::sled::SledStore;
use crate::tokens::Tokens;

/// What [`open_store`] would refuse before opening anything: a PostgreSQL URL it cannot parse, or
/// a sled `store.path` that is not a directory.
pub fn check_store(config: &StoreConfig) -> Result<(), String> {
    match (config.backend.as_str(), &config.url) {
        ("postgres", Some(url)) => crate::store::postgres::check_url(url.expose()).map_err(|e| {
            let key = match config.url_file {
                Some(_) => "store.url_file",
                None => "store.url",
            };
            format!("{key}: {e}")
        }),
        ("postgres", None) => Err("store.url: is required for the postgres backend".into()),
        _ if config.path.exists() && !config.path.is_dir() => Err(format!(
            "store.path: cannot open {}: not a directory",
            config.path.display()
        )),
        _ => Ok(()),
    }
}

/// The configured backend: sled in `store.path`, or PostgreSQL at `store.url` (migrated on open).
pub async fn open_store(config: &StoreConfig) -> Result<Arc<dyn Store>, String> {
    check_store(config)?;
    match (config.backend.as_str(), &config.url) {
        ("postgres", Some(url)) => {
            let store = PgStore::connect(url.expose(), config.max_connections as usize)
                .await
                .map_err(|e| format!("store.url: {e}"))?;
            Ok(Arc::new(store))
        }
        ("postgres", None) => Err("store.url: is required for the postgres backend".into()),
        _ => {
            let store = SledStore::open(&config.path)
                .map_err(|e| format!("store.path: cannot open {}: {e}", config.path.display()))?;
            Ok(Arc::new(store))
        }
    }
}

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
    /// Opens the configured store and loads keys, with the system clock.
    pub async fn open(config: Config) -> Result<App, String> {
        let store = open_store(&config.store).await?;
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
            Collaborators {
                store: store.clone(),
                vault,
                tokens: tokens.clone(),
                notifier,
                clock: clock.clone(),
                meter: meter.clone(),
            },
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
