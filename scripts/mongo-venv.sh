# shellcheck shell=bash
# Sourced by scripts/test.sh: a Python venv with the MongoDB stand-in server the tests start,
# secantusd-py from PyPI's secantusdb (a pre-release, hence --pre): a single-node server that
# speaks the MongoDB wire protocol (unique and TTL indexes, change streams as a one-member
# replica set) over WiredTiger. No mongod can be installed on the build machines; this is a
# test process only (GPL-2.0), never linked into or shipped with cronmesh. Created once under
# target/ and re-created when the pin below changes; a lock keeps parallel runs from racing.

MONGO_VENV_REQUIREMENTS="secantusdb==0.7.0b3"

ensure_mongo_venv() {
  local venv=$1
  mkdir -p "$(dirname "$venv")"
  (
    flock 9
    if [ "$(cat "$venv/.requirements" 2>/dev/null)" != "$MONGO_VENV_REQUIREMENTS" ] || [ ! -x "$venv/bin/secantusd-py" ]; then
      echo "== creating $venv ($MONGO_VENV_REQUIREMENTS)"
      rm -rf "$venv"
      python3 -m venv "$venv"
      # shellcheck disable=SC2086 # the list is split on purpose
      "$venv/bin/pip" install --quiet --disable-pip-version-check --pre $MONGO_VENV_REQUIREMENTS
      echo "$MONGO_VENV_REQUIREMENTS" >"$venv/.requirements"
    fi
  ) 9>"$venv.lock"
}
