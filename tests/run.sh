#!/usr/bin/env bash
# Runs every test. First installs, when missing, the real components the tests start themselves:
# an SMTP server (aiosmtpd, from PyPI) and a headless browser (Debian's chromium and chromedriver).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! python3 -c 'import aiosmtpd' 2>/dev/null; then
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore aiosmtpd
fi

if ! command -v chromedriver >/dev/null || ! command -v chromium >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq chromium chromium-driver >/dev/null
fi

cargo test --locked "$@"
