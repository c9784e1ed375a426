#!/usr/bin/env bash
# Print the path of a Python interpreter of one minor version, e.g. `bash infra/find-python.sh 3.13`:
# pyenv's newest patch release of it (pyenv's shims answer only for the selected version, so
# its folder is read directly), else one on PATH or known to uv. Exit 1 with how to get one.
set -euo pipefail
cd "$(dirname "$0")/.."
version=${1:?usage: find-python.sh MAJOR.MINOR}
root=$(pyenv root 2>/dev/null || echo "${PYENV_ROOT:-$HOME/.pyenv}")
found=$(ls -d "$root"/versions/"$version".*/bin/python"$version" 2>/dev/null | sort -V | tail -n 1 || true)
if [ -z "$found" ]; then
  found=$(.venv/bin/uv python find --no-python-downloads "$version" 2>/dev/null || true)
fi
if [ -z "$found" ] || ! "$found" -c 'import sys' 2>/dev/null; then
  echo "no Python $version here: \`pyenv install $version\` (or \`uv python install $version\`)" >&2
  exit 1
fi
echo "$found"
