#!/usr/bin/env bash
# Installs what the tests need on a fresh Debian/Ubuntu machine (Python 3.10+), then runs them:
# redis-server (real server for integration tests), docker-compose (validates docker-compose.yml),
# openssl (TLS test certificates), a virtualenv with trtbatch and its test extras.
# Every server the tests use is started and stopped by the tests themselves.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
# A machine whose last package run was cut off refuses every install until dpkg finishes it.
$SUDO dpkg --configure -a || true  # (retried below if another package run holds the lock)
apt_get() {  # retries while another package run (unattended upgrades at boot) holds the lock
  for attempt in 1 2 3 4 5 6; do
    if $SUDO apt-get -o DPkg::Lock::Timeout=120 "$@"; then return 0; fi
    echo "apt-get $1 failed (attempt $attempt); retrying" >&2
    $SUDO dpkg --configure -a || true
    sleep 10
  done
  return 1
}
apt_get update -qq
apt_get install -y -qq --no-install-recommends redis-server docker-compose openssl python3-venv >/dev/null
# Debian starts the packaged redis-server as a service where it can; the tests start their own
# private servers, so stop that one if it runs (nothing else here uses it).
$SUDO service redis-server stop >/dev/null 2>&1 || true
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[cpu,test]'
.venv/bin/ruff check .
exec .venv/bin/python -m pytest -q -ra "$@"
