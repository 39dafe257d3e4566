//! Configuration: built-in defaults, then the TOML file, then `GATEHOUSE_<SECTION>__<KEY>` variables.
//!
//! figment stays inside this module. The file and the environment are read into raw structs whose
//! leaves remember a bad value instead of failing on it ([`Raw`]); [`validate`] then turns them into
//! [`Config`] and reports every invalid value at once, each under its dotted key.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use figment::value::Value;
use http::Uri;
use ipnet::IpNet;
use serde::{Deserialize, Serialize, Serializer};

use crate::hygiene::IdentityHeaderNames;
use crate::lockout::Policy;

pub mod bootstrap_file;
mod keys;
mod raw;
mod validate;

use keys::*;
use raw::RawConfig;
use validate::validate;

/// The file read when `--config` is not given; a missing default file means "built-in defaults".
pub const DEFAULT_PATH: &str = "config/gatehouse.toml";

/// `server.max_body_bytes` when not set: the largest body of one request to a local endpoint.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;

/// The validated configuration the server runs with.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    pub server: ServerConfig,
    pub listen: ListenConfig,
    pub tls: TlsConfig,
    pub upstream: UpstreamConfig,
    pub proxy: ProxyConfig,
    pub routes: Vec<AccessRule>,
    pub identity_headers: IdentityHeaderNames,
    pub log: LogConfig,
    pub store: StoreConfig,
    pub admin: AdminConfig,
    pub auth: AuthConfig,
    pub tokens: TokensConfig,
    pub bootstrap: BootstrapConfig,
    pub mfa: MfaConfig,
    pub secrets: SecretsConfig,
    pub smtp: SmtpConfig,
    pub sms: SmsConfig,
    pub apis: ApisConfig,
    pub domains: DomainsConfig,
    pub sessions: SessionsConfig,
    pub oidc: OidcConfig,
    pub websocket: WebsocketConfig,
    pub audit: AuditConfig,
}

/// A value that must never be printed: it serialises and debugs as `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("***")
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct StoreConfig {
    /// `sled` (embedded, one replica) or `postgres` (shared by several replicas).
    pub backend: String,
    /// Directory of the sled store; also where development keys and the SMS outbox go.
    pub path: PathBuf,
    /// The PostgreSQL URL (`store.url`, or read from `store.url_file`): it may hold a password.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<Secret>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url_file: Option<PathBuf>,
    /// Connections the PostgreSQL pool keeps at most.
    pub max_connections: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct AdminConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// From `admin.token_file` or `GATEHOUSE_ADMIN_TOKEN`; without one the admin API answers 503.
    pub token: Option<Secret>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AuthConfig {
    /// Proxied routes demand a valid ApplicationToken besides the user's credential.
    pub require_application_token: bool,
    /// Header carrying the ApplicationToken.
    pub application_token_header: String,
    /// How long a successful Basic verification is remembered.
    #[serde(serialize_with = "duration")]
    pub basic_cache_ttl: Duration,
    /// How long a change to a user or session (a scope removed, a user disabled, tokens revoked,
    /// a session ended) may take to reach a replica that keeps what requests read in memory
    /// (PostgreSQL; SPEC §10); zero keeps nothing.
    #[serde(serialize_with = "duration")]
    pub revocation_lag: Duration,
    /// How often at most an issuer's JWKS is fetched again because of an unknown `kid`.
    #[serde(serialize_with = "duration")]
    pub jwks_min_refresh: Duration,
    pub trusted_issuers: Vec<TrustedIssuer>,
    /// Passwords hashed or verified at once (argon2 takes 19 MiB each); default one per core.
    pub max_concurrent_hashes: usize,
    /// Passwords waiting for a hashing thread; beyond, 503 with `Retry-After`.
    pub max_queued_hashes: usize,
    /// Wrong passwords one client address may send per window before it gets 429; 0: no limit.
    pub failed_password_limit: u32,
    #[serde(serialize_with = "duration")]
    pub failed_password_window: Duration,
}

/// An external identity provider whose access tokens gatehouse accepts.
#[derive(Debug, Clone, Serialize)]
pub struct TrustedIssuer {
    pub issuer: String,
    #[serde(serialize_with = "masked_uri")]
    pub jwks_url: Uri,
    pub audience: String,
    pub algorithms: Vec<String>,
    /// Users created from this issuer's tokens at most per `new_users_window`; tokens of new
    /// subjects beyond it are refused with 429 (existing users keep working).
    pub max_new_users: u32,
    #[serde(serialize_with = "duration")]
    pub new_users_window: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct TokensConfig {
    /// `iss` of the tokens gatehouse issues (default `server.public_url`).
    pub issuer: String,
    /// `aud` of the access tokens gatehouse issues.
    pub audience: String,
    #[serde(serialize_with = "duration")]
    pub access_ttl: Duration,
    /// A PKCS#8 PEM Ed25519 key to sign with instead of the generated one kept in the store.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signing_key_file: Option<PathBuf>,
    /// How often the signing key rotates by itself (`None`: only when an admin rotates it).
    #[serde(
        serialize_with = "optional_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub rotate_every: Option<Duration>,
    /// How long the next signing key is published in the JWKS before it signs.
    #[serde(serialize_with = "duration")]
    pub key_prepublish: Duration,
}

/// MFA settings (SPEC §4.1, §5).
#[derive(Debug, Clone, Serialize)]
pub struct MfaConfig {
    /// Factor of an enrollment that names none: `otp`, `sms` or `email`.
    pub default_factor: String,
    #[serde(serialize_with = "duration")]
    pub ticket_ttl: Duration,
    /// Lifetime of SMS and email codes.
    #[serde(serialize_with = "duration")]
    pub code_ttl: Duration,
    pub totp: TotpConfig,
    pub lockout: LockoutConfig,
    /// Codes sent per user (and per destination) within `send_window`.
    pub send_limit: u32,
    #[serde(serialize_with = "duration")]
    pub send_window: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct TotpConfig {
    /// The issuer shown by authenticator apps.
    pub issuer: String,
    /// `SHA1` (what every app supports), `SHA256` or `SHA512`.
    pub algorithm: String,
    pub digits: u8,
    pub period: u64,
    /// Steps accepted before and after the current one.
    pub skew: u8,
}

#[derive(Debug, Clone, Serialize)]
pub struct LockoutConfig {
    pub max_failures: u32,
    #[serde(serialize_with = "duration")]
    pub window: Duration,
    #[serde(serialize_with = "duration")]
    pub duration: Duration,
}

impl Policy {
    /// The limits of `lockout.*`, in seconds.
    pub fn from_config(c: &LockoutConfig) -> Policy {
        let secs = |d: std::time::Duration| i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
        Policy {
            max_failures: c.max_failures,
            window: secs(c.window),
            duration: secs(c.duration),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct SecretsConfig {
    /// A file with the 32-byte master key in base64; or `GATEHOUSE_MASTER_KEY`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub master_key_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub master_key: Option<Secret>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SmtpConfig {
    /// `smtp://host:port` (STARTTLS when offered), `smtps://host:port` (implicit TLS), or
    /// `smtp://host:port?tls=none` for a local relay; credentials as `user:password@`.
    #[serde(serialize_with = "optional_masked")]
    pub url: Option<Secret>,
    pub from: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct SmsConfig {
    /// `log` (development), `webhook` or `twilio`.
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account_sid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_token: Option<Secret>,
}

/// Browser sessions (SPEC §11).
#[derive(Debug, Clone, Serialize)]
pub struct SessionsConfig {
    /// The session cookie's name; `__Host-` names make browsers refuse a `Domain` or another path.
    pub cookie_name: String,
    /// A session unused this long ends.
    #[serde(serialize_with = "duration")]
    pub idle_timeout: Duration,
    /// A session ends this long after sign-in, used or not.
    #[serde(serialize_with = "duration")]
    pub max_age: Duration,
    /// The most sessions one user holds at once; signing in again beyond it ends the oldest.
    pub max_per_user: usize,
}

/// The audit trail (SPEC §9, §13).
#[derive(Debug, Clone, Serialize)]
pub struct AuditConfig {
    /// Events older than this are purged from the store.
    #[serde(serialize_with = "duration")]
    pub retention: Duration,
    /// Where each event is also written as one JSON line; the store keeps every event anyway.
    pub sink: AuditSink,
}

/// `audit.sink` (with `audit.file` for `file`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditSink {
    Store,
    Stdout,
    File(PathBuf),
}

/// Sign-in with external identity providers (SPEC §12).
#[derive(Debug, Clone, Default, Serialize)]
pub struct OidcConfig {
    pub providers: Vec<OidcProvider>,
}

/// One OpenID provider whose users may sign in on the sign-in page.
#[derive(Debug, Clone, Serialize)]
pub struct OidcProvider {
    /// In `/auth/login/{id}`, `/auth/callback/{id}` and `/auth/backchannel-logout/{id}`.
    pub id: String,
    /// The label of its button.
    pub name: String,
    /// Discovery at `{issuer}/.well-known/openid-configuration`; the ID token's `iss`.
    pub issuer: String,
    pub client_id: String,
    /// From `client_secret` or the file `client_secret_file` names.
    pub client_secret: Secret,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_secret_file: Option<PathBuf>,
    pub scopes: Vec<String>,
    /// Lower-case; empty: any.
    pub allowed_email_domains: Vec<String>,
    /// Empty: any.
    pub allowed_groups: Vec<String>,
    pub groups_claim: String,
    pub scopes_from_groups: std::collections::BTreeMap<String, Vec<String>>,
    pub trust_idp_mfa: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    pub max_new_users: u32,
    #[serde(serialize_with = "duration")]
    pub new_users_window: Duration,
}

/// Domain verification (SPEC §4.1).
#[derive(Debug, Clone, Serialize)]
pub struct DomainsConfig {
    pub code_prefix: String,
    #[serde(serialize_with = "duration")]
    pub code_ttl: Duration,
    /// TXT records are looked up at `{record_name}.{domain}`.
    pub record_name: String,
    /// A DNS server such as `127.0.0.1:5353`; `None` uses the system resolver.
    #[serde(serialize_with = "optional_addr")]
    pub resolver: Option<SocketAddr>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ApisConfig {
    pub nexus: ApiFamily,
    pub ws: ApiFamily,
    pub manage: ManageApi,
}

/// The Manage family: a family plus its per-client-IP request limit.
#[derive(Debug, Clone, Serialize)]
pub struct ManageApi {
    #[serde(flatten)]
    pub family: ApiFamily,
    /// Requests allowed per `clientIp` within `client_ip_window` (0: no limit).
    pub client_ip_limit: u32,
    #[serde(serialize_with = "duration")]
    pub client_ip_window: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct ApiFamily {
    pub enabled: bool,
    pub base_path: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct BootstrapConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
}

/// Where gatehouse runs (`server.environment`): development-only settings are refused elsewhere
/// (SPEC §10).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Environment {
    Development,
    Production,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServerConfig {
    /// `production` (the default) refuses development-only settings; `development` allows them.
    pub environment: Environment,
    /// The URL clients use to reach gatehouse; the default issuer and the base of links it sends.
    pub public_url: String,
    /// Peers whose `X-Forwarded-*` and `Forwarded` headers are believed.
    #[serde(serialize_with = "display_list")]
    pub trusted_proxies: Vec<IpNet>,
    #[serde(serialize_with = "duration")]
    pub shutdown_grace: Duration,
    #[serde(serialize_with = "duration")]
    pub header_read_timeout: Duration,
    #[serde(serialize_with = "duration")]
    pub tls_handshake_timeout: Duration,
    /// A response whose data the client takes none of for this long closes its connection
    /// (SPEC §10): a client that stops reading (a zero HTTP/2 window, a full TCP window) is not
    /// held forever.
    #[serde(serialize_with = "duration")]
    pub send_timeout: Duration,
    /// More request header fields than this: 431.
    pub max_headers: usize,
    /// A request head larger than this many bytes: 431.
    pub max_header_bytes: usize,
    /// Concurrent HTTP/2 streams per connection.
    pub h2_max_concurrent_streams: u32,
    /// Threads serving requests; 0 means one per CPU core.
    pub worker_threads: usize,
    /// A local endpoint's request body must arrive within this time (SPEC §10).
    #[serde(serialize_with = "duration")]
    pub body_read_timeout: Duration,
    /// Request body bytes local endpoints hold at once, across all requests; 503 beyond.
    pub max_buffered_bytes: usize,
    /// The largest request body a local endpoint reads (SPEC §2); 413 beyond.
    pub max_body_bytes: usize,
    /// Open connections per listener; one more is closed as soon as it is accepted (SPEC §10).
    pub max_connections: usize,
    /// Open connections per listener from one client address (an IPv6 client: its /64).
    pub max_connections_per_ip: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct ListenConfig {
    /// TLS listener; `None` when configured as an empty string.
    #[serde(serialize_with = "optional_addr")]
    pub https: Option<SocketAddr>,
    /// Plaintext HTTP/1.1 and h2c listener; `None` when configured as an empty string.
    #[serde(serialize_with = "optional_addr")]
    pub http: Option<SocketAddr>,
    pub admin: SocketAddr,
}

#[derive(Debug, Clone, Serialize)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Generate a certificate into `cert`/`key` when they do not exist yet.
    pub self_signed: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct UpstreamConfig {
    /// Scheme and authority of the application; requests keep their own path and query.
    #[serde(serialize_with = "masked_uri")]
    pub url: Uri,
    #[serde(serialize_with = "duration")]
    pub connect_timeout: Duration,
    #[serde(serialize_with = "duration")]
    pub response_timeout: Duration,
    /// `aud` of the `X-Auth-Assertion` JWT.
    pub audience: String,
    /// How requests reach the application: HTTP/1.1, HTTP/2 with prior knowledge, or HTTP/2 for
    /// gRPC only.
    pub protocol: UpstreamProtocol,
}

/// `upstream.protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamProtocol {
    /// Every request over HTTP/1.1.
    Http1,
    /// Every request over HTTP/2 with prior knowledge (cleartext); WebSocket upgrades still use
    /// HTTP/1.1.
    H2c,
    /// gRPC requests (`content-type: application/grpc…`) over HTTP/2 with prior knowledge, the
    /// rest over HTTP/1.1.
    Auto,
}

/// `[websocket]`: tunnels after an upgrade.
#[derive(Debug, Clone, Serialize)]
pub struct WebsocketConfig {
    /// Origins (`scheme://host[:port]`, lowercase, no default port) besides `server.public_url`'s
    /// from which a cookie-authenticated upgrade is accepted.
    pub allowed_origins: Vec<String>,
    /// A tunnel that carries no byte either way for this long is closed.
    #[serde(serialize_with = "duration")]
    pub idle_timeout: Duration,
    /// A tunnel open this long is closed.
    #[serde(serialize_with = "duration")]
    pub max_lifetime: Duration,
    /// Open tunnels per user (per client address for anonymous ones).
    pub max_tunnels_per_user: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProxyConfig {
    /// Access level of a path no route rule matches.
    pub default: Access,
    /// Largest proxied request body in bytes; `None` streams any size.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_body: Option<u64>,
    /// How often the credential of a tunnel or a streaming response is checked again.
    #[serde(serialize_with = "duration")]
    pub reauth_interval: Duration,
}

/// Who may pass a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// Forwarded without identity.
    Public,
    /// Needs any valid credential.
    Authenticated,
    /// Needs a credential whose authentication methods include a second factor.
    Mfa,
}

impl Access {
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Public => "public",
            Access::Authenticated => "authenticated",
            Access::Mfa => "mfa",
        }
    }
}

/// One `[[routes]]` entry: the access a path prefix requires (SPEC §13). `methods` and `source`
/// are match conditions: a request they leave out falls to the next longest matching rule, then
/// `proxy.default`.
#[derive(Debug, Clone, Serialize)]
pub struct AccessRule {
    /// A normalised path prefix, matched on whole segments (see [`crate::routes`]).
    pub path_prefix: String,
    pub access: Access,
    /// Scopes the principal must all hold.
    pub scopes: Vec<String>,
    /// Methods the rule applies to, in upper case (empty: every method; `GET` also covers `HEAD`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Client networks the rule applies to (empty: every client).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub source: Vec<IpNet>,
    /// Scopes of which the principal must hold at least one (empty: no such condition).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub any_scopes: Vec<String>,
    /// With `access = "mfa"`: the second factors that satisfy it (empty: any second factor).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub factors: Vec<Factor>,
    /// Requests per user (per client address for anonymous ones) the rule lets through.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
}

impl AccessRule {
    /// A rule with no condition or requirement beyond `access`.
    pub fn new(path_prefix: impl Into<String>, access: Access) -> AccessRule {
        AccessRule {
            path_prefix: path_prefix.into(),
            access,
            scopes: Vec::new(),
            methods: Vec::new(),
            source: Vec::new(),
            any_scopes: Vec::new(),
            factors: Vec::new(),
            rate_limit: None,
        }
    }
}

impl Default for AccessRule {
    fn default() -> AccessRule {
        AccessRule::new("/", Access::Authenticated)
    }
}

/// `net` with an IPv4-mapped IPv6 network (`::ffff:10.0.0.0/104`) as its IPv4 one.
pub fn canonical_net(net: IpNet) -> IpNet {
    if let IpNet::V6(v6) = net
        && let Some(v4) = v6.addr().to_ipv4_mapped()
        && v6.prefix_len() >= 96
        && let Ok(n) = ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96)
    {
        return IpNet::V4(n.trunc());
    }
    net.trunc()
}

/// A second factor a route's `factors` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Factor {
    Totp,
    Recovery,
    Sms,
    Email,
    Webauthn,
    /// The second factor an external identity provider vouches for (`trust_idp_mfa`).
    Idp,
}

impl Factor {
    pub const NAMES: &[&str] = &["totp", "recovery", "sms", "email", "webauthn", "idp"];

    /// The factor `name` names, in any letter case; besides [`Factor::NAMES`], the names the
    /// enrollment API and `amr` use for the same factors are taken: `otp` (the authenticator
    /// app: `totp`) and `hwk` or `passkey` (`webauthn`).
    pub fn parse(name: &str) -> Option<Factor> {
        Some(match name.trim().to_ascii_lowercase().as_str() {
            "totp" | "otp" => Factor::Totp,
            "recovery" => Factor::Recovery,
            "sms" => Factor::Sms,
            "email" => Factor::Email,
            "webauthn" | "hwk" | "passkey" => Factor::Webauthn,
            "idp" => Factor::Idp,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Factor::Totp => "totp",
            Factor::Recovery => "recovery",
            Factor::Sms => "sms",
            Factor::Email => "email",
            Factor::Webauthn => "webauthn",
            Factor::Idp => "idp",
        }
    }

    /// The authentication method (`amr`) a credential carries after this factor. TOTP and
    /// recovery codes are both `otp`, so either admits where the other is named.
    pub fn method(self) -> crate::identity::Method {
        use crate::identity::Method;
        match self {
            Factor::Totp | Factor::Recovery => Method::Otp,
            Factor::Sms => Method::Sms,
            Factor::Email => Method::Email,
            Factor::Webauthn => Method::Hwk,
            Factor::Idp => Method::Mfa,
        }
    }
}

/// `rate_limit = "N/s"`, `"N/m"` or `"N/h"`: a token bucket of `count` requests refilled over
/// `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub count: u32,
    pub per: Duration,
}

impl RateLimit {
    pub fn parse(s: &str) -> Option<RateLimit> {
        let (count, unit) = s.trim().split_once('/')?;
        let count: u32 = count.trim().parse().ok().filter(|n| *n >= 1)?;
        let per = match unit.trim() {
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            _ => return None,
        };
        Some(RateLimit { count, per })
    }
}

impl std::fmt::Display for RateLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let unit = match self.per.as_secs() {
            1 => "s",
            60 => "m",
            _ => "h",
        };
        write!(f, "{}/{unit}", self.count)
    }
}

impl Serialize for RateLimit {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Serialize)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `gatehouse=debug,info`; `RUST_LOG` overrides it.
    pub level: String,
}

/// Every problem found in a configuration, one per key.
#[derive(Debug)]
pub struct ConfigError {
    pub problems: Vec<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "invalid configuration:")?;
        for problem in &self.problems {
            writeln!(f, "  - {problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// What [`load_report`] found: the configuration or every problem with it, where it was read from,
/// and warnings about variables that set nothing.
pub struct Loaded {
    /// The path looked at: the one given, else [`DEFAULT_PATH`].
    pub path: PathBuf,
    /// The file read, as an absolute path; `None` when the default file does not exist.
    pub file: Option<PathBuf>,
    /// `GATEHOUSE_*` variables that set nothing, each with the variable probably meant.
    pub warnings: Vec<String>,
    pub config: Result<Config, ConfigError>,
}

/// Loads the configuration from `path` (or [`DEFAULT_PATH`]) and the process environment.
///
/// An explicitly named file must exist; the default file may be absent.
pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
    load_report(path).config
}

/// Like [`load`], also naming the file read and warning about `GATEHOUSE_*` variables that set
/// nothing (such as `GATEHOUSE_UPSTREAM_URL` for `GATEHOUSE_UPSTREAM__URL`).
pub fn load_report(path: Option<&Path>) -> Loaded {
    let file = file_path(path);
    if path.is_some() && !file.exists() {
        return Loaded {
            config: Err(ConfigError {
                problems: vec![format!("config file {} does not exist", file.display())],
            }),
            path: file,
            file: None,
            warnings: Vec::new(),
        };
    }
    let absolute = file.exists().then(|| {
        file.canonicalize()
            .or_else(|_| std::path::absolute(&file))
            .unwrap_or_else(|_| file.clone())
    });
    let (config, warnings) = read(
        Figment::new().merge(Toml::file(&file)),
        &env_names(),
        env_secrets(),
    );
    Loaded {
        path: file,
        file: absolute,
        warnings,
        config,
    }
}

/// Like [`load`], from the text of a configuration file already read (a reload parses exactly
/// the bytes it checked, not the file again).
pub fn load_text(text: &str) -> Result<Config, ConfigError> {
    read(
        Figment::new().merge(Toml::string(text)),
        &env_names(),
        env_secrets(),
    )
    .0
}

fn env_secrets() -> EnvSecrets {
    let from_env = |name: &str| {
        std::env::var(name)
            .ok()
            .filter(|t| !t.trim().is_empty())
            .map(|t| Secret::new(t.trim()))
    };
    EnvSecrets {
        admin_token: from_env("GATEHOUSE_ADMIN_TOKEN"),
        master_key: from_env("GATEHOUSE_MASTER_KEY"),
    }
}

/// The names of the process's `GATEHOUSE_*` variables.
fn env_names() -> Vec<String> {
    std::env::vars_os()
        .filter_map(|(name, _)| name.into_string().ok())
        .filter(|name| has_prefix(name))
        .collect()
}

fn has_prefix(name: &str) -> bool {
    name.get(..ENV_PREFIX.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(ENV_PREFIX))
}

const ENV_PREFIX: &str = "GATEHOUSE_";

/// The file [`load`] reads: the one given, else the default path (which may not exist).
pub fn file_path(path: Option<&Path>) -> PathBuf {
    path.map_or_else(|| PathBuf::from(DEFAULT_PATH), Path::to_path_buf)
}

/// Secrets that come from the environment rather than from configuration keys.
#[derive(Default)]
struct EnvSecrets {
    admin_token: Option<Secret>,
    master_key: Option<Secret>,
}

/// Parses a configuration from TOML text alone (no environment), as tests and tools need.
pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
    read(
        Figment::new().merge(Toml::string(text)),
        &[],
        EnvSecrets::default(),
    )
    .0
}

/// Like [`from_toml_str`] with `server.environment = "development"`, whatever the text says, for
/// unit tests whose settings (a generated master key, the SMS outbox) are development ones.
#[cfg(test)]
pub(crate) fn development_toml_str(text: &str) -> Result<Config, ConfigError> {
    from_figment(
        Figment::new()
            .merge(Toml::string(text))
            .merge(("server.environment", "development")),
        EnvSecrets::default(),
    )
}

/// `GATEHOUSE_SERVER__PUBLIC_URL` → `server.public_url`. Variables without a `__` (such as
/// `GATEHOUSE_ADMIN_TOKEN`) are not configuration keys and are left to the code that reads them.
fn env() -> Env {
    Env::prefixed(ENV_PREFIX)
        .filter(|key| key.as_str().contains("__"))
        .split("__")
}

#[cfg(test)]
fn from_figment(figment: Figment, env_secrets: EnvSecrets) -> Result<Config, ConfigError> {
    read(figment, &[], env_secrets).0
}

/// Reads the configuration in `file`, with the environment's `GATEHOUSE_<SECTION>__<KEY>`
/// variables over it when `env_names` (the variables present) is not empty, and checks it.
///
/// Every problem is reported at once: unknown keys (in the file, each where it was written; in
/// the environment, by variable) beside every invalid value. Also returns the warnings.
fn read(
    file: Figment,
    env_names: &[String],
    env_secrets: EnvSecrets,
) -> (Result<Config, ConfigError>, Vec<String>) {
    let known = KnownKeys::of_raw_config();
    let (env_problems, warnings) = check_env_names(env_names, &known);
    let refused = |problems| (Err(ConfigError { problems }), warnings.clone());
    let mut file_problems = Vec::new();
    match file.extract::<Value>() {
        Ok(mut value) => tidy(&mut value, "", "", &known, &mut |p| file_problems.push(p)),
        Err(e) => return refused(describe(e)),
    }
    let merged = if env_names.is_empty() {
        file
    } else {
        file.merge(env())
    };
    let mut value = match merged.extract::<Value>() {
        Ok(value) => value,
        Err(e) => return refused(describe(e)),
    };
    // What the file's pass and the variables' pass reported is taken out, so the rest is read.
    tidy(&mut value, "", "", &known, &mut |_| {});
    let mut problems = match RawConfig::deserialize(&value) {
        Ok(raw) => match validate(raw, env_secrets) {
            Ok(config) if file_problems.is_empty() && env_problems.is_empty() => {
                return (Ok(config), warnings);
            }
            Ok(_) => Vec::new(),
            Err(e) => e.problems,
        },
        Err(e) => describe(e),
    };
    // A value set by a variable is named with it, since the file does not show it.
    let variables: std::collections::HashMap<String, &String> = env_names
        .iter()
        .filter_map(|name| {
            let rest = name.get(ENV_PREFIX.len()..)?;
            let key: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
            (key.len() > 1).then(|| (key.join("."), name))
        })
        .collect();
    for problem in &mut problems {
        let variable = problem
            .split_once(": ")
            .and_then(|(key, _)| variables.get(key));
        if let Some(variable) = variable {
            *problem = format!("{problem} (set by {variable})");
        }
    }
    problems.extend(file_problems);
    problems.extend(env_problems);
    refused(problems)
}

impl Config {
    /// The effective configuration as TOML, secrets masked (`gatehouse check-config`).
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        toml::to_string_pretty(self)
    }
}

fn duration<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_duration(*d))
}

fn optional_duration<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => duration(d, s),
        None => s.serialize_none(),
    }
}

/// A duration as people write it in the file, hours at most: `24h`, `1h30m`, `90s`→`1m30s`,
/// `250ms`; it reads back as the same duration.
pub fn format_duration(d: Duration) -> String {
    let secs = d.as_secs();
    let nanos = d.subsec_nanos();
    let parts = [
        (secs / 3600, "h"),
        (secs / 60 % 60, "m"),
        (secs % 60, "s"),
        (u64::from(nanos / 1_000_000), "ms"),
        (u64::from(nanos / 1_000 % 1_000), "us"),
        (u64::from(nanos % 1_000), "ns"),
    ];
    let text: String = parts
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, unit)| format!("{n}{unit}"))
        .collect();
    if text.is_empty() { "0s".into() } else { text }
}

fn display_list<S: Serializer, T: fmt::Display>(v: &[T], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(|x| x.to_string()))
}

fn optional_masked<S: Serializer>(v: &Option<Secret>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(secret) => match secret.expose().parse::<Uri>() {
            Ok(uri) => masked_uri(&uri, s),
            Err(_) => s.serialize_str("***"),
        },
        None => s.serialize_str(""),
    }
}

fn optional_addr<S: Serializer>(a: &Option<SocketAddr>, s: S) -> Result<S::Ok, S::Error> {
    match a {
        Some(a) => s.serialize_str(&a.to_string()),
        None => s.serialize_str(""),
    }
}

/// Prints a URI with any `user:password@` replaced, so that check-config never shows a secret.
fn masked_uri<S: Serializer>(u: &Uri, s: S) -> Result<S::Ok, S::Error> {
    let authority = u.authority().map(|a| a.as_str()).unwrap_or_default();
    let host = match authority.rsplit_once('@') {
        Some((_, host)) => format!("***@{host}"),
        None => authority.to_owned(),
    };
    s.serialize_str(&format!("{}://{host}", u.scheme_str().unwrap_or("http")))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::validate::{parse_duration, weak_admin_token};
    use super::*;

    /// Most tests here are about other settings: they run in development, where the built-in
    /// defaults (SMS outbox, generated master key) are allowed. `super::from_toml_str` is the
    /// production default.
    fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        development_toml_str(text)
    }

    fn production_problems(text: &str) -> Vec<String> {
        super::from_toml_str(text).unwrap_err().problems
    }

    #[test]
    fn the_environment_defaults_to_production_and_is_validated() {
        assert_eq!(
            from_toml_str("").unwrap().server.environment,
            Environment::Development
        );
        // Without the key, the built-in defaults' development settings are refused.
        let problems = production_problems("");
        assert!(
            problems.iter().any(|p| p.starts_with("sms.kind: ")),
            "{problems:?}"
        );
        let problems = production_problems("[server]\nenvironment = \"staging\"\n");
        assert!(
            problems.iter().any(
                |p| p.starts_with("server.environment: expected `development` or `production`")
            ),
            "{problems:?}"
        );
    }

    #[test]
    fn development_only_settings_are_refused_in_production_all_at_once_each_under_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let bootstrap = dir.path().join("bootstrap.toml");
        std::fs::write(
            &bootstrap,
            "[[users]]\nuser_name = \"ada\"\npassword = \"hunter2-horse\"\n\
             [[applications]]\nname = \"web\"\ntoken = \"gha_0123456789abcdef0123456789abcdef\"\n",
        )
        .unwrap();
        let text = format!(
            "[sms]\nkind = \"log\"\n[tls]\nself_signed = true\n[bootstrap]\nfile = \"{}\"\n",
            bootstrap.display()
        );
        let problems = production_problems(&text);
        for (key, says) in [
            ("sms.kind", "`log` writes text messages"),
            ("secrets.master_key_file", "GATEHOUSE_MASTER_KEY"),
            ("tls.self_signed", "tls.cert and tls.key"),
            (
                "bootstrap.file",
                "users[0] (ada) has a plaintext `password`",
            ),
            (
                "bootstrap.file",
                "applications[0] (web) has a plaintext `token`",
            ),
        ] {
            assert!(
                problems
                    .iter()
                    .any(|p| p.starts_with(&format!("{key}: ")) && p.contains(says)),
                "{key} ({says}) missing from {problems:?}"
            );
        }
        assert_eq!(problems.len(), 5, "{problems:?}");
        let all = problems.join("\n");
        assert!(
            all.contains("server.environment = \"development\""),
            "{all}"
        );
        assert!(
            !all.contains("hunter2") && !all.contains("gha_0123"),
            "{all}"
        );

        // The same file is accepted in development.
        let dev = format!("[server]\nenvironment = \"development\"\n{text}");
        assert!(super::from_toml_str(&dev).is_ok());
    }

    #[test]
    fn production_accepts_a_configuration_without_development_settings() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("master.key");
        std::fs::write(&key, "bWFzdGVyIGtleSBzaGFyZWQgYnkgdGhlIHJlcGxpY2E=").unwrap();
        let bootstrap = dir.path().join("bootstrap.toml");
        std::fs::write(
            &bootstrap,
            format!(
                "[[users]]\nuser_name = \"ada\"\npassword_hash = \"{}\"\n",
                crate::auth::secret::hash_password("pw").unwrap()
            ),
        )
        .unwrap();
        for sms in [
            "kind = \"none\"",
            "kind = \"webhook\"\nurl = \"https://sms.invalid/send\"",
        ] {
            let text = format!(
                "[listen]\nhttps = \"\"\n[secrets]\nmaster_key_file = \"{}\"\n[sms]\n{sms}\n\
                 [bootstrap]\nfile = \"{}\"\n",
                key.display(),
                bootstrap.display()
            );
            let c = super::from_toml_str(&text).unwrap();
            assert_eq!(c.server.environment, Environment::Production);
        }
        // The default `sms.kind` is the outbox: it must be chosen explicitly in production.
        let problems = production_problems(&format!(
            "[secrets]\nmaster_key_file = \"{}\"\n",
            key.display()
        ));
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].starts_with("sms.kind: `log` (the default)"),
            "{problems:?}"
        );
    }

    #[test]
    fn built_in_defaults_are_valid() {
        let c = from_toml_str("").unwrap();
        assert_eq!(c.listen.admin.to_string(), "127.0.0.1:9090");
        assert_eq!(c.upstream.connect_timeout, Duration::from_secs(2));
        assert_eq!(c.server.header_read_timeout, Duration::from_secs(10));
        assert_eq!(c.proxy.default, Access::Authenticated);
        assert_eq!(c.apis.manage.family.base_path, "/manage");
        assert_eq!(c.apis.nexus.base_path, "");
        assert_eq!(c.apis.manage.client_ip_window, Duration::from_secs(60));
    }

    #[test]
    fn weak_admin_tokens_are_refused_and_generated_ones_accepted() {
        for weak in [
            "x",
            "changeme",
            "c2hvcnQtYnV0LWJhc2U2N",
            "KpSImazd7ffx1EnVv70SKY9TBgK8 0Yni",
            "KpSImazd7ffx1EnVv70SKY9TBgK8.0Yni",
            "KpSImazd7ffx1EnVv70SKY9TBgK8\u{e9}0Yni",
            "your-admin-token-goes-right-here",
            "REPLACE-ME-admin-token-from-head-c-32-dev-urandom-base64",
            "Change-Me-Change-Me-Change-Me-42",
            "my-very-long-secret-for-the-admin-api",
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "abcabcabcabcabcabcabcabcabcabc",
            "abcdefghijklmnopqrstuvwxyz",
            "01234567890123456789012345",
            "======================",
        ] {
            let problem = weak_admin_token(weak);
            assert!(problem.is_some(), "{weak} accepted");
            assert!(!problem.unwrap().contains(weak), "{weak} repeated");
        }
        for strong in [
            "KpSImazd7ffx1EnVv70SKY9TBgK80Yni",
            "dS7BWKPPj6qMfyOLPBlJKv",
            "Q6L3n-D8u1CQbPo0ADeOB19-YlLKkm4L",
            "t8u+Rk1/Nq0ZxYv3Lw9eMg==",
            "3f9c1a7e5b2d48c6a0e1f7b9d3c5a8e2",
        ] {
            assert_eq!(weak_admin_token(strong), None, "{strong}");
        }
    }

    #[test]
    fn a_weak_admin_token_is_refused_under_the_key_it_came_from() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "changeme\n").unwrap();
        let text = format!("[admin]\ntoken_file = \"{}\"\n", file.display());
        let err = from_toml_str(&text).unwrap_err().to_string();
        assert!(err.contains("admin.token_file: the admin token"), "{err}");
        assert!(!err.contains("changeme"), "{err}");
        let env = || EnvSecrets {
            admin_token: Some(Secret::new("x")),
            master_key: None,
        };
        let err = from_figment(Figment::from(Toml::string("")), env())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("GATEHOUSE_ADMIN_TOKEN: the admin token"),
            "{err}"
        );
        // The file is the token in use, so a weak variable beside it does not matter.
        std::fs::write(&file, "KpSImazd7ffx1EnVv70SKY9TBgK80Yni").unwrap();
        let development = format!("[server]\nenvironment = \"development\"\n{text}");
        assert!(from_figment(Figment::from(Toml::string(&development)), env()).is_ok());
    }

    #[test]
    fn trusted_issuer_jwks_must_be_https_except_on_loopback() {
        let issuers = |urls: &[&str]| {
            let mut text = String::new();
            for url in urls {
                text.push_str(&format!(
                    "[[auth.trusted_issuers]]\nissuer = \"https://idp\"\naudience = \"a\"\njwks_url = \"{url}\"\n"
                ));
            }
            from_toml_str(&text)
        };
        let err = issuers(&[
            "https://idp.example/jwks",
            "http://idp.example/jwks",
            "http://10.0.0.1/jwks",
            "http://[::2]:8080/jwks",
            "http://localhost.evil.example/jwks",
            "http://127.0.0.1.nip.io/jwks",
        ])
        .unwrap_err()
        .to_string();
        for i in 1..6 {
            assert!(
                err.contains(&format!(
                    "auth.trusted_issuers[{i}].jwks_url: must be an https URL"
                )),
                "{i}: {err}"
            );
        }
        assert!(!err.contains("trusted_issuers[0]"), "{err}");
        let c = issuers(&[
            "https://idp.example/jwks",
            "http://127.0.0.1:8080/jwks",
            "http://127.9.9.9/jwks",
            "http://[::1]:8080/jwks",
            "http://localhost:8080/jwks",
            "http://LocalHost/jwks",
        ])
        .unwrap();
        assert_eq!(c.auth.trusted_issuers.len(), 6);
    }

    #[test]
    fn new_users_from_a_trusted_issuer_are_bounded_by_default_and_the_bound_is_checked() {
        let issuer = |extra: &str| {
            from_toml_str(&format!(
                "[[auth.trusted_issuers]]\nissuer = \"https://idp\"\naudience = \"a\"\njwks_url = \"https://idp/jwks\"\n{extra}"
            ))
        };
        let c = issuer("").unwrap();
        assert_eq!(c.auth.trusted_issuers[0].max_new_users, 100);
        assert_eq!(
            c.auth.trusted_issuers[0].new_users_window,
            Duration::from_secs(3600)
        );
        let c = issuer("max_new_users = 3\nnew_users_window = \"2s\"\n").unwrap();
        assert_eq!(c.auth.trusted_issuers[0].max_new_users, 3);
        assert_eq!(
            c.auth.trusted_issuers[0].new_users_window,
            Duration::from_secs(2)
        );
        for (extra, expected) in [
            (
                "max_new_users = 0\n",
                "auth.trusted_issuers[0].max_new_users: expected a number from 1 to 10000",
            ),
            (
                "max_new_users = 10001\n",
                "auth.trusted_issuers[0].max_new_users: expected a number from 1 to 10000",
            ),
            (
                "new_users_window = \"500ms\"\n",
                "auth.trusted_issuers[0].new_users_window: must be from 1s to 30d",
            ),
            (
                "new_users_window = \"31d\"\n",
                "auth.trusted_issuers[0].new_users_window: must be from 1s to 30d",
            ),
            (
                "new_users_window = \"soon\"\n",
                "auth.trusted_issuers[0].new_users_window: expected a duration",
            ),
        ] {
            let err = issuer(extra).unwrap_err().to_string();
            assert!(err.contains(expected), "{extra}: {err}");
        }
    }

    #[test]
    fn revocation_lag_defaults_to_a_second_and_stays_under_a_minute() {
        let config = from_toml_str("").unwrap();
        assert_eq!(config.auth.revocation_lag, Duration::from_secs(1));
        let config = from_toml_str("[auth]\nrevocation_lag = \"0s\"\n").unwrap();
        assert_eq!(config.auth.revocation_lag, Duration::ZERO);
        let err = from_toml_str("[auth]\nrevocation_lag = \"2m\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("auth.revocation_lag: must be at most 60s"),
            "{err}"
        );
    }

    #[test]
    fn cache_expiries_beyond_what_the_caches_accept_are_refused_not_a_crash() {
        for key in ["basic_cache_ttl", "failed_password_window"] {
            for (value, bound) in [("31d", "30d"), ("1001y", "100 years")] {
                let err = from_toml_str(&format!("[auth]\n{key} = \"{value}\"\n"))
                    .unwrap_err()
                    .to_string();
                assert!(
                    err.contains(&format!("auth.{key}: must be at most {bound}")),
                    "{err}"
                );
            }
            assert!(from_toml_str(&format!("[auth]\n{key} = \"30d\"\n")).is_ok());
        }
    }

    #[test]
    fn connection_caps_must_be_non_zero_and_the_per_address_cap_within_the_listener_cap() {
        let c = from_toml_str("").unwrap();
        assert_eq!(
            (c.server.max_connections, c.server.max_connections_per_ip),
            (10_000, 256)
        );
        for (text, key) in [
            ("max_connections = 0", "server.max_connections:"),
            (
                "max_connections_per_ip = 0",
                "server.max_connections_per_ip:",
            ),
            (
                "max_connections = 100\nmax_connections_per_ip = 101",
                "server.max_connections_per_ip: must not exceed server.max_connections (100)",
            ),
        ] {
            let err = from_toml_str(&format!("[server]\n{text}\n"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
        let c = from_toml_str("[server]\nmax_connections = 100\nmax_connections_per_ip = 100\n")
            .unwrap();
        assert_eq!(c.server.max_connections_per_ip, 100);
    }

    #[test]
    fn the_local_body_limit_defaults_to_a_mib_and_fits_the_buffered_budget() {
        let c = from_toml_str("").unwrap();
        assert_eq!(c.server.max_body_bytes, 1024 * 1024);
        for (text, key) in [
            ("max_body_bytes = 1023", "server.max_body_bytes:"),
            ("max_body_bytes = 1073741825", "server.max_body_bytes:"),
            (
                "max_buffered_bytes = 65536\nmax_body_bytes = 65537",
                "server.max_body_bytes: must not exceed server.max_buffered_bytes (65536)",
            ),
        ] {
            let err = from_toml_str(&format!("[server]\n{text}\n"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
        let c = from_toml_str("[server]\nmax_buffered_bytes = 65536\nmax_body_bytes = 65536\n")
            .unwrap();
        assert_eq!(c.server.max_body_bytes, 65536);
    }

    #[test]
    fn an_application_token_header_that_clients_cannot_send_is_refused() {
        let err = from_toml_str("[auth]\napplication_token_header = \"X-Auth-App-Token\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("auth.application_token_header"), "{err}");
    }

    #[test]
    fn an_upstream_audience_equal_to_the_token_audience_is_refused() {
        let err = from_toml_str("[upstream]\naudience = \"gatehouse\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("upstream.audience"), "{err}");
        let err = from_toml_str("[tokens]\naudience = \"app\"\n[upstream]\naudience = \"app\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("upstream.audience"), "{err}");
    }

    #[test]
    fn a_postgres_store_needs_a_url_that_is_never_printed() {
        let err = from_toml_str("[store]\nbackend = \"postgres\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("store.url: is required"), "{err}");
        let err =
            from_toml_str("[store]\nbackend = \"postgres\"\nurl = \"mysql://u:hunter2@db/x\"\n")
                .unwrap_err()
                .to_string();
        assert!(err.contains("store.url: expected a URL"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
        let c = from_toml_str(
            "[store]\nbackend = \"postgres\"\nurl = \"postgres://gh:hunter2@db:5432/gh\"\n",
        )
        .unwrap();
        assert_eq!(
            c.store.url.as_ref().map(Secret::expose),
            Some("postgres://gh:hunter2@db:5432/gh")
        );
        let text = c.to_toml().unwrap();
        assert!(!text.contains("hunter2"), "{text}");
        let err = from_toml_str("[store]\nbackend = \"mongo\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("expected `sled` or `postgres`"), "{err}");
    }

    #[test]
    fn manage_settings_are_checked() {
        let err = from_toml_str(
            "[apis.manage]\nbase_path = \"/a/../m\"\nclient_ip_limit = -1\nclient_ip_window = \"often\"\n",
        )
        .unwrap_err()
        .to_string();
        for key in [
            "apis.manage.base_path",
            "apis.manage.client_ip_limit",
            "apis.manage.client_ip_window",
        ] {
            assert!(err.contains(key), "{key} missing from:\n{err}");
        }
        let c =
            from_toml_str("[apis.manage]\nbase_path = \"/otp/\"\nclient_ip_limit = 0\n").unwrap();
        assert_eq!(c.apis.manage.family.base_path, "/otp");
        assert_eq!(c.apis.manage.client_ip_limit, 0);
    }

    #[test]
    fn route_rules_read_their_conditions_in_the_form_requests_are_compared_with() {
        let c = from_toml_str(
            r#"
            [[routes]]
            path_prefix = "/x/"
            access = "mfa"
            methods = ["get", "Delete"]
            source = ["10.0.0.7", "::ffff:192.168.0.0/112", "2001:db8::/32", "10.1.2.3/8"]
            any_scopes = ["a", "b"]
            factors = ["totp", "webauthn", "idp"]
            rate_limit = "100/m"
            "#,
        )
        .unwrap();
        let r = &c.routes[0];
        assert_eq!(r.methods, ["GET", "DELETE"]);
        let source: Vec<String> = r.source.iter().map(ToString::to_string).collect();
        assert_eq!(
            source,
            [
                "10.0.0.7/32",
                "192.168.0.0/16",
                "2001:db8::/32",
                "10.0.0.0/8"
            ]
        );
        assert_eq!(r.any_scopes, ["a", "b"]);
        assert_eq!(r.factors, [Factor::Totp, Factor::Webauthn, Factor::Idp]);
        assert_eq!(r.rate_limit.unwrap().to_string(), "100/m");
        // The enrollment API's and amr's names for the same factors, in any letter case.
        let c = from_toml_str(
            "[[routes]]\npath_prefix = \"/a/\"\naccess = \"mfa\"\n\
             factors = [\"otp\", \"HWK\", \"Passkey\", \"Email\"]\n",
        )
        .unwrap();
        assert_eq!(
            c.routes[0].factors,
            [
                Factor::Totp,
                Factor::Webauthn,
                Factor::Webauthn,
                Factor::Email
            ]
        );
        assert_eq!(
            r.rate_limit,
            Some(RateLimit {
                count: 100,
                per: Duration::from_secs(60)
            })
        );
        for (text, ok) in [
            ("1/s", true),
            ("5/h", true),
            ("0/m", false),
            ("10/d", false),
            ("m", false),
            ("-1/s", false),
        ] {
            assert_eq!(RateLimit::parse(text).is_some(), ok, "{text}");
        }
    }

    #[test]
    fn every_invalid_value_is_reported_with_its_key() {
        let err = from_toml_str(
            r#"
            [server]
            shutdown_grace = "soon"
            max_headers = "many"
            [upstream]
            url = "ftp://x"
            [[routes]]
            path_prefix = "/a/../b"
            access = "everyone"
            "#,
        )
        .unwrap_err();
        let text = err.to_string();
        for key in [
            "server.shutdown_grace",
            "server.max_headers",
            "upstream.url",
            "routes[0].path_prefix",
            "routes[0].access",
        ] {
            assert!(text.contains(key), "{key} missing from:\n{text}");
        }
    }

    #[test]
    fn rule_prefixes_with_parameters_or_differing_only_in_case_are_refused() {
        let err = from_toml_str(
            "[[routes]]\npath_prefix = \"/admin;x/\"\naccess = \"mfa\"\n\
             [[routes]]\npath_prefix = \"/api/\"\naccess = \"public\"\n\
             [[routes]]\npath_prefix = \"/API/\"\naccess = \"mfa\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("routes[0].path_prefix"), "{err}");
        assert!(err.contains("routes[2].path_prefix"), "{err}");
        assert!(!err.contains("routes[1].path_prefix"), "{err}");
    }

    #[test]
    fn rules_of_one_prefix_are_taken_when_they_differ_in_methods_or_source() {
        let rules = |body: &str| from_toml_str(body).map(|c| c.routes.len());
        // GET public, any other method needs MFA: two rules of one prefix, the narrower first.
        let split = "[[routes]]\npath_prefix = \"/api/\"\nmethods = [\"GET\"]\naccess = \"public\"\n\
                     [[routes]]\npath_prefix = \"/api/\"\naccess = \"mfa\"\n";
        assert_eq!(rules(split).unwrap(), 2);
        let by_source = "[[routes]]\npath_prefix = \"/ops/\"\nsource = [\"10.0.0.0/8\"]\naccess = \"authenticated\"\n\
                         [[routes]]\npath_prefix = \"/ops/\"\naccess = \"mfa\"\n";
        assert_eq!(rules(by_source).unwrap(), 2);
        // A rule an earlier one of its prefix wholly takes would never apply.
        for shadowed in [
            "[[routes]]\npath_prefix = \"/api/\"\naccess = \"mfa\"\n\
             [[routes]]\npath_prefix = \"/api/\"\nmethods = [\"GET\"]\naccess = \"public\"\n",
            "[[routes]]\npath_prefix = \"/api/\"\nmethods = [\"GET\", \"POST\"]\naccess = \"mfa\"\n\
             [[routes]]\npath_prefix = \"/API/\"\nmethods = [\"post\"]\naccess = \"public\"\n",
            "[[routes]]\npath_prefix = \"/ops/\"\nsource = [\"10.0.0.0/8\"]\naccess = \"mfa\"\n\
             [[routes]]\npath_prefix = \"/ops/\"\nsource = [\"10.0.0.0/8\"]\naccess = \"public\"\n",
            "[[routes]]\npath_prefix = \"/ops/\"\nsource = [\"10.0.0.0/8\"]\naccess = \"authenticated\"\n\
             [[routes]]\npath_prefix = \"/ops/\"\nsource = [\"10.1.0.0/16\"]\naccess = \"mfa\"\n",
            "[[routes]]\npath_prefix = \"/x/\"\nmethods = [\"GET\"]\naccess = \"public\"\n\
             [[routes]]\npath_prefix = \"/x/\"\nmethods = [\"HEAD\"]\naccess = \"mfa\"\n",
        ] {
            let err = from_toml_str(shadowed).unwrap_err().to_string();
            assert!(
                err.contains("routes[1].path_prefix: `/") && err.contains("earlier route"),
                "{shadowed}\n{err}"
            );
        }
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = from_toml_str("[server]\npublic_ulr = \"https://x\"\n").unwrap_err();
        assert!(err.to_string().contains("public_ulr"), "{err}");
    }

    #[test]
    fn an_unknown_key_does_not_hide_the_invalid_values() {
        let err = from_toml_str(
            "[server]\npublic_ulr = \"https://x\"\nshutdown_grace = \"soon\"\n\
             [upstrem]\nurl = \"http://127.0.0.1:1\"\n[upstream]\nurl = \"ftp://x\"\n",
        )
        .unwrap_err()
        .to_string();
        for expected in [
            "server.public_ulr: unknown key; did you mean `server.public_url`?",
            "upstrem: unknown section; did you mean `upstream`?",
            "server.shutdown_grace: expected a duration",
            "upstream.url: expected an http:// URL",
        ] {
            assert!(err.contains(expected), "{expected} missing from:\n{err}");
        }
    }

    #[test]
    fn each_bad_list_element_is_reported_at_its_index() {
        let err = from_toml_str(
            "[[routes]]\npath_prefix = \"/a/\"\naccess = \"public\"\n\
             [[routes]]\npath_prefix = \"/b/\"\nacess = \"mfa\"\n\
             [[routes]]\npath_prefix = \"/c/\"\naccess = \"everyone\"\n\
             [[auth.trusted_issuers]]\nissuer = \"https://idp\"\naudience = \"a\"\n\
             jwks_url = \"https://idp/jwks\"\nalgorithm = [\"RS256\"]\n",
        )
        .unwrap_err()
        .to_string();
        for expected in [
            "routes[1].acess: unknown key; did you mean `routes[1].access`?",
            "routes[1].access: is required",
            "routes[2].access: expected one of",
            "auth.trusted_issuers[0].algorithm: unknown key; did you mean `auth.trusted_issuers[0].algorithms`?",
        ] {
            assert!(err.contains(expected), "{expected} missing from:\n{err}");
        }
        assert!(!err.contains("routes[0]"), "{err}");
        assert!(!err.contains("default."), "{err}");
    }

    #[test]
    fn a_section_of_the_wrong_shape_is_named_without_figment_paths() {
        // Production: development mode would set `server.environment` over the `server = 5`.
        let err =
            super::from_toml_str("server = 5\nroutes = \"all\"\n[log]\nformat = [\"json\"]\n")
                .unwrap_err()
                .to_string();
        for expected in [
            "server: expected a table, got a number",
            "routes: expected a list of tables ([[routes]]), got a string",
            "log.format: invalid type",
        ] {
            assert!(err.contains(expected), "{expected} missing from:\n{err}");
        }
        assert!(!err.contains("default."), "{err}");
    }

    #[test]
    fn misspelt_environment_variables_name_the_one_meant() {
        let names = |list: &[&str]| list.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        let known = KnownKeys::of_raw_config();
        let (problems, warnings) = check_env_names(
            &names(&[
                "GATEHOUSE_UPSTREM__URL",
                "GATEHOUSE_UPSTREAM__URLL",
                "GATEHOUSE_UPSTREAM_URL",
                "GATEHOUSE_SERVER_PUBLIC_URL",
                "GATEHOUSE_UPSTREAM__URL",
                "GATEHOUSE_MFA__TOTP__DIGITS",
                "GATEHOUSE_ADMIN_TOKEN",
                "GATEHOUSE_MASTER_KEY",
                "GATEHOUSE_SERVICE_HOST",
                "GATEHOUSE_PORT_8443_TCP_ADDR",
            ]),
            &known,
        );
        assert_eq!(
            problems,
            [
                "GATEHOUSE_UPSTREAM__URLL: unknown key \"upstream.urll\"; did you mean \
                 GATEHOUSE_UPSTREAM__URL (`upstream.url`)?",
                "GATEHOUSE_UPSTREM__URL: unknown section \"upstrem\"; did you mean \
                 GATEHOUSE_UPSTREAM__URL (`upstream.url`)?",
            ]
        );
        assert_eq!(warnings.len(), 2, "{warnings:#?}");
        assert!(
            warnings[0].starts_with("GATEHOUSE_SERVER_PUBLIC_URL is ignored")
                && warnings[0]
                    .ends_with("did you mean GATEHOUSE_SERVER__PUBLIC_URL (`server.public_url`)?"),
            "{warnings:#?}"
        );
        assert!(
            warnings[1].starts_with("GATEHOUSE_UPSTREAM_URL is ignored")
                && warnings[1].ends_with("did you mean GATEHOUSE_UPSTREAM__URL (`upstream.url`)?"),
            "{warnings:#?}"
        );
        // Through the loader, beside the file's own problems.
        let (config, _) = read(
            Figment::new().merge(Toml::string("[proxy]\ndefault = \"everyone\"\n")),
            &names(&["GATEHOUSE_UPSTREM__URL"]),
            EnvSecrets::default(),
        );
        let err = config.unwrap_err().to_string();
        assert!(err.contains("proxy.default: expected one of"), "{err}");
        assert!(
            err.contains("GATEHOUSE_UPSTREM__URL: unknown section \"upstrem\""),
            "{err}"
        );
    }

    #[test]
    fn every_key_the_configuration_reads_is_known() {
        let found = std::cell::RefCell::new(KnownKeys::default());
        let probed = RawConfig::deserialize(Probe {
            path: String::new(),
            found: &found,
        });
        assert!(probed.is_ok(), "{:?}", probed.err());
        let known = found.into_inner();
        for key in [
            "server.public_url",
            "routes[].path_prefix",
            "auth.trusted_issuers[].algorithms",
            "mfa.totp.digits",
            "apis.manage.client_ip_window",
            "domains.resolver",
        ] {
            assert!(known.keys.contains(key), "{key}");
        }
        assert!(known.sections.contains("routes[]") && known.sections.contains("mfa.lockout"));
    }

    #[test]
    fn durations_print_as_they_are_written() {
        for (written, printed) in [
            ("24h", "24h"),
            ("30s", "30s"),
            ("5m", "5m"),
            ("90m", "1h30m"),
            ("1h 30m", "1h30m"),
            ("7d", "168h"),
            ("1500ms", "1s500ms"),
            ("0s", "0s"),
        ] {
            let d = parse_duration(written.into()).unwrap();
            assert_eq!(format_duration(d), printed, "{written}");
            assert_eq!(parse_duration(printed.into()).unwrap(), d, "{printed}");
        }
        let c = from_toml_str("[mfa]\nticket_ttl = \"24h\"\n").unwrap();
        let text = c.to_toml().unwrap();
        assert!(text.contains("ticket_ttl = \"24h\""), "{text}");
        assert!(!text.contains("day"), "{text}");
    }

    #[test]
    fn no_duration_setting_takes_more_than_a_hundred_years() {
        // Past the bound, timers computed from the setting (`Instant` + the setting) would
        // overflow on the first connection; the configuration is refused instead.
        for (section, key) in [
            ("server", "header_read_timeout"),
            ("server", "send_timeout"),
            ("server", "tls_handshake_timeout"),
            ("server", "body_read_timeout"),
            ("server", "shutdown_grace"),
            ("mfa", "ticket_ttl"),
            ("mfa", "send_window"),
            ("tokens", "access_ttl"),
            ("auth", "jwks_min_refresh"),
        ] {
            let accepted = from_toml_str(&format!("[{section}]\n{key} = \"100y\"\n"));
            assert!(accepted.is_ok(), "{section}.{key}: {accepted:?}");
            for refused in ["101y", "1000000000y"] {
                let problems = from_toml_str(&format!("[{section}]\n{key} = \"{refused}\"\n"))
                    .unwrap_err()
                    .problems;
                assert!(
                    problems
                        .iter()
                        .any(|p| p
                            .starts_with(&format!("{section}.{key}: must be at most 100 years"))),
                    "{section}.{key} = {refused}: {problems:?}"
                );
            }
        }
    }

    #[test]
    fn empty_listener_address_disables_it() {
        let c = from_toml_str("[listen]\nhttp = \"\"\n").unwrap();
        assert!(c.listen.http.is_none());
    }

    #[test]
    fn upstream_credentials_are_masked_in_check_config() {
        let c = from_toml_str("[upstream]\nurl = \"http://user:pw@127.0.0.1:3000\"\n").unwrap();
        let text = c.to_toml().unwrap();
        assert!(!text.contains("pw"), "{text}");
        assert!(text.contains("***@127.0.0.1:3000"), "{text}");
    }
    const PROVIDER: &str = "[[oidc.providers]]\nid = \"corp\"\nname = \"Corporate SSO\"\n\
        issuer = \"https://idp.example\"\nclient_id = \"gatehouse\"\n";

    #[test]
    fn an_oidc_client_secret_is_masked_in_check_config() {
        let c = from_toml_str(&format!("{PROVIDER}client_secret = \"hunter2-oidc\"\n")).unwrap();
        let p = &c.oidc.providers[0];
        assert_eq!(p.client_secret.expose(), "hunter2-oidc");
        assert_eq!(p.scopes, ["openid", "email", "profile"]);
        assert_eq!(p.groups_claim, "groups");
        let text = c.to_toml().unwrap();
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("client_secret = \"***\""), "{text}");
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn an_oidc_client_secret_is_read_from_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "from-a-file\n").unwrap();
        let c = from_toml_str(&format!(
            "{PROVIDER}client_secret_file = \"{}\"\n",
            path.display()
        ))
        .unwrap();
        assert_eq!(c.oidc.providers[0].client_secret.expose(), "from-a-file");
        let text = c.to_toml().unwrap();
        assert!(!text.contains("from-a-file"), "{text}");
    }

    #[test]
    fn oidc_providers_are_checked_with_every_problem_named() {
        let problems = from_toml_str(
            "[[oidc.providers]]\nid = \"a/b\"\nname = \"\"\nissuer = \"http://idp.example\"\n\
             scopes = [\"email\"]\nallowed_email_domains = [\"not a domain\"]\n\
             scopes_from_groups = { admins = [\"mfa\"] }\n\
             [[oidc.providers]]\nid = \"x\"\nname = \"X\"\nissuer = \"http://127.0.0.1:9/\"\n\
             client_id = \"c\"\nclient_secret = \"s\"\n\
             [[oidc.providers]]\nid = \"X\"\nname = \"X2\"\nissuer = \"https://idp\"\n\
             client_id = \"c\"\nclient_secret = \"s\"\nclient_secret_file = \"/nonexistent\"\n",
        )
        .unwrap_err()
        .problems;
        let text = problems.join("\n");
        for expected in [
            "oidc.providers[0].id: expected 1 to 64 letters",
            "oidc.providers[0].name: must not be empty",
            "oidc.providers[0].issuer: must be an https URL",
            "oidc.providers[0].client_id: is required",
            "oidc.providers[0].client_secret: client_secret or client_secret_file is required",
            "oidc.providers[0].scopes: must include `openid`",
            "oidc.providers[0].allowed_email_domains: expected domain names",
            "oidc.providers[0].scopes_from_groups: `admins`: `mfa` is earned",
            "oidc.providers[2].id: `X` is used by another provider",
            "oidc.providers[2].client_secret: give client_secret or client_secret_file, not both",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
        }
        assert!(!text.contains("oidc.providers[1]"), "{text}");
    }
}
