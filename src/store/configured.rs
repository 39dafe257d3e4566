//! The store `[store]` configures: checked before start-up opens anything, then opened.

use std::sync::Arc;

use super::Store;
use super::postgres::PgStore;
use super::sled::SledStore;
use crate::config::StoreConfig;

/// What [`open`] would refuse before opening anything: a PostgreSQL URL it cannot parse, or a
/// sled `store.path` that is not a directory.
pub fn check(config: &StoreConfig) -> Result<(), String> {
    match (config.backend.as_str(), &config.url) {
        ("postgres", Some(url)) => super::postgres::check_url(url.expose()).map_err(|e| {
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
pub async fn open(config: &StoreConfig) -> Result<Arc<dyn Store>, String> {
    check(config)?;
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
