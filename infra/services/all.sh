#!/usr/bin/env bash
# The whole local stack, in dependency order.
#   all.sh start    postgres -> ceph rgw -> mlflow (each idempotent)
#   all.sh stop     mlflow -> ceph rgw -> postgres (data kept in the state dir)
#   all.sh status   exit 0 when all three are up
#   all.sh restart  stop, then start
#   all.sh env      print `export` lines for clients, credentials included:
#                   eval "$(infra/services/all.sh env)"
# start and env need the credentials in the environment (env.sh), or
# IMAGE_FINETUNE_SERVICES_DEV=1 for the local-development ones.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SERVICE_NAME=all
# shellcheck source=infra/services/lib.sh
source "${HERE}/lib.sh"

SERVICES=(postgres ceph_rgw mlflow_server)
SVC_COMMANDS+=(env)

cmd_start() {
  local t0 name
  # once here (the warning of the development switch too): the services
  # then find the credentials exported
  require_credentials "${SERVICES_CREDENTIALS[@]}"
  check_legacy_stack
  note_legacy_state_dir
  t0="$(timer_start)"
  for name in "${SERVICES[@]}"; do
    bash "${HERE}/${name}.sh" start
  done
  log "all services ready in $(timer_elapsed "${t0}")s"
}

# each ACTION NAME...: ACTION on every named service, even after a failure;
# exit status 1 when one failed.
each() {
  local action="$1" rc=0 name
  shift
  for name in "$@"; do
    bash "${HERE}/${name}.sh" "${action}" || rc=1
  done
  return "${rc}"
}

cmd_stop() { each stop mlflow_server ceph_rgw postgres; }
cmd_status() { each status "${SERVICES[@]}"; }

# The only command that prints credentials (to stdout, for eval).
cmd_env() {
  local name value
  require_credentials S3_ACCESS_KEY_ID S3_SECRET_ACCESS_KEY MLFLOW_AUTH_ADMIN_PASSWORD
  for name in \
    MLFLOW_TRACKING_URI MLFLOW_TRACKING_USERNAME MLFLOW_TRACKING_PASSWORD \
    MLFLOW_S3_ENDPOINT_URL AWS_ENDPOINT_URL_S3 \
    AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_DEFAULT_REGION \
    S3_ENDPOINT_URL S3_MLFLOW_BUCKET S3_DVC_BUCKET SERVICES_STATE_DIR; do
    case "${name}" in
      MLFLOW_TRACKING_URI) value="${MLFLOW_TRACKING_URI_LOCAL}" ;;
      MLFLOW_TRACKING_USERNAME) value="${MLFLOW_AUTH_ADMIN_USERNAME}" ;;
      MLFLOW_TRACKING_PASSWORD) value="${MLFLOW_AUTH_ADMIN_PASSWORD}" ;;
      MLFLOW_S3_ENDPOINT_URL | AWS_ENDPOINT_URL_S3) value="${S3_ENDPOINT_URL}" ;;
      AWS_ACCESS_KEY_ID) value="${S3_ACCESS_KEY_ID}" ;;
      AWS_SECRET_ACCESS_KEY) value="${S3_SECRET_ACCESS_KEY}" ;;
      AWS_DEFAULT_REGION) value="${S3_REGION}" ;;
      *) value="${!name}" ;;
    esac
    printf 'export %s=%q\n' "${name}" "${value}"
  done
}

service_main "$@"
