#!/usr/bin/env bash
# Installs the Debian packages the local services need (Debian 12 / bookworm).
# Idempotent and non-interactive: does nothing when everything is present.
# PostgreSQL 15, Ceph 16 (mon, osd, radosgw) and curl (>= 7.75, for SigV4).
# The Python side (mlflow, boto3, psycopg2-binary) comes from the project's venv
# (infra/setup.sh); this adds what the MLflow server's basic-auth app needs
# there (mlflow's "auth" extra: Flask-WTF) when it is missing.
set -euo pipefail
SERVICE_NAME=install
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${VENV:-.venv}"
[[ "${VENV}" == /* ]] || VENV="${REPO_ROOT}/${VENV}"
# mlflow[auth] for mlflow 3.17, pinned
AUTH_PYTHON_PACKAGES=(flask-wtf==1.3.0 wtforms==3.3.2)

install_auth_extra() {
  if [[ ! -x "${VENV}/bin/python" ]]; then
    echo "[${SERVICE_NAME}] no venv at ${VENV}: run infra/setup.sh, then this again" >&2
    return 0
  fi
  "${VENV}/bin/python" -c 'import flask_wtf' 2>/dev/null && return 0
  echo "[${SERVICE_NAME}] installing into ${VENV}: ${AUTH_PYTHON_PACKAGES[*]}" >&2
  if [[ -x "${VENV}/bin/uv" ]]; then
    "${VENV}/bin/uv" pip install --quiet --python "${VENV}/bin/python" "${AUTH_PYTHON_PACKAGES[@]}"
  else
    "${VENV}/bin/python" -m pip install --quiet --disable-pip-version-check "${AUTH_PYTHON_PACKAGES[@]}"
  fi
}

PACKAGES=(
  postgresql-15 postgresql-client-15
  ceph-mon ceph-osd radosgw ceph-common
  curl procps util-linux passwd
)

missing=()
for pkg in "${PACKAGES[@]}"; do
  if [[ "$(dpkg-query -W -f='${Status}' "${pkg}" 2>/dev/null || true)" != "install ok installed" ]]; then
    missing+=("${pkg}")
  fi
done

if ((${#missing[@]} == 0)); then
  install_auth_extra
  echo "[${SERVICE_NAME}] all packages present" >&2
  exit 0
fi

SUDO=()
if ((EUID != 0)); then
  command -v sudo >/dev/null || {
    echo "[${SERVICE_NAME}] ERROR: need root or sudo to install: ${missing[*]}" >&2
    exit 1
  }
  SUDO=(sudo)
fi

echo "[${SERVICE_NAME}] installing: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -qq
# --no-install-recommends keeps ceph-mgr and its Python stack out (not needed).
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null

# The Debian postgresql package creates and starts a system cluster on 5432;
# it is not used here (we run a private cluster), so keep it stopped when
# the package was installed just now and a service manager is present.
if [[ " ${missing[*]} " == *" postgresql-15 "* ]] && command -v pg_ctlcluster >/dev/null; then
  "${SUDO[@]}" pg_ctlcluster 15 main stop 2>/dev/null || true
fi
install_auth_extra
echo "[${SERVICE_NAME}] done" >&2
