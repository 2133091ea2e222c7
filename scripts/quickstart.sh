#!/usr/bin/env bash
# Starts cronmesh on this machine: installs etcd (and the build's protoc) from the OS packages
# if missing, then runs `cronmesh standalone` in the foreground: a private etcd with its data
# under ./data, a worker, and the master's HTTP listener on 127.0.0.1:8070. The example job in
# config/jobs/ is applied at start; its runs are appended to ./data/runs.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
[ -f /usr/include/google/protobuf/descriptor.proto ] || need+=(libprotobuf-dev)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
cargo build --release --locked
echo "cronmesh: web page and API on http://127.0.0.1:8070/ ; try: ./target/release/cronmesh ctl runs list --job hello"
exec ./target/release/cronmesh standalone --config config/standalone.toml --apply config/jobs/hello.toml "$@"
