//! TLS for `listen.https`: rustls with TLS 1.2 and 1.3, ALPN `h2` then `http/1.1`, and a
//! self-signed development certificate generated at first start when `tls.self_signed` is set.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::crypto::ring;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsConfig;

/// The rustls configuration for the HTTPS listener, generating a certificate first if asked to.
pub fn server_config(config: &TlsConfig, public_url: &str) -> Result<Arc<ServerConfig>, String> {
    if config.self_signed && !(config.cert.exists() && config.key.exists()) {
        generate_self_signed(&config.cert, &config.key, public_url)?;
        tracing::warn!(
            cert = %config.cert.display(),
            "generated a self-signed TLS certificate (tls.self_signed); use a real one in production"
        );
    }
    load(config)
}

/// What [`server_config`] would refuse, without generating anything: the certificate and key
/// must be readable and match, unless `tls.self_signed` will generate missing ones.
pub fn check(config: &TlsConfig) -> Result<(), String> {
    if config.self_signed && !(config.cert.exists() && config.key.exists()) {
        return Ok(());
    }
    load(config).map(drop)
}

/// The rustls configuration for the certificate and key as they are on disk.
fn load(config: &TlsConfig) -> Result<Arc<ServerConfig>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&config.cert)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| format!("tls.cert: cannot read {}: {e}", config.cert.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "tls.cert: {} holds no certificate",
            config.cert.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&config.key)
        .map_err(|e| format!("tls.key: cannot read {}: {e}", config.key.display()))?;
    let mut server = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("tls: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("tls.key: does not match tls.cert or is unusable: {e}"))?;
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(server))
}

/// Names the development certificate is valid for: loopback, and the host of `server.public_url`.
fn subject_names(public_url: &str) -> Vec<String> {
    let mut names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    if let Some(host) = public_url
        .parse::<http::Uri>()
        .ok()
        .and_then(|u| u.host().map(|h| h.trim_matches(['[', ']']).to_owned()))
        && !names.contains(&host)
    {
        names.push(host);
    }
    names
}

fn generate_self_signed(cert: &Path, key: &Path, public_url: &str) -> Result<(), String> {
    let generated = rcgen::generate_simple_self_signed(subject_names(public_url))
        .map_err(|e| format!("tls.self_signed: cannot generate a certificate: {e}"))?;
    for path in [cert, key] {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            crate::private::create_dir(dir)
                .map_err(|e| format!("tls: cannot create {}: {e}", dir.display()))?;
        }
    }
    write_file(key, generated.signing_key.serialize_pem().as_bytes())
        .map_err(|e| format!("tls.key: cannot write {}: {e}", key.display()))?;
    write_file(cert, generated.cert.pem().as_bytes())
        .map_err(|e| format!("tls.cert: cannot write {}: {e}", cert.display()))
}

/// Writes a file gatehouse generated: 0600 like every file it creates (SPEC §10), also when a
/// file of that name was already there with another mode (the key is written only when the pair
/// is incomplete, so a leftover key file may be overwritten); set before a byte is written.
fn write_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut file = crate::private::open_options()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    file.set_permissions(std::fs::Permissions::from_mode(crate::private::FILE_MODE))?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn self_signed_certificate_is_generated_once_and_reused_and_private() {
        use std::fs;
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let config = TlsConfig {
            cert: dir.path().join("certs/gh.crt"),
            key: dir.path().join("certs/gh.key"),
            self_signed: true,
        };
        server_config(&config, "https://app.example:8443").unwrap();
        let first = fs::read(&config.cert).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&config.key), 0o600);
        assert_eq!(mode(&config.cert), 0o600);
        assert_eq!(mode(&dir.path().join("certs")), 0o700);
        server_config(&config, "https://app.example:8443").unwrap();
        assert_eq!(fs::read(&config.cert).unwrap(), first);
    }

    #[test]
    fn a_new_key_written_over_a_leftover_readable_key_file_is_private() {
        use std::fs;
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let config = TlsConfig {
            cert: dir.path().join("gh.crt"),
            key: dir.path().join("gh.key"),
            self_signed: true,
        };
        // A key file without its certificate, readable by everyone: the pair is generated again.
        fs::write(&config.key, "old").unwrap();
        fs::set_permissions(&config.key, fs::Permissions::from_mode(0o644)).unwrap();
        server_config(&config, "https://localhost").unwrap();
        let mode = fs::metadata(&config.key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the new private key is readable by others");
    }

    #[test]
    fn missing_certificate_without_self_signed_names_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let config = TlsConfig {
            cert: dir.path().join("none.crt"),
            key: dir.path().join("none.key"),
            self_signed: false,
        };
        let err = server_config(&config, "https://localhost").unwrap_err();
        assert!(err.starts_with("tls.cert"), "{err}");
    }

    #[test]
    fn public_host_is_in_the_certificate_names() {
        assert!(subject_names("https://gate.example.com").contains(&"gate.example.com".to_owned()));
    }
}
