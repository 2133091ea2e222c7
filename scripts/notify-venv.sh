# shellcheck shell=bash
# Sourced by scripts/test.sh: a Python venv with aiosmtpd from PyPI, the real SMTP server the
# notification specs deliver email to (tests/e2e/smtp_sink.py runs it on 127.0.0.1 and writes every
# message it receives as a JSON line). A test process only, never shipped with cronmesh. Created
# once under target/ and re-created when the pin below changes (fast when it is there); a lock
# keeps parallel runs from racing.

NOTIFY_VENV_REQUIREMENTS="aiosmtpd==1.4.6"

ensure_notify_venv() {
  local venv=$1
  mkdir -p "$(dirname "$venv")"
  (
    flock 9
    if [ "$(cat "$venv/.requirements" 2>/dev/null)" != "$NOTIFY_VENV_REQUIREMENTS" ] || [ ! -x "$venv/bin/python" ]; then
      echo "== creating $venv ($NOTIFY_VENV_REQUIREMENTS)"
      rm -rf "$venv"
      python3 -m venv "$venv"
      # shellcheck disable=SC2086 # the list is split on purpose
      "$venv/bin/pip" install --quiet --disable-pip-version-check $NOTIFY_VENV_REQUIREMENTS
      echo "$NOTIFY_VENV_REQUIREMENTS" >"$venv/.requirements"
    fi
  ) 9>"$venv.lock"
}
