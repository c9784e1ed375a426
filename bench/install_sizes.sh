#!/usr/bin/env bash
# Benchmark: the size of a fresh venv per role (README, "Install per role"): each role's
# extras synced from uv.lock into an empty venv (no dev tools; the project editable), then
# `du -sh`. The uv cache makes a warm run take seconds; the first fills it from the index.
#   bash bench/install_sizes.sh                        # Python 3.11 (infra/find-python.sh)
#   PYTHON_VERSION=3.13 bash bench/install_sizes.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
python=$(bash infra/find-python.sh "${PYTHON_VERSION:-3.11}")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# role name | uv sync's extra flags
roles=(
  "core|"
  "serve|--extra serve"
  "validate|--extra validate"
  "train|--extra train"
  "pipeline|--extra pipeline"
  "dvc-repro|--extra dvc --extra train --extra validate --extra tracking --extra engine --extra export"
  "all|--all-extras"
)
echo "python: $("$python" --version)"
for entry in "${roles[@]}"; do
  role=${entry%%|*}
  start=$(date +%s.%N)
  # shellcheck disable=SC2086  # the extra flags are words
  UV_PROJECT_ENVIRONMENT="$work/$role" .venv/bin/uv sync --quiet --frozen --no-dev \
    ${entry#*|} --python "$python"
  seconds=$(echo "$(date +%s.%N) - $start" | bc)
  printf '%-10s %6s  (%s s to install)\n' "$role" "$(du -sh "$work/$role" | cut -f1)" \
    "$(printf '%.1f' "$seconds")"
  rm -rf "${work:?}/$role"
done
