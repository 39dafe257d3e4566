//! The composition root: from a configuration, the store, keys and services of a running
//! gatehouse, then its request pipeline, admin API and listeners around them.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use arc_swap::ArcSwap;

use crate::api::Bodies;
use crate::api::admin::Admin;
use crate::api::services::Services;
use crate::auth::Authenticator;
use crate::clock::{Clock, SystemClock};
use crate::config::{Config, Environment};
use crate::domains::Domains;
use crate::gateway::Gateway;
use crate::meter::Meter;
use crate::mfa::service::{Collaborators, Mfa};
use crate::notify::Notifier;
use crate::reload::Reloadable;
use crate::secrets::Vault;
use crate::server::{Handler, Server, StartError};
use crate::sessions::Sessions;
use crate::store::Store;
use crate::tokens::Tokens;

/// A running gatehouse's configuration and the services built from it at start (`app.store`,
/// `app.tokens`, … reach them through [`Services`]).
pub struct App {
    pub config: Config,
    services: Services,
}

impl std::ops::Deref for App {
    type Target = Services;
    fn deref(&self) -> &Services {
        &self.services
    }
}

impl App {
    /// The services every request handler shares.
    pub fn services(&self) -> Services {
        self.services.clone()
    }

    /// Opens the configured store and loads keys, with the system clock.
    pub async fn open(config: Config) -> Result<App, String> {
        let store = crate::backend::open(&config.store, config.auth.revocation_lag).await?;
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
        crate::audit::configure(&config.audit)?;
        let vault = Arc::new(Vault::load(&config.secrets, &config.store.path)?);
        let tokens = Arc::new(
            Tokens::load(&config.tokens, store.clone(), vault.clone(), clock.clone()).await?,
        );
        tokens.keep_fresh();
        let sessions = Arc::new(Sessions::new(
            &config.sessions,
            store.clone(),
            clock.clone(),
            vault.clone(),
        ));
        let auth = Arc::new(Authenticator::new(
            &config.auth,
            store.clone(),
            tokens.clone(),
            sessions.clone(),
            crate::lockout::Policy::from_config(&config.mfa.lockout),
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
            config.server.max_body_bytes,
        ));
        let tunnels = Arc::new(crate::server::tunnels::Tunnels::new(meter.clone()));
        let policy = Arc::new(ArcSwap::from_pointee(crate::routes::Policy::of(&config)));
        Ok(App {
            config,
            services: Services {
                store,
                tokens,
                auth,
                mfa,
                domains,
                clock,
                meter,
                bodies,
                sessions,
                tunnels,
                policy,
            },
        })
    }

    /// The request pipeline and the admin API for this configuration, with every listener bound
    /// around them, and what a configuration reload replaces in that server.
    pub async fn bind(&self) -> Result<(Server, Reloadable), StartError> {
        let services = self.services();
        let config = &self.config;
        let gateway = Arc::new(ArcSwap::from_pointee(Gateway::new(&services, config)));
        let current = gateway.clone();
        let public: Handler = Arc::new(move |req, conn| {
            // Each request takes the pipeline current when it arrives: a reload applies to the
            // next request of every open connection.
            let gateway = current.load_full();
            // The gateway names the request's client and id for its audit events.
            let request = crate::audit::Request::default();
            // The request's future is large (kilobytes): it is put on the heap once, where it
            // stays, and only its box is moved into the wrappers, which would otherwise copy
            // it whole, each of them, for every request.
            let work = Box::pin(async move { gateway.handle(req, conn).await });
            Box::pin(crate::audit::within(request, work))
        });
        let ready = Arc::new(AtomicBool::new(false));
        let admin = Arc::new(Admin::new(&services, config, ready.clone()));
        let admin: Handler = Arc::new(move |mut req, conn| {
            // The caller's address, for the audit events it causes.
            req.extensions_mut().insert(conn.peer);
            let admin = admin.clone();
            Box::pin(async move { admin.handle(req).await })
        });
        let server = Server::bind(
            config,
            public,
            admin,
            self.meter.clone(),
            ready,
            self.tunnels.clone(),
        )
        .await?;
        let reloadable = Reloadable::new(services, config, gateway, server.tls());
        Ok((server, reloadable))
    }
}
