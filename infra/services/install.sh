#!/usr/bin/env bash
# Installs the Debian packages the local services need (Debian 12 / bookworm).
# Idempotent and non-interactive: does nothing when everything is present.
# PostgreSQL 15, Ceph 16 (mon, osd, radosgw) and curl (>= 7.75, for SigV4).
# The Python side (mlflow, boto3, psycopg2-binary) comes from the project's venv.
set -euo pipefail
SERVICE_NAME=install

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
echo "[${SERVICE_NAME}] done" >&2
