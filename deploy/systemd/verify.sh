#!/usr/bin/env bash
# Checks the systemd units from the repository (or any unit files given), without installing:
#   1. `systemd-analyze verify`: syntax, unknown keys (a warning is a failure here), and that
#      ExecStart's binary exists. The units point at /usr/local/bin/cronmesh, so they are checked
#      from a temp copy whose ExecStart points at CRONMESH_BIN, or at a stub when it is unset.
#   2. `systemd-analyze security --offline`: each unit's exposure stays at or below its
#      threshold (master 2.0, worker 4.0; 0 = fully locked down, 10 = unprotected), so a change
#      that loosens the sandbox fails here.
#
# Usage: deploy/systemd/verify.sh [UNIT_FILE...]     (default: deploy/systemd/*.service)
# Exit: 0 checked and fine, 1 a check failed, 77 skipped (systemd-analyze missing or unusable).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

if ! command -v systemd-analyze >/dev/null 2>&1; then
  echo "SKIPPED: systemd-analyze not found (Debian: apt-get install systemd)" >&2
  exit 77
fi

units=("$@")
[ ${#units[@]} -gt 0 ] || units=("$here"/*.service)

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Is systemd-analyze usable here (containers without systemd may lack parts of it)?
printf '[Unit]\nDescription=probe\n[Service]\nExecStart=/bin/true\n' >"$tmp/probe.service"
if ! out=$(systemd-analyze verify "$tmp/probe.service" 2>&1) || [ -n "$out" ]; then
  echo "SKIPPED: systemd-analyze verify does not work in this environment: $out" >&2
  exit 77
fi
rm "$tmp/probe.service"

bin=${CRONMESH_BIN:-}
if [ -z "$bin" ]; then
  bin=$tmp/bin/cronmesh
  mkdir -p "$tmp/bin"
  printf '#!/bin/sh\nexit 0\n' >"$bin"
  chmod +x "$bin"
fi
[ -x "$bin" ] || { echo "CRONMESH_BIN=$bin is not executable" >&2; exit 1; }
# ExecStart needs an absolute path
bin=$(realpath "$bin")

fail=0
for u in "${units[@]}"; do
  name=$(basename "$u")
  sed "s#/usr/local/bin/cronmesh#$bin#g" "$u" >"$tmp/$name"
done
if ! out=$(cd "$tmp" && systemd-analyze verify ./*.service 2>&1) || [ -n "$out" ]; then
  echo "FAIL: systemd-analyze verify:" >&2
  echo "$out" >&2
  fail=1
else
  echo "ok: systemd-analyze verify ${units[*]##*/}"
fi

for u in "${units[@]}"; do
  name=$(basename "$u")
  case $name in
    *master*) max=20 ;;
    *worker*) max=40 ;;
    *) max=50 ;;
  esac
  level=$(systemd-analyze security --offline=true "$tmp/$name" 2>&1 | sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')
  if systemd-analyze security --offline=true --threshold="$max" "$tmp/$name" >/dev/null 2>&1; then
    echo "ok: $name exposure ${level:-?} (threshold $((max / 10)).$((max % 10)))"
  else
    echo "FAIL: $name exposure ${level:-?} is above its threshold $((max / 10)).$((max % 10)): a sandbox setting was loosened" >&2
    fail=1
  fi
done
exit $fail
