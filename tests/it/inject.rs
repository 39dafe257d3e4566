//! `gatehouse inject-webhook`: AdmissionReview fixtures in, JSONPatch out, over real HTTPS; the
//! patched pod is validated against the Kubernetes schema offline (kubernetes-validate).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use gatehouse::inject::{Settings, serve};
use gatehouse::server::listener::Limits;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use crate::connections::{
    Conn, DEADLINE, H2_PREFACE_AND_SETTINGS, closed_within, tls_connect, try_tls_connect,
};
use crate::harness::install_crypto;

const IMAGE: &str = "ghcr.io/gatehouse-dev/gatehouse:0.1.0";

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/admission")
        .join(name)
}

fn read_fixture(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(name)).unwrap()).unwrap()
}

/// The webhook on 127.0.0.1:0 over TLS, with a client that trusts its certificate.
struct Webhook {
    url: String,
    client: reqwest::Client,
    addr: std::net::SocketAddr,
    /// Its certificate, PEM.
    pem: String,
    _stop: oneshot::Sender<()>,
}

impl Webhook {
    async fn start() -> Webhook {
        Webhook::start_with(gatehouse::inject::limits(512, 128)).await
    }

    async fn start_with(limits: Limits) -> Webhook {
        install_crypto();
        let dir = tempfile::tempdir().unwrap();
        let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let config = gatehouse::config::TlsConfig {
            cert: dir.path().join("tls.crt"),
            key: dir.path().join("tls.key"),
            self_signed: false,
        };
        std::fs::write(&config.cert, generated.cert.pem()).unwrap();
        std::fs::write(&config.key, generated.signing_key.serialize_pem()).unwrap();
        let tls = gatehouse::server::tls::server_config(&config, "").unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let port = addr.port();
        let (stop, stopped) = oneshot::channel::<()>();
        let settings = Settings {
            image: IMAGE.into(),
        };
        tokio::spawn(serve(
            listener,
            Arc::new(arc_swap::ArcSwap::new(tls)),
            settings,
            limits,
            async {
                let _ = stopped.await;
            },
        ));
        let client = reqwest::Client::builder()
            .tls_certs_only([
                reqwest::Certificate::from_pem(generated.cert.pem().as_bytes()).unwrap(),
            ])
            .build()
            .unwrap();
        Webhook {
            url: format!("https://localhost:{port}"),
            client,
            addr,
            pem: generated.cert.pem(),
            _stop: stop,
        }
    }

    async fn review(&self, body: Vec<u8>) -> (u16, Value) {
        let response = self
            .client
            .post(format!("{}/mutate", self.url))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }
}

/// The decoded JSONPatch of an answer, `None` when it has none.
fn patch_of(answer: &Value) -> Option<Value> {
    let patch = answer["response"].get("patch")?.as_str().unwrap();
    assert_eq!(answer["response"]["patchType"], "JSONPatch");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(patch)
        .unwrap();
    Some(serde_json::from_slice(&bytes).unwrap())
}

fn assert_allowed_unchanged(answer: &Value, uid: &str) {
    assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(answer["kind"], "AdmissionReview");
    assert_eq!(answer["response"]["uid"], uid);
    assert_eq!(answer["response"]["allowed"], true, "{answer}");
    assert_eq!(patch_of(answer), None, "{answer}");
}

/// Validates a pod against the Kubernetes 1.33 schema, rejecting unknown fields.
fn assert_valid_pod(pod: &Value) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pod.json");
    std::fs::write(&file, serde_json::to_vec_pretty(pod).unwrap()).unwrap();
    crate::deploy::validate_manifests(&[file]);
}

#[tokio::test]
async fn annotated_pod_gets_the_native_sidecar_and_stays_a_valid_pod() {
    let webhook = Webhook::start().await;
    let review = read_fixture("annotated_pod.json");
    let (status, answer) = webhook.review(serde_json::to_vec(&review).unwrap()).await;
    assert_eq!(status, 200);
    assert_eq!(answer["response"]["uid"], review["request"]["uid"]);
    assert_eq!(answer["response"]["allowed"], true);
    let patch = patch_of(&answer).expect("a patch");

    let golden_path = fixture("annotated_pod.patch.json");
    if std::env::var_os("GOLDEN_UPDATE").is_some() {
        std::fs::write(
            &golden_path,
            serde_json::to_string_pretty(&patch).unwrap() + "\n",
        )
        .unwrap();
    }
    let golden: Value =
        serde_json::from_str(&std::fs::read_to_string(&golden_path).unwrap()).unwrap();
    assert_eq!(patch, golden);

    let mut pod = review["request"]["object"].clone();
    json_patch::patch(
        &mut pod,
        &serde_json::from_value::<json_patch::Patch>(patch).unwrap(),
    )
    .unwrap();
    let init = pod["spec"]["initContainers"].as_array().unwrap();
    assert_eq!(
        init[0]["name"], "migrate",
        "existing init containers run first"
    );
    let sidecar = &init[1];
    assert_eq!(sidecar["name"], "gatehouse");
    assert_eq!(sidecar["restartPolicy"], "Always");
    assert_eq!(sidecar["image"], IMAGE);
    let env: Vec<(&str, &str)> = sidecar["env"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| Some((e["name"].as_str()?, e["value"].as_str()?)))
        .collect();
    assert!(env.contains(&("GATEHOUSE_UPSTREAM__URL", "http://127.0.0.1:3000")));
    assert!(env.contains(&("GATEHOUSE_LISTEN__HTTP", "0.0.0.0:4180")));
    crate::deploy::assert_admin_is_pod_local(sidecar, 9090);
    let volumes = pod["spec"]["volumes"].as_array().unwrap();
    assert!(volumes.iter().any(|v| v["name"] == "tmp"));
    assert!(
        volumes
            .iter()
            .any(|v| v["configMap"]["name"] == "orders-gatehouse"),
        "the config annotation names the ConfigMap"
    );
    assert_eq!(
        pod["metadata"]["annotations"]["gatehouse.dev/injected"],
        "true"
    );
    assert_valid_pod(&pod);

    // Reviewing the injected pod again changes nothing.
    let mut again = review.clone();
    again["request"]["object"] = pod;
    let (_, answer) = webhook.review(serde_json::to_vec(&again).unwrap()).await;
    assert_allowed_unchanged(&answer, review["request"]["uid"].as_str().unwrap());
}

#[tokio::test]
async fn a_pod_without_init_containers_or_volumes_is_patched_into_a_valid_pod() {
    let webhook = Webhook::start().await;
    let review = read_fixture("bare_pod.json");
    let (_, answer) = webhook.review(serde_json::to_vec(&review).unwrap()).await;
    let patch = patch_of(&answer).expect("a patch");
    let mut pod = review["request"]["object"].clone();
    json_patch::patch(
        &mut pod,
        &serde_json::from_value::<json_patch::Patch>(patch).unwrap(),
    )
    .unwrap();
    assert_eq!(pod["spec"]["initContainers"].as_array().unwrap().len(), 1);
    assert_eq!(pod["spec"]["volumes"].as_array().unwrap().len(), 2);
    assert_valid_pod(&pod);
}

#[tokio::test]
async fn pods_not_asking_or_already_injected_are_allowed_without_a_patch() {
    let webhook = Webhook::start().await;
    for name in ["unannotated_pod.json", "injected_pod.json"] {
        let review = read_fixture(name);
        let (status, answer) = webhook.review(serde_json::to_vec(&review).unwrap()).await;
        assert_eq!(status, 200, "{name}");
        assert_allowed_unchanged(&answer, review["request"]["uid"].as_str().unwrap());
    }
    // Other kinds pass untouched.
    let mut secret = read_fixture("annotated_pod.json");
    secret["request"]["kind"] = json!({"group": "", "version": "v1", "kind": "Secret"});
    let (_, answer) = webhook.review(serde_json::to_vec(&secret).unwrap()).await;
    assert_allowed_unchanged(&answer, secret["request"]["uid"].as_str().unwrap());
}

#[tokio::test]
async fn a_pod_with_an_invalid_annotation_is_refused_not_started_bare() {
    let webhook = Webhook::start().await;
    let review = read_fixture("bad_annotation_pod.json");
    let (status, answer) = webhook.review(serde_json::to_vec(&review).unwrap()).await;
    assert_eq!(status, 200);
    assert_eq!(answer["response"]["allowed"], false);
    assert_eq!(answer["response"]["status"]["code"], 400);
    let message = answer["response"]["status"]["message"].as_str().unwrap();
    assert!(message.contains("gatehouse.dev/upstream-port"), "{message}");
    assert_eq!(patch_of(&answer), None);
}

#[tokio::test]
async fn malformed_reviews_get_a_clear_error() {
    let webhook = Webhook::start().await;
    let no_request = std::fs::read(fixture("malformed_review.json")).unwrap();
    let (status, answer) = webhook.review(no_request).await;
    assert_eq!(status, 400);
    assert_eq!(answer["error"], "the review has no `request`");
    let (status, answer) = webhook.review(b"{not json".to_vec()).await;
    assert_eq!(status, 400);
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .starts_with("the body is not JSON"),
        "{answer}"
    );
    let (status, answer) = webhook
        .review(br#"{"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview", "request": {"uid": "x"}}"#.to_vec())
        .await;
    assert_eq!(status, 400);
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("admission.k8s.io/v1")
    );
    let health = webhook
        .client
        .get(format!("{}/healthz", webhook.url))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
}

#[tokio::test]
async fn a_silent_connection_to_the_webhook_is_closed() {
    let mut limits = gatehouse::inject::limits(512, 128);
    limits.header_read_timeout = Duration::from_secs(1);
    limits.tls_handshake_timeout = Duration::from_secs(1);
    let webhook = Webhook::start_with(limits).await;
    let (addr, pem) = (webhook.addr, webhook.pem.clone());
    let mut kinds = tokio::task::JoinSet::new();
    kinds.spawn(async move {
        let tcp = TcpStream::connect(addr).await.unwrap();
        ("TCP, no bytes", closed_within(tcp, DEADLINE).await)
    });
    for (name, alpn, sent) in [
        ("TLS h2, silent", &b"h2"[..], &b""[..]),
        ("TLS http/1.1, silent", b"http/1.1", b""),
        (
            "TLS h2, preface and SETTINGS, no HEADERS",
            b"h2",
            H2_PREFACE_AND_SETTINGS,
        ),
        (
            "TLS http/1.1, half a request line",
            b"http/1.1",
            b"POST /mu",
        ),
    ] {
        let pem = pem.clone();
        kinds.spawn(async move {
            let mut tls = tls_connect(addr, pem.as_bytes(), alpn).await;
            tls.write_all(sent).await.unwrap();
            tls.flush().await.unwrap();
            (name, closed_within(tls, DEADLINE).await)
        });
    }
    let mut open = Vec::new();
    while let Some(kind) = kinds.join_next().await {
        let (name, closed) = kind.unwrap();
        if !closed {
            open.push(name);
        }
    }
    assert!(open.is_empty(), "still open after {DEADLINE:?}: {open:?}");
    // The webhook still answers.
    let health = webhook
        .client
        .get(format!("{}/healthz", webhook.url))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
}

#[tokio::test]
async fn the_webhook_closes_a_connection_over_its_per_address_cap_and_admits_one_when_room_is_made()
{
    let webhook = Webhook::start_with(gatehouse::inject::limits(512, 3)).await;
    let (addr, pem) = (webhook.addr, webhook.pem.as_bytes());
    let mut kept = Vec::new();
    for _ in 0..3 {
        let mut conn = Conn::h2(tls_connect(addr, pem, b"h2").await).await;
        assert_eq!(conn.get("/healthz").await.0, 200);
        kept.push(conn);
    }
    // Closed before the handshake: no certificate, no memory spent on it.
    let fourth = TcpStream::connect(addr).await.unwrap();
    assert!(closed_within(fourth, Duration::from_secs(2)).await);
    for conn in &mut kept {
        assert_eq!(conn.get("/healthz").await.0, 200);
    }
    drop(kept.pop());
    let started = tokio::time::Instant::now();
    loop {
        if let Ok(tls) = try_tls_connect(addr, pem, b"h2").await {
            let mut conn = Conn::h2(tls).await;
            assert_eq!(conn.get("/healthz").await.0, 200);
            break;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "no connection admitted after one closed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
