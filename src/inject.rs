//! `gatehouse inject-webhook`: a mutating admission webhook (AdmissionReview v1) that adds the
//! gatehouse native sidecar to pods annotated `gatehouse.dev/inject: "true"`.
//!
//! The patch adds the sidecar as an `initContainers` entry with `restartPolicy: Always` (it starts
//! before the app's containers and stops after them), its config and data volumes, and the
//! annotation `gatehouse.dev/injected: "true"`. A pod that already has a container named
//! `gatehouse` is left as it is, so a review sent twice changes nothing the second time. Pods
//! that do not ask for injection are allowed without a patch; a pod whose annotations are invalid
//! is refused rather than started without its sidecar.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

use crate::api;
use crate::body::Body;
use crate::server::Handler;
use crate::server::caps::CapSettings;
use crate::server::listener::{Limits, Listener, SharedTls, accept_loop};

/// What the injector is configured with.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The gatehouse image the sidecar runs.
    pub image: String,
}

const PREFIX: &str = "gatehouse.dev/";
const CONTAINER: &str = "gatehouse";
const CONFIG_VOLUME: &str = "gatehouse-config";
const DATA_VOLUME: &str = "gatehouse-data";
/// How long a stopping webhook waits for reviews in flight.
const DRAIN: Duration = Duration::from_secs(5);

/// The annotations a pod may set, with their defaults.
struct Annotations {
    upstream_port: u16,
    listen_port: u16,
    admin_port: u16,
    config: String,
    secret: String,
}

/// Why a review could not be answered with a decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed(pub String);

/// Answers one AdmissionReview (the request body) with the AdmissionReview to send back.
pub fn review(body: &[u8], settings: &Settings) -> Result<Value, Malformed> {
    let review: Value = serde_json::from_slice(body)
        .map_err(|e| Malformed(format!("the body is not JSON: {e}")))?;
    if review["apiVersion"] != "admission.k8s.io/v1" || review["kind"] != "AdmissionReview" {
        return Err(Malformed(
            "expected an AdmissionReview of admission.k8s.io/v1".into(),
        ));
    }
    let request = review
        .get("request")
        .filter(|r| r.is_object())
        .ok_or_else(|| Malformed("the review has no `request`".into()))?;
    let uid = request["uid"]
        .as_str()
        .filter(|u| !u.is_empty())
        .ok_or_else(|| Malformed("the review's request has no `uid`".into()))?;
    let mut response = json!({"uid": uid, "allowed": true});
    let is_pod = request["kind"]["kind"] == "Pod" && request["kind"]["group"] == "";
    if is_pod && let Some(pod) = request.get("object").filter(|o| o.is_object()) {
        match patch(pod, settings) {
            Ok(Some(ops)) => {
                let ops = serde_json::to_vec(&ops).unwrap_or_default();
                response["patchType"] = json!("JSONPatch");
                response["patch"] = json!(STANDARD.encode(ops));
            }
            Ok(None) => {}
            Err(why) => {
                response["allowed"] = json!(false);
                response["status"] = json!({"code": 400, "message": why});
            }
        }
    }
    Ok(json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": response,
    }))
}

/// The JSONPatch that injects the sidecar into `pod`; `None` when it should be left alone.
fn patch(pod: &Value, settings: &Settings) -> Result<Option<Vec<Value>>, String> {
    let annotations = &pod["metadata"]["annotations"];
    let wants = annotations[format!("{PREFIX}inject")]
        .as_str()
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    if !wants {
        return Ok(None);
    }
    let spec = &pod["spec"];
    let named = |list: &Value, name: &str| {
        list.as_array()
            .is_some_and(|items| items.iter().any(|c| c["name"] == name))
    };
    if named(&spec["containers"], CONTAINER) || named(&spec["initContainers"], CONTAINER) {
        return Ok(None);
    }
    for volume in [CONFIG_VOLUME, DATA_VOLUME] {
        if named(&spec["volumes"], volume) {
            return Err(format!(
                "the pod already has a volume named {volume}; gatehouse cannot be injected"
            ));
        }
    }
    let settings_of_pod = read_annotations(annotations)?;
    let mut ops = Vec::new();
    if annotations.is_object() {
        ops.push(json!({
            "op": "add",
            "path": "/metadata/annotations/gatehouse.dev~1injected",
            "value": "true",
        }));
    }
    let sidecar = sidecar(&settings_of_pod, settings);
    if spec["initContainers"].is_array() {
        ops.push(json!({"op": "add", "path": "/spec/initContainers/-", "value": sidecar}));
    } else {
        ops.push(json!({"op": "add", "path": "/spec/initContainers", "value": [sidecar]}));
    }
    let volumes = [
        json!({"name": CONFIG_VOLUME, "configMap": {"name": settings_of_pod.config}}),
        json!({"name": DATA_VOLUME, "emptyDir": {}}),
    ];
    if spec["volumes"].is_array() {
        for volume in volumes {
            ops.push(json!({"op": "add", "path": "/spec/volumes/-", "value": volume}));
        }
    } else {
        ops.push(json!({"op": "add", "path": "/spec/volumes", "value": volumes}));
    }
    Ok(Some(ops))
}

fn read_annotations(annotations: &Value) -> Result<Annotations, String> {
    let text = |name: &str| annotations[format!("{PREFIX}{name}")].as_str();
    let port = |name: &str, default: u16| match text(name) {
        None => Ok(default),
        Some(v) => v
            .trim()
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("{PREFIX}{name} must be a port number, not {v:?}")),
    };
    let object = |name: &str| match text(name) {
        None => Ok(CONTAINER.to_owned()),
        Some(v) if dns_label(v) => Ok(v.to_owned()),
        Some(v) => Err(format!("{PREFIX}{name} must name an object, not {v:?}")),
    };
    let annotations = Annotations {
        upstream_port: port("upstream-port", 8080)?,
        listen_port: port("listen-port", 4180)?,
        admin_port: port("admin-port", 9090)?,
        config: object("config")?,
        secret: object("secret")?,
    };
    let ports = [
        annotations.upstream_port,
        annotations.listen_port,
        annotations.admin_port,
    ];
    if ports[0] == ports[1] || ports[0] == ports[2] || ports[1] == ports[2] {
        return Err(format!(
            "{PREFIX}upstream-port, listen-port and admin-port must differ (got {}, {}, {})",
            ports[0], ports[1], ports[2]
        ));
    }
    Ok(annotations)
}

/// An RFC 1123 DNS subdomain, as ConfigMap and Secret names must be.
fn dns_label(name: &str) -> bool {
    (1..=253).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// The sidecar, as `deploy/kubernetes/base/deployment.yaml` runs it.
fn sidecar(a: &Annotations, settings: &Settings) -> Value {
    let secret = |key: &str| json!({"secretKeyRef": {"name": a.secret, "key": key}});
    // `exec`, because the admin listener is pod-local and the kubelet connects from the node.
    let probe = |path: &str, period: u32, failures: u32| {
        json!({
            "exec": {"command": ["/usr/local/bin/gatehouse", "probe", path]},
            "periodSeconds": period,
            "timeoutSeconds": 3,
            "failureThreshold": failures,
        })
    };
    json!({
        "name": CONTAINER,
        "image": settings.image,
        "restartPolicy": "Always",
        "args": ["--config", "/etc/gatehouse/gatehouse.toml", "serve"],
        "env": [
            {"name": "GATEHOUSE_ADMIN_TOKEN", "valueFrom": secret("admin-token")},
            {"name": "GATEHOUSE_MASTER_KEY", "valueFrom": secret("master-key")},
            {"name": "GATEHOUSE_UPSTREAM__URL", "value": format!("http://127.0.0.1:{}", a.upstream_port)},
            {"name": "GATEHOUSE_LISTEN__HTTP", "value": format!("0.0.0.0:{}", a.listen_port)},
            // Pod-local: nothing outside the pod reaches the admin API or /metrics.
            {"name": "GATEHOUSE_LISTEN__ADMIN", "value": format!("127.0.0.1:{}", a.admin_port)},
            {"name": "GATEHOUSE_STORE__PATH", "value": "/var/lib/gatehouse"},
        ],
        // Port names are unique per pod, so these avoid the app's usual `http`.
        "ports": [
            {"name": "gatehouse", "containerPort": a.listen_port, "protocol": "TCP"},
        ],
        "startupProbe": probe("/readyz", 1, 30),
        "readinessProbe": probe("/readyz", 5, 2),
        "livenessProbe": probe("/healthz", 10, 3),
        "resources": {
            "requests": {"cpu": "50m", "memory": "32Mi"},
            "limits": {"cpu": "500m", "memory": "128Mi"},
        },
        "securityContext": {
            "runAsNonRoot": true,
            "runAsUser": 65532,
            "runAsGroup": 65532,
            "readOnlyRootFilesystem": true,
            "allowPrivilegeEscalation": false,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [
            {"name": CONFIG_VOLUME, "mountPath": "/etc/gatehouse", "readOnly": true},
            {"name": DATA_VOLUME, "mountPath": "/var/lib/gatehouse"},
        ],
    })
}

/// The webhook's HTTP handler: `POST /mutate` and `GET /healthz`.
pub async fn handle(req: Request<Incoming>, settings: Arc<Settings>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    match (req.method().clone(), path.as_str()) {
        (Method::GET, "/healthz") => api::json(StatusCode::OK, &json!({"status": "ok"})),
        (Method::POST, "/mutate") => {
            let (parts, body) = req.into_parts();
            let body = match api::read_body(&parts, body).await {
                Ok(body) => body,
                Err(_) => {
                    return error(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "the review is unreadable or over 1 MiB",
                    );
                }
            };
            match review(&body, &settings) {
                Ok(answer) => {
                    log_decision(&answer);
                    api::json(StatusCode::OK, &answer)
                }
                Err(Malformed(why)) => {
                    tracing::warn!(error = %why, "malformed admission review");
                    error(StatusCode::BAD_REQUEST, &why)
                }
            }
        }
        (_, "/mutate" | "/healthz") => error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
        _ => error(StatusCode::NOT_FOUND, "not found"),
    }
}

fn error(status: StatusCode, message: &str) -> Response<Body> {
    api::json(status, &json!({"error": message}))
}

fn log_decision(answer: &Value) {
    let response = &answer["response"];
    tracing::info!(
        uid = %response["uid"].as_str().unwrap_or_default(),
        allowed = response["allowed"].as_bool().unwrap_or(false),
        patched = response.get("patch").is_some(),
        "admission review answered"
    );
}

/// How the webhook bounds its connections: the public listeners' timeouts, and caps sized for
/// its 64 MiB container (an idle TLS connection costs about 20 KiB). The API server needs few.
pub fn limits(max_connections: usize, max_connections_per_ip: usize) -> Limits {
    Limits {
        header_read_timeout: Duration::from_secs(10),
        tls_handshake_timeout: Duration::from_secs(10),
        send_timeout: Duration::from_secs(60),
        max_headers: 100,
        max_header_bytes: 64 * 1024,
        h2_max_concurrent_streams: 100,
        caps: CapSettings {
            max_connections,
            max_connections_per_ip,
            names: ["--max-connections", "--max-connections-per-ip"],
        },
    }
}

/// Serves the webhook over TLS on `listener` until `shutdown` resolves, through the same accept
/// loop and connection limits as the public listeners. Each handshake uses the certificate `tls`
/// holds at that moment (see [`watch_certificate`]).
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: SharedTls,
    settings: Settings,
    limits: Limits,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let settings = Arc::new(settings);
    let handler: Handler = Arc::new(move |req, _conn| Box::pin(handle(req, settings.clone())));
    let listener = Listener::new(
        "inject-webhook",
        listener,
        Some(tls),
        handler,
        &limits,
        None,
    );
    let (stop, stopped) = watch::channel(false);
    let (open, mut drained) = mpsc::channel::<()>(1);
    let accepting = accept_loop(listener, stopped, open);
    tokio::pin!(accepting);
    tokio::select! {
        () = &mut accepting => {}
        () = shutdown => {
            let _ = stop.send(true);
            accepting.await;
        }
    }
    // In-flight reviews finish; idle connections close at once.
    let _ = tokio::time::timeout(DRAIN, drained.recv()).await;
}

/// Loads the certificate again whenever its file changes (cert-manager renews it in place), so
/// a renewed certificate is served without a restart.
pub fn watch_certificate(
    config: crate::config::TlsConfig,
    tls: SharedTls,
    every: std::time::Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut seen = std::fs::read(&config.cert).ok();
        loop {
            tokio::time::sleep(every).await;
            let now = std::fs::read(&config.cert).ok();
            if now == seen {
                continue;
            }
            match crate::server::tls::server_config(&config, "") {
                Ok(new) => {
                    tls.store(new);
                    seen = now;
                    tracing::info!(cert = %config.cert.display(), "webhook certificate reloaded");
                }
                // Possibly caught between the certificate and key writes: tried again next time.
                Err(e) => tracing::warn!(error = %e, "webhook certificate not reloaded"),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn object_names_follow_rfc_1123() {
        assert!(dns_label("gatehouse-config.v2"));
        for bad in ["", "Gatehouse", "-x", "x-", "a_b", "a/b"] {
            assert!(!dns_label(bad), "{bad:?}");
        }
    }

    #[test]
    fn clashing_ports_are_refused() {
        let annotations =
            json!({"gatehouse.dev/inject": "true", "gatehouse.dev/upstream-port": "4180"});
        let err = read_annotations(&annotations).err().unwrap();
        assert!(err.contains("must differ"), "{err}");
        let annotations = json!({"gatehouse.dev/listen-port": "http"});
        assert!(read_annotations(&annotations).is_err());
    }
}
