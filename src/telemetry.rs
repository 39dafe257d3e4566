//! Logging: the subscriber set-up and the one access-log line per request.

use std::borrow::Cow;
use std::time::Duration;

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// The `tracing` target of access-log lines.
pub const ACCESS_TARGET: &str = "gatehouse::access";

/// Installs the global subscriber: text or JSON lines on stdout, filtered by `log.level`
/// (`RUST_LOG` overrides it when set).
pub fn init(config: &LogConfig) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_writer(std::io::stdout);
    let result = match config.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
    // A subscriber already installed (tests start several servers) is fine.
    drop(result);
}

/// What one access-log line records.
pub struct AccessRecord<'a> {
    pub method: &'a str,
    /// The normalised path (the raw one when it could not be normalised).
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub status: u16,
    pub latency: Duration,
    pub upstream_latency: Option<Duration>,
    pub request_id: &'a str,
    pub user_id: Option<&'a str>,
    /// Why gatehouse refused or failed the request, for operators (never a credential).
    pub error: Option<&'a str>,
}

/// Writes the access-log line for one request, with credentials redacted from the query.
pub fn access(r: &AccessRecord<'_>) {
    tracing::info!(
        target: ACCESS_TARGET,
        method = r.method,
        path = r.path,
        query = r.query.map(redact_query).as_deref(),
        status = r.status,
        latency_ms = r.latency.as_secs_f64() * 1e3,
        upstream_ms = r.upstream_latency.map(|d| d.as_secs_f64() * 1e3),
        request_id = r.request_id,
        user_id = r.user_id,
        error = r.error,
        "request"
    );
}

/// Query parameters whose values are credentials or codes. A name matches when, lower-cased,
/// it contains one of these.
const SECRET_PARAMS: &[&str] = &[
    "token",
    "key",
    "secret",
    "password",
    "passwd",
    "pwd",
    "auth",
    "code",
    "otp",
    "session",
    "signature",
    "sig",
    "credential",
    "ticket",
];

/// Replaces the value of every credential-like query parameter with `REDACTED`.
pub fn redact_query(query: &str) -> Cow<'_, str> {
    let is_secret = |name: &str| {
        let name = name.to_ascii_lowercase();
        SECRET_PARAMS.iter().any(|s| name.contains(s))
    };
    if !query
        .split('&')
        .any(|pair| is_secret(pair.split('=').next().unwrap_or_default()))
    {
        return Cow::Borrowed(query);
    }
    let redacted: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, _)) if is_secret(name) => format!("{name}=REDACTED"),
            _ => pair.to_owned(),
        })
        .collect();
    Cow::Owned(redacted.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_in_query_are_redacted() {
        assert_eq!(
            redact_query("FileId=7&WsAccessKey=s3cret&access_token=abc&q=x"),
            "FileId=7&WsAccessKey=REDACTED&access_token=REDACTED&q=x"
        );
        assert_eq!(redact_query("page=2&sort=asc"), "page=2&sort=asc");
    }
}
