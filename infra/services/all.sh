#!/usr/bin/env bash
# The whole local stack, in dependency order.
#   all.sh start    postgres -> ceph rgw -> mlflow (each idempotent)
#   all.sh stop     mlflow -> ceph rgw -> postgres (data kept in the state dir)
#   all.sh status   exit 0 when all three are up
#   all.sh env      print `export` lines for clients:
#                   eval "$(infra/services/all.sh env)"
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SERVICE_NAME=all
# shellcheck source=infra/services/lib.sh
source "${HERE}/lib.sh"

start() {
  local t0
  t0="$(timer_start)"
  bash "${HERE}/postgres.sh" start
  bash "${HERE}/ceph_rgw.sh" start
  bash "${HERE}/mlflow_server.sh" start
  log "all services ready in $(timer_elapsed "${t0}")s"
}

stop() {
  local rc=0
  bash "${HERE}/mlflow_server.sh" stop || rc=1
  bash "${HERE}/ceph_rgw.sh" stop || rc=1
  bash "${HERE}/postgres.sh" stop || rc=1
  return "${rc}"
}

status() {
  local rc=0
  bash "${HERE}/postgres.sh" status || rc=1
  bash "${HERE}/ceph_rgw.sh" status || rc=1
  bash "${HERE}/mlflow_server.sh" status || rc=1
  return "${rc}"
}

print_env() {
  local name value
  for name in \
    MLFLOW_TRACKING_URI MLFLOW_S3_ENDPOINT_URL AWS_ENDPOINT_URL_S3 \
    AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_DEFAULT_REGION \
    S3_ENDPOINT_URL S3_MLFLOW_BUCKET S3_DVC_BUCKET SERVICES_STATE_DIR; do
    case "${name}" in
      MLFLOW_TRACKING_URI) value="${MLFLOW_TRACKING_URI_LOCAL}" ;;
      MLFLOW_S3_ENDPOINT_URL | AWS_ENDPOINT_URL_S3) value="${S3_ENDPOINT_URL}" ;;
      AWS_ACCESS_KEY_ID) value="${S3_ACCESS_KEY_ID}" ;;
      AWS_SECRET_ACCESS_KEY) value="${S3_SECRET_ACCESS_KEY}" ;;
      AWS_DEFAULT_REGION) value="${S3_REGION}" ;;
      *) value="${!name}" ;;
    esac
    printf 'export %s=%q\n' "${name}" "${value}"
  done
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  env) print_env ;;
  *)
    echo "usage: $0 {start|stop|status|env}" >&2
    exit 2
    ;;
esac
