#!/usr/bin/env bash
# Install everything the test suite needs, then run it: lint, types, and every test (unit, contract, e2e).
# canaryd and its test tools go into .venv with the pinned dependency set (constraints.txt).
# Usage: bash scripts/test.sh [extra pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v prometheus >/dev/null 2>&1 || ! command -v sshd >/dev/null 2>&1 || ! command -v git >/dev/null 2>&1; then
  echo ">>> installing prometheus, git and openssh (Debian packages)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus git openssh-server openssh-client >/dev/null
fi
. scripts/venv.sh
canaryd_venv dev

echo ">>> ruff"
"$VENV_PY" -m ruff check canaryd tests $([ -d bench ] && echo bench)
echo ">>> mypy --strict canaryd tests/campaigns"
"$VENV_PY" -m mypy --strict canaryd tests/campaigns
echo ">>> pytest"
# Two workers (one sandbox each for the end-to-end tests); a file stays on one worker, so module fixtures
# (a Prometheus per contract module) start once.
"$VENV_PY" -m pytest -q -p no:cacheprovider -n 2 --dist loadfile "$@"
