#!/usr/bin/env bash
# Starts cronmesh on this machine, in the foreground: `cronmesh standalone` with a private etcd
# (its data under ./data/etcd), a worker, and the master's HTTP listener on 127.0.0.1:8070 (the
# web page, the REST API, /metrics, /healthz, /readyz). The example job config/jobs/hello.toml
# is applied at start; its runs go to the run log ./data/runs.db (SQLite). Ctrl-C stops it: the
# worker drains (running commands finish, their records are stored), then the master and etcd.
#
# What it installs and builds: etcd from the OS packages if it is missing (apt-get, with sudo
# unless root); then it builds cronmesh (`cargo build --release --locked`: a few minutes the
# first time, a few seconds after), which needs protoc and protobuf's headers (installed the
# same way if missing). With CRONMESH_BIN=/path/to/cronmesh it uses that binary and builds
# nothing (tests/e2e/quickstart.rs runs the README's quick start so, with its debug build).
#
# Arguments after the script's name go to `cronmesh standalone`; so do CRONMESH_* variables
# (CRONMESH_LISTEN=127.0.0.1:8080, CRONMESH_DATA_DIR, CRONMESH_ETCD_PORT, …).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
if [ -z "${CRONMESH_BIN:-}" ]; then
  command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
  [ -f /usr/include/google/protobuf/descriptor.proto ] || need+=(libprotobuf-dev)
fi
if [ ${#need[@]} -gt 0 ]; then
  echo "cronmesh: installing ${need[*]} with apt-get" >&2
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

if [ -n "${CRONMESH_BIN:-}" ]; then
  bin=$CRONMESH_BIN
  [ -x "$bin" ] || { echo "cronmesh: CRONMESH_BIN=$bin is not an executable file" >&2; exit 1; }
else
  echo "cronmesh: building (cargo build --release; a few minutes the first time)" >&2
  cargo build --release --locked
  bin=./target/release/cronmesh
fi
listen=${CRONMESH_LISTEN:-127.0.0.1:8070}
echo "cronmesh: web page and API on http://$listen/ ; runs in ./data/runs.db; in another terminal: $bin ctl runs list --job hello ; Ctrl-C stops" >&2
exec "$bin" standalone --config config/standalone.toml --apply config/jobs/hello.toml "$@"
