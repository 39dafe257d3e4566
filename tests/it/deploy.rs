//! The deployment artifacts in `deploy/`: every Kubernetes manifest, and what every kustomization
//! renders to (`kubectl kustomize`, as `kubectl apply -k` applies it), validates offline against the
//! Kubernetes schema (kubernetes-validate, strict: unknown fields are errors); the base runs one
//! replica on a volume of its own, the PostgreSQL overlay several on a shared store; no
//! kustomization applies a Secret; one `images:` entry names the gatehouse image everywhere.

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
            // Not Kubernetes objects of the core schema: kustomize's own files, and cert-manager's
            // custom resources (optional, documented in deploy/README.md).
            !is_kustomize_file(&name) && name != "cert-manager.yaml"
        })
        .collect();
    assert!(manifests.len() >= 10, "{manifests:?}");
    validate_manifests(&manifests);
}

/// kustomize's own files: a kustomization and the transformer configuration it names.
fn is_kustomize_file(name: &str) -> bool {
    name == "kustomization.yaml" || name == "kustomizeconfig.yaml"
}

/// The directories of every kustomization under `deploy/kubernetes`, sorted.
fn kustomizations() -> Vec<PathBuf> {
    let dirs: Vec<PathBuf> = yaml_files(&deploy_dir().join("kubernetes"))
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n == "kustomization.yaml"))
        .filter_map(|p| p.parent().map(Path::to_path_buf))
        .collect();
    for shipped in ["base", "overlays/postgres", "migrate", "webhook"] {
        let dir = deploy_dir().join("kubernetes").join(shipped);
        assert!(dirs.contains(&dir), "{} is a kustomization", dir.display());
    }
    dirs
}

#[test]
fn kustomizations_list_only_files_that_exist_and_every_manifest_is_listed() {
    for dir in kustomizations() {
        let kustomization = &yaml_documents(&dir.join("kustomization.yaml"))[0];
        let listed: Vec<&str> = ["resources", "configurations"]
            .iter()
            .flat_map(|key| kustomization[key].as_array().into_iter().flatten())
            .map(|entry| entry.as_str().unwrap())
            .collect();
        assert!(!listed.is_empty(), "{}", dir.display());
        for entry in &listed {
            assert!(dir.join(entry).exists(), "{} lists {entry}", dir.display());
        }
        for file in yaml_files(&dir) {
            if file.parent() != Some(dir.as_path()) {
                continue;
            }
            let name = file.file_name().unwrap().to_string_lossy().into_owned();
            if name != "kustomization.yaml" && name != "cert-manager.yaml" {
                assert!(
                    listed.contains(&name.as_str()),
                    "{name} is not in {}",
                    dir.display()
                );
            }
        }
    }
}

/// What `kubectl kustomize DIR` renders (what `kubectl apply -k DIR` would apply), as text.
/// tests/run.sh makes sure a kubectl with kustomize v5 is there.
pub fn kustomize(dir: &Path) -> String {
    let output = Command::new("kubectl")
        .arg("kustomize")
        .arg(dir)
        .output()
        .expect("kubectl runs (tests/run.sh installs it)");
    assert!(
        output.status.success(),
        "kubectl kustomize {}: {}",
        dir.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// The objects `kubectl kustomize DIR` renders.
fn render(dir: &Path) -> Vec<serde_json::Value> {
    documents_of(&kustomize(dir))
}

/// The documents of YAML text.
fn documents_of(text: &str) -> Vec<serde_json::Value> {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), text).unwrap();
    yaml_documents(file.path())
}

#[test]
fn every_kustomization_renders_to_objects_that_validate_against_the_schema() {
    let dir = tempfile::tempdir().unwrap();
    let mut rendered = Vec::new();
    for kustomization in kustomizations() {
        let text = kustomize(&kustomization);
        assert!(
            !documents_of(&text).is_empty(),
            "{}",
            kustomization.display()
        );
        let name = kustomization
            .strip_prefix(deploy_dir())
            .unwrap()
            .to_string_lossy()
            .replace('/', "-");
        let file = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&file, text).unwrap();
        rendered.push(file);
    }
    validate_manifests(&rendered);
}

/// The one object of `kind` named `name` among `docs`.
fn object<'a>(docs: &'a [serde_json::Value], kind: &str, name: &str) -> &'a serde_json::Value {
    let found: Vec<&serde_json::Value> = docs
        .iter()
        .filter(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .collect();
    assert_eq!(found.len(), 1, "one {kind} {name}");
    found[0]
}

/// The gatehouse sidecar of a Deployment.
fn sidecar_of(deployment: &serde_json::Value) -> &serde_json::Value {
    deployment["spec"]["template"]["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "gatehouse")
        .expect("a gatehouse sidecar")
}

/// The value of the environment variable `name` of a container, if set by value.
fn env_value<'a>(container: &'a serde_json::Value, name: &str) -> Option<&'a str> {
    container["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)?["value"]
        .as_str()
}

/// The effective `store.path` of the sidecar: the pod's environment, else the ConfigMap.
fn store_path(docs: &[serde_json::Value], sidecar: &serde_json::Value) -> String {
    if let Some(path) = env_value(sidecar, "GATEHOUSE_STORE__PATH") {
        return path.to_owned();
    }
    let configmap = object(docs, "ConfigMap", "gatehouse");
    let file: toml::Value =
        toml::from_str(configmap["data"]["gatehouse.toml"].as_str().unwrap()).unwrap();
    file["store"]["path"].as_str().unwrap().to_owned()
}

/// How many of the Deployment's `replicas` pods a voluntary eviction may take at once under every
/// PodDisruptionBudget among `docs` that selects its pods (`None`: no budget selects them).
fn evictable(docs: &[serde_json::Value], deployment: &serde_json::Value) -> Option<i64> {
    let replicas = deployment["spec"]["replicas"].as_i64().unwrap();
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    docs.iter()
        .filter(|d| d["kind"] == "PodDisruptionBudget")
        .filter(|pdb| {
            pdb["spec"]["selector"]["matchLabels"]
                .as_object()
                .unwrap()
                .iter()
                .all(|(key, value)| &labels[key] == value)
        })
        .map(|pdb| {
            let spec = &pdb["spec"];
            match (
                spec["minAvailable"].as_i64(),
                spec["maxUnavailable"].as_i64(),
            ) {
                (Some(min), None) => replicas - min,
                (None, Some(max)) => max,
                _ => panic!("a budget with one integer bound: {pdb}"),
            }
        })
        .min()
}

/// The base: one replica, its sled store on a PersistentVolumeClaim mounted at store.path, and
/// updates that stop the old pod before starting the new one, so the volume (whose store sled
/// locks) is never used by two pods. No budget keeps a node drain waiting on the only pod.
#[test]
fn the_base_runs_one_replica_with_its_sled_store_on_a_persistent_volume_claim() {
    let docs = render(&deploy_dir().join("kubernetes/base"));
    let deployment = object(&docs, "Deployment", "example-app");
    assert_eq!(deployment["spec"]["replicas"], 1);
    assert_eq!(deployment["spec"]["strategy"]["type"], "Recreate");
    let pod = &deployment["spec"]["template"]["spec"];
    let sidecar = sidecar_of(deployment);
    assert!(env_value(sidecar, "GATEHOUSE_STORE__BACKEND").is_none_or(|b| b == "sled"));

    let path = store_path(&docs, sidecar);
    let mount = sidecar["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"] == path.as_str())
        .unwrap_or_else(|| panic!("a volume at store.path {path}"));
    assert_ne!(mount["readOnly"], true);
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap();
    let claim = volume["persistentVolumeClaim"]["claimName"]
        .as_str()
        .unwrap_or_else(|| panic!("store.path is on {volume}, not a PersistentVolumeClaim"));
    let pvc = object(&docs, "PersistentVolumeClaim", claim);
    let modes = pvc["spec"]["accessModes"].as_array().unwrap();
    assert!(
        modes
            .iter()
            .all(|m| m == "ReadWriteOnce" || m == "ReadWriteOncePod"),
        "{modes:?}"
    );
    assert!(pvc["spec"]["resources"]["requests"]["storage"].is_string());
    // The volume is writable for the user gatehouse runs as.
    assert_eq!(
        pod["securityContext"]["fsGroup"],
        sidecar["securityContext"]["runAsGroup"]
    );

    if let Some(evictable) = evictable(&docs, deployment) {
        assert!(
            evictable >= 1,
            "a budget blocks every eviction of the one pod"
        );
    }
}

/// The PostgreSQL overlay: several replicas on the store at store.url, which comes from a Secret;
/// no volume holds a store, updates roll, and a budget keeps a replica through a drain.
#[test]
fn the_postgres_overlay_runs_several_replicas_on_a_store_url_from_a_secret() {
    let docs = render(&deploy_dir().join("kubernetes/overlays/postgres"));
    let deployment = object(&docs, "Deployment", "example-app");
    let replicas = deployment["spec"]["replicas"].as_i64().unwrap();
    assert!(replicas >= 2, "{replicas} replicas");
    assert_ne!(deployment["spec"]["strategy"]["type"], "Recreate");
    let sidecar = sidecar_of(deployment);
    assert_eq!(
        env_value(sidecar, "GATEHOUSE_STORE__BACKEND"),
        Some("postgres")
    );
    let url = sidecar["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "GATEHOUSE_STORE__URL")
        .expect("GATEHOUSE_STORE__URL is set");
    let from = &url["valueFrom"]["secretKeyRef"];
    assert!(from["name"].is_string() && from["key"].is_string(), "{url}");
    assert!(url.get("value").is_none());

    assert!(
        !docs.iter().any(|d| d["kind"] == "PersistentVolumeClaim"),
        "no volume claim"
    );
    let pod = &deployment["spec"]["template"]["spec"];
    for volume in pod["volumes"].as_array().into_iter().flatten() {
        assert!(
            volume.get("configMap").is_some() || volume.get("secret").is_some(),
            "a volume that could hold a store: {volume}"
        );
    }
    let path = store_path(&docs, sidecar);
    for mount in sidecar["volumeMounts"].as_array().into_iter().flatten() {
        let mounted = mount["mountPath"].as_str().unwrap();
        assert!(
            !path.starts_with(mounted),
            "{mounted} is mounted for store.path"
        );
    }
    assert_admin_is_pod_local(sidecar, 9090);

    let evictable = evictable(&docs, deployment).expect("a disruption budget");
    assert!(
        (1..replicas).contains(&evictable),
        "{evictable} of {replicas} evictable at once"
    );
}

/// The `kubectl create secret generic` commands in deploy/README.md: each Secret's name and keys.
fn secrets_the_readme_creates() -> Vec<(String, Vec<String>)> {
    let readme = std::fs::read_to_string(deploy_dir().join("README.md")).unwrap();
    let commands = readme.replace("\\\n", " ");
    let mut secrets = Vec::new();
    for line in commands.lines() {
        let Some(rest) = line.split_once("create secret generic ").map(|(_, r)| r) else {
            continue;
        };
        let name = rest.split_whitespace().next().unwrap().to_owned();
        let keys = rest
            .split("--from-literal=")
            .skip(1)
            .chain(rest.split("--from-file=").skip(1))
            .map(|arg| arg.split('=').next().unwrap().to_owned())
            .collect();
        secrets.push((name, keys));
    }
    secrets
}

/// `kubectl apply -k` never overwrites the Secrets an operator created with placeholders: no
/// kustomization renders a Secret, and every Secret key a rendered pod reads is one that a
/// `kubectl create secret` command in deploy/README.md creates, with a generated value.
#[test]
fn no_kustomization_applies_a_secret_and_the_readme_creates_every_one_read() {
    let created = secrets_the_readme_creates();
    assert!(!created.is_empty());
    for dir in kustomizations() {
        for doc in render(&dir) {
            assert_ne!(doc["kind"], "Secret", "{} renders {doc}", dir.display());
            let Some(pod) = doc["spec"]["template"]["spec"].as_object() else {
                continue;
            };
            let containers = ["initContainers", "containers"].iter().flat_map(|key| {
                pod.get(*key)
                    .and_then(|c| c.as_array())
                    .into_iter()
                    .flatten()
            });
            for container in containers {
                for var in container["env"].as_array().into_iter().flatten() {
                    let reference = &var["valueFrom"]["secretKeyRef"];
                    let (Some(name), Some(key)) =
                        (reference["name"].as_str(), reference["key"].as_str())
                    else {
                        continue;
                    };
                    assert!(
                        created
                            .iter()
                            .any(|(n, keys)| n == name && keys.iter().any(|k| k == key)),
                        "{}: {name}/{key} is created by no command in deploy/README.md ({created:?})",
                        dir.display()
                    );
                }
            }
        }
    }
}

/// The image's name without its tag or digest.
fn image_name(image: &str) -> &str {
    let name = image.split('@').next().unwrap();
    match name.rfind(':') {
        Some(colon) if colon > name.rfind('/').unwrap_or(0) => &name[..colon],
        _ => name,
    }
}

/// Every place a rendering names the gatehouse image: the sidecar's, the migration Job's and the
/// injector's container images, and the sidecar image the injector writes into pods
/// (GATEHOUSE_INJECT_IMAGE).
fn gatehouse_images(docs: &[serde_json::Value]) -> Vec<String> {
    let mut images = Vec::new();
    for doc in docs {
        let pod = &doc["spec"]["template"]["spec"];
        for key in ["initContainers", "containers"] {
            for container in pod[key].as_array().into_iter().flatten() {
                if ["gatehouse", "webhook", "migrate"]
                    .contains(&container["name"].as_str().unwrap())
                {
                    images.push(container["image"].as_str().unwrap().to_owned());
                }
                if let Some(image) = env_value(container, "GATEHOUSE_INJECT_IMAGE") {
                    images.push(image.to_owned());
                }
            }
        }
    }
    images
}

/// A kustomization in a new directory with `resources` (directories under deploy/kubernetes) and
/// `extra` lines, as an operator's own overlay would be.
fn overlay(resources: &[&str], extra: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let here = dir.path().canonicalize().unwrap();
    let up = "../".repeat(here.components().count() - 1);
    let mut text = String::from("resources:\n");
    for resource in resources {
        let target = deploy_dir().join("kubernetes").join(resource);
        let target = target.canonicalize().unwrap();
        let relative = target.strip_prefix("/").unwrap().display().to_string();
        text.push_str(&format!("  - {up}{relative}\n"));
    }
    text.push_str(extra);
    std::fs::write(dir.path().join("kustomization.yaml"), text).unwrap();
    dir
}

const OTHER_IMAGE: &str = "registry.example.com/team/gatehouse";

/// The gatehouse image is named once: the base, the overlay and the injector name the same
/// image, and one `images:` entry in an operator's overlay changes the sidecar's, the injector's
/// and the injected sidecar's image, leaving no trace of the shipped one.
#[test]
fn one_images_entry_changes_the_gatehouse_image_everywhere() {
    let mut shipped = Vec::new();
    for dir in kustomizations() {
        let images = gatehouse_images(&render(&dir));
        assert!(!images.is_empty(), "{}", dir.display());
        shipped.extend(images);
    }
    assert_eq!(shipped.len(), 5, "{shipped:?}");
    assert!(shipped.iter().all(|i| i == &shipped[0]), "{shipped:?}");
    let name = image_name(&shipped[0]);

    for (resources, places) in [
        (&["base", "migrate", "webhook"][..], 4),
        (&["overlays/postgres", "webhook"][..], 3),
    ] {
        for (new, wanted) in [
            (
                format!("    newName: {OTHER_IMAGE}\n    newTag: 2.0.0-rc.1\n"),
                format!("{OTHER_IMAGE}:2.0.0-rc.1"),
            ),
            (
                format!("    digest: sha256:{}\n", "ab".repeat(32)),
                format!("{name}@sha256:{}", "ab".repeat(32)),
            ),
        ] {
            let dir = overlay(resources, &format!("images:\n  - name: {name}\n{new}"));
            let text = kustomize(dir.path());
            let images = gatehouse_images(&documents_of(&text));
            assert_eq!(images.len(), places, "{resources:?}: {images:?}");
            assert!(
                images.iter().all(|i| i == &wanted),
                "{resources:?}: {images:?}"
            );
            assert!(!text.contains(&shipped[0]), "{resources:?}: {text}");
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

/// Values an operator would put in the Secrets deploy/README.md creates, by key.
fn secret_value(key: &str) -> &'static str {
    match key {
        "admin-token" => "Vq3hQ2u9cQm0YkqR7oT1bX8pZs4LwNe6AjFdKgHi",
        "master-key" => "bWFzdGVyIGtleSBzaGFyZWQgYnkgdGhlIHJlcGxpY2E=",
        "url" => {
            "postgres://gatehouse:Zq8rWm3vTx@db.example.internal:5432/gatehouse?sslmode=require"
        }
        _ => panic!("a Secret key no test knows: {key}"),
    }
}

/// The sidecar's environment as the pod would have it, Secrets resolved with `secret`.
fn pod_env(sidecar: &serde_json::Value, secret: impl Fn(&str) -> String) -> Vec<(String, String)> {
    sidecar["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|var| {
            let name = var["name"].as_str().unwrap().to_owned();
            let value = match (
                var["value"].as_str(),
                var["valueFrom"]["secretKeyRef"]["key"].as_str(),
            ) {
                (Some(value), _) => value.to_owned(),
                (None, Some(key)) => secret(key),
                _ => panic!("{name} from {var}"),
            };
            (name, value)
        })
        .collect()
}

/// Each rendered ConfigMap (the base's, the PostgreSQL overlay's) is a production configuration:
/// no development-only setting, and gatehouse's own `check-config` accepts it in production with
/// the environment of the pod that mounts it (the Secrets' values generated as an operator would).
#[test]
fn the_rendered_configmaps_pass_check_config_in_production_with_the_pods_environment() {
    for (kustomization, backend) in [("base", "sled"), ("overlays/postgres", "postgres")] {
        let docs = render(&deploy_dir().join("kubernetes").join(kustomization));
        let configmap = object(&docs, "ConfigMap", "gatehouse");
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
        let sidecar = sidecar_of(object(&docs, "Deployment", "example-app"));
        let output = Command::new(crate::harness::binary())
            .args(["--config", path.to_str().unwrap(), "check-config"])
            .env_remove(crate::harness::DEVELOPMENT.0)
            .envs(pod_env(sidecar, |key| secret_value(key).to_owned()))
            .current_dir(dir.path())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{kustomization}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(stdout.contains("environment = \"production\""), "{stdout}");
        assert!(
            stdout.contains(&format!("backend = \"{backend}\"")),
            "{kustomization}: {stdout}"
        );
        assert!(
            !stdout.contains("Zq8rWm3vTx"),
            "{kustomization} prints the password: {stdout}"
        );
    }
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

/// The environment of the sidecar of the Deployment `kustomization` renders, for a gatehouse
/// started by a test: the pod's values and Secrets, but listening on free loopback ports and
/// proxying to `upstream`.
fn test_pod_env(
    docs: &[serde_json::Value],
    upstream: &str,
    secret: impl Fn(&str) -> String,
) -> Vec<(String, String)> {
    let sidecar = sidecar_of(object(docs, "Deployment", "example-app"));
    let mut env = pod_env(sidecar, secret);
    for (name, value) in [
        ("GATEHOUSE_LISTEN__HTTP", "127.0.0.1:0"),
        ("GATEHOUSE_LISTEN__ADMIN", "127.0.0.1:0"),
        ("GATEHOUSE_UPSTREAM__URL", upstream),
        // What the ConfigMap says, over the test harness's development default.
        ("GATEHOUSE_SERVER__ENVIRONMENT", "production"),
    ] {
        env.retain(|(n, _)| n != name);
        env.push((name.to_owned(), value.to_owned()));
    }
    env
}

/// Two replicas of the PostgreSQL overlay, each started as the real binary from the rendered
/// ConfigMap and its pod's environment with the Secret pointing at a real database: a user created
/// through one replica's admin API exists on the other and signs in there, and both publish the
/// same signing keys.
#[tokio::test]
async fn the_postgres_overlays_replicas_share_users_and_signing_keys() {
    use crate::harness::{Process, Upstream, http1_client};
    let docs = render(&deploy_dir().join("kubernetes/overlays/postgres"));
    let configmap = object(&docs, "ConfigMap", "gatehouse");
    let config = configmap["data"]["gatehouse.toml"].as_str().unwrap();
    let db = crate::pg::Database::on_shared_server().await;
    let upstream = Upstream::start().await;
    let env = test_pod_env(&docs, &upstream.url(), |key| match key {
        "url" => db.url(),
        key => secret_value(key).to_owned(),
    });
    let env: Vec<(&str, &str)> = env.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    let first = Process::start(config, &env).await;
    let second = Process::start(config, &env).await;
    let admin =
        |gh: &Process, path: &str| format!("http://{}/admin/v1{path}", gh.addrs["listen.admin"]);
    let client = http1_client();

    let created = client
        .post(admin(&first, "/users"))
        .bearer_auth(secret_value("admin-token"))
        .json(&serde_json::json!({"userName": "ada", "password": "correct horse battery"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let created: serde_json::Value = created.json().await.unwrap();
    let seen = client
        .get(admin(&second, "/users/ada"))
        .bearer_auth(secret_value("admin-token"))
        .send()
        .await
        .unwrap();
    assert_eq!(seen.status(), 200);
    let seen: serde_json::Value = seen.json().await.unwrap();
    assert_eq!(seen["id"], created["id"]);

    let signed_in = client
        .get(second.http_url("/private"))
        .basic_auth("ada", Some("correct horse battery"))
        .send()
        .await
        .unwrap();
    assert_eq!(signed_in.status(), 200);
    let seen = upstream.last();
    assert_eq!(
        seen.headers
            .get("x-auth-user")
            .and_then(|v| v.to_str().ok()),
        Some("ada")
    );

    let jwks = |gh: &Process| {
        let request = client.get(gh.http_url("/.well-known/jwks.json")).send();
        async move { request.await.unwrap().text().await.unwrap() }
    };
    let keys = jwks(&first).await;
    assert!(keys.contains("\"kid\""), "{keys}");
    assert_eq!(keys, jwks(&second).await);
}

/// Whatever placeholder a shipped Secret ever held is refused at start, naming the variable and
/// not repeating the value: gatehouse never runs the rendered base with a secret everyone knows.
#[tokio::test]
async fn the_placeholder_secrets_once_shipped_are_refused_at_start() {
    const ADMIN_TOKEN: &str = "REPLACE-ME-admin-token-from-head-c-32-dev-urandom-base64";
    const MASTER_KEY: &str = "REPLACE-ME-with-head-c-32-dev-urandom-base64";
    let docs = render(&deploy_dir().join("kubernetes/base"));
    let configmap = object(&docs, "ConfigMap", "gatehouse");
    for (key, placeholder, variable) in [
        ("admin-token", ADMIN_TOKEN, "GATEHOUSE_ADMIN_TOKEN"),
        ("master-key", MASTER_KEY, "GATEHOUSE_MASTER_KEY"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gatehouse.toml");
        std::fs::write(&path, configmap["data"]["gatehouse.toml"].as_str().unwrap()).unwrap();
        let mut env = test_pod_env(&docs, "http://127.0.0.1:9", |k| {
            if k == key {
                placeholder.to_owned()
            } else {
                secret_value(k).to_owned()
            }
        });
        env.retain(|(n, _)| n != "GATEHOUSE_STORE__PATH");
        env.push((
            "GATEHOUSE_STORE__PATH".into(),
            dir.path().join("store").display().to_string(),
        ));
        let run = tokio::process::Command::new(crate::harness::binary())
            .args(["--config", path.to_str().unwrap(), "serve"])
            .envs(env)
            .env_remove("RUST_LOG")
            .current_dir(dir.path())
            .kill_on_drop(true)
            .output();
        let output = tokio::time::timeout(std::time::Duration::from_secs(30), run)
            .await
            .unwrap_or_else(|_| panic!("gatehouse started with the {key} placeholder"))
            .unwrap();
        assert!(!output.status.success(), "{key}");
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(said.contains(variable), "{key}: {said}");
        assert!(!said.contains(placeholder), "{key}: {said}");
    }
}

/// The injector deployed from an operator's overlay of the webhook kustomization, started as the
/// real binary with the rendered container's arguments and environment, injects the image that
/// the overlay's one `images:` entry names.
#[tokio::test]
async fn the_injector_injects_the_image_an_images_entry_names() {
    use base64::Engine;
    crate::harness::install_crypto();
    let overlay = overlay(
        &["webhook"],
        &format!(
            "images:\n  - name: ghcr.io/gatehouse-dev/gatehouse\n    newName: {OTHER_IMAGE}\n    newTag: 2.0.0-rc.1\n"
        ),
    );
    let docs = documents_of(&kustomize(overlay.path()));
    let deployment = object(&docs, "Deployment", "gatehouse-webhook");
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];

    let dir = tempfile::tempdir().unwrap();
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&cert, generated.cert.pem()).unwrap();
    std::fs::write(&key, generated.signing_key.serialize_pem()).unwrap();
    let addr = crate::harness::closed_port().await;
    let mut args: Vec<String> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect();
    for (flag, value) in [
        ("--listen", addr.to_string()),
        ("--tls-cert", cert.display().to_string()),
        ("--tls-key", key.display().to_string()),
    ] {
        let at = args.iter().position(|a| a == flag).unwrap();
        args[at + 1] = value;
    }
    assert!(!args.iter().any(|a| a == "--image"), "{args:?}");
    let env: Vec<(String, String)> = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let value = e["value"].as_str().unwrap_or_else(|| panic!("{e}"));
            (e["name"].as_str().unwrap().to_owned(), value.to_owned())
        })
        .collect();
    let _webhook = tokio::process::Command::new(crate::harness::binary())
        .args(&args)
        .envs(env)
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    let client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(generated.cert.pem().as_bytes()).unwrap()])
        .build()
        .unwrap();
    let url = format!("https://localhost:{}", addr.port());
    let up = crate::pg::eventually(std::time::Duration::from_secs(30), || {
        let request = client.get(format!("{url}/healthz")).send();
        async move { request.await.is_ok_and(|r| r.status() == 200) }
    })
    .await;
    assert!(up, "the injector answers on {url}");

    let review: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/admission/annotated_pod.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let answer: serde_json::Value = client
        .post(format!("{url}/mutate"))
        .json(&review)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let patch = base64::engine::general_purpose::STANDARD
        .decode(answer["response"]["patch"].as_str().unwrap())
        .unwrap();
    let mut pod = review["request"]["object"].clone();
    let patch: json_patch::Patch = serde_json::from_slice(&patch).unwrap();
    json_patch::patch(&mut pod, &patch).unwrap();
    let sidecar = pod["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "gatehouse")
        .unwrap();
    assert_eq!(sidecar["image"], format!("{OTHER_IMAGE}:2.0.0-rc.1"));
}

/// The mount path and claim of the volume mounted for `store.path` in a pod of `docs`' workload
/// whose container is named `container`.
fn claim_mounted(docs: &[serde_json::Value], kind: &str, container: &str) -> (String, String) {
    let workload = docs.iter().find(|d| d["kind"] == kind).unwrap();
    let pod = &workload["spec"]["template"]["spec"];
    let container = ["initContainers", "containers"]
        .iter()
        .flat_map(|key| pod[*key].as_array().into_iter().flatten())
        .find(|c| c["name"] == container)
        .unwrap();
    for mount in container["volumeMounts"].as_array().into_iter().flatten() {
        let volume = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == mount["name"])
            .unwrap();
        if let Some(claim) = volume["persistentVolumeClaim"]["claimName"].as_str() {
            return (
                mount["mountPath"].as_str().unwrap().to_owned(),
                claim.to_owned(),
            );
        }
    }
    panic!("no claim mounted in {container}");
}

/// The move from the base to the PostgreSQL overlay as deploy/README.md describes it, each step
/// run from what the kustomizations render: the base's gatehouse creates a user on its volume and
/// stops; the migration Job's command, on that volume, copies the store into the database of the
/// `gatehouse-store` Secret; the overlay's replica serves the user with the same id.
#[tokio::test]
async fn the_migration_job_moves_the_bases_users_into_the_overlays_database() {
    use crate::harness::{Process, Upstream, http1_client};
    let base = render(&deploy_dir().join("kubernetes/base"));
    let migrate = render(&deploy_dir().join("kubernetes/migrate"));
    let postgres = render(&deploy_dir().join("kubernetes/overlays/postgres"));
    let (base_mount, base_claim) = claim_mounted(&base, "Deployment", "gatehouse");
    let (job_mount, job_claim) = claim_mounted(&migrate, "Job", "migrate");
    assert_eq!(job_claim, base_claim, "the Job mounts the base's volume");
    let volume = tempfile::tempdir().unwrap();
    let local = |path: &str, mount: &str| {
        let inside = path
            .strip_prefix(mount)
            .unwrap_or_else(|| panic!("{path} off {mount}"));
        format!("{}{inside}", volume.path().display())
    };

    let upstream = Upstream::start().await;
    let db = crate::pg::Database::on_shared_server().await;
    let secret = |key: &str| match key {
        "url" => db.url(),
        key => secret_value(key).to_owned(),
    };
    let client = http1_client();
    let config_of = |docs: &[serde_json::Value]| {
        object(docs, "ConfigMap", "gatehouse")["data"]["gatehouse.toml"]
            .as_str()
            .unwrap()
            .to_owned()
    };

    let mut env = test_pod_env(&base, &upstream.url(), secret);
    let store = store_path(
        &base,
        sidecar_of(object(&base, "Deployment", "example-app")),
    );
    env.retain(|(n, _)| n != "GATEHOUSE_STORE__PATH");
    env.push(("GATEHOUSE_STORE__PATH".into(), local(&store, &base_mount)));
    let env: Vec<(&str, &str)> = env.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    let mut sled = Process::start(&config_of(&base), &env).await;
    let created = client
        .post(format!(
            "http://{}/admin/v1/users",
            sled.addrs["listen.admin"]
        ))
        .bearer_auth(secret_value("admin-token"))
        .json(&serde_json::json!({"userName": "grace"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let created: serde_json::Value = created.json().await.unwrap();
    // The pod stops (`kubectl scale … --replicas=0`): its store is released when it has exited.
    sled.signal("TERM");
    let stopped = sled.child.wait().await.unwrap();
    assert!(stopped.success(), "{stopped}: {:?}", sled.logs());

    let job = object(&migrate, "Job", "gatehouse-migrate");
    let container = &job["spec"]["template"]["spec"]["containers"][0];
    let args: Vec<String> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            let a = a.as_str().unwrap();
            if a.starts_with(&job_mount) {
                local(a, &job_mount)
            } else {
                a.to_owned()
            }
        })
        .collect();
    let copied = tokio::process::Command::new(crate::harness::binary())
        .args(&args)
        .envs(pod_env(container, secret))
        .output()
        .await
        .unwrap();
    assert!(
        copied.status.success(),
        "{args:?}: {}{}",
        String::from_utf8_lossy(&copied.stdout),
        String::from_utf8_lossy(&copied.stderr)
    );

    let env = test_pod_env(&postgres, &upstream.url(), secret);
    let env: Vec<(&str, &str)> = env.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    let replica = Process::start(&config_of(&postgres), &env).await;
    let seen = client
        .get(format!(
            "http://{}/admin/v1/users/grace",
            replica.addrs["listen.admin"]
        ))
        .bearer_auth(secret_value("admin-token"))
        .send()
        .await
        .unwrap();
    assert_eq!(seen.status(), 200);
    let seen: serde_json::Value = seen.json().await.unwrap();
    assert_eq!(seen["id"], created["id"]);
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
