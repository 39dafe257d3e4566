#!/usr/bin/env bash
# Runs every test. Installs what the tests need when it is missing: a real SMTP server (aiosmtpd).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! python3 -c 'import aiosmtpd' 2>/dev/null; then
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore aiosmtpd
fi

cargo test --locked "$@"
