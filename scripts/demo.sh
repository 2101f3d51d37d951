#!/usr/bin/env bash
# Install canaryd (in .venv, with the pinned dependency set) and what its sandbox needs (Prometheus, git),
# then run the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v prometheus >/dev/null 2>&1 || ! command -v git >/dev/null 2>&1; then
  echo ">>> installing prometheus and git (Debian packages)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus git >/dev/null
fi
. scripts/venv.sh
canaryd_venv sandbox
exec "$VENV_PY" -m canaryd demo "$@"
