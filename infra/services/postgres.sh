#!/usr/bin/env bash
# PostgreSQL for the MLflow backend store: a private cluster in
# ${SERVICES_STATE_DIR}/postgres, listening on ${SERVICES_HOST}:${POSTGRES_PORT}
# (TCP, scram-sha-256) plus a unix socket in the state dir.
#   postgres.sh start    initdb on first use, start, wait, create the role and
#                        the databases (MLflow's store and its auth database)
#   postgres.sh stop     fast shutdown (pg_ctl stop -m fast)
#   postgres.sh status   exit 0 when it accepts connections
#   postgres.sh restart  stop, then start
set -euo pipefail
SERVICE_NAME=postgres
# shellcheck source=infra/services/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PGDATA_DIR="${PG_STATE_DIR}/data"
PG_SOCKET_DIR="${PG_STATE_DIR}/run"
PG_LOG="${PG_STATE_DIR}/postgres.log"
PG_INIT_LOG="${PG_STATE_DIR}/initdb.log"
PG_SUPERUSER=postgres

# postgres keeps its own pid file; first line is the postmaster pid.
svc_daemon postgres "${PGDATA_DIR}/postmaster.pid" "" POSTGRES_PORT
SVC_ADDR="${SERVICES_HOST}:${POSTGRES_PORT}"
SVC_LOG="${PG_LOG}"
SVC_READY_TIMEOUT="${POSTGRES_READY_TIMEOUT}"
SVC_READY_NOTE="databases '${POSTGRES_DB}', '${POSTGRES_AUTH_DB}', user '${POSTGRES_USER}'"
SVC_CREDENTIALS=(POSTGRES_PASSWORD)

[[ -x "${POSTGRES_BIN_DIR}/pg_ctl" ]] ||
  die "no PostgreSQL binaries in '${POSTGRES_BIN_DIR}' (set POSTGRES_BIN_DIR or run install.sh)"

# Run a command as the cluster owner (postgres refuses to run as root).
as_owner() {
  if ((EUID == 0)); then
    (cd "${PG_STATE_DIR}" && runuser -u "${POSTGRES_OS_USER}" -- "$@")
  else
    (cd "${PG_STATE_DIR}" && "$@")
  fi
}

pg_ctl_() { as_owner "${POSTGRES_BIN_DIR}/pg_ctl" -D "${PGDATA_DIR}" "$@"; }

svc_is_ready() {
  "${POSTGRES_BIN_DIR}/pg_isready" -q -h "${SERVICES_HOST}" -p "${POSTGRES_PORT}" -t 2
}

prepare_dirs() {
  if ((EUID == 0)); then
    id -u "${POSTGRES_OS_USER}" >/dev/null 2>&1 ||
      useradd --system --home-dir /var/lib/postgresql --shell /usr/sbin/nologin "${POSTGRES_OS_USER}"
  fi
  prepare_state_dir # 0710 for POSTGRES_OS_USER's group now that it exists
  mkdir -p "${PG_STATE_DIR}"
  if ((EUID == 0)); then
    chown "${POSTGRES_OS_USER}:" "${PG_STATE_DIR}"
    runuser -u "${POSTGRES_OS_USER}" -- test -x "${PG_STATE_DIR}" ||
      die "the PostgreSQL OS user '${POSTGRES_OS_USER}' cannot reach ${PG_STATE_DIR}: a parent" \
        "directory is closed to it (e.g. /root); set SERVICES_STATE_DIR below one it can pass" \
        "through (root's default is /var/lib/image-finetune/services)"
  fi
  chmod 0700 "${PG_STATE_DIR}"
  as_owner mkdir -p "${PG_SOCKET_DIR}"
  as_owner chmod 0700 "${PG_SOCKET_DIR}"
  as_owner touch "${PG_LOG}"
}

init_cluster() {
  [[ -f "${PGDATA_DIR}/PG_VERSION" ]] && return 0
  log "initdb in ${PGDATA_DIR}"
  # Local socket: trust (the socket dir is 0700, owner only).
  # TCP: password (scram-sha-256) for everybody.
  as_owner "${POSTGRES_BIN_DIR}/initdb" -D "${PGDATA_DIR}" -U "${PG_SUPERUSER}" \
    -E UTF8 --no-locale --auth-local=trust --auth-host=scram-sha-256 >"${PG_INIT_LOG}" 2>&1 ||
    die_with_logs "initdb failed" "${PG_INIT_LOG}"
  # Small footprint settings (persisted in the cluster).
  as_owner tee -a "${PGDATA_DIR}/postgresql.conf" >/dev/null <<'EOF'

# --- image-finetune local services ---
shared_buffers = 32MB
max_connections = 40
work_mem = 4MB
maintenance_work_mem = 32MB
wal_level = minimal
max_wal_senders = 0
max_wal_size = 256MB
fsync = on
logging_collector = off
log_min_messages = warning
EOF
}

# A postmaster killed hard stays a zombie until PID 1 reaps it, and postgres
# takes the lock files of a zombie (the data directory's and the socket's) for
# a live server's.  They are stale once no backend is attached to the zombie's
# shared memory (postmaster.pid's 7th line: "key shmid"); orphaned backends
# leave on their own when they see their postmaster gone.
clear_stale_lock() {
  local lock="${PGDATA_DIR}/postmaster.pid" pid shmid deadline=$((SECONDS + POSTGRES_READY_TIMEOUT))
  [[ -s "${lock}" ]] || return 0
  pid="$(head -n 1 "${lock}")"
  while [[ "${pid}" =~ ^[0-9]+$ ]] && is_zombie "${pid}"; do
    shmid="$(sed -n 7p "${lock}" | awk '{print $2}')"
    if ! awk -v id="${shmid}" '$2 == id && $7 > 0 {found = 1} END {exit !found}' /proc/sysvipc/shm; then
      log "the previous postmaster (pid ${pid}) was killed; removing its stale lock files"
      rm -f "${lock}" "${PG_SOCKET_DIR}/.s.PGSQL.${POSTGRES_PORT}.lock"
      return 0
    fi
    ((SECONDS < deadline)) || die "backends of a killed postmaster (pid ${pid}) are still running"
    sleep 0.5
  done
}

svc_launch() {
  prepare_dirs
  clear_stale_lock
  init_cluster
  pg_ctl_ start -w -t "${POSTGRES_READY_TIMEOUT}" -l "${PG_LOG}" \
    -o "-c listen_addresses=${SERVICES_HOST} -c port=${POSTGRES_PORT} -c unix_socket_directories=${PG_SOCKET_DIR}" \
    >/dev/null ||
    die_with_logs "PostgreSQL failed to start (or was not ready within ${POSTGRES_READY_TIMEOUT}s)" "${PG_LOG}"
}

svc_provision() {
  # Role + databases, idempotent; the password is (re)set from the
  # environment on every start (read with \getenv, never on a command line).
  as_owner "${POSTGRES_BIN_DIR}/psql" -X -q -v ON_ERROR_STOP=1 \
    -h "${PG_SOCKET_DIR}" -p "${POSTGRES_PORT}" -U "${PG_SUPERUSER}" -d postgres <<'EOF' >/dev/null ||
\getenv app_user POSTGRES_USER
\getenv app_password POSTGRES_PASSWORD
\getenv app_db POSTGRES_DB
\getenv auth_db POSTGRES_AUTH_DB
SELECT format('CREATE ROLE %I LOGIN', :'app_user')
  WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'app_user') \gexec
ALTER ROLE :"app_user" WITH LOGIN PASSWORD :'app_password';
SELECT format('CREATE DATABASE %I OWNER %I', :'app_db', :'app_user')
  WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = :'app_db') \gexec
SELECT format('CREATE DATABASE %I OWNER %I', :'auth_db', :'app_user')
  WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = :'auth_db') \gexec
EOF
    die_with_logs "could not create role/database" "${PG_LOG}"
}

svc_stop() {
  log "stopping"
  pg_ctl_ stop -m fast -w -t 60 >/dev/null || die_with_logs "pg_ctl stop failed" "${PG_LOG}"
}

service_main "$@"
