# shellcheck shell=bash
# Single place for every default of the local (Docker-free) service stack.
# Sourced by the other scripts; every value can be overridden from the
# environment.  Credentials have no defaults: `start` refuses to run without
# them (require_credentials in lib.sh), unless IMAGE_FINETUNE_SERVICES_DEV=1
# asks for the local-development ones below.

# Repository root (two levels above this file).
SERVICES_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "${SERVICES_DIR}/../.." && pwd)"
export SERVICES_DIR REPO_ROOT

# Where all data, keyrings, logs, pid files and sockets live (mode 0700).
# Survives stop/start; delete it (after `all.sh stop`) to start from scratch.
# root's default is under /var/lib: PostgreSQL runs as its own OS user there
# and could not reach a directory under /root.
if [[ -z "${SERVICES_STATE_DIR:-}" ]]; then
  if ((EUID == 0)); then
    SERVICES_STATE_DIR=/var/lib/image-finetune/services
  else
    SERVICES_STATE_DIR="${XDG_STATE_HOME:-${HOME}/.local/state}/image-finetune/services"
  fi
fi
[[ "${SERVICES_STATE_DIR}" == /* ]] || SERVICES_STATE_DIR="${PWD}/${SERVICES_STATE_DIR}"
export SERVICES_STATE_DIR
# The default before the stack had authentication (checked for a stack still
# running from there).
export SERVICES_LEGACY_STATE_DIR=/tmp/image-finetune-services
# Every service binds to this address only.
export SERVICES_HOST="${SERVICES_HOST:-127.0.0.1}"

# --- Credentials ----------------------------------------------------------------
# Secrets the stack needs, from the environment only (never from files in the
# repository).  IMAGE_FINETUNE_SERVICES_DEV=1 fills the missing ones with
# these well-known local-development values (and says so on stderr).
# shellcheck disable=SC2034 # both used by lib.sh
SERVICES_CREDENTIALS=(POSTGRES_PASSWORD S3_ACCESS_KEY_ID S3_SECRET_ACCESS_KEY MLFLOW_AUTH_ADMIN_PASSWORD)
# shellcheck disable=SC2034
declare -A SERVICES_DEV_CREDENTIALS=(
  [POSTGRES_PASSWORD]=mlflow-local-dev
  [S3_ACCESS_KEY_ID]=image-finetune-local-key
  [S3_SECRET_ACCESS_KEY]=image-finetune-local-secret
  [MLFLOW_AUTH_ADMIN_PASSWORD]=mlflow-local-dev-admin
)

# --- PostgreSQL (MLflow backend store) --------------------------------------
export POSTGRES_PORT="${POSTGRES_PORT:-55432}"
export POSTGRES_DB="${POSTGRES_DB:-mlflow}"
export POSTGRES_USER="${POSTGRES_USER:-mlflow}"
# POSTGRES_PASSWORD: a credential (see above)
# Database of the MLflow server's users and permissions (basic-auth app).
export POSTGRES_AUTH_DB="${POSTGRES_AUTH_DB:-mlflow_auth}"
# OS account that owns the cluster when the scripts run as root
# (initdb/postgres refuse to run as root).  Ignored for non-root callers.
export POSTGRES_OS_USER="${POSTGRES_OS_USER:-postgres}"
# Directory holding initdb/pg_ctl/postgres; autodetected (newest version).
POSTGRES_BIN_DIR="${POSTGRES_BIN_DIR:-}"
if [[ -z "${POSTGRES_BIN_DIR}" ]]; then
  POSTGRES_BIN_DIR="$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -type d -name bin 2>/dev/null | sort -V | tail -n 1 || true)"
fi
export POSTGRES_BIN_DIR
export POSTGRES_READY_TIMEOUT="${POSTGRES_READY_TIMEOUT:-60}"

# --- Ceph RGW (S3) ------------------------------------------------------------
export RGW_PORT="${RGW_PORT:-7480}"
# Address the S3 frontend binds to (the Ceph daemons always use
# SERVICES_HOST); compose.yaml sets 0.0.0.0 inside its container.
export RGW_BIND_HOST="${RGW_BIND_HOST:-${SERVICES_HOST}}"
# Ceph monitor port (msgr2 protocol), kept off the default 3300/6789.
export CEPH_MON_PORT="${CEPH_MON_PORT:-53300}"
# Port range used by the OSD (it needs several ports).
export CEPH_OSD_PORT_MIN="${CEPH_OSD_PORT_MIN:-53310}"
export CEPH_OSD_PORT_MAX="${CEPH_OSD_PORT_MAX:-53330}"
# Size of the sparse file backing the single BlueStore OSD (only the written
# blocks use disk space).
export CEPH_OSD_SIZE_GB="${CEPH_OSD_SIZE_GB:-20}"
# BlueStore cache budget of the OSD, in bytes (kept small on purpose).
export CEPH_OSD_CACHE_BYTES="${CEPH_OSD_CACHE_BYTES:-134217728}"
export CEPH_READY_TIMEOUT="${CEPH_READY_TIMEOUT:-180}"
# S3 user owned by RGW, and the buckets created for the project.
export S3_USER_ID="${S3_USER_ID:-image-finetune}"
# S3_ACCESS_KEY_ID, S3_SECRET_ACCESS_KEY: the S3 user's keys, credentials (see above)
export S3_REGION="${S3_REGION:-us-east-1}"
export S3_MLFLOW_BUCKET="${S3_MLFLOW_BUCKET:-mlflow}"
export S3_DVC_BUCKET="${S3_DVC_BUCKET:-dvc}"
export S3_ENDPOINT_URL="${S3_ENDPOINT_URL:-http://${SERVICES_HOST}:${RGW_PORT}}"

# --- MLflow tracking server ---------------------------------------------------
export MLFLOW_PORT="${MLFLOW_PORT:-5000}"
export MLFLOW_WORKERS="${MLFLOW_WORKERS:-1}"
export VENV="${VENV:-.venv}"
if [[ "${VENV}" != /* ]]; then
  VENV="${REPO_ROOT}/${VENV}"
fi
export MLFLOW_BIN="${MLFLOW_BIN:-${VENV}/bin/mlflow}"
# Artifacts are proxied by the server (--serve-artifacts) into this S3 URI.
export MLFLOW_ARTIFACTS_DESTINATION="${MLFLOW_ARTIFACTS_DESTINATION:-s3://${S3_MLFLOW_BUCKET}/artifacts}"
export MLFLOW_ALLOWED_HOSTS="${MLFLOW_ALLOWED_HOSTS:-127.0.0.1,127.0.0.1:${MLFLOW_PORT},localhost,localhost:${MLFLOW_PORT}}"
export MLFLOW_READY_TIMEOUT="${MLFLOW_READY_TIMEOUT:-240}"
export MLFLOW_TRACKING_URI_LOCAL="http://${SERVICES_HOST}:${MLFLOW_PORT}"
# Basic auth: this admin user is created on first start and its password
# re-set from the environment on every start (MLFLOW_AUTH_ADMIN_PASSWORD, a
# credential, see above; at least 12 characters).  Users without a grant get
# default_permission on every experiment and model.
export MLFLOW_AUTH_ADMIN_USERNAME="${MLFLOW_AUTH_ADMIN_USERNAME:-admin}"
export MLFLOW_AUTH_DEFAULT_PERMISSION="${MLFLOW_AUTH_DEFAULT_PERMISSION:-NO_PERMISSIONS}"

# Derived per-service directories.
export PG_STATE_DIR="${SERVICES_STATE_DIR}/postgres"
export CEPH_STATE_DIR="${SERVICES_STATE_DIR}/ceph"
export MLFLOW_STATE_DIR="${SERVICES_STATE_DIR}/mlflow"
