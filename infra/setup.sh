#!/usr/bin/env bash
# Create .venv and install the project, every extra and the dev tools from uv.lock (one
# universal, hashed lock: `uv lock` after editing pyproject.toml, `uv lock --check` in CI).
# Usage: bash infra/setup.sh            (idempotent; re-run after uv.lock changes)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
UV_VERSION=0.13.9
command -v "$PYTHON" >/dev/null || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.lock-sha256
want=$(sha256sum uv.lock pyproject.toml infra/setup.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
.venv/bin/python -m pip --version >/dev/null 2>&1 || .venv/bin/python -m ensurepip --upgrade >/dev/null
.venv/bin/python -m pip install --quiet --disable-pip-version-check "uv==$UV_VERSION"
# --frozen: exactly the lock, never re-resolved; --inexact: keep uv and the torch wheel below.
UV_PROJECT_ENVIRONMENT=.venv .venv/bin/uv sync --quiet --frozen --all-extras --inexact \
  --python .venv/bin/python
# The torch backend from a local CPU wheel where the machine has one (PyPI's default torch
# is a multi-GB CUDA build); without it the torch-backend test is skipped with a reason.
torch_wheel=$(ls "${TORCH_WHEEL_DIR:-/opt/wheels}"/torch-2.*+cpu-cp311-*.whl 2>/dev/null | head -n 1 || true)
if [ -n "$torch_wheel" ]; then
  .venv/bin/uv pip install --quiet --python .venv/bin/python "$torch_wheel"
fi
# Byte-compile: uv does not by default, and where PYTHONDONTWRITEBYTECODE is set nothing
# ever writes the .pyc files, so every process (each pipeline task, DVC stage, server)
# compiled TensorFlow's sources again: 20 s to import it instead of 7. A few test fixtures
# inside packages are not Python 3 and fail to compile; they are never imported.
.venv/bin/python -m compileall -q -j 0 .venv/lib/python3.*/site-packages >/dev/null || true
echo "$want" > "$stamp"
echo "environment ready: $(.venv/bin/python --version), $(.venv/bin/python -c 'import keras, tensorflow as tf; print("keras", keras.__version__, "tensorflow", tf.__version__)' 2>/dev/null)"
