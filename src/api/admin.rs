//! The admin listener: `/healthz` (the process is up) and `/readyz` (listeners bound, not draining).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::body::{Body, full};
use crate::problem::Problem;

pub struct Admin {
    ready: Arc<AtomicBool>,
}

impl Admin {
    /// `ready` is true while the server accepts traffic.
    pub fn new(ready: Arc<AtomicBool>) -> Admin {
        Admin { ready }
    }

    pub async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path();
        let probe = matches!(path, "/healthz" | "/readyz");
        if !probe {
            return Problem::new(
                StatusCode::NOT_FOUND,
                "not-found",
                "Not found",
                "No such admin endpoint.",
            )
            .render(path, "");
        }
        if !matches!(*req.method(), Method::GET | Method::HEAD) {
            let mut response = Problem::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "Method not allowed",
                "Probes answer GET and HEAD.",
            )
            .render(path, "");
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return response;
        }
        let (status, body) = if path == "/healthz" {
            (StatusCode::OK, r#"{"status":"ok"}"#)
        } else if self.ready.load(Ordering::SeqCst) {
            (StatusCode::OK, r#"{"status":"ready"}"#)
        } else {
            (StatusCode::SERVICE_UNAVAILABLE, r#"{"status":"not ready"}"#)
        };
        let mut response = Response::new(full(body));
        *response.status_mut() = status;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response
    }
}
