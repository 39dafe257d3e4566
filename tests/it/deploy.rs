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
        "path: /readyz",
        "path: /healthz",
    ] {
        assert!(
            base.contains(needle),
            "{needle} missing from the base deployment"
        );
    }
}
