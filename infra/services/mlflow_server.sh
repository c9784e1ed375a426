#!/usr/bin/env bash
# MLflow tracking server on ${SERVICES_HOST}:${MLFLOW_PORT}:
#   backend store  postgresql+psycopg2 on the PostgreSQL of postgres.sh
#   artifacts      proxied by the server (--serve-artifacts) into
#                  ${MLFLOW_ARTIFACTS_DESTINATION} on the Ceph RGW of ceph_rgw.sh
# Needs PostgreSQL and RGW running (all.sh starts them in that order).
#   mlflow_server.sh start    start, wait for /health
#   mlflow_server.sh stop     SIGTERM the server's process group
#   mlflow_server.sh status   exit 0 when /health answers
#   mlflow_server.sh restart  stop, then start
set -euo pipefail
SERVICE_NAME=mlflow
# shellcheck source=infra/services/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

MLFLOW_PIDFILE="${MLFLOW_STATE_DIR}/mlflow.pid"
MLFLOW_LOG="${MLFLOW_STATE_DIR}/mlflow.log"

# comm of the server process: the console script's name
svc_daemon mlflow "${MLFLOW_PIDFILE}" "$(basename "${MLFLOW_BIN}")" MLFLOW_PORT
SVC_ADDR="${MLFLOW_TRACKING_URI_LOCAL}"
SVC_LOG="${MLFLOW_LOG}"
SVC_READY_TIMEOUT="${MLFLOW_READY_TIMEOUT}"
SVC_READY_NOTE="artifacts in ${MLFLOW_ARTIFACTS_DESTINATION}"

svc_is_ready() {
  [[ "$(curl -s -m 5 "${MLFLOW_TRACKING_URI_LOCAL}/health" 2>/dev/null || true)" == OK ]]
}

check_dependencies() {
  [[ -x "${MLFLOW_BIN}" ]] ||
    die "mlflow not found at ${MLFLOW_BIN} (set VENV or MLFLOW_BIN; install the project's venv)"
  if ! "${POSTGRES_BIN_DIR}/pg_isready" -q -h "${SERVICES_HOST}" -p "${POSTGRES_PORT}" -t 5; then
    die "PostgreSQL is not ready on ${SERVICES_HOST}:${POSTGRES_PORT} (run postgres.sh start)"
  fi
  # Fail fast on bad credentials (mlflow itself retries for ~2 minutes).
  if [[ -x "${POSTGRES_BIN_DIR}/psql" ]] &&
    ! PGPASSWORD="${POSTGRES_PASSWORD}" PGCONNECT_TIMEOUT=5 "${POSTGRES_BIN_DIR}/psql" -X -q -At \
      -h "${SERVICES_HOST}" -p "${POSTGRES_PORT}" -U "${POSTGRES_USER}" -d "${POSTGRES_DB}" \
      -c 'SELECT 1' >/dev/null; then
    die "cannot log in to database '${POSTGRES_DB}' as '${POSTGRES_USER}' (check POSTGRES_USER/POSTGRES_PASSWORD/POSTGRES_DB)"
  fi
  [[ "$(curl -s -o /dev/null -m 5 -w '%{http_code}' "${S3_ENDPOINT_URL}/" || true)" == 200 ]] ||
    die "S3 endpoint ${S3_ENDPOINT_URL} is not answering (run ceph_rgw.sh start)"
}

svc_launch() {
  if daemon_alive mlflow; then
    # e.g. a start still in progress
    log "process exists but is not healthy yet; waiting"
    return 0
  fi
  check_dependencies
  mkdir -p "${MLFLOW_STATE_DIR}"
  (
    # The database password goes to libpq through PGPASSWORD and the S3
    # keys through the AWS_* variables: nothing secret on the command line.
    export PGPASSWORD="${POSTGRES_PASSWORD}"
    export MLFLOW_S3_ENDPOINT_URL="${S3_ENDPOINT_URL}"
    export AWS_ACCESS_KEY_ID="${S3_ACCESS_KEY_ID}"
    export AWS_SECRET_ACCESS_KEY="${S3_SECRET_ACCESS_KEY}"
    export AWS_DEFAULT_REGION="${S3_REGION}"
    export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false
    export MLFLOW_SQLALCHEMYSTORE_POOL_SIZE="${MLFLOW_SQLALCHEMYSTORE_POOL_SIZE:-2}"
    export MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW="${MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW:-4}"
    daemon_start mlflow "${MLFLOW_LOG}" "${MLFLOW_STATE_DIR}" "${MLFLOW_BIN}" server \
      --backend-store-uri "postgresql+psycopg2://${POSTGRES_USER}@${SERVICES_HOST}:${POSTGRES_PORT}/${POSTGRES_DB}" \
      --serve-artifacts \
      --artifacts-destination "${MLFLOW_ARTIFACTS_DESTINATION}" \
      --host "${SERVICES_HOST}" \
      --port "${MLFLOW_PORT}" \
      --workers "${MLFLOW_WORKERS}" \
      --allowed-hosts "${MLFLOW_ALLOWED_HOSTS}"
  )
}

# a failed start does not leave a half-started server behind
svc_abort() { stop_pidfile "${MLFLOW_PIDFILE}" mlflow 30; }

service_main "$@"
