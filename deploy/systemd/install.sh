#!/usr/bin/env bash
# Installs the cronmesh binary, a dedicated system user, example configs, token files and the
# systemd units; the units are verified first (deploy/systemd/verify.sh) and nothing is
# installed if they fail.
#
# Usage: sudo deploy/systemd/install.sh [path/to/cronmesh]   (default: target/release/cronmesh)
#        DESTDIR=/tmp/stage deploy/systemd/install.sh ...   (stage into a directory: no user is
#                                                           created, systemd is not reloaded)
# Existing configs and token files are never overwritten.
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=${1:-target/release/cronmesh}
dest=${DESTDIR:-}
[ -x "$bin" ] || { echo "build first: cargo build --release (or pass the binary's path)" >&2; exit 1; }

# a unit that systemd-analyze rejects is never installed; skipped only where the tool is unusable
rc=0
CRONMESH_BIN=$(realpath "$bin") deploy/systemd/verify.sh || rc=$?
if [ "$rc" -eq 77 ]; then
  echo "warning: units not verified (systemd-analyze unusable here)" >&2
elif [ "$rc" -ne 0 ]; then
  echo "the units failed verification; nothing installed" >&2
  exit 1
fi

install -D -m 0755 "$bin" "$dest/usr/local/bin/cronmesh"
group=$(id -gn)
if [ -z "$dest" ]; then
  id cronmesh >/dev/null 2>&1 ||
    useradd --system --user-group --home-dir /var/lib/cronmesh --no-create-home --shell /usr/sbin/nologin cronmesh
  group=cronmesh
fi

# configs are readable by the service user only (they may hold token hashes or a MongoDB URI)
install -d -m 0750 -g "$group" "$dest/etc/cronmesh"
for f in worker master; do
  [ -f "$dest/etc/cronmesh/$f.toml" ] || install -m 0640 -g "$group" "config/$f.toml" "$dest/etc/cronmesh/$f.toml"
done
# tokens: read by systemd (as root) through EnvironmentFile=, never by the service user
if [ ! -f "$dest/etc/cronmesh/master.env" ]; then
  install -m 0600 /dev/null "$dest/etc/cronmesh/master.env"
  printf '%s\n' "# Tokens of the cronmesh master (at least 16 characters each; e.g. openssl rand -hex 24)." \
    "#CRONMESH_ADMIN_TOKEN=" "#CRONMESH_READ_TOKEN=" "#CRONMESH_WORKER_TOKEN=" >"$dest/etc/cronmesh/master.env"
fi
if [ ! -f "$dest/etc/cronmesh/worker.env" ]; then
  install -m 0600 /dev/null "$dest/etc/cronmesh/worker.env"
  printf '%s\n' "# The token (role worker) this worker reports runs with; the masters' CRONMESH_WORKER_TOKEN." \
    "#CRONMESH_WORKER_TOKEN=" >"$dest/etc/cronmesh/worker.env"
fi
install -D -m 0644 docs/OPERATIONS.md "$dest/usr/share/doc/cronmesh/OPERATIONS.md"
install -D -m 0644 -t "$dest/etc/systemd/system" deploy/systemd/cronmesh-worker.service deploy/systemd/cronmesh-master.service

if grep -q 'example-admin-token-change-me' "$dest/etc/cronmesh/master.toml"; then
  echo "WARNING: /etc/cronmesh/master.toml still accepts the example tokens of config/master.toml;" >&2
  echo "         replace [master.auth] tokens (or delete them and set tokens in master.env) before starting" >&2
fi
if [ -z "$dest" ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload
fi
echo "installed${dest:+ into $dest}; edit /etc/cronmesh/*.toml and the tokens in /etc/cronmesh/*.env, then:"
echo "  systemctl enable --now cronmesh-master cronmesh-worker"
