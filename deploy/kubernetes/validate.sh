#!/usr/bin/env bash
# Offline checks of the Kubernetes manifests in this folder (no cluster needed):
# kubernetes-validate (PyPI; it bundles the Kubernetes JSON schemas) in a venv under
# target/deploy-venv, then validate.py (schemas, the ServiceMonitor's structure, cross-object
# facts, kustomization.yaml lists every file), then `kubectl kustomize` when kubectl is present.
#
# Usage: deploy/kubernetes/validate.sh      (DEPLOY_VENV=DIR to use another venv)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
venv=${DEPLOY_VENV:-$repo/target/deploy-venv}
# shellcheck source-path=SCRIPTDIR source=../../scripts/deploy-venv.sh
. "$repo/scripts/deploy-venv.sh"
ensure_deploy_venv "$venv"

"$venv/bin/python" "$here/validate.py"

if command -v kubectl >/dev/null 2>&1; then
  n=$(kubectl kustomize "$here" | grep -c '^kind:')
  echo "ok: kubectl kustomize builds $n objects"
else
  echo "SKIPPED: kubectl kustomize (kubectl not installed; validate.py checked the kustomization's file list)"
fi
