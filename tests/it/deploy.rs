//! The deployment artifacts in `deploy/`: every Kubernetes manifest validates offline against the
//! Kubernetes schema (kubernetes-validate, strict: unknown fields are errors), and every
//! kustomization lists files that exist.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The Kubernetes release the manifests target.
const KUBERNETES: &str = "1.33.0";

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

/// Validates the files with kubernetes-validate (installed by tests/run.sh); fails on any error.
pub fn validate_manifests(files: &[PathBuf]) {
    let output = Command::new("kubernetes-validate")
        .args(["--strict", "--quiet", "-k", KUBERNETES])
        .args(files)
        .output()
        .expect("kubernetes-validate runs (tests/run.sh installs it)");
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Every YAML file under `dir`, recursively, sorted.
fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(yaml_files(&path));
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            files.push(path);
        }
    }
    files.sort();
    files
}

#[test]
fn every_kubernetes_manifest_validates_against_the_schema() {
    let manifests: Vec<PathBuf> = yaml_files(&deploy_dir().join("kubernetes"))
        .into_iter()
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            // Not Kubernetes objects of the core schema: kustomize's own file, and cert-manager's
            // custom resources (optional, documented in deploy/README.md).
            name != "kustomization.yaml" && name != "cert-manager.yaml"
        })
        .collect();
    assert!(manifests.len() >= 10, "{manifests:?}");
    validate_manifests(&manifests);
}

#[test]
fn kustomizations_list_only_files_that_exist_and_every_manifest_is_listed() {
    for kustomization in yaml_files(&deploy_dir().join("kubernetes"))
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n == "kustomization.yaml"))
    {
        let dir = kustomization.parent().unwrap();
        let text = std::fs::read_to_string(&kustomization).unwrap();
        let listed: Vec<String> = text
            .lines()
            .skip_while(|l| !l.starts_with("resources:"))
            .skip(1)
            .take_while(|l| {
                l.trim_start().starts_with('-')
                    || l.trim().is_empty()
                    || l.trim_start().starts_with('#')
            })
            .filter_map(|l| l.trim().strip_prefix("- "))
            .map(|s| s.trim().to_owned())
            .collect();
        assert!(!listed.is_empty(), "{}", kustomization.display());
        for file in &listed {
            assert!(
                dir.join(file).exists(),
                "{} lists {file}",
                kustomization.display()
            );
        }
        for file in yaml_files(dir) {
            let name = file.file_name().unwrap().to_string_lossy().into_owned();
            if name != "kustomization.yaml" && name != "cert-manager.yaml" {
                assert!(
                    listed.contains(&name),
                    "{name} is not in {}",
                    kustomization.display()
                );
            }
        }
    }
}

#[test]
fn the_injected_sidecar_matches_the_one_in_the_kustomize_base() {
    // The base runs the sidecar by hand; the webhook injects it. Both must agree on how it runs.
    let base =
        std::fs::read_to_string(deploy_dir().join("kubernetes/base/deployment.yaml")).unwrap();
    for needle in [
        "restartPolicy: Always",
        "\"--config\", \"/etc/gatehouse/gatehouse.toml\", \"serve\"",
        "GATEHOUSE_LISTEN__ADMIN",
        "readOnlyRootFilesystem: true",
        "mountPath: /var/lib/gatehouse",
        "\"probe\", \"/readyz\"",
        "\"probe\", \"/healthz\"",
        "value: 127.0.0.1:9090",
    ] {
        assert!(
            base.contains(needle),
            "{needle} missing from the base deployment"
        );
    }
}

/// The documents of a YAML file as JSON, read with PyYAML (which kubernetes-validate brings).
pub fn yaml_documents(file: &Path) -> Vec<serde_json::Value> {
    let output = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1])) if d]))",
        ])
        .arg(file)
        .output()
        .expect("python3 runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// Whether `addr` (`ip:port`) is on loopback only.
fn is_loopback(addr: &str) -> bool {
    addr.parse::<std::net::SocketAddr>()
        .is_ok_and(|a| a.ip().is_loopback())
}

/// The gatehouse container of a pod spec (a native sidecar) keeps its admin listener pod-local:
/// bound to loopback, no container port for it, probes that run inside the container.
pub fn assert_admin_is_pod_local(sidecar: &serde_json::Value, admin_port: u64) {
    let env = sidecar["env"].as_array().unwrap();
    let admin = env
        .iter()
        .find(|e| e["name"] == "GATEHOUSE_LISTEN__ADMIN")
        .and_then(|e| e["value"].as_str())
        .expect("GATEHOUSE_LISTEN__ADMIN is set");
    assert!(is_loopback(admin), "admin listener on {admin}");
    for port in sidecar["ports"].as_array().into_iter().flatten() {
        assert_ne!(port["containerPort"], admin_port, "{port}");
    }
    for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
        let probe = &sidecar[probe];
        assert!(probe.get("httpGet").is_none(), "{probe}");
        let command = probe["exec"]["command"].as_array().unwrap();
        assert_eq!(command[1], "probe", "{probe}");
    }
}

#[test]
fn the_admin_listener_is_pod_local_in_the_shipped_manifests() {
    let base = deploy_dir().join("kubernetes/base");
    let deployment = &yaml_documents(&base.join("deployment.yaml"))[0];
    let sidecars = deployment["spec"]["template"]["spec"]["initContainers"]
        .as_array()
        .unwrap();
    let sidecar = sidecars.iter().find(|c| c["name"] == "gatehouse").unwrap();
    assert_admin_is_pod_local(sidecar, 9090);

    // The configuration file agrees, so the address holds without the environment too.
    let configmap = &yaml_documents(&base.join("configmap.yaml"))[0];
    let file: toml::Value =
        toml::from_str(configmap["data"]["gatehouse.toml"].as_str().unwrap()).unwrap();
    let admin = file["listen"]["admin"].as_str().unwrap();
    assert!(is_loopback(admin), "configmap admin = {admin}");

    // No NetworkPolicy rule admits the admin port: not by number, not by admitting every port.
    for file in yaml_files(&deploy_dir().join("kubernetes")) {
        for doc in yaml_documents(&file) {
            if doc["kind"] != "NetworkPolicy" {
                continue;
            }
            for rule in doc["spec"]["ingress"].as_array().into_iter().flatten() {
                let ports = rule["ports"].as_array();
                assert!(
                    ports.is_some(),
                    "{}: a rule admits every port",
                    file.display()
                );
                for port in ports.into_iter().flatten() {
                    assert!(
                        port["port"] != 9090 && port["port"] != "admin",
                        "{}: {port}",
                        file.display()
                    );
                }
            }
        }
    }
}

#[tokio::test]
async fn the_exec_probe_succeeds_only_when_the_admin_listener_answers_2xx() {
    use crate::harness::{Gatehouse, Upstream, binary, closed_port};
    let probe = |path: &'static str, admin: std::net::SocketAddr| async move {
        tokio::process::Command::new(binary())
            .args(["probe", path])
            .env("GATEHOUSE_LISTEN__ADMIN", admin.to_string())
            .output()
            .await
            .unwrap()
    };
    let upstream = Upstream::start().await;
    let gh = Gatehouse::start(&upstream).await;
    for path in ["/readyz", "/healthz"] {
        let output = probe(path, gh.addrs.admin).await;
        assert!(
            output.status.success(),
            "{path}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    // A wildcard bind is probed on loopback.
    let wildcard = std::net::SocketAddr::from(([0, 0, 0, 0], gh.addrs.admin.port()));
    assert!(probe("/readyz", wildcard).await.status.success());
    let nothing = probe("/readyz", closed_port().await).await;
    assert!(!nothing.status.success());
    assert!(!nothing.stderr.is_empty());
    // An answer that is not 2xx (here the public listener's 401) fails the probe.
    let refused = probe("/readyz", gh.http_addr()).await;
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("401"));
    gh.stop().await;
}

/// The gatehouse sidecar of the base Deployment.
fn base_sidecar() -> serde_json::Value {
    let deployment = &yaml_documents(&deploy_dir().join("kubernetes/base/deployment.yaml"))[0];
    deployment["spec"]["template"]["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "gatehouse")
        .unwrap()
        .clone()
}

/// The shipped ConfigMap is a production configuration: no development-only setting, and
/// gatehouse's own `check-config` accepts it in production with the pod's environment (the
/// Secret's values generated as an operator would).
#[test]
fn the_shipped_configmap_passes_check_config_in_production() {
    let configmap = &yaml_documents(&deploy_dir().join("kubernetes/base/configmap.yaml"))[0];
    let text = configmap["data"]["gatehouse.toml"].as_str().unwrap();
    let file: toml::Value = toml::from_str(text).unwrap();
    assert_eq!(file["server"]["environment"].as_str(), Some("production"));
    assert_ne!(file["sms"]["kind"].as_str(), Some("log"));
    assert_ne!(
        file.get("tls").and_then(|t| t.get("self_signed")),
        Some(&toml::Value::Boolean(true))
    );
    assert!(file.get("secrets").is_none() && file.get("bootstrap").is_none());

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gatehouse.toml");
    std::fs::write(&path, text).unwrap();
    let mut command = Command::new(crate::harness::binary());
    command
        .args(["--config", path.to_str().unwrap(), "check-config"])
        .env_remove(crate::harness::DEVELOPMENT.0)
        .current_dir(dir.path());
    let mut secrets = 0;
    for var in base_sidecar()["env"].as_array().unwrap() {
        let name = var["name"].as_str().unwrap();
        match (
            var["value"].as_str(),
            &var["valueFrom"]["secretKeyRef"]["key"],
        ) {
            (Some(value), _) => {
                command.env(name, value);
            }
            (None, key) if key == "admin-token" => {
                command.env(name, "Vq3hQ2u9cQm0YkqR7oT1bX8pZs4LwNe6AjFdKgHi");
                secrets += 1;
            }
            (None, key) if key == "master-key" => {
                command.env(name, "bWFzdGVyIGtleSBzaGFyZWQgYnkgdGhlIHJlcGxpY2E=");
                secrets += 1;
            }
            (None, key) => panic!("{name} from {key}"),
        }
    }
    assert_eq!(secrets, 2);
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("environment = \"production\""));
}

/// Every application put behind the sidecar in the manifests listens on loopback only: on every
/// interface, any pod could reach it directly and skip gatehouse.
#[test]
fn applications_behind_the_sidecar_listen_on_loopback_only() {
    let mut apps = 0;
    for file in [
        deploy_dir().join("kubernetes/base/deployment.yaml"),
        deploy_dir().join("kubernetes/example-injected-pod.yaml"),
    ] {
        for doc in yaml_documents(&file) {
            if doc["kind"] != "Deployment" {
                continue;
            }
            for app in doc["spec"]["template"]["spec"]["containers"]
                .as_array()
                .unwrap()
            {
                let listen = app["args"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find_map(|a| a.as_str()?.strip_prefix("-listen="))
                    .unwrap_or_else(|| {
                        panic!("{}: {} sets no -listen", file.display(), app["name"])
                    });
                assert!(
                    is_loopback(listen),
                    "{}: {} listens on {listen}",
                    file.display(),
                    app["name"]
                );
                apps += 1;
            }
        }
    }
    assert_eq!(apps, 2);
}

/// The injection example ships its NetworkPolicy: the injected pods admit the sidecar's port
/// and nothing else.
#[test]
fn the_injection_example_admits_only_the_sidecars_port() {
    let docs = yaml_documents(&deploy_dir().join("kubernetes/example-injected-pod.yaml"));
    let deployment = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    let policy = docs
        .iter()
        .find(|d| d["kind"] == "NetworkPolicy")
        .expect("a NetworkPolicy in the example");
    assert_eq!(
        policy["metadata"]["namespace"],
        deployment["metadata"]["namespace"]
    );
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    let selector = policy["spec"]["podSelector"]["matchLabels"]
        .as_object()
        .unwrap();
    assert!(!selector.is_empty());
    for (key, value) in selector {
        assert_eq!(&labels[key], value, "the policy selects the example's pods");
    }
    assert_eq!(
        policy["spec"]["policyTypes"],
        serde_json::json!(["Ingress"])
    );
    let rules = policy["spec"]["ingress"].as_array().unwrap();
    assert!(!rules.is_empty());
    for rule in rules {
        assert_eq!(
            rule["ports"],
            serde_json::json!([{"port": 4180, "protocol": "TCP"}]),
            "{rule}"
        );
    }
}

#[test]
fn the_webhook_network_policy_admits_only_the_webhook_port_of_the_webhook_pods() {
    let webhook = deploy_dir().join("kubernetes/webhook");
    let deployment = &yaml_documents(&webhook.join("deployment.yaml"))[0];
    let policies: Vec<serde_json::Value> = yaml_files(&webhook)
        .iter()
        .flat_map(|file| yaml_documents(file))
        .filter(|doc| doc["kind"] == "NetworkPolicy")
        .collect();
    assert_eq!(policies.len(), 1, "one NetworkPolicy for the injector");
    let policy = &policies[0];
    assert_eq!(
        policy["metadata"]["namespace"],
        deployment["metadata"]["namespace"]
    );
    // It selects the webhook's pods: every label it matches is on the pod template.
    let selected = policy["spec"]["podSelector"]["matchLabels"]
        .as_object()
        .unwrap();
    assert!(!selected.is_empty());
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    for (key, value) in selected {
        assert_eq!(&labels[key], value, "podSelector {key}");
    }
    let types = policy["spec"]["policyTypes"].as_array().unwrap();
    assert!(types.contains(&"Ingress".into()), "{types:?}");
    assert!(types.contains(&"Egress".into()), "{types:?}");
    assert!(
        policy["spec"]["egress"]
            .as_array()
            .is_none_or(Vec::is_empty),
        "the injector connects to nothing"
    );
    // Every rule admits the webhook's container port and nothing else.
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let port = &container["ports"][0]["containerPort"];
    let args = container["args"].as_array().unwrap();
    let listen = args.iter().position(|a| a == "--listen").unwrap();
    assert!(
        args[listen + 1]
            .as_str()
            .unwrap()
            .ends_with(&format!(":{port}"))
    );
    let rules = policy["spec"]["ingress"].as_array().unwrap();
    assert!(!rules.is_empty());
    for rule in rules {
        let ports = rule["ports"].as_array().expect("a rule names its ports");
        for admitted in ports {
            assert_eq!(&admitted["port"], port, "{admitted}");
            assert_eq!(admitted["protocol"], "TCP");
        }
    }
}

/// Behind the ingress the shipped ConfigMap assumes, every connection comes from a controller's
/// few addresses: ingress-nginx alone keeps up to 320 idle upstream connections per worker (four on
/// a four-core node), so a
/// per-address cap below that refuses the controller's connections (502s) under ordinary load.
#[test]
fn the_shipped_configmap_admits_an_ingress_controllers_connections() {
    let configmap = &yaml_documents(&deploy_dir().join("kubernetes/base/configmap.yaml"))[0];
    let text = configmap["data"]["gatehouse.toml"].as_str().unwrap();
    let file: toml::Value = toml::from_str(text).unwrap();
    assert_eq!(
        file["listen"]["https"].as_str(),
        Some(""),
        "TLS at the ingress"
    );
    let per_ip = file["server"]
        .get("max_connections_per_ip")
        .and_then(toml::Value::as_integer)
        .unwrap_or(256);
    assert!(
        per_ip >= 320 * 4,
        "server.max_connections_per_ip = {per_ip}"
    );
}
