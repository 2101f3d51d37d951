#!/usr/bin/env bash
# Re-resolve the pinned dependency set (constraints.txt) from pyproject.toml's ranges: the newest versions
# that satisfy them today, in a throwaway venv. Review the diff, run `bash scripts/test.sh`, commit both.
# Usage: bash scripts/lock.sh            (PYTHON=python3.X to resolve with another interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"$python" -m venv "$tmp/venv"
"$tmp/venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade setuptools
"$tmp/venv/bin/python" -m pip install -q --disable-pip-version-check -e '.[dev]'
{
  echo "# The tested dependency set: every package canaryd, its sandbox and its test tools install, pinned."
  echo "# scripts/test.sh, scripts/demo.sh (hence CI) and the Dockerfile install with it as PIP_CONSTRAINT;"
  echo "# pyproject.toml keeps the ranges for people who install canaryd as a library."
  echo "# Regenerate with: bash scripts/lock.sh   (resolved with $("$tmp/venv/bin/python" -V))"
  "$tmp/venv/bin/python" -m pip freeze --all --exclude-editable --disable-pip-version-check \
    | grep -v -i -E '^(pip|canaryd)==' | LC_ALL=C sort -f
} > constraints.txt
echo "constraints.txt: $(grep -c '==' constraints.txt) pins"
