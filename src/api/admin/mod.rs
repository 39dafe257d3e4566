//! The admin listener: probes (`/healthz`, `/readyz`), `/metrics`, and the admin API (SPEC §7) under
//! `/admin/v1/`, authorised by `Authorization: Bearer <admin token>`.

mod grants;
mod users;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use subtle::ConstantTimeEq;

use crate::api::{self, BodyError};
use crate::app::App;
use crate::body::Body;
use crate::clock::{self, Clock};
use crate::config::Secret;
use crate::problem::Problem;
use crate::store::{Store, StoreError};

/// Everything the admin handlers need.
pub struct Admin {
    ready: Arc<AtomicBool>,
    token: Option<Secret>,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    meter: Arc<crate::meter::Meter>,
}

/// Errors of the admin API, each rendered as a problem document.
#[derive(Debug)]
pub enum AdminError {
    NoToken,
    BadToken,
    NotFound(String),
    MethodNotAllowed(&'static str),
    Invalid(String),
    Conflict(String),
    TooLarge,
    Store(String),
}

impl AdminError {
    fn problem(&self) -> Problem {
        match self {
            AdminError::NoToken => Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "admin-disabled",
                "Admin API disabled",
                "No admin token is configured (admin.token_file or GATEHOUSE_ADMIN_TOKEN).",
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
            AdminError::TooLarge => Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body-too-large",
                "Request body too large",
                format!(
                    "Request bodies are limited to {} bytes.",
                    api::MAX_LOCAL_BODY
                ),
            ),
            AdminError::Store(_) => Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store-unavailable",
                "Store unavailable",
                "The store failed; nothing was changed.",
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
            BodyError::TooLarge => AdminError::TooLarge,
            BodyError::Unreadable => {
                AdminError::Invalid("the request body could not be read".into())
            }
            BodyError::Invalid(why) => AdminError::Invalid(format!("invalid JSON body: {why}")),
        }
    }
}

type AdminResult = Result<Response<Body>, AdminError>;

impl Admin {
    /// `ready` is true while the server accepts traffic.
    pub fn new(app: &App, ready: Arc<AtomicBool>) -> Admin {
        Admin {
            ready,
            token: app.config.admin.token.clone(),
            store: app.store.clone(),
            clock: app.clock.clone(),
            meter: app.meter.clone(),
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
        let method = req.method().clone();
        let result = match path.as_str() {
            "/healthz" | "/readyz" => self.probe(&method, &path).await,
            "/metrics" => self.metrics(&method),
            p if p.starts_with("/admin/v1/") => match self.authorise(&req) {
                Ok(()) => self.route(req).await,
                Err(e) => Err(e),
            },
            _ => Err(AdminError::NotFound("endpoint".into())),
        };
        match result {
            Ok(response) => response,
            Err(e) => {
                if let AdminError::Store(why) = &e {
                    tracing::error!(error = %why, path = %path, "admin API store failure");
                }
                let mut response = e.problem().render(&path, "");
                if let AdminError::MethodNotAllowed(allow) = e {
                    response
                        .headers_mut()
                        .insert(header::ALLOW, HeaderValue::from_static(allow));
                }
                if let AdminError::BadToken = e {
                    response.headers_mut().insert(
                        header::WWW_AUTHENTICATE,
                        HeaderValue::from_static("Bearer realm=\"gatehouse-admin\""),
                    );
                }
                response
            }
        }
    }

    /// Prometheus text exposition (no token: it carries counts, never identities or secrets).
    fn metrics(&self, method: &Method) -> AdminResult {
        if !matches!(*method, Method::GET | Method::HEAD) {
            return Err(AdminError::MethodNotAllowed("GET, HEAD"));
        }
        Ok(api::with_type(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            self.meter.render().into_bytes(),
        ))
    }

    async fn probe(&self, method: &Method, path: &str) -> AdminResult {
        if !matches!(*method, Method::GET | Method::HEAD) {
            return Err(AdminError::MethodNotAllowed("GET, HEAD"));
        }
        let ready = path == "/healthz"
            || (self.ready.load(Ordering::SeqCst) && self.store.check().await.is_ok());
        Ok(if path == "/healthz" {
            api::json(StatusCode::OK, &serde_json::json!({"status": "ok"}))
        } else if ready {
            api::json(StatusCode::OK, &serde_json::json!({"status": "ready"}))
        } else {
            api::json(
                StatusCode::SERVICE_UNAVAILABLE,
                &serde_json::json!({"status": "not ready"}),
            )
        })
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

    async fn route(&self, req: Request<Incoming>) -> AdminResult {
        let path = req.uri().path().to_owned();
        let segments: Vec<String> = path
            .trim_start_matches("/admin/v1/")
            .split('/')
            .map(|s| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8_lossy()
                    .into_owned()
            })
            .collect();
        let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
        let method = req.method().clone();
        match (segments.as_slice(), method) {
            (["users"], Method::POST) => self.create_user(req).await,
            (["users"], _) => Err(AdminError::MethodNotAllowed("POST")),
            (["users", name], Method::GET) => self.get_user(name).await,
            (["users", name], Method::PATCH) => self.patch_user(name, req).await,
            (["users", name], Method::DELETE) => self.delete_user(name).await,
            (["users", _], _) => Err(AdminError::MethodNotAllowed("GET, PATCH, DELETE")),
            (["users", name, "mfa", "reset"], Method::POST) => self.reset_mfa(name).await,
            (["applications"], Method::POST) => self.create_application(req).await,
            (["organizations"], Method::POST) => self.create_organization(req).await,
            (["organizations", id, "members"], Method::POST) => self.add_member(id, req).await,
            (["files", id, "members"], Method::POST) => self.grant_file(id, req).await,
            (["ws-keys"], Method::POST) => self.create_ws_key(req).await,
            (["audit"], Method::GET) => self.list_audit(req.uri().query()).await,
            (
                ["users", _, "mfa", "reset"]
                | ["applications"]
                | ["organizations"]
                | ["organizations", _, "members"]
                | ["files", _, "members"]
                | ["ws-keys"],
                _,
            ) => Err(AdminError::MethodNotAllowed("POST")),
            (["audit"], _) => Err(AdminError::MethodNotAllowed("GET")),
            _ => Err(AdminError::NotFound("endpoint".into())),
        }
    }

    async fn list_audit(&self, query: Option<&str>) -> AdminResult {
        let limit = match query
            .unwrap_or_default()
            .split('&')
            .find_map(|pair| pair.strip_prefix("limit="))
        {
            None => 100,
            Some(v) => v
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=1000).contains(n))
                .ok_or_else(|| {
                    AdminError::Invalid("limit must be an integer from 1 to 1000".into())
                })?,
        };
        let events = self.store.audit(limit).await?;
        Ok(api::json(StatusCode::OK, &events))
    }
}
