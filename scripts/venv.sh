# Sourced by demo.sh and test.sh: make (or reuse) the project's virtual environment and install canaryd
# into it with the pinned, tested dependency set (constraints.txt), so a fresh machine runs what CI ran.
#
# Why a virtual environment: Debian's own python3 is "externally managed" (PEP 668) and refuses
# `pip install` outright; a venv works there and on any other Python >= 3.11.
#
# Inputs:  $1 = the extras to install, e.g. "sandbox" or "dev"
#          $PYTHON (optional) = the interpreter to build the venv from (default: python3 first on PATH)
#          $CANARYD_VENV (optional) = where the venv lives (default: .venv in the checkout)
# Output:  $VENV_PY = the venv's python; the venv's bin/ is put first on PATH.

canaryd_venv() {
  local extras="$1"
  local root python venv want have
  root="$(pwd)"
  python="${PYTHON:-python3}"
  venv="${CANARYD_VENV:-$root/.venv}"

  if ! command -v "$python" >/dev/null 2>&1; then
    echo "error: $python not found; install Python >= 3.11 (Debian: apt-get install python3)" >&2
    return 1
  fi
  if ! "$python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)'; then
    echo "error: canaryd needs Python >= 3.11; $python is $("$python" -V 2>&1)" >&2
    return 1
  fi
  # Debian splits venv/ensurepip into python3-venv: without it `python3 -m venv` fails half-way.
  if ! "$python" -c 'import ensurepip, venv' >/dev/null 2>&1; then
    local ver
    ver="$("$python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
    if command -v apt-get >/dev/null 2>&1; then
      echo ">>> installing python${ver}-venv (Debian package; $python has no venv module)"
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "python${ver}-venv" >/dev/null
    else
      echo "error: $python cannot create virtual environments (no ensurepip); install its venv package" >&2
      return 1
    fi
  fi

  # One venv per interpreter: a venv made by another Python (or a broken one) is made anew.
  want="$("$python" -c 'import sys; print(sys.executable, sys.version.split()[0])')"
  have="$(cat "$venv/.canaryd-python" 2>/dev/null || true)"
  if [ "$want" != "$have" ] || ! "$venv/bin/python" -c '' >/dev/null 2>&1; then
    echo ">>> creating the virtual environment $venv ($want)"
    rm -rf "$venv"
    "$python" -m venv "$venv"
    echo "$want" > "$venv/.canaryd-python"
  fi

  echo ">>> installing canaryd[$extras] with the pinned dependency set (constraints.txt)"
  # PIP_CONSTRAINT (not -c) so the pins reach pip's isolated build environment too (setuptools).
  PIP_CONSTRAINT="$root/constraints.txt" "$venv/bin/python" -m pip install -q --disable-pip-version-check \
    -e ".[$extras]"
  VENV_PY="$venv/bin/python"
  PATH="$venv/bin:$PATH"
  export PATH VENV_PY
}
