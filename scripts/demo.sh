#!/usr/bin/env bash
# Installs trtbatch in ./.venv on a fresh Debian/Ubuntu machine (Python 3.10+) and runs the demo:
# the embedded Redis server, a local CPU worker, and the held-out scikit-learn digits through
# Redis -> Celery worker -> Paddle Inference -> result store, printing predictions and accuracy.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
if ! python3 -c "import ensurepip, venv" 2>/dev/null; then
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq python3-venv >/dev/null
fi
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q '.[cpu]'
exec .venv/bin/trtbatch demo
