#!/usr/bin/env bash
# Install canaryd and what its sandbox needs (Prometheus, git), then run the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v prometheus >/dev/null 2>&1 || ! command -v git >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus git >/dev/null
fi
python3 -m pip install -q --disable-pip-version-check -e .
exec canaryd demo "$@"
