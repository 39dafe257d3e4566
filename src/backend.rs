//! The store `[store]` configures: checked before start-up opens anything, then opened.

use std::sync::Arc;
use std::time::Duration;

use crate::config::StoreConfig;
use crate::store::Store;
use crate::store::postgres::PgStore;
use crate::store::sled::SledStore;

/// What [`open`] would refuse before opening anything: a PostgreSQL URL it cannot parse, or a
/// sled `store.path` that is not a directory.
pub fn check(config: &StoreConfig) -> Result<(), String> {
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

/// The configured backend: sled in `store.path`, or PostgreSQL at `store.url` (migrated on open),
/// keeping what requests read for at most `revocation_lag` (`auth.revocation_lag`).
pub async fn open(
    config: &StoreConfig,
    revocation_lag: Duration,
) -> Result<Arc<dyn Store>, String> {
    check(config)?;
    match (config.backend.as_str(), &config.url) {
        ("postgres", Some(url)) => {
            let store = PgStore::connect(url.expose(), config.max_connections as usize)
                .await
                .map_err(|e| format!("store.url: {e}"))?;
            Ok(Arc::new(store.with_read_cache(revocation_lag)))
        }
        ("postgres", None) => Err("store.url: is required for the postgres backend".into()),
        _ => {
            let store = SledStore::open(&config.path)
                .map_err(|e| format!("store.path: cannot open {}: {e}", config.path.display()))?;
            Ok(Arc::new(store))
        }
    }
}
