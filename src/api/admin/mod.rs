//! The admin listener: probes (`/healthz`, `/readyz`), `/metrics`, and the admin API (SPEC §7) under
//! `/admin/v1/`, authorised by `Authorization: Bearer <admin token>`.
//!
//! The path goes through the public listeners' normaliser ([`crate::path`]) first, and the token is
//! checked on that normalised path before anything is routed: every path but the probes, `/metrics`
//! and `/openapi.json` needs it, so no spelling (`/%61dmin/v1/…`, `/ADMIN/…`, `/admin;x/…`, `//admin/…`)
//! reaches a handler without the check meant for it, and an unknown path without the token is 401.

mod grants;
mod keys;
mod users;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use subtle::ConstantTimeEq;

use crate::api::problem::{Challenge, challenge};
use crate::api::services::Services;
use crate::api::table::{self, Operation};
use crate::api::{self, BodyError};
use crate::body::Body;
use crate::clock::{self, Clock};
use crate::config::{Config, Secret};
use crate::problem::Problem;
use crate::store::{Store, StoreError};

/// The OpenAPI document of every local endpoint, served at `GET /openapi.json`.
pub const OPENAPI: &str = include_str!("../../../openapi/openapi.json");

/// What an admin listener operation does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Healthz,
    Readyz,
    Metrics,
    OpenApi,
    CreateUser,
    ListUsers,
    GetUser,
    PatchUser,
    DeleteUser,
    ResetMfa,
    SignOutUser,
    RevokeTokens,
    CreateApplication,
    CreateOrganization,
    AddMember,
    GrantFile,
    CreateWsKey,
    Audit,
    ListKeys,
    RotateKeys,
}

/// The paths answered without the token: they carry no identity and no secret.
const OPEN_PATHS: [&str; 4] = ["/healthz", "/readyz", "/metrics", "/openapi.json"];

/// Every operation of the admin listener; any other path is 404, another method on a listed path 405.
const OPERATIONS: [(Operation, Action); 24] = [
    (Operation::new("GET", "/healthz"), Action::Healthz),
    (Operation::new("HEAD", "/healthz"), Action::Healthz),
    (Operation::new("GET", "/readyz"), Action::Readyz),
    (Operation::new("HEAD", "/readyz"), Action::Readyz),
    (Operation::new("GET", "/metrics"), Action::Metrics),
    (Operation::new("HEAD", "/metrics"), Action::Metrics),
    (Operation::new("GET", "/openapi.json"), Action::OpenApi),
    (Operation::new("HEAD", "/openapi.json"), Action::OpenApi),
    (
        Operation::new("POST", "/admin/v1/users"),
        Action::CreateUser,
    ),
    (Operation::new("GET", "/admin/v1/users"), Action::ListUsers),
    (
        Operation::new("GET", "/admin/v1/users/{userName}"),
        Action::GetUser,
    ),
    (
        Operation::new("PATCH", "/admin/v1/users/{userName}"),
        Action::PatchUser,
    ),
    (
        Operation::new("DELETE", "/admin/v1/users/{userName}"),
        Action::DeleteUser,
    ),
    (
        Operation::new("POST", "/admin/v1/users/{userName}/mfa/reset"),
        Action::ResetMfa,
    ),
    (
        Operation::new("DELETE", "/admin/v1/users/{userName}/sessions"),
        Action::SignOutUser,
    ),
    (
        Operation::new("POST", "/admin/v1/users/{userName}/tokens/revoke"),
        Action::RevokeTokens,
    ),
    (
        Operation::new("POST", "/admin/v1/applications"),
        Action::CreateApplication,
    ),
    (
        Operation::new("POST", "/admin/v1/organizations"),
        Action::CreateOrganization,
    ),
    (
        Operation::new("POST", "/admin/v1/organizations/{organizationId}/members"),
        Action::AddMember,
    ),
    (
        Operation::new("POST", "/admin/v1/files/{fileId}/members"),
        Action::GrantFile,
    ),
    (
        Operation::new("POST", "/admin/v1/ws-keys"),
        Action::CreateWsKey,
    ),
    (Operation::new("GET", "/admin/v1/audit"), Action::Audit),
    (Operation::new("GET", "/admin/v1/keys"), Action::ListKeys),
    (
        Operation::new("POST", "/admin/v1/keys/rotate"),
        Action::RotateKeys,
    ),
];

/// Every operation the admin listener answers.
pub fn operations() -> Vec<Operation> {
    table::operations_of(&OPERATIONS)
}

/// Everything the admin handlers need.
pub struct Admin {
    ready: Arc<AtomicBool>,
    token: Option<Secret>,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    meter: Arc<crate::meter::Meter>,
    bodies: Arc<api::Bodies>,
    auth: Arc<crate::auth::Authenticator>,
    tokens: Arc<crate::tokens::Tokens>,
    /// `bootstrap.file`: users it declares are not deleted or renamed away (see
    /// [`crate::bootstrap::declared`]).
    bootstrap: Option<std::path::PathBuf>,
}

/// Errors of the admin API, each rendered as a problem document.
#[derive(Debug)]
pub enum AdminError {
    /// A path the normaliser refuses (`%2F`, `%3B`, a backslash, NUL…).
    BadPath(crate::path::PathError),
    NoToken,
    BadToken,
    NotFound(String),
    /// The methods the path answers, for `Allow`.
    MethodNotAllowed(String),
    Invalid(String),
    Conflict(String),
    /// 409: the bootstrap file declares it; the detail names the file and what to do.
    Declared(String),
    /// 409: the signing key comes from `tokens.signing_key_file`, so it cannot be rotated here.
    KeyNotInStore,
    /// 500: something gatehouse needs could not be read; nothing was changed.
    Internal(String),
    /// 413: the body is over `server.max_body_bytes`, this many bytes.
    TooLarge(usize),
    Store(String),
    /// 408: the body did not arrive in time.
    BodyTimedOut,
    /// 503 with `Retry-After`: the body budget or the password hashing threads are full.
    Busy,
}

impl AdminError {
    fn problem(&self) -> Problem {
        match self {
            AdminError::BadPath(e) => Problem::new(
                StatusCode::BAD_REQUEST,
                "invalid-path",
                "Invalid request path",
                e.to_string(),
            ),
            AdminError::NoToken => Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "admin-disabled",
                "Admin API disabled",
                "No admin token is configured. Start gatehouse with the environment variable \
                 GATEHOUSE_ADMIN_TOKEN set, or admin.token_file naming a file that holds the \
                 token (at least 22 base64 characters, e.g. `head -c 32 /dev/urandom | base64`).",
            ),
            AdminError::BadToken => Problem::new(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "Authentication required",
                "The admin API needs `Authorization: Bearer <admin token>`.",
            ),
            AdminError::NotFound(what) => Problem::new(
                StatusCode::NOT_FOUND,
                "not-found",
                "Not found",
                format!("{what} not found."),
            ),
            AdminError::MethodNotAllowed(allow) => Problem::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "Method not allowed",
                format!("This endpoint answers {allow}."),
            ),
            AdminError::Invalid(why) => Problem::new(
                StatusCode::BAD_REQUEST,
                "invalid-request",
                "Invalid request",
                why.clone(),
            ),
            AdminError::Conflict(what) => Problem::new(
                StatusCode::CONFLICT,
                "conflict",
                "Already exists",
                format!("{what} already exists."),
            ),
            AdminError::Declared(why) => Problem::new(
                StatusCode::CONFLICT,
                "declared-in-bootstrap",
                "Declared in the bootstrap file",
                why.clone(),
            ),
            AdminError::KeyNotInStore => Problem::new(
                StatusCode::CONFLICT,
                "signing-key-file",
                "Signing key not in the store",
                "Tokens are signed with the key of tokens.signing_key_file, which is not kept in \
                 the store, so gatehouse cannot rotate it; nothing was changed. Remove \
                 tokens.signing_key_file to sign with keys kept in the store, which rotate \
                 without logging anyone out.",
            ),
            AdminError::Internal(_) => Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal error",
                "The request failed; nothing was changed.",
            ),
            AdminError::TooLarge(limit) => Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body-too-large",
                "Request body too large",
                format!("Request bodies are limited to {}.", api::size_text(*limit)),
            ),
            AdminError::Store(_) => Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store-unavailable",
                "Store unavailable",
                "The store failed; nothing was changed.",
            ),
            AdminError::BodyTimedOut => Problem::new(
                StatusCode::REQUEST_TIMEOUT,
                "body-timeout",
                "Request body too slow",
                "The request body did not arrive in time.",
            ),
            AdminError::Busy => Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "busy",
                "Too busy",
                "Gatehouse is at capacity; nothing was changed. Try again shortly.",
            ),
        }
    }
}

impl From<StoreError> for AdminError {
    fn from(e: StoreError) -> AdminError {
        match e {
            StoreError::Conflict(what) => AdminError::Conflict(what),
            StoreError::NotFound(what) => AdminError::NotFound(what),
            StoreError::Backend(why) => AdminError::Store(why),
        }
    }
}

impl From<BodyError> for AdminError {
    fn from(e: BodyError) -> AdminError {
        match e {
            BodyError::TooLarge(limit) => AdminError::TooLarge(limit),
            BodyError::Unreadable => {
                AdminError::Invalid("the request body could not be read".into())
            }
            BodyError::Invalid(why) => AdminError::Invalid(format!("invalid JSON body: {why}")),
            BodyError::TimedOut => AdminError::BodyTimedOut,
            BodyError::Busy => AdminError::Busy,
        }
    }
}

type AdminResult = Result<Response<Body>, AdminError>;

impl Admin {
    /// The admin API `config` sets up (its token, the bootstrap file) around the app's services;
    /// `ready` is true while the server accepts traffic.
    pub fn new(services: &Services, config: &Config, ready: Arc<AtomicBool>) -> Admin {
        Admin {
            ready,
            token: config.admin.token.clone(),
            store: services.store.clone(),
            clock: services.clock.clone(),
            meter: services.meter.clone(),
            bodies: services.bodies.clone(),
            auth: services.auth.clone(),
            tokens: services.tokens.clone(),
            bootstrap: config.bootstrap.file.clone(),
        }
    }

    fn now(&self) -> String {
        clock::rfc3339(self.clock.now())
    }

    async fn record(&self, event: &str, user_name: Option<&str>, detail: Option<String>) {
        crate::audit::record(
            self.store.as_ref(),
            self.clock.as_ref(),
            event,
            user_name,
            detail,
        )
        .await;
    }

    pub async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path().to_owned();
        let request_id = admin_request_id(req.headers());
        let caused_by = crate::audit::Request {
            client: req
                .extensions()
                .get::<std::net::SocketAddr>()
                .map(std::net::SocketAddr::ip),
            request_id: http::HeaderValue::from_str(&request_id).ok(),
        };
        let result = crate::audit::within(caused_by, self.dispatch(req)).await;
        let mut response = self.respond(&path, result);
        if let Ok(v) = HeaderValue::from_str(&request_id) {
            response
                .headers_mut()
                .insert(http::HeaderName::from_static("x-request-id"), v);
        }
        response
    }

    fn respond(&self, path: &str, result: AdminResult) -> Response<Body> {
        match result {
            Ok(response) => response,
            Err(e) => {
                if let AdminError::Store(why) = &e {
                    tracing::error!(error = %why, path = %path, "admin API store failure");
                }
                if let AdminError::Internal(why) = &e {
                    tracing::error!(error = %why, path = %path, "admin API failure");
                }
                let mut response = e.problem().render(path, "");
                if let AdminError::MethodNotAllowed(allow) = &e
                    && let Ok(v) = HeaderValue::from_str(allow)
                {
                    response.headers_mut().insert(header::ALLOW, v);
                }
                if let AdminError::Busy = e {
                    response.headers_mut().insert(
                        header::RETRY_AFTER,
                        HeaderValue::from(crate::auth::BUSY_RETRY_AFTER),
                    );
                }
                if let AdminError::BadToken = e {
                    challenge(response.headers_mut(), Challenge::Admin);
                }
                response
            }
        }
    }

    /// Normalises the path, checks the token, then finds the request's operation in [`OPERATIONS`]
    /// and runs it. Every path needs the admin token, even one that names nothing (so the API's
    /// shape is not shown to strangers), except the probes, `/metrics` and `/openapi.json`.
    async fn dispatch(&self, req: Request<Incoming>) -> AdminResult {
        let normal = crate::path::normalize(req.uri().path()).map_err(AdminError::BadPath)?;
        // Without `;` parameters and with escapes decoded, so `/admin/v1/users/a%40b` names the
        // user `a@b`; literals match in any letter case, as on the public listeners.
        let key = crate::path::match_key(&normal);
        if !OPEN_PATHS
            .iter()
            .any(|open| crate::path::eq_ignore_case(&key, open))
        {
            self.authorise(&req)?;
        }
        let segments: Vec<&str> = key.split('/').collect();
        let mut template = None;
        for (candidate, action) in OPERATIONS {
            let Some(values) = table::matches(candidate.path, &segments, true) else {
                continue;
            };
            if candidate.method == req.method().as_str() {
                let values: Vec<String> = values.into_iter().map(str::to_owned).collect();
                return self.run(action, &values, req).await;
            }
            template = Some(candidate.path);
        }
        match template {
            Some(template) => Err(AdminError::MethodNotAllowed(
                table::check_method(&operations(), template, req.method())
                    .err()
                    .unwrap_or_default(),
            )),
            None => Err(AdminError::NotFound("endpoint".into())),
        }
    }

    async fn run(&self, action: Action, values: &[String], req: Request<Incoming>) -> AdminResult {
        let value = |i: usize| values.get(i).map_or("", String::as_str);
        match action {
            Action::Healthz => Ok(self.probe(false).await),
            Action::Readyz => Ok(self.probe(true).await),
            Action::Metrics => Ok(self.metrics()),
            Action::OpenApi => Ok(api::with_type(
                StatusCode::OK,
                "application/json",
                OPENAPI.as_bytes().to_vec(),
            )),
            Action::CreateUser => self.create_user(req).await,
            Action::ListUsers => self.list_users(req.uri().query()).await,
            Action::GetUser => self.get_user(value(0)).await,
            Action::PatchUser => self.patch_user(value(0), req).await,
            Action::DeleteUser => self.delete_user(value(0)).await,
            Action::ResetMfa => self.reset_mfa(value(0)).await,
            Action::SignOutUser => self.sign_out_user(value(0)).await,
            Action::RevokeTokens => self.revoke_tokens(value(0)).await,
            Action::CreateApplication => self.create_application(req).await,
            Action::CreateOrganization => self.create_organization(req).await,
            Action::AddMember => self.add_member(value(0), req).await,
            Action::GrantFile => self.grant_file(value(0), req).await,
            Action::CreateWsKey => self.create_ws_key(req).await,
            Action::Audit => self.list_audit(req.uri().query()).await,
            Action::ListKeys => self.list_keys().await,
            Action::RotateKeys => self.rotate_keys().await,
        }
    }

    /// Prometheus text exposition (no token: it carries counts, never identities or secrets).
    fn metrics(&self) -> Response<Body> {
        api::with_type(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            self.meter.render().into_bytes(),
        )
    }

    /// `/healthz` (the process is up) or, with `readiness`, `/readyz` (accepting traffic, store usable).
    async fn probe(&self, readiness: bool) -> Response<Body> {
        if !readiness {
            api::json(StatusCode::OK, &serde_json::json!({"status": "ok"}))
        } else if self.ready.load(Ordering::SeqCst) && self.store.check().await.is_ok() {
            api::json(StatusCode::OK, &serde_json::json!({"status": "ready"}))
        } else {
            api::json(
                StatusCode::SERVICE_UNAVAILABLE,
                &serde_json::json!({"status": "not ready"}),
            )
        }
    }

    /// Compares the bearer token with the configured one in constant time.
    fn authorise(&self, req: &Request<Incoming>) -> Result<(), AdminError> {
        let Some(expected) = &self.token else {
            return Err(AdminError::NoToken);
        };
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .ok_or(AdminError::BadToken)?;
        let digest = |s: &str| ring::digest::digest(&ring::digest::SHA256, s.as_bytes());
        let equal: bool = digest(given)
            .as_ref()
            .ct_eq(digest(expected.expose()).as_ref())
            .into();
        if equal {
            Ok(())
        } else {
            Err(AdminError::BadToken)
        }
    }

    /// 409 when the bootstrap file declares the user `name`: deleting it, or renaming it away,
    /// would not last, since the next start creates it again. The file is read now, so taking the
    /// entry out of it lifts the refusal at once.
    fn refuse_declared_user(&self, name: &str, change: &str) -> Result<(), AdminError> {
        let Some(path) = &self.bootstrap else {
            return Ok(());
        };
        let declared = crate::bootstrap::declared(path).map_err(AdminError::Internal)?;
        if declared.declares_user(name) {
            return Err(AdminError::Declared(format!(
                "The user {name} is declared in the bootstrap file {} (bootstrap.file), which \
                 would create it again at the next start, so it cannot be {change}; remove it from \
                 that file first.",
                path.display()
            )));
        }
        Ok(())
    }

    /// `GET /admin/v1/audit`: one page of events (a JSON array, newest first) matching the
    /// filters, and a `Link: <…>; rel="next"` header naming the next page when more may match.
    async fn list_audit(&self, query: Option<&str>) -> AdminResult {
        let filters = AuditFilters::parse(query)?;
        let mut page = self.store.audit_page(&filters.query).await?;
        // Events past `audit.retention` are not listed, purged yet or not. Left out of the page
        // rather than asked for with `since`: a store may stop at the first event older than
        // `since`, and one stamped out of order would hide the rest.
        if let Some(oldest) = crate::audit::oldest_kept(self.clock.as_ref()) {
            page.events.retain(|e| e.time >= oldest);
        }
        let events: Vec<serde_json::Value> = page.events.iter().map(listed).collect();
        let mut response = api::json(StatusCode::OK, &events);
        if let Some(next) = page.next
            && let Ok(link) = HeaderValue::from_str(&filters.next_link(next))
        {
            response.headers_mut().insert(header::LINK, link);
        }
        Ok(response)
    }
}

/// An event as `GET /admin/v1/audit` lists it: its fields, and the user and details also under
/// the names the JSON-line sink uses (`user`, `details`), so that one reader serves both.
fn listed(event: &crate::store::AuditEvent) -> serde_json::Value {
    let mut value = serde_json::to_value(event).unwrap_or_default();
    if let serde_json::Value::Object(fields) = &mut value {
        if let Some(user) = &event.user_name {
            fields.insert("user".into(), user.as_str().into());
        }
        if let Some(detail) = &event.detail {
            fields.insert("details".into(), detail.as_str().into());
        }
    }
    value
}

/// The query of `GET /admin/v1/audit`, checked.
struct AuditFilters {
    query: crate::store::AuditQuery,
    /// The filters as given, for the next page's link.
    given: Vec<(&'static str, String)>,
}

impl AuditFilters {
    const NAMES: [&'static str; 5] = ["user", "event", "since", "limit", "cursor"];

    fn parse(query: Option<&str>) -> Result<AuditFilters, AdminError> {
        use crate::store::AuditQuery;
        let mut seen: Vec<(&'static str, String)> = Vec::new();
        for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            let Some(name) = Self::NAMES.iter().find(|n| **n == key) else {
                return Err(AdminError::Invalid(format!(
                    "unknown query parameter `{}`; the audit list takes {}",
                    key.chars().take(64).collect::<String>(),
                    Self::NAMES.join(", ")
                )));
            };
            if seen.iter().any(|(n, _)| n == name) {
                return Err(AdminError::Invalid(format!("{name} is given twice")));
            }
            seen.push((name, value.into_owned()));
        }
        let get = |name: &str| {
            seen.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.as_str())
        };
        let user = match get("user") {
            None => None,
            Some(u) if u.is_empty() || u.len() > 256 || u.chars().any(char::is_control) => {
                return Err(AdminError::Invalid(
                    "user must be a user name (1 to 256 characters, no control characters)".into(),
                ));
            }
            Some(u) => Some(u.to_lowercase()),
        };
        let event = match get("event") {
            None => None,
            Some(e) => Some(event_filter(e).ok_or_else(|| {
                AdminError::Invalid(
                    "event must be an event name such as `signin.failed` (a-z, 0-9, `_` and \
                     `.`), or a family such as `signin.*`"
                        .into(),
                )
            })?),
        };
        let since = match get("since") {
            None => None,
            Some(t) => Some(
                time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
                    .map(clock::rfc3339)
                    .map_err(|_| {
                        AdminError::Invalid(
                            "since must be an RFC 3339 time such as 2026-01-31T12:00:00Z".into(),
                        )
                    })?,
            ),
        };
        let limit = limit(get("limit").map(|v| format!("limit={v}")).as_deref())?;
        let before = match get("cursor") {
            None => None,
            Some(c) => Some(parse_cursor(c).ok_or_else(|| {
                AdminError::Invalid("cursor must be the one a previous page's Link named".into())
            })?),
        };
        let given = seen.into_iter().filter(|(n, _)| *n != "cursor").collect();
        Ok(AuditFilters {
            query: AuditQuery {
                user,
                event,
                since,
                before,
                limit,
            },
            given,
        })
    }

    /// The path and query of the page after the event `next`.
    fn next_link(&self, next: u64) -> String {
        let mut query = form_urlencoded::Serializer::new(String::new());
        for (name, value) in &self.given {
            query.append_pair(name, value);
        }
        query.append_pair("cursor", &cursor(next));
        format!("</admin/v1/audit?{}>; rel=\"next\"", query.finish())
    }
}

/// `signin.failed` names one event; `signin.*` names `signin` and every `signin.…` event.
fn event_filter(text: &str) -> Option<crate::store::EventFilter> {
    use crate::store::EventFilter;
    let (name, family) = match text.strip_suffix(".*") {
        Some(name) => (name, true),
        None => (text, false),
    };
    let valid = !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.')
        && !name.starts_with('.')
        && !name.ends_with('.')
        && !name.contains("..");
    valid.then(|| {
        if family {
            EventFilter::Family(name.to_owned())
        } else {
            EventFilter::Exact(name.to_owned())
        }
    })
}

/// The opaque cursor naming the page that follows the event `id`: `a` and the id in base 36.
fn cursor(id: u64) -> String {
    let mut digits = Vec::new();
    let mut n = id;
    loop {
        digits.push(char::from_digit((n % 36) as u32, 36).unwrap_or('0'));
        n /= 36;
        if n == 0 {
            break;
        }
    }
    std::iter::once('a')
        .chain(digits.into_iter().rev())
        .collect()
}

fn parse_cursor(text: &str) -> Option<u64> {
    let digits = text.strip_prefix('a')?;
    if digits.is_empty() || digits.len() > 13 {
        return None;
    }
    u64::from_str_radix(digits, 36).ok()
}

/// The caller's `X-Request-Id` when it is a plausible id (1–128 of `A-Z a-z 0-9 . _ : -`), else
/// a new UUID: named in the audit events the request causes and sent back.
fn admin_request_id(headers: &http::HeaderMap) -> String {
    headers
        .get(http::HeaderName::from_static("x-request-id"))
        .and_then(|v| v.to_str().ok())
        .filter(|id| {
            (1..=128).contains(&id.len())
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-_:".contains(&b))
        })
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned)
}

/// The `limit` query parameter of the admin API's lists: 1 to [`MAX_LIMIT`], default 100.
fn limit(query: Option<&str>) -> Result<usize, AdminError> {
    match crate::api::query_value(query, "limit") {
        None => Ok(100),
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| {
                AdminError::Invalid(format!("limit must be an integer from 1 to {MAX_LIMIT}"))
            }),
    }
}

/// The most entries one page of an admin API list holds.
const MAX_LIMIT: usize = 1000;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::EventFilter;

    #[test]
    fn a_cursor_names_the_id_it_was_made_from_and_nothing_else() {
        for id in [0, 1, 35, 36, 1_000_000, u64::MAX] {
            assert_eq!(parse_cursor(&cursor(id)), Some(id), "{id}");
        }
        for bad in ["", "a", "12", "b12", "a-1", "a!", "azzzzzzzzzzzzzz"] {
            assert_eq!(parse_cursor(bad), None, "{bad}");
        }
    }

    #[test]
    fn event_filters_are_names_or_families() {
        assert_eq!(
            event_filter("signin.failed"),
            Some(EventFilter::Exact("signin.failed".into()))
        );
        assert_eq!(
            event_filter("signin.*"),
            Some(EventFilter::Family("signin".into()))
        );
        for bad in [
            "", "*", ".*", "Signin", "signin.", ".signin", "a..b", "a*", "a.*.*", "a b",
        ] {
            assert_eq!(event_filter(bad), None, "{bad}");
        }
        let family = EventFilter::Family("signin".into());
        assert!(family.matches("signin") && family.matches("signin.step_up"));
        assert!(!family.matches("signinx") && !family.matches("user.signin"));
    }
}
