//! The configuration as read, before it is checked: every leaf remembers a bad value instead of
//! failing on it, so that all problems can be reported together.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};

/// A leaf value as written: `Err` holds why it could not be read as `T`.
#[derive(Debug, Clone)]
pub(super) struct Raw<T>(pub(super) Result<T, String>);

impl<'de, T: DeserializeOwned> Deserialize<'de> for Raw<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(d)?;
        Ok(Raw(serde_json::from_value(value).map_err(|e| e.to_string())))
    }
}

pub(super) type Field<T> = Option<Raw<T>>;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawConfig {
    pub(super) server: RawServer,
    pub(super) listen: RawListen,
    pub(super) tls: RawTls,
    pub(super) upstream: RawUpstream,
    pub(super) proxy: RawProxy,
    pub(super) routes: Vec<RawRoute>,
    pub(super) identity_headers: RawIdentityHeaders,
    pub(super) log: RawLog,
    pub(super) store: RawStore,
    pub(super) admin: RawAdmin,
    pub(super) auth: RawAuth,
    pub(super) tokens: RawTokens,
    pub(super) bootstrap: RawBootstrap,
    pub(super) mfa: RawMfa,
    pub(super) secrets: RawSecrets,
    pub(super) smtp: RawSmtp,
    pub(super) sms: RawSms,
    pub(super) apis: RawApis,
    pub(super) domains: RawDomains,
    pub(super) sessions: RawSessions,
    pub(super) oidc: RawOidc,
    pub(super) websocket: RawWebsocket,
    pub(super) audit: RawAudit,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawAudit {
    pub(super) retention: Field<String>,
    pub(super) sink: Field<String>,
    pub(super) file: Field<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawWebsocket {
    pub(super) allowed_origins: Field<Vec<String>>,
    pub(super) idle_timeout: Field<String>,
    pub(super) max_lifetime: Field<String>,
    pub(super) max_tunnels_per_user: Field<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawOidc {
    pub(super) providers: Vec<RawOidcProvider>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawOidcProvider {
    pub(super) id: Field<String>,
    pub(super) name: Field<String>,
    pub(super) issuer: Field<String>,
    pub(super) client_id: Field<String>,
    pub(super) client_secret: Field<String>,
    pub(super) client_secret_file: Field<String>,
    pub(super) scopes: Field<Vec<String>>,
    pub(super) allowed_email_domains: Field<Vec<String>>,
    pub(super) allowed_groups: Field<Vec<String>>,
    pub(super) groups_claim: Field<String>,
    pub(super) scopes_from_groups: Field<std::collections::BTreeMap<String, Vec<String>>>,
    pub(super) trust_idp_mfa: Field<bool>,
    pub(super) ca_file: Field<String>,
    pub(super) max_new_users: Field<u64>,
    pub(super) new_users_window: Field<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawSessions {
    pub(super) cookie_name: Field<String>,
    pub(super) idle_timeout: Field<String>,
    pub(super) max_age: Field<String>,
    pub(super) max_per_user: Field<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawDomains {
    pub(super) code_prefix: Field<String>,
    pub(super) code_ttl: Field<String>,
    pub(super) record_name: Field<String>,
    pub(super) resolver: Field<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawMfa {
    pub(super) default_factor: Field<String>,
    pub(super) ticket_ttl: Field<String>,
    pub(super) code_ttl: Field<String>,
    pub(super) send_limit: Field<u64>,
    pub(super) send_window: Field<String>,
    pub(super) totp: RawTotp,
    pub(super) lockout: RawLockout,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawTotp {
    pub(super) issuer: Field<String>,
    pub(super) algorithm: Field<String>,
    pub(super) digits: Field<u64>,
    pub(super) period: Field<u64>,
    pub(super) skew: Field<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawLockout {
    pub(super) max_failures: Field<u64>,
    pub(super) window: Field<String>,
    pub(super) duration: Field<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawSecrets {
    pub(super) master_key_file: Field<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawSmtp {
    pub(super) url: Field<String>,
    pub(super) from: Field<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawSms {
    pub(super) kind: Field<String>,
    pub(super) url: Field<String>,
    pub(super) from: Field<String>,
    pub(super) account_sid: Field<String>,
    pub(super) auth_token: Field<String>,
    pub(super) auth_token_file: Field<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawApis {
    pub(super) nexus: RawFamily,
    pub(super) ws: RawFamily,
    pub(super) manage: RawManage,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawManage {
    pub(super) enabled: Field<bool>,
    pub(super) base_path: Field<String>,
    pub(super) client_ip_limit: Field<u64>,
    pub(super) client_ip_window: Field<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawFamily {
    pub(super) enabled: Field<bool>,
    pub(super) base_path: Field<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawStore {
    pub(super) backend: Field<String>,
    pub(super) path: Field<String>,
    pub(super) url: Field<String>,
    pub(super) url_file: Field<String>,
    pub(super) max_connections: Field<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawAdmin {
    pub(super) token_file: Field<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawAuth {
    pub(super) require_application_token: Field<bool>,
    pub(super) application_token_header: Field<String>,
    pub(super) basic_cache_ttl: Field<String>,
    pub(super) revocation_lag: Field<String>,
    pub(super) jwks_min_refresh: Field<String>,
    pub(super) trusted_issuers: Vec<RawTrustedIssuer>,
    pub(super) max_concurrent_hashes: Field<u64>,
    pub(super) max_queued_hashes: Field<u64>,
    pub(super) failed_password_limit: Field<u64>,
    pub(super) failed_password_window: Field<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawTrustedIssuer {
    pub(super) issuer: Field<String>,
    pub(super) jwks_url: Field<String>,
    pub(super) audience: Field<String>,
    pub(super) algorithms: Field<Vec<String>>,
    pub(super) max_new_users: Field<u64>,
    pub(super) new_users_window: Field<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawTokens {
    pub(super) issuer: Field<String>,
    pub(super) audience: Field<String>,
    pub(super) access_ttl: Field<String>,
    pub(super) signing_key_file: Field<String>,
    pub(super) rotate_every: Field<String>,
    pub(super) key_prepublish: Field<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawBootstrap {
    pub(super) file: Field<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawServer {
    pub(super) environment: Field<String>,
    pub(super) public_url: Field<String>,
    pub(super) trusted_proxies: Field<Vec<String>>,
    pub(super) shutdown_grace: Field<String>,
    pub(super) header_read_timeout: Field<String>,
    pub(super) tls_handshake_timeout: Field<String>,
    pub(super) send_timeout: Field<String>,
    pub(super) max_headers: Field<u64>,
    pub(super) max_header_bytes: Field<u64>,
    pub(super) h2_max_concurrent_streams: Field<u64>,
    pub(super) worker_threads: Field<u64>,
    pub(super) body_read_timeout: Field<String>,
    pub(super) max_buffered_bytes: Field<u64>,
    pub(super) max_body_bytes: Field<u64>,
    pub(super) max_connections: Field<u64>,
    pub(super) max_connections_per_ip: Field<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawListen {
    pub(super) https: Field<String>,
    pub(super) http: Field<String>,
    pub(super) admin: Field<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawTls {
    pub(super) cert: Field<String>,
    pub(super) key: Field<String>,
    pub(super) self_signed: Field<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawUpstream {
    pub(super) url: Field<String>,
    pub(super) connect_timeout: Field<String>,
    pub(super) response_timeout: Field<String>,
    pub(super) audience: Field<String>,
    pub(super) protocol: Field<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawProxy {
    pub(super) default: Field<String>,
    pub(super) max_body: Field<u64>,
    pub(super) reauth_interval: Field<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawRoute {
    pub(super) path_prefix: Field<String>,
    pub(super) access: Field<String>,
    pub(super) scopes: Field<Vec<String>>,
    pub(super) methods: Field<Vec<String>>,
    pub(super) source: Field<Vec<String>>,
    pub(super) any_scopes: Field<Vec<String>>,
    pub(super) factors: Field<Vec<String>>,
    pub(super) rate_limit: Field<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawIdentityHeaders {
    pub(super) preset: Field<String>,
    pub(super) user: Field<String>,
    pub(super) user_id: Field<String>,
    pub(super) email: Field<String>,
    pub(super) scopes: Field<String>,
    pub(super) methods: Field<String>,
    pub(super) assertion: Field<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawLog {
    pub(super) format: Field<String>,
    pub(super) level: Field<String>,
}
