#!/usr/bin/env bash
# Set up the environment and run every test tier (unit, data, model, end-to-end).
set -euo pipefail
cd "$(dirname "$0")/.."
bash infra/setup.sh
.venv/bin/python -m pytest "$@"
