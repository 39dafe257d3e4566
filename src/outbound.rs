//! The HTTP(S) client gatehouse uses for its own calls out: trusted issuers' JWKS, SMS providers,
//! OpenID providers. TLS with rustls (ring) against the system's CA certificates, or against the
//! roots of a PEM file for one provider. Redirects are never followed, and answers are bounded.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// Largest answer read from an outbound call.
const MAX_ANSWER: usize = 1024 * 1024;

#[derive(Clone)]
pub struct Outbound {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    timeout: Duration,
}

impl Outbound {
    /// A client for `https://` and `http://` URLs. Without system CA certificates only `http://`
    /// works (logged once when `warn` is set).
    pub fn new(timeout: Duration, warn: bool) -> Result<Outbound, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = match hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_native_roots(provider.clone())
        {
            Ok(builder) => builder,
            Err(e) => {
                if warn {
                    tracing::warn!(error = %e, "no system CA certificates; outbound calls work over http:// only");
                }
                let config = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .map_err(|e| format!("TLS client: {e}"))?
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth();
                hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(config)
            }
        };
        let connector = builder.https_or_http().enable_http1().build();
        Ok(Outbound {
            client: Client::builder(TokioExecutor::new()).build(connector),
            timeout,
        })
    }

    /// A client that trusts only the certificates in the PEM file `ca_file` (a private CA).
    pub fn with_roots(timeout: Duration, ca_file: &std::path::Path) -> Result<Outbound, String> {
        use rustls_pki_types::CertificateDer;
        use rustls_pki_types::pem::PemObject;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        let certs = CertificateDer::pem_file_iter(ca_file)
            .map_err(|e| format!("cannot read {}: {e}", ca_file.display()))?;
        for cert in certs {
            let cert = cert.map_err(|e| format!("{}: {e}", ca_file.display()))?;
            roots
                .add(cert)
                .map_err(|e| format!("{}: {e}", ca_file.display()))?;
        }
        if roots.is_empty() {
            return Err(format!("{} holds no certificate", ca_file.display()));
        }
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS client: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(config)
            .https_or_http()
            .enable_http1()
            .build();
        Ok(Outbound {
            client: Client::builder(TokioExecutor::new()).build(connector),
            timeout,
        })
    }

    /// Sends `request` and reads the whole answer (at most 1 MiB) within the timeout.
    pub async fn send(&self, request: Request<Full<Bytes>>) -> Result<(StatusCode, Bytes), String> {
        let response = self.exchange(request).await?;
        Ok((response.status(), response.into_body()))
    }

    /// Sends `request` and reads the whole answer, headers and body (at most 1 MiB), within the
    /// timeout.
    pub async fn exchange(&self, request: Request<Full<Bytes>>) -> Result<Response<Bytes>, String> {
        let call = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| e.to_string())?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok(Response::from_parts(parts, body))
        };
        tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| "timed out".to_owned())?
    }
}
