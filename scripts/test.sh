#!/usr/bin/env bash
# Install everything the test suite needs, then run it: lint, types, and every test (unit, contract, e2e).
# Usage: bash scripts/test.sh [extra pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v prometheus >/dev/null 2>&1 || ! command -v sshd >/dev/null 2>&1; then
  echo ">>> installing prometheus (Debian package)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus git openssh-server openssh-client >/dev/null
fi
echo ">>> installing canaryd with its dev dependencies"
python3 -m pip install -q --disable-pip-version-check -e '.[dev]'

echo ">>> ruff"
python3 -m ruff check canaryd tests $([ -d bench ] && echo bench)
echo ">>> mypy --strict canaryd"
python3 -m mypy --strict canaryd
echo ">>> pytest"
# Two workers (one sandbox each for the end-to-end tests); a file stays on one worker, so module fixtures
# (a Prometheus per contract module) start once.
python3 -m pytest -q -p no:cacheprovider -n 2 --dist loadfile "$@"
