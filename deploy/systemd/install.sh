#!/usr/bin/env bash
# Installs the cronmesh binary, a dedicated user, example configs and the systemd units.
# Usage: sudo deploy/systemd/install.sh [path/to/cronmesh]   (default: target/release/cronmesh)
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=${1:-target/release/cronmesh}
[ -x "$bin" ] || { echo "build first: cargo build --release (or pass the binary's path)" >&2; exit 1; }
install -m 0755 "$bin" /usr/local/bin/cronmesh
id cronmesh >/dev/null 2>&1 || useradd --system --home /var/lib/cronmesh --shell /usr/sbin/nologin cronmesh
install -d -m 0755 /etc/cronmesh
for f in worker master; do
  [ -f /etc/cronmesh/$f.toml ] || install -m 0644 config/$f.toml /etc/cronmesh/$f.toml
done
install -m 0644 deploy/systemd/cronmesh-worker.service deploy/systemd/cronmesh-master.service /etc/systemd/system/
if command -v systemd-analyze >/dev/null 2>&1; then
  systemd-analyze verify /etc/systemd/system/cronmesh-worker.service /etc/systemd/system/cronmesh-master.service || true
fi
systemctl daemon-reload 2>/dev/null || true
echo "installed; edit /etc/cronmesh/*.toml, then: systemctl enable --now cronmesh-master cronmesh-worker"
