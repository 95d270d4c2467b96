#!/usr/bin/env bash
# Shared by scripts/demo and scripts/test: a project-local virtualenv with everything installed.
# Idempotent: re-running only installs what changed. EXTRAS picks the optional dependency groups.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="${EXTRAS:-train,dev}"
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "[bootstrap] creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
stamp=".venv/.installed-$(cat pyproject.toml | sha256sum | cut -c1-16)-${EXTRAS//,/_}"
if [ ! -f "$stamp" ]; then
  echo "[bootstrap] installing recsvc[$EXTRAS] (first run takes a minute or two)"
  .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
  # lightfm builds with -march=native unless told not to; the wheel must run on any x86-64 of the fleet.
  if ! LIGHTFM_NO_CFLAGS=1 .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[$EXTRAS]" \
      >.venv/pip-install.log 2>&1; then
    grep -v "is ignored: it is neither a file nor a directory" .venv/pip-install.log >&2
    echo "[bootstrap] pip install failed (log: .venv/pip-install.log)" >&2
    exit 1
  fi
  .venv/bin/python -c "import recsvc, features, litestar, redis, msgspec" # fail loudly if the install did not take
  rm -f .venv/.installed-* && touch "$stamp"
fi
