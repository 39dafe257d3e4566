//! TXT lookups with hickory-resolver, against `domains.resolver` or the system's resolver.

use std::net::SocketAddr;

use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::{Resolver, TokioResolver};

/// Why no TXT values came back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LookupError {
    /// The name does not exist or has no TXT records.
    NoRecords,
    /// The resolver failed (timeout, refused, server failure).
    Failed(String),
}

pub struct TxtResolver {
    resolver: TokioResolver,
}

impl TxtResolver {
    pub fn new(server: Option<SocketAddr>) -> Result<TxtResolver, String> {
        let mut builder = match server {
            Some(addr) => {
                let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
                for connection in &mut ns.connections {
                    connection.port = addr.port();
                }
                Resolver::builder_with_config(
                    ResolverConfig::from_parts(None, vec![], vec![ns]),
                    TokioRuntimeProvider::default(),
                )
            }
            None => Resolver::builder_tokio()
                .map_err(|e| format!("domains.resolver: no system resolver: {e}"))?,
        };
        // No cache: someone who has just published the record and retries must be looked up
        // again, not answered from an earlier negative or stale response.
        builder.options_mut().cache_size = 0;
        let resolver = builder
            .build()
            .map_err(|e| format!("domains.resolver: {e}"))?;
        Ok(TxtResolver { resolver })
    }

    /// The TXT values at `name`: each record's strings joined (RFC 7208 §3.3), and each string.
    pub async fn txt(&self, name: &str) -> Result<Vec<String>, LookupError> {
        let fqdn = format!("{name}.");
        let lookup = self.resolver.txt_lookup(fqdn).await.map_err(|e| {
            if e.is_no_records_found() || e.is_nx_domain() {
                LookupError::NoRecords
            } else {
                LookupError::Failed(e.to_string())
            }
        })?;
        let mut values = Vec::new();
        for record in lookup.answers() {
            if let RData::TXT(txt) = &record.data {
                let parts: Vec<String> = txt
                    .txt_data
                    .iter()
                    .map(|part| String::from_utf8_lossy(part).into_owned())
                    .collect();
                values.push(parts.concat());
                if parts.len() > 1 {
                    values.extend(parts);
                }
            }
        }
        if values.is_empty() {
            return Err(LookupError::NoRecords);
        }
        Ok(values)
    }
}
