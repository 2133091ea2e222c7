# shellcheck shell=bash
# Sourced by scripts/test.sh, and by tests/e2e/openapi.rs through `bash -c`: a Python venv with
# schemathesis (PyPI, pinned), which fuzzes the master's API from its OpenAPI document, and
# jsonschema-rs (one of its dependencies, pinned too), which validates real responses against the
# document.
# Created once under target/ and re-created when the pin below changes; a lock keeps parallel
# runs from racing.

SCHEMATHESIS_VENV_REQUIREMENTS="schemathesis==4.32.5 jsonschema-rs==0.60.3"

ensure_schemathesis_venv() {
  local venv=$1
  mkdir -p "$(dirname "$venv")"
  (
    flock 9
    if [ "$(cat "$venv/.requirements" 2>/dev/null)" != "$SCHEMATHESIS_VENV_REQUIREMENTS" ]; then
      echo "== creating $venv ($SCHEMATHESIS_VENV_REQUIREMENTS)"
      rm -rf "$venv"
      python3 -m venv "$venv"
      # shellcheck disable=SC2086 # the list is split on purpose
      "$venv/bin/pip" install --quiet --disable-pip-version-check $SCHEMATHESIS_VENV_REQUIREMENTS
      echo "$SCHEMATHESIS_VENV_REQUIREMENTS" >"$venv/.requirements"
    fi
  ) 9>"$venv.lock"
}
