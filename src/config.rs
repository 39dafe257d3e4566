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
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::mfa::lockout::Policy;
use crate::path;
use crate::proxy::headers::{IdentityHeaderNames, Preset};

/// The file read when `--config` is not given; a missing default file means "built-in defaults".
pub const DEFAULT_PATH: &str = "config/gatehouse.toml";

/// The validated configuration the server runs with.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    pub server: ServerConfig,
    pub listen: ListenConfig,
    pub tls: TlsConfig,
    pub upstream: UpstreamConfig,
    pub proxy: ProxyConfig,
    pub routes: Vec<Route>,
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
}

#[derive(Debug, Clone, Serialize)]
pub struct ProxyConfig {
    /// Access level of a path no route rule matches.
    pub default: Access,
    /// Largest proxied request body in bytes; `None` streams any size.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_body: Option<u64>,
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

/// One `[[routes]]` entry.
#[derive(Debug, Clone, Serialize)]
pub struct Route {
    /// A normalised path prefix, matched on whole segments (see [`crate::routes`]).
    pub path_prefix: String,
    pub access: Access,
    /// Scopes the principal must all hold.
    pub scopes: Vec<String>,
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

/// figment's errors as `key: what is wrong`, keys written as in this module's messages
/// (`routes[1].access`, not figment's `default.routes.1.access`).
fn describe(error: figment::Error) -> Vec<String> {
    error
        .into_iter()
        .map(|e| {
            if e.path.is_empty() {
                e.to_string()
            } else {
                let mut key = String::new();
                for segment in &e.path {
                    if segment.bytes().all(|b| b.is_ascii_digit()) {
                        key.push_str(&format!("[{segment}]"));
                    } else {
                        key = join(&key, segment);
                    }
                }
                format!("{key}: {}", e.kind)
            }
        })
        .collect()
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

/// The keys [`RawConfig`] reads, learnt from serde's list of each struct's fields: `server`,
/// `server.public_url`, `routes`, `routes[].access`… A list of tables is `routes[]`.
#[derive(Default)]
struct KnownKeys {
    keys: std::collections::BTreeSet<String>,
    /// The keys that are tables (`""` is the whole file).
    sections: std::collections::BTreeSet<String>,
}

impl KnownKeys {
    fn of_raw_config() -> KnownKeys {
        let found = std::cell::RefCell::new(KnownKeys::default());
        let _ = RawConfig::deserialize(Probe {
            path: String::new(),
            found: &found,
        });
        found.into_inner()
    }

    /// The keys directly in `section`, as written there.
    fn children<'a>(&'a self, section: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.keys.iter().filter_map(move |key| {
            let name = if section.is_empty() {
                key.as_str()
            } else {
                key.strip_prefix(section)?.strip_prefix('.')?
            };
            (!name.contains(['.', '['])).then_some(name)
        })
    }

    /// Keys that hold a value, as `GATEHOUSE_<SECTION>__<KEY>` variables.
    fn variables(&self) -> impl Iterator<Item = (String, &str)> + '_ {
        self.keys
            .iter()
            .filter(|key| {
                !key.contains('[')
                    && !self.sections.contains(key.as_str())
                    && !self.sections.contains(&format!("{key}[]"))
            })
            .map(|key| (env_name(key), key.as_str()))
    }
}

fn env_name(key: &str) -> String {
    format!(
        "{ENV_PREFIX}{}",
        key.replace('.', "__").to_ascii_uppercase()
    )
}

/// A deserializer that reads nothing but records every field of every struct it is asked for.
struct Probe<'a> {
    path: String,
    found: &'a std::cell::RefCell<KnownKeys>,
}

type ProbeError = serde::de::value::Error;

impl<'de> Deserializer<'de> for Probe<'_> {
    type Error = ProbeError;

    fn deserialize_any<V: serde::de::Visitor<'de>>(self, v: V) -> Result<V::Value, ProbeError> {
        v.visit_unit()
    }

    fn deserialize_option<V: serde::de::Visitor<'de>>(self, v: V) -> Result<V::Value, ProbeError> {
        v.visit_some(self)
    }

    fn deserialize_newtype_struct<V: serde::de::Visitor<'de>>(
        self,
        _: &'static str,
        v: V,
    ) -> Result<V::Value, ProbeError> {
        v.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: serde::de::Visitor<'de>>(self, v: V) -> Result<V::Value, ProbeError> {
        v.visit_seq(ProbeSeq {
            next: Some(Probe {
                path: format!("{}[]", self.path),
                found: self.found,
            }),
        })
    }

    fn deserialize_struct<V: serde::de::Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, ProbeError> {
        {
            let mut found = self.found.borrow_mut();
            found.sections.insert(self.path.clone());
            for field in fields {
                found.keys.insert(join(&self.path, field));
            }
        }
        v.visit_map(ProbeMap {
            fields: fields.iter(),
            current: "",
            probe: self,
        })
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        unit unit_struct tuple tuple_struct map enum identifier ignored_any
    }
}

struct ProbeSeq<'a> {
    next: Option<Probe<'a>>,
}

impl<'de> serde::de::SeqAccess<'de> for ProbeSeq<'_> {
    type Error = ProbeError;

    fn next_element_seed<T: serde::de::DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, ProbeError> {
        self.next.take().map(|p| seed.deserialize(p)).transpose()
    }
}

struct ProbeMap<'a> {
    fields: std::slice::Iter<'static, &'static str>,
    current: &'static str,
    probe: Probe<'a>,
}

impl<'de> serde::de::MapAccess<'de> for ProbeMap<'_> {
    type Error = ProbeError;

    fn next_key_seed<K: serde::de::DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, ProbeError> {
        use serde::de::IntoDeserializer;
        let Some(field) = self.fields.next() else {
            return Ok(None);
        };
        self.current = field;
        seed.deserialize(IntoDeserializer::<ProbeError>::into_deserializer(*field))
            .map(Some)
    }

    fn next_value_seed<V: serde::de::DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, ProbeError> {
        seed.deserialize(Probe {
            path: join(&self.probe.path, self.current),
            found: self.probe.found,
        })
    }
}

/// Takes out of `value` (at `pattern` in the key set, shown as `shown`) every key gatehouse does
/// not read, and empties a section that is not a table, reporting each; what is left can be read.
fn tidy(
    value: &mut Value,
    pattern: &str,
    shown: &str,
    known: &KnownKeys,
    report: &mut dyn FnMut(String),
) {
    let list = format!("{pattern}[]");
    match value {
        Value::Dict(_, map) if known.sections.contains(pattern) => {
            map.retain(|key, child| {
                let child_pattern = join(pattern, key);
                let child_shown = join(shown, key);
                if known.keys.contains(&child_pattern) {
                    tidy(child, &child_pattern, &child_shown, known, report);
                    return true;
                }
                let what = if pattern.is_empty() && matches!(child, Value::Dict(..)) {
                    "unknown section"
                } else {
                    "unknown key"
                };
                let guess = closest(key, known.children(pattern))
                    .map(|k| format!("; did you mean `{}`?", join(shown, k)))
                    .unwrap_or_default();
                report(format!("{child_shown}: {what}{guess}"));
                false
            });
        }
        Value::Array(_, items) if known.sections.contains(&list) => {
            for (i, item) in items.iter_mut().enumerate() {
                tidy(item, &list, &format!("{shown}[{i}]"), known, report);
            }
        }
        _ if known.sections.contains(pattern) => {
            report(format!("{shown}: expected a table, got {}", kind_of(value)));
            *value = Value::from(figment::value::Dict::new());
        }
        _ if known.sections.contains(&list) => {
            report(format!(
                "{shown}: expected a list of tables ([[{shown}]]), got {}",
                kind_of(value)
            ));
            *value = Value::from(Vec::<Value>::new());
        }
        _ => {}
    }
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::String(..) | Value::Char(..) => "a string",
        Value::Bool(..) => "a boolean",
        Value::Num(..) => "a number",
        Value::Empty(..) => "nothing",
        Value::Dict(..) => "a table",
        Value::Array(..) => "a list",
    }
}

/// The candidate closest to `word` in spelling, if one is close enough to be what was meant.
fn closest<'a>(word: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let word = word.to_ascii_lowercase();
    candidates
        .map(|c| (edit_distance(&word, &c.to_ascii_lowercase()), c))
        .filter(|(d, c)| *d <= 2.min(c.len().max(word.len()) / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Edits (insertion, deletion, substitution, swap of neighbours) turning `a` into `b`.
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut rows = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in rows.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in rows[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut d = (rows[i - 1][j] + 1)
                .min(rows[i][j - 1] + 1)
                .min(rows[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d = d.min(rows[i - 2][j - 2] + 1);
            }
            rows[i][j] = d;
        }
    }
    rows[a.len()][b.len()]
}

/// `GATEHOUSE_*` variables read by name rather than as configuration keys: secrets, and the
/// options of the subcommands.
const OTHER_VARIABLES: &[&str] = &[
    "GATEHOUSE_ADMIN_TOKEN",
    "GATEHOUSE_MASTER_KEY",
    "GATEHOUSE_CONFIG",
    "GATEHOUSE_ADMIN_URL",
    "GATEHOUSE_MIGRATE_TO",
    "GATEHOUSE_INJECT_LISTEN",
    "GATEHOUSE_INJECT_TLS_CERT",
    "GATEHOUSE_INJECT_TLS_KEY",
    "GATEHOUSE_INJECT_IMAGE",
    "GATEHOUSE_INJECT_MAX_CONNECTIONS",
    "GATEHOUSE_INJECT_MAX_CONNECTIONS_PER_IP",
    "GATEHOUSE_DEMO_LISTEN",
];

/// Variables of gatehouse's own test suite (`GATEHOUSE_TEST_DATABASE_URL`…), which the processes
/// it starts inherit.
const TEST_VARIABLES_PREFIX: &str = "GATEHOUSE_TEST_";

/// What Kubernetes sets for a Service named `gatehouse…` (`GATEHOUSE_SERVICE_HOST`,
/// `GATEHOUSE_PORT_8443_TCP_ADDR`…): not meant for gatehouse.
fn is_service_variable(name: &str) -> bool {
    let name = name.to_ascii_uppercase();
    name.contains("_SERVICE_HOST")
        || name.contains("_SERVICE_PORT")
        || name.ends_with("_PORT")
        || name
            .split("_PORT_")
            .nth(1)
            .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
}

/// Problems with `GATEHOUSE_<SECTION>__<KEY>` variables that name no key, and warnings about other
/// `GATEHOUSE_*` variables gatehouse does not read; each names the variable probably meant.
fn check_env_names(names: &[String], known: &KnownKeys) -> (Vec<String>, Vec<String>) {
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    let guess = |name: &str| {
        let collapsed = |n: &str| n.to_ascii_uppercase().replace("__", "_");
        let variables: Vec<(String, &str)> = known.variables().collect();
        let found = variables
            .iter()
            .find(|(v, _)| collapsed(v) == collapsed(name))
            .map(|(v, k)| (v.clone(), *k))
            .or_else(|| {
                let best = closest(name, variables.iter().map(|(v, _)| v.as_str()))?;
                variables
                    .iter()
                    .find(|(v, _)| v == best)
                    .map(|(v, k)| (v.clone(), *k))
            });
        found
            .map(|(v, k)| format!("; did you mean {v} (`{k}`)?"))
            .unwrap_or_default()
    };
    let mut sorted: Vec<&String> = names.iter().collect();
    sorted.sort();
    for name in sorted {
        let Some(rest) = name.get(ENV_PREFIX.len()..).filter(|_| has_prefix(name)) else {
            continue;
        };
        if !rest.contains("__") {
            if OTHER_VARIABLES.iter().any(|v| v.eq_ignore_ascii_case(name))
                || is_service_variable(name)
                || name.starts_with(TEST_VARIABLES_PREFIX)
            {
                continue;
            }
            warnings.push(format!(
                "{name} is ignored: configuration variables are GATEHOUSE_<SECTION>__<KEY>, \
                 with two underscores after the section{}",
                guess(name)
            ));
            continue;
        }
        let mut path = String::new();
        let segments: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
        for (i, segment) in segments.iter().enumerate() {
            let next = join(&path, segment);
            if !known.keys.contains(&next) {
                let what = if i == 0 {
                    format!("unknown section \"{segment}\"")
                } else if known.sections.contains(&path) {
                    format!("unknown key \"{next}\"")
                } else {
                    format!("\"{path}\" is a value, it has no key \"{segment}\"")
                };
                problems.push(format!("{name}: {what}{}", guess(name)));
                break;
            }
            if i + 1 < segments.len() && !known.sections.contains(&next) {
                let what = if known.sections.contains(&format!("{next}[]")) {
                    format!("\"{next}\" is a list of tables: set it in the configuration file")
                } else {
                    format!(
                        "\"{next}\" is a value, it has no key \"{}\"",
                        segments[i + 1]
                    )
                };
                problems.push(format!("{name}: {what}{}", guess(name)));
                break;
            }
            path = next;
        }
    }
    (problems, warnings)
}

/// A leaf value as written: `Err` holds why it could not be read as `T`.
#[derive(Debug, Clone)]
struct Raw<T>(Result<T, String>);

impl<'de, T: DeserializeOwned> Deserialize<'de> for Raw<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(d)?;
        Ok(Raw(serde_json::from_value(value).map_err(|e| e.to_string())))
    }
}

type Field<T> = Option<Raw<T>>;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawConfig {
    server: RawServer,
    listen: RawListen,
    tls: RawTls,
    upstream: RawUpstream,
    proxy: RawProxy,
    routes: Vec<RawRoute>,
    identity_headers: RawIdentityHeaders,
    log: RawLog,
    store: RawStore,
    admin: RawAdmin,
    auth: RawAuth,
    tokens: RawTokens,
    bootstrap: RawBootstrap,
    mfa: RawMfa,
    secrets: RawSecrets,
    smtp: RawSmtp,
    sms: RawSms,
    apis: RawApis,
    domains: RawDomains,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawDomains {
    code_prefix: Field<String>,
    code_ttl: Field<String>,
    record_name: Field<String>,
    resolver: Field<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawMfa {
    default_factor: Field<String>,
    ticket_ttl: Field<String>,
    code_ttl: Field<String>,
    send_limit: Field<u64>,
    send_window: Field<String>,
    totp: RawTotp,
    lockout: RawLockout,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawTotp {
    issuer: Field<String>,
    algorithm: Field<String>,
    digits: Field<u64>,
    period: Field<u64>,
    skew: Field<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawLockout {
    max_failures: Field<u64>,
    window: Field<String>,
    duration: Field<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawSecrets {
    master_key_file: Field<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawSmtp {
    url: Field<String>,
    from: Field<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawSms {
    kind: Field<String>,
    url: Field<String>,
    from: Field<String>,
    account_sid: Field<String>,
    auth_token: Field<String>,
    auth_token_file: Field<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawApis {
    nexus: RawFamily,
    ws: RawFamily,
    manage: RawManage,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawManage {
    enabled: Field<bool>,
    base_path: Field<String>,
    client_ip_limit: Field<u64>,
    client_ip_window: Field<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawFamily {
    enabled: Field<bool>,
    base_path: Field<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawStore {
    backend: Field<String>,
    path: Field<String>,
    url: Field<String>,
    url_file: Field<String>,
    max_connections: Field<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawAdmin {
    token_file: Field<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawAuth {
    require_application_token: Field<bool>,
    application_token_header: Field<String>,
    basic_cache_ttl: Field<String>,
    jwks_min_refresh: Field<String>,
    trusted_issuers: Vec<RawTrustedIssuer>,
    max_concurrent_hashes: Field<u64>,
    max_queued_hashes: Field<u64>,
    failed_password_limit: Field<u64>,
    failed_password_window: Field<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawTrustedIssuer {
    issuer: Field<String>,
    jwks_url: Field<String>,
    audience: Field<String>,
    algorithms: Field<Vec<String>>,
    max_new_users: Field<u64>,
    new_users_window: Field<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawTokens {
    issuer: Field<String>,
    audience: Field<String>,
    access_ttl: Field<String>,
    signing_key_file: Field<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawBootstrap {
    file: Field<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawServer {
    environment: Field<String>,
    public_url: Field<String>,
    trusted_proxies: Field<Vec<String>>,
    shutdown_grace: Field<String>,
    header_read_timeout: Field<String>,
    tls_handshake_timeout: Field<String>,
    send_timeout: Field<String>,
    max_headers: Field<u64>,
    max_header_bytes: Field<u64>,
    h2_max_concurrent_streams: Field<u64>,
    worker_threads: Field<u64>,
    body_read_timeout: Field<String>,
    max_buffered_bytes: Field<u64>,
    max_connections: Field<u64>,
    max_connections_per_ip: Field<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawListen {
    https: Field<String>,
    http: Field<String>,
    admin: Field<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawTls {
    cert: Field<String>,
    key: Field<String>,
    self_signed: Field<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawUpstream {
    url: Field<String>,
    connect_timeout: Field<String>,
    response_timeout: Field<String>,
    audience: Field<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawProxy {
    default: Field<String>,
    max_body: Field<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawRoute {
    path_prefix: Field<String>,
    access: Field<String>,
    scopes: Field<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawIdentityHeaders {
    preset: Field<String>,
    user: Field<String>,
    user_id: Field<String>,
    email: Field<String>,
    scopes: Field<String>,
    methods: Field<String>,
    assertion: Field<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawLog {
    format: Field<String>,
    level: Field<String>,
}

/// Collects problems while values are checked, so that all of them are reported together.
#[derive(Default)]
struct Checker {
    problems: Vec<String>,
}

impl Checker {
    /// The value at `key` parsed by `parse`, or `default` when absent; a problem is recorded (and the
    /// default returned so checking can go on) when it is unreadable or `parse` refuses it.
    fn get<T, U>(
        &mut self,
        key: &str,
        field: Field<T>,
        default: U,
        parse: impl FnOnce(T) -> Result<U, String>,
    ) -> U {
        match field {
            None => default,
            Some(Raw(Err(e))) => {
                self.problems.push(format!("{key}: {e}"));
                default
            }
            Some(Raw(Ok(v))) => parse(v).unwrap_or_else(|e| {
                self.problems.push(format!("{key}: {e}"));
                default
            }),
        }
    }

    fn problem(&mut self, key: &str, message: impl fmt::Display) {
        self.problems.push(format!("{key}: {message}"));
    }
}

fn ok<T>(v: T) -> Result<T, String> {
    Ok(v)
}

/// The longest expiry of an in-memory cache set from the configuration.
const MAX_CACHE_EXPIRY: Duration = Duration::from_secs(30 * 24 * 3600);

fn parse_duration(s: String) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|_| format!("expected a duration such as `10s`, `5m` or `24h`, got `{s}`"))
}

fn parse_addr(s: String) -> Result<SocketAddr, String> {
    s.trim()
        .parse()
        .map_err(|_| format!("expected an address such as `127.0.0.1:8080`, got `{s}`"))
}

/// A listener address where an empty string disables the listener.
fn parse_optional_addr(s: String) -> Result<Option<SocketAddr>, String> {
    if s.trim().is_empty() {
        Ok(None)
    } else {
        parse_addr(s).map(Some)
    }
}

fn parse_access(s: String) -> Result<Access, String> {
    match s.as_str() {
        "public" => Ok(Access::Public),
        "authenticated" => Ok(Access::Authenticated),
        "mfa" => Ok(Access::Mfa),
        _ => Err(format!(
            "expected one of `public`, `authenticated`, `mfa`, got `{s}`"
        )),
    }
}

fn in_range(min: u64, max: u64) -> impl FnOnce(u64) -> Result<u64, String> {
    move |v| {
        if (min..=max).contains(&v) {
            Ok(v)
        } else {
            Err(format!("expected a number from {min} to {max}, got {v}"))
        }
    }
}

fn parse_public_url(s: String) -> Result<String, String> {
    let uri: Uri = s
        .parse()
        .map_err(|_| format!("expected an absolute URL, got `{s}`"))?;
    match (uri.scheme_str(), uri.authority()) {
        (Some("https" | "http"), Some(_)) => Ok(s.trim_end_matches('/').to_owned()),
        _ => Err(format!(
            "expected an absolute http(s) URL such as `https://app.example.com`, got `{s}`"
        )),
    }
}

fn parse_upstream_url(s: String) -> Result<Uri, String> {
    let uri: Uri = s
        .parse()
        .map_err(|_| format!("expected a URL such as `http://127.0.0.1:3000`, got `{s}`"))?;
    if uri.scheme_str() != Some("http") || uri.authority().is_none() {
        return Err(format!(
            "expected an http:// URL such as `http://127.0.0.1:3000`, got `{s}`"
        ));
    }
    if uri.path() != "/" || uri.query().is_some() {
        return Err(format!(
            "expected a URL without a path or query (requests keep their own), got `{s}`"
        ));
    }
    Ok(uri)
}

fn parse_cidrs(list: Vec<String>) -> Result<Vec<IpNet>, String> {
    list.iter()
        .map(|s| {
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
                .map_err(|_| format!("expected CIDRs such as `10.0.0.0/8`, got `{s}`"))
        })
        .collect()
}

fn parse_header_name(s: String) -> Result<String, String> {
    match http::HeaderName::from_bytes(s.as_bytes()) {
        Ok(name) => Ok(name.as_str().to_owned()),
        Err(_) => Err(format!("expected a header name, got `{s}`")),
    }
}

/// The most users one trusted issuer may create per window: the window's count is one stored
/// record of that many timestamps, read and written at every creation.
const MAX_NEW_USERS: u64 = 10_000;

/// Asymmetric JWT algorithms a trusted issuer may use; HMAC is never accepted from outside.
const ISSUER_ALGORITHMS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

fn non_empty(s: String) -> Result<String, String> {
    if s.trim().is_empty() {
        Err("must not be empty".into())
    } else {
        Ok(s)
    }
}

fn optional_path(s: String) -> Result<Option<PathBuf>, String> {
    Ok(Some(s).filter(|s| !s.trim().is_empty()).map(PathBuf::from))
}

fn parse_jwks_url(s: String) -> Result<Uri, String> {
    let uri: Uri = s
        .parse()
        .map_err(|_| format!("expected an http(s) URL, got `{s}`"))?;
    match (uri.scheme_str(), uri.authority()) {
        (Some("https" | "http"), Some(_)) => Ok(uri),
        _ => Err(format!("expected an http(s) URL, got `{s}`")),
    }
}

/// A trusted issuer's JWKS: the keys it serves decide who is signed in, so they are fetched over
/// TLS; plain HTTP only to this host, where nothing on the network can change them.
fn parse_issuer_jwks_url(s: String) -> Result<Uri, String> {
    let uri = parse_jwks_url(s)?;
    if uri.scheme_str() == Some("https") || uri.host().is_some_and(is_loopback_host) {
        Ok(uri)
    } else {
        Err(format!(
            "must be an https URL (http only for 127.0.0.0/8, ::1 or localhost), got `{uri}`"
        ))
    }
}

fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Reads a secret from a file named by a configuration key (trimmed; empty is a problem).
fn read_secret_file(c: &mut Checker, key: &str, path: &Path) -> Option<Secret> {
    match std::fs::read_to_string(path) {
        Ok(text) if !text.trim().is_empty() => Some(Secret::new(text.trim())),
        Ok(_) => {
            c.problem(key, format!("{} is empty", path.display()));
            None
        }
        Err(e) => {
            c.problem(key, format!("cannot read {}: {e}", path.display()));
            None
        }
    }
}

/// Shortest admin token accepted: 22 characters of a base64 alphabet carry 132 bits (SPEC §10).
const ADMIN_TOKEN_MIN_CHARS: usize = 22;

/// Words that mark a token as a placeholder copied from an example rather than generated. Each is
/// long enough (6+ characters) that a random token contains one with negligible probability.
const ADMIN_TOKEN_PLACEHOLDERS: &[&str] = &[
    "changeme",
    "replaceme",
    "placeholder",
    "example",
    "password",
    "passw0rd",
    "secret",
    "admintoken",
    "yourtoken",
    "testtoken",
    "tokenhere",
    "insecure",
    "donotuse",
    "letmein",
    "qwerty",
];

/// Why `token` cannot be the admin token, if it cannot (SPEC §10): it must have at least 128 bits
/// in form and must not be a known placeholder. The reason never repeats the token.
fn weak_admin_token(token: &str) -> Option<String> {
    let body = token.trim_end_matches('=');
    let expected = format!(
        "must be at least {ADMIN_TOKEN_MIN_CHARS} characters of a base64 alphabet \
         (A-Z a-z 0-9 + / - _, `=` padding), generated at random, \
         e.g. `head -c 32 /dev/urandom | base64`"
    );
    if body.is_empty()
        || !body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'-' | b'_'))
    {
        return Some(format!(
            "has characters outside the base64 alphabet: it {expected}"
        ));
    }
    let chars = body.chars().count();
    if chars < ADMIN_TOKEN_MIN_CHARS {
        return Some(format!("is {chars} characters long: it {expected}"));
    }
    let letters: String = body
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    if ADMIN_TOKEN_PLACEHOLDERS.iter().any(|w| letters.contains(w)) {
        return Some(format!(
            "is a placeholder, not a generated token: it {expected}"
        ));
    }
    // Repetitions and runs ("aaaa…", "abcabc…", "0123456789…") have the form but not the entropy;
    // random tokens of the minimum length never come near these bounds.
    let bytes = body.as_bytes();
    let distinct = bytes.iter().collect::<std::collections::HashSet<_>>().len();
    let steps = bytes
        .windows(2)
        .filter(|w| w[0].abs_diff(w[1]) <= 1)
        .count();
    if distinct < 6 || steps * 4 >= (bytes.len() - 1) * 3 {
        return Some(format!(
            "is a pattern, not a generated token: it {expected}"
        ));
    }
    None
}

fn one_of(allowed: &'static [&'static str]) -> impl FnOnce(String) -> Result<String, String> {
    move |s| {
        if allowed.contains(&s.as_str()) {
            Ok(s)
        } else {
            Err(format!("expected one of {}, got `{s}`", allowed.join(", ")))
        }
    }
}

fn validate(raw: RawConfig, env_secrets: EnvSecrets) -> Result<Config, ConfigError> {
    let env_admin_token = env_secrets.admin_token;
    let mut c = Checker::default();
    let s = raw.server;
    let server = ServerConfig {
        environment: c.get(
            "server.environment",
            s.environment,
            Environment::Production,
            |s: String| match s.as_str() {
                "development" => Ok(Environment::Development),
                "production" => Ok(Environment::Production),
                _ => Err(format!("expected `development` or `production`, got `{s}`")),
            },
        ),
        public_url: c.get(
            "server.public_url",
            s.public_url,
            "https://localhost:8443".into(),
            parse_public_url,
        ),
        trusted_proxies: c.get(
            "server.trusted_proxies",
            s.trusted_proxies,
            loopback(),
            parse_cidrs,
        ),
        shutdown_grace: c.get(
            "server.shutdown_grace",
            s.shutdown_grace,
            Duration::from_secs(20),
            parse_duration,
        ),
        header_read_timeout: c.get(
            "server.header_read_timeout",
            s.header_read_timeout,
            Duration::from_secs(10),
            parse_duration,
        ),
        tls_handshake_timeout: c.get(
            "server.tls_handshake_timeout",
            s.tls_handshake_timeout,
            Duration::from_secs(10),
            parse_duration,
        ),
        send_timeout: c.get(
            "server.send_timeout",
            s.send_timeout,
            Duration::from_secs(60),
            parse_duration,
        ),
        max_headers: c.get("server.max_headers", s.max_headers, 100, |v| {
            in_range(1, 1000)(v).map(|v| v as usize)
        }),
        max_header_bytes: c.get(
            "server.max_header_bytes",
            s.max_header_bytes,
            64 * 1024,
            |v| in_range(8 * 1024, 1024 * 1024)(v).map(|v| v as usize),
        ),
        h2_max_concurrent_streams: c.get(
            "server.h2_max_concurrent_streams",
            s.h2_max_concurrent_streams,
            100,
            |v| in_range(1, 1000)(v).map(|v| v as u32),
        ),
        worker_threads: c.get("server.worker_threads", s.worker_threads, 0, |v| {
            in_range(0, 1024)(v).map(|v| v as usize)
        }),
        body_read_timeout: c.get(
            "server.body_read_timeout",
            s.body_read_timeout,
            Duration::from_secs(10),
            parse_duration,
        ),
        max_buffered_bytes: c.get(
            "server.max_buffered_bytes",
            s.max_buffered_bytes,
            64 * 1024 * 1024,
            |v| in_range(64 * 1024, 1 << 40)(v).map(|v| v as usize),
        ),
        max_connections: c.get("server.max_connections", s.max_connections, 10_000, |v| {
            in_range(1, 10_000_000)(v).map(|v| v as usize)
        }),
        max_connections_per_ip: c.get(
            "server.max_connections_per_ip",
            s.max_connections_per_ip,
            256,
            |v| in_range(1, 10_000_000)(v).map(|v| v as usize),
        ),
    };
    if server.max_connections_per_ip > server.max_connections {
        c.problem(
            "server.max_connections_per_ip",
            format_args!(
                "must not exceed server.max_connections ({})",
                server.max_connections
            ),
        );
    }
    for (key, d) in [
        ("server.header_read_timeout", server.header_read_timeout),
        ("server.tls_handshake_timeout", server.tls_handshake_timeout),
        ("server.send_timeout", server.send_timeout),
        ("server.body_read_timeout", server.body_read_timeout),
    ] {
        if d.is_zero() {
            c.problem(key, "must be longer than zero");
        }
    }

    let l = raw.listen;
    let listen = ListenConfig {
        https: c.get(
            "listen.https",
            l.https,
            Some(SocketAddr::from(([0, 0, 0, 0], 8443))),
            parse_optional_addr,
        ),
        http: c.get(
            "listen.http",
            l.http,
            Some(SocketAddr::from(([127, 0, 0, 1], 8080))),
            parse_optional_addr,
        ),
        admin: c.get(
            "listen.admin",
            l.admin,
            SocketAddr::from(([127, 0, 0, 1], 9090)),
            parse_addr,
        ),
    };
    if listen.https.is_none() && listen.http.is_none() {
        c.problem(
            "listen",
            "`https` and `http` are both disabled; at least one must listen",
        );
    }

    let t = raw.tls;
    let tls = TlsConfig {
        cert: c.get(
            "tls.cert",
            t.cert,
            "certs/gatehouse.crt".into(),
            |s: String| ok(s.into()),
        ),
        key: c.get(
            "tls.key",
            t.key,
            "certs/gatehouse.key".into(),
            |s: String| ok(s.into()),
        ),
        self_signed: c.get("tls.self_signed", t.self_signed, false, ok),
    };

    let u = raw.upstream;
    let upstream = UpstreamConfig {
        url: c.get(
            "upstream.url",
            u.url,
            Uri::from_static("http://127.0.0.1:3000/"),
            parse_upstream_url,
        ),
        connect_timeout: c.get(
            "upstream.connect_timeout",
            u.connect_timeout,
            Duration::from_secs(2),
            parse_duration,
        ),
        response_timeout: c.get(
            "upstream.response_timeout",
            u.response_timeout,
            Duration::from_secs(30),
            parse_duration,
        ),
        audience: c.get(
            "upstream.audience",
            u.audience,
            "upstream".into(),
            non_empty,
        ),
    };

    let p = raw.proxy;
    let proxy = ProxyConfig {
        default: c.get(
            "proxy.default",
            p.default,
            Access::Authenticated,
            parse_access,
        ),
        max_body: c.get("proxy.max_body", p.max_body, None, |v| ok(Some(v))),
    };

    let mut routes: Vec<Route> = Vec::new();
    for (i, r) in raw.routes.into_iter().enumerate() {
        let key = |k: &str| format!("routes[{i}].{k}");
        let Some(prefix) = r.path_prefix else {
            c.problem(&key("path_prefix"), "is required");
            continue;
        };
        let path_prefix = c.get(&key("path_prefix"), Some(prefix), None, |s: String| {
            match path::normalize(&s) {
                Ok(_) if s.contains(';') => Err(format!(
                    "`{s}` has a `;`: parameters are ignored for matching, so no path would match it"
                )),
                Ok(n) if n == s => Ok(Some(s)),
                Ok(n) => Err(format!(
                    "`{s}` is not a normalised path; write `{n}` (rules match normalised paths only)"
                )),
                Err(e) => Err(format!("`{s}` is not a valid path: {e}")),
            }
        });
        if r.access.is_none() {
            c.problem(
                &key("access"),
                "is required (`public`, `authenticated` or `mfa`)",
            );
        }
        let access = c.get(&key("access"), r.access, None, |s| {
            parse_access(s).map(Some)
        });
        let scopes = c.get(&key("scopes"), r.scopes, Vec::new(), ok);
        if let (Some(path_prefix), Some(access)) = (path_prefix, access) {
            // Prefixes match in any letter case, so `/Admin/` and `/admin/` are one rule.
            if routes
                .iter()
                .any(|other| crate::path::eq_ignore_case(&other.path_prefix, &path_prefix))
            {
                c.problem(
                    &key("path_prefix"),
                    format!("`{path_prefix}` is already used by another route"),
                );
            }
            if access == Access::Public && !scopes.is_empty() {
                c.problem(&key("scopes"), "a public route cannot require scopes");
            }
            routes.push(Route {
                path_prefix,
                access,
                scopes,
            });
        }
    }

    let h = raw.identity_headers;
    let preset = c.get(
        "identity_headers.preset",
        h.preset,
        Preset::Gatehouse,
        |s: String| {
            Preset::from_name(&s).ok_or_else(|| {
                format!("expected one of `gatehouse`, `oauth2-proxy`, `authelia`, got `{s}`")
            })
        },
    );
    let mut identity_headers = preset.names();
    for (key, field, slot) in [
        ("identity_headers.user", h.user, &mut identity_headers.user),
        (
            "identity_headers.user_id",
            h.user_id,
            &mut identity_headers.user_id,
        ),
        (
            "identity_headers.email",
            h.email,
            &mut identity_headers.email,
        ),
        (
            "identity_headers.scopes",
            h.scopes,
            &mut identity_headers.scopes,
        ),
        (
            "identity_headers.methods",
            h.methods,
            &mut identity_headers.methods,
        ),
        (
            "identity_headers.assertion",
            h.assertion,
            &mut identity_headers.assertion,
        ),
    ] {
        *slot = c.get(key, field, slot.clone(), parse_header_name);
    }

    let lg = raw.log;
    let log = LogConfig {
        format: c.get(
            "log.format",
            lg.format,
            LogFormat::Text,
            |s: String| match s.as_str() {
                "text" => Ok(LogFormat::Text),
                "json" => Ok(LogFormat::Json),
                _ => Err(format!("expected `text` or `json`, got `{s}`")),
            },
        ),
        level: c.get("log.level", lg.level, "info".into(), |s: String| {
            tracing_subscriber::EnvFilter::try_new(&s)
                .map(|_| s.clone())
                .map_err(|e| format!("expected a log filter such as `info`, got `{s}`: {e}"))
        }),
    };

    let st = raw.store;
    let backend = c.get("store.backend", st.backend, "sled".into(), |s: String| {
        if s == "sled" || s == "postgres" {
            Ok(s)
        } else {
            Err(format!("expected `sled` or `postgres`, got `{s}`"))
        }
    });
    let url_file = c.get("store.url_file", st.url_file, None, optional_path);
    let inline_url = c.get("store.url", st.url, None, |s: String| {
        Ok(Some(s).filter(|s| !s.trim().is_empty()))
    });
    let file_url = url_file
        .as_ref()
        .and_then(|path| match std::fs::read_to_string(path) {
            Ok(text) if !text.trim().is_empty() => Some(text.trim().to_owned()),
            Ok(_) => {
                c.problem("store.url_file", format!("{} is empty", path.display()));
                None
            }
            Err(e) => {
                c.problem(
                    "store.url_file",
                    format!("cannot read {}: {e}", path.display()),
                );
                None
            }
        });
    let url = file_url.or(inline_url);
    if let Some(url) = &url
        && !(url.starts_with("postgres://") || url.starts_with("postgresql://"))
    {
        // The value itself may hold a password: only its shape is named.
        c.problem(
            if url_file.is_some() {
                "store.url_file"
            } else {
                "store.url"
            },
            "expected a URL such as postgres://user@host:5432/db",
        );
    }
    if backend == "postgres" && url.is_none() {
        c.problem(
            "store.url",
            "is required when store.backend = \"postgres\" (or give store.url_file)",
        );
    }
    let store = StoreConfig {
        backend,
        path: c.get("store.path", st.path, "data".into(), |s: String| {
            non_empty(s).map(PathBuf::from)
        }),
        url: url.map(Secret::new),
        url_file,
        max_connections: c.get("store.max_connections", st.max_connections, 16, |v| {
            in_range(1, 1000)(v).map(|v| v as u32)
        }),
    };

    let ad = raw.admin;
    let token_file = c.get("admin.token_file", ad.token_file, None, optional_path);
    let file_token = token_file
        .as_ref()
        .and_then(|path| match std::fs::read_to_string(path) {
            Ok(text) if !text.trim().is_empty() => Some(Secret::new(text.trim())),
            Ok(_) => {
                c.problem("admin.token_file", format!("{} is empty", path.display()));
                None
            }
            Err(e) => {
                c.problem(
                    "admin.token_file",
                    format!("cannot read {}: {e}", path.display()),
                );
                None
            }
        });
    // The file wins over the environment, so only the token in use is judged.
    let (token, token_key) = match file_token {
        Some(token) => (Some(token), "admin.token_file"),
        None => (env_admin_token, "GATEHOUSE_ADMIN_TOKEN"),
    };
    if let Some(problem) = token.as_ref().and_then(|t| weak_admin_token(t.expose())) {
        c.problem(token_key, format!("the admin token {problem}"));
    }
    let admin = AdminConfig { token, token_file };

    let a = raw.auth;
    let mut trusted_issuers = Vec::new();
    for (i, t) in a.trusted_issuers.into_iter().enumerate() {
        let key = |k: &str| format!("auth.trusted_issuers[{i}].{k}");
        for (k, missing) in [
            ("issuer", t.issuer.is_none()),
            ("jwks_url", t.jwks_url.is_none()),
            ("audience", t.audience.is_none()),
        ] {
            if missing {
                c.problem(&key(k), "is required");
            }
        }
        let issuer = c.get(&key("issuer"), t.issuer, String::new(), non_empty);
        let jwks_url = c.get(
            &key("jwks_url"),
            t.jwks_url,
            Uri::from_static("http://invalid/"),
            parse_issuer_jwks_url,
        );
        let audience = c.get(&key("audience"), t.audience, String::new(), non_empty);
        let algorithms = c.get(
            &key("algorithms"),
            t.algorithms,
            vec!["RS256".into(), "ES256".into(), "EdDSA".into()],
            |list: Vec<String>| {
                if list.is_empty() {
                    return Err("must name at least one algorithm".into());
                }
                match list
                    .iter()
                    .find(|a| !ISSUER_ALGORITHMS.contains(&a.as_str()))
                {
                    Some(bad) => Err(format!(
                        "`{bad}` is not accepted; use asymmetric algorithms: {}",
                        ISSUER_ALGORITHMS.join(", ")
                    )),
                    None => Ok(list),
                }
            },
        );
        let max_new_users = c.get(&key("max_new_users"), t.max_new_users, 100, |v| {
            in_range(1, MAX_NEW_USERS)(v).map(|v| v as u32)
        });
        let new_users_window = c.get(
            &key("new_users_window"),
            t.new_users_window,
            Duration::from_secs(3600),
            parse_duration,
        );
        if !(Duration::from_secs(1)..=MAX_CACHE_EXPIRY).contains(&new_users_window) {
            c.problem(&key("new_users_window"), "must be from 1s to 30d");
        }
        trusted_issuers.push(TrustedIssuer {
            issuer,
            jwks_url,
            audience,
            algorithms,
            max_new_users,
            new_users_window,
        });
    }
    let auth = AuthConfig {
        require_application_token: c.get(
            "auth.require_application_token",
            a.require_application_token,
            false,
            ok,
        ),
        application_token_header: c.get(
            "auth.application_token_header",
            a.application_token_header,
            "applicationtoken".into(),
            |s| {
                let name = parse_header_name(s)?;
                // Removed from every request before authentication could read it.
                match crate::proxy::headers::removed_from_clients(&name) {
                    true => Err(format!(
                        "`{name}` is removed from client requests (SPEC §6)"
                    )),
                    false => Ok(name),
                }
            },
        ),
        basic_cache_ttl: c.get(
            "auth.basic_cache_ttl",
            a.basic_cache_ttl,
            Duration::from_secs(60),
            parse_duration,
        ),
        jwks_min_refresh: c.get(
            "auth.jwks_min_refresh",
            a.jwks_min_refresh,
            Duration::from_secs(30),
            parse_duration,
        ),
        trusted_issuers,
        max_concurrent_hashes: c.get(
            "auth.max_concurrent_hashes",
            a.max_concurrent_hashes,
            std::thread::available_parallelism().map_or(1, usize::from),
            |v| in_range(1, 256)(v).map(|v| v as usize),
        ),
        max_queued_hashes: c.get("auth.max_queued_hashes", a.max_queued_hashes, 16, |v| {
            in_range(1, 4096)(v).map(|v| v as usize)
        }),
        failed_password_limit: c.get(
            "auth.failed_password_limit",
            a.failed_password_limit,
            10,
            |v| in_range(0, 1_000_000)(v).map(|v| v as u32),
        ),
        failed_password_window: c.get(
            "auth.failed_password_window",
            a.failed_password_window,
            Duration::from_secs(300),
            parse_duration,
        ),
    };
    if auth.failed_password_window < Duration::from_secs(1) {
        c.problem("auth.failed_password_window", "must be at least 1s");
    }
    // Both size in-memory caches whose expiry cannot exceed 1000 years (the cache would refuse to
    // start); no sensible setting comes near the bound.
    for (key, d) in [
        ("auth.basic_cache_ttl", auth.basic_cache_ttl),
        ("auth.failed_password_window", auth.failed_password_window),
    ] {
        if d > MAX_CACHE_EXPIRY {
            c.problem(key, "must be at most 30d");
        }
    }

    let tk = raw.tokens;
    let tokens = TokensConfig {
        issuer: c.get(
            "tokens.issuer",
            tk.issuer,
            server.public_url.clone(),
            non_empty,
        ),
        audience: c.get(
            "tokens.audience",
            tk.audience,
            "gatehouse".into(),
            non_empty,
        ),
        access_ttl: c.get(
            "tokens.access_ttl",
            tk.access_ttl,
            Duration::from_secs(3600),
            parse_duration,
        ),
        signing_key_file: c.get(
            "tokens.signing_key_file",
            tk.signing_key_file,
            None,
            optional_path,
        ),
    };
    if tokens.access_ttl.is_zero() {
        c.problem("tokens.access_ttl", "must be longer than zero");
    }
    // Assertions and access tokens are signed by the same key: with one audience, every
    // X-Auth-Assertion the application receives would be accepted back as an access token.
    if tokens.audience == upstream.audience {
        c.problem(
            "upstream.audience",
            "must differ from tokens.audience, or X-Auth-Assertion would be an access token",
        );
    }

    let bootstrap = BootstrapConfig {
        file: c.get("bootstrap.file", raw.bootstrap.file, None, optional_path),
    };

    let m = raw.mfa;
    let mfa = MfaConfig {
        default_factor: c.get(
            "mfa.default_factor",
            m.default_factor,
            "otp".into(),
            one_of(&["otp", "sms", "email"]),
        ),
        ticket_ttl: c.get(
            "mfa.ticket_ttl",
            m.ticket_ttl,
            Duration::from_secs(24 * 3600),
            parse_duration,
        ),
        code_ttl: c.get("mfa.code_ttl", m.code_ttl, Duration::from_secs(300), |s| {
            let d = parse_duration(s)?;
            if d.is_zero() || d > Duration::from_secs(600) {
                Err("must be between 1s and 10m (NIST SP 800-63B)".into())
            } else {
                Ok(d)
            }
        }),
        send_limit: c.get("mfa.send_limit", m.send_limit, 5, |v| {
            in_range(1, 100)(v).map(|v| v as u32)
        }),
        send_window: c.get(
            "mfa.send_window",
            m.send_window,
            Duration::from_secs(900),
            parse_duration,
        ),
        totp: TotpConfig {
            issuer: c.get(
                "mfa.totp.issuer",
                m.totp.issuer,
                "Gatehouse".into(),
                |s: String| {
                    if s.is_empty() || s.contains(':') {
                        Err("must be non-empty and contain no `:`".into())
                    } else {
                        Ok(s)
                    }
                },
            ),
            algorithm: c.get(
                "mfa.totp.algorithm",
                m.totp.algorithm,
                "SHA1".into(),
                one_of(&["SHA1", "SHA256", "SHA512"]),
            ),
            digits: c.get("mfa.totp.digits", m.totp.digits, 6, |v| {
                in_range(6, 8)(v).map(|v| v as u8)
            }),
            period: c.get("mfa.totp.period", m.totp.period, 30, in_range(15, 120)),
            skew: c.get("mfa.totp.skew", m.totp.skew, 1, |v| {
                in_range(0, 2)(v).map(|v| v as u8)
            }),
        },
        lockout: LockoutConfig {
            max_failures: c.get("mfa.lockout.max_failures", m.lockout.max_failures, 5, |v| {
                in_range(1, 100)(v).map(|v| v as u32)
            }),
            window: c.get(
                "mfa.lockout.window",
                m.lockout.window,
                Duration::from_secs(300),
                parse_duration,
            ),
            duration: c.get(
                "mfa.lockout.duration",
                m.lockout.duration,
                Duration::from_secs(900),
                parse_duration,
            ),
        },
    };

    let master_key_file = c.get(
        "secrets.master_key_file",
        raw.secrets.master_key_file,
        None,
        optional_path,
    );
    let file_key = master_key_file
        .as_ref()
        .and_then(|path| read_secret_file(&mut c, "secrets.master_key_file", path));
    let secrets = SecretsConfig {
        master_key: file_key.or(env_secrets.master_key),
        master_key_file,
    };

    let sm = raw.smtp;
    let smtp = SmtpConfig {
        url: c.get("smtp.url", sm.url, None, |s: String| {
            if s.trim().is_empty() {
                return Ok(None);
            }
            let uri: Uri = s
                .parse()
                .map_err(|_| "expected a URL such as `smtp://127.0.0.1:25`".to_owned())?;
            match uri.scheme_str() {
                Some("smtp" | "smtps") if uri.authority().is_some() => Ok(Some(Secret::new(s))),
                _ => Err("expected an smtp:// or smtps:// URL".to_owned()),
            }
        }),
        from: c.get(
            "smtp.from",
            sm.from,
            "Gatehouse <gatehouse@localhost>".into(),
            non_empty,
        ),
    };

    let sg = raw.sms;
    let sms_kind_given = sg.kind.is_some();
    let auth_token_file = c.get(
        "sms.auth_token_file",
        sg.auth_token_file,
        None,
        optional_path,
    );
    let sms = SmsConfig {
        kind: c.get(
            "sms.kind",
            sg.kind,
            "log".into(),
            one_of(&["log", "webhook", "twilio", "none"]),
        ),
        url: c.get("sms.url", sg.url, None, |s: String| {
            parse_jwks_url(s.clone())
                .map(|_| Some(s))
                .map_err(|_| "expected an http(s) URL".to_owned())
        }),
        from: c.get("sms.from", sg.from, None, |s| ok(Some(s))),
        account_sid: c.get("sms.account_sid", sg.account_sid, None, |s| ok(Some(s))),
        auth_token: c
            .get("sms.auth_token", sg.auth_token, None, |s| {
                ok(Some(Secret::new(s)))
            })
            .or_else(|| {
                auth_token_file
                    .as_ref()
                    .and_then(|p| read_secret_file(&mut c, "sms.auth_token_file", p))
            }),
    };
    match sms.kind.as_str() {
        "webhook" if sms.url.is_none() => {
            c.problem("sms.url", "is required when sms.kind = \"webhook\"")
        }
        "twilio" => {
            for (key, missing) in [
                ("sms.url", sms.url.is_none()),
                ("sms.from", sms.from.is_none()),
                ("sms.account_sid", sms.account_sid.is_none()),
                ("sms.auth_token", sms.auth_token.is_none()),
            ] {
                if missing {
                    c.problem(key, "is required when sms.kind = \"twilio\"");
                }
            }
        }
        _ => {}
    }

    let family = |c: &mut Checker, name: &str, raw: RawFamily, base: &str| ApiFamily {
        enabled: c.get(&format!("apis.{name}.enabled"), raw.enabled, true, ok),
        base_path: c.get(
            &format!("apis.{name}.base_path"),
            raw.base_path,
            base.to_owned(),
            |s: String| {
                let trimmed = s.trim_end_matches('/').to_owned();
                if trimmed.is_empty() {
                    return Ok(trimmed);
                }
                match path::normalize(&trimmed) {
                    Ok(n) if n == trimmed => Ok(trimmed),
                    _ => Err(format!(
                        "expected a normalised path such as `/nexus`, got `{s}`"
                    )),
                }
            },
        ),
    };
    let rm = raw.apis.manage;
    let manage_family = RawFamily {
        enabled: rm.enabled,
        base_path: rm.base_path,
    };
    let apis = ApisConfig {
        nexus: family(&mut c, "nexus", raw.apis.nexus, ""),
        ws: family(&mut c, "ws", raw.apis.ws, ""),
        manage: ManageApi {
            family: family(&mut c, "manage", manage_family, "/manage"),
            client_ip_limit: c.get(
                "apis.manage.client_ip_limit",
                rm.client_ip_limit,
                600,
                |v| in_range(0, 1_000_000)(v).map(|v| v as u32),
            ),
            client_ip_window: c.get(
                "apis.manage.client_ip_window",
                rm.client_ip_window,
                Duration::from_secs(60),
                parse_duration,
            ),
        },
    };

    let d = raw.domains;
    let domains = DomainsConfig {
        code_prefix: c.get(
            "domains.code_prefix",
            d.code_prefix,
            "gatehouse-verification=".into(),
            |s: String| {
                if s.len() > 64 || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    Err("must be at most 64 characters without whitespace".into())
                } else {
                    Ok(s)
                }
            },
        ),
        code_ttl: c.get(
            "domains.code_ttl",
            d.code_ttl,
            Duration::from_secs(7 * 86400),
            parse_duration,
        ),
        record_name: c.get(
            "domains.record_name",
            d.record_name,
            "_gatehouse-challenge".into(),
            |s: String| {
                let ok = !s.is_empty()
                    && s.len() <= 63
                    && s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
                if ok {
                    Ok(s)
                } else {
                    Err(format!(
                        "expected one DNS label such as `_gatehouse-challenge`, got `{s}`"
                    ))
                }
            },
        ),
        resolver: c.get("domains.resolver", d.resolver, None, parse_optional_addr),
    };

    if server.environment != Environment::Development {
        refuse_development_settings(
            &mut c,
            DevelopmentSettings {
                sms_kind: &sms.kind,
                sms_kind_given,
                master_key: secrets.master_key.is_some() || secrets.master_key_file.is_some(),
                self_signed: tls.self_signed,
                store_path: &store.path,
                bootstrap: bootstrap.file.as_deref(),
            },
        );
    }

    if c.problems.is_empty() {
        Ok(Config {
            domains,
            mfa,
            secrets,
            smtp,
            sms,
            apis,
            store,
            admin,
            auth,
            tokens,
            bootstrap,
            server,
            listen,
            tls,
            upstream,
            proxy,
            routes,
            identity_headers,
            log,
        })
    } else {
        Err(ConfigError {
            problems: c.problems,
        })
    }
}

/// What [`refuse_development_settings`] looks at.
struct DevelopmentSettings<'a> {
    sms_kind: &'a str,
    /// `sms.kind` was written (else `log` is the default).
    sms_kind_given: bool,
    /// A master key is configured (a file named, or `GATEHOUSE_MASTER_KEY`).
    master_key: bool,
    self_signed: bool,
    store_path: &'a Path,
    bootstrap: Option<&'a Path>,
}

/// Outside `server.environment = "development"`, every setting that is safe only on a developer's
/// machine is a problem under its key (SPEC §10): each says what to use instead.
fn refuse_development_settings(c: &mut Checker, s: DevelopmentSettings<'_>) {
    const ONLY: &str = "is for development only (server.environment = \"development\")";
    if s.sms_kind == "log" {
        c.problem(
            "sms.kind",
            format!(
                "`log`{} writes text messages, codes included, in clear to {}: it {ONLY}; \
                 use `webhook` or `twilio` with sms.url, or `none` to send no text messages",
                if s.sms_kind_given {
                    ""
                } else {
                    " (the default)"
                },
                s.store_path.join("sms-outbox.log").display()
            ),
        );
    }
    if !s.master_key {
        c.problem(
            "secrets.master_key_file",
            format!(
                "no master key is configured, so one would be generated into {}: a generated key \
                 {ONLY}; give secrets.master_key_file or GATEHOUSE_MASTER_KEY (32 random bytes in \
                 base64, e.g. `head -c 32 /dev/urandom | base64`)",
                s.store_path.join("master.key").display()
            ),
        );
    }
    if s.self_signed {
        c.problem(
            "tls.self_signed",
            format!(
                "a self-signed certificate {ONLY}; give a real certificate in tls.cert and tls.key \
                 with tls.self_signed = false, or set listen.https = \"\" behind a TLS terminator"
            ),
        );
    }
    if let Some(path) = s.bootstrap {
        match crate::bootstrap::plaintext_secrets(path) {
            Ok(entries) => {
                for entry in entries {
                    c.problem(
                        "bootstrap.file",
                        format!("{}: {entry}; a plaintext secret {ONLY}", path.display()),
                    );
                }
            }
            Err(e) => c.problem("bootstrap.file", e),
        }
    }
}

fn loopback() -> Vec<IpNet> {
    ["127.0.0.0/8", "::1/128"]
        .iter()
        .filter_map(|s| s.parse().ok())
        .collect()
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
    fn cache_expiries_beyond_what_the_caches_accept_are_refused_not_a_crash() {
        for key in ["basic_cache_ttl", "failed_password_window"] {
            let err = from_toml_str(&format!("[auth]\n{key} = \"1001y\"\n"))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(&format!("auth.{key}: must be at most 30d")),
                "{err}"
            );
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
}
