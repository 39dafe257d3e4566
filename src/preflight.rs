//! The checks `serve` makes of a valid configuration before it opens the store or binds a port,
//! shared with `check-config` so that both refuse the same configurations with the same words.
//!
//! Each check is the one the start-up code itself runs (the master key, the TLS certificate and
//! key, the signing key file, the bootstrap file, the store's URL or directory, the SMTP settings),
//! minus anything with an effect: nothing is generated, opened for writing, bound or connected to.

use std::net::SocketAddr;

use crate::config::{Config, ConfigError};

/// Every problem `serve` would meet at start because of the configuration, reported together.
pub fn check(config: &Config) -> Result<(), ConfigError> {
    let mut problems = Vec::new();
    let mut add = |result: Result<(), String>| {
        if let Err(e) = result {
            problems.push(e);
        }
    };
    add(crate::store::configured::check(&config.store));
    add(crate::secrets::check(&config.secrets, &config.store.path));
    if config.listen.https.is_some() {
        add(crate::server::tls::check(&config.tls));
    }
    if let Some(path) = &config.tokens.signing_key_file {
        add(crate::tokens::read_signing_key_file(path).map(drop));
    }
    add(crate::notify::email::check(&config.smtp));
    add(distinct_listeners(config));
    if let Some(path) = &config.bootstrap.file {
        problems.extend(crate::bootstrap::check(path));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ConfigError { problems })
    }
}

/// Two listeners cannot share a port on the same address (or on a wildcard address).
fn distinct_listeners(config: &Config) -> Result<(), String> {
    let listeners: Vec<(&str, SocketAddr)> = [
        ("listen.https", config.listen.https),
        ("listen.http", config.listen.http),
        ("listen.admin", Some(config.listen.admin)),
    ]
    .into_iter()
    .filter_map(|(key, addr)| Some((key, addr?)))
    .filter(|(_, addr)| addr.port() != 0)
    .collect();
    for (i, (key, addr)) in listeners.iter().enumerate() {
        for (other, other_addr) in &listeners[..i] {
            let (a, b) = (addr.ip(), other_addr.ip());
            // `[::]` takes IPv4 too (dual stack); `0.0.0.0` only IPv4.
            let covers = |wild: std::net::IpAddr, ip: std::net::IpAddr| {
                wild.is_unspecified() && (wild.is_ipv6() || ip.is_ipv4())
            };
            let overlap = a == b || covers(a, b) || covers(b, a);
            if addr.port() == other_addr.port() && overlap {
                return Err(format!(
                    "{key}: {addr} takes the port of {other} ({other_addr}); give each listener its own"
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn listeners(https: &str, http: &str, admin: &str) -> Result<(), String> {
        let text =
            format!("[listen]\nhttps = \"{https}\"\nhttp = \"{http}\"\nadmin = \"{admin}\"\n");
        distinct_listeners(&crate::config::development_toml_str(&text).unwrap())
    }

    #[test]
    fn listeners_sharing_a_port_are_refused_before_binding() {
        let err = listeners("", "127.0.0.1:8080", "127.0.0.1:8080").unwrap_err();
        assert!(
            err.starts_with("listen.admin: 127.0.0.1:8080 takes the port of listen.http"),
            "{err}"
        );
        assert!(listeners("0.0.0.0:8443", "127.0.0.1:8443", "127.0.0.1:9090").is_err());
        assert!(listeners("[::]:8443", "127.0.0.1:8443", "127.0.0.1:9090").is_err());
        // Distinct ports, distinct addresses, other families, or port 0: all fine.
        assert!(listeners("0.0.0.0:8443", "127.0.0.1:8080", "127.0.0.1:9090").is_ok());
        assert!(listeners("", "127.0.0.1:8080", "127.0.0.2:8080").is_ok());
        assert!(listeners("0.0.0.0:8443", "[::1]:8443", "127.0.0.1:9090").is_ok());
        assert!(listeners("", "127.0.0.1:0", "127.0.0.1:0").is_ok());
    }
}
