#!/usr/bin/env bash
# Create .venv (if missing) and install napari-cvdm into it with the CI pins.
#   EXTRAS=testing bash scripts/setup_env.sh     (default: no extras)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
target="."
if [ -n "${EXTRAS:-}" ]; then target=".[${EXTRAS}]"; fi
.venv/bin/python -m pip install -q -c .ci/constraints.txt -e "$target"
